"""Checks shared by the tests that run the `linglo` command in-process."""
from __future__ import annotations

from linglo.cli.main import main


def error_of(argv, capsys) -> str:
    """Run `linglo ARGV`; assert it printed one `error: ...` line (no traceback) and exited 2; return the line."""
    code = main(argv)
    err = capsys.readouterr().err.strip()
    assert code == 2, err
    assert err.startswith("error: ") and "\n" not in err and "Traceback" not in err
    return err
