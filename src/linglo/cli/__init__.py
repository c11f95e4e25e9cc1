"""The `linglo` command: argument parsing, messages and exit codes only (the work is in engine/tasks)."""
