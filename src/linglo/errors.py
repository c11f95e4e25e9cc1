"""The project's user-facing error: the CLI prints its message on one line and exits with code 2."""


class LingloError(ValueError):
    """Bad input from the user (file, flag, dataset, checkpoint); the message names what and why."""
