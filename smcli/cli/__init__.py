"""The ``smcli`` command line: a thin typer layer over the library.

Each module here registers the commands of one area on :data:`app`; the work itself lives
in the library (``smcli.text``, ``smcli.images``, ...), imported inside each command so that
``smcli --help`` starts without loading torch.
"""

from __future__ import annotations

import os
import sys

from smcli.cli.app import app

# Registration order is the order of ``smcli --help``.
from smcli.cli import extract as _extract  # noqa: E402,F401
from smcli.cli import tokenize as _tokenize  # noqa: E402,F401
from smcli.cli import train as _train  # noqa: E402,F401
from smcli.cli import search as _search  # noqa: E402,F401
from smcli.cli import inspect as _inspect  # noqa: E402,F401


def main() -> None:
    """Console entry point: one error line and an exit code, never a traceback."""
    from smcli.errors import EXIT_BROKEN_PIPE, EXIT_INTERRUPTED, SmcliError

    try:
        app()
    except SmcliError as exc:
        _stderr_line(f"smcli: error: {exc}")
        sys.exit(exc.exit_code)
    except BrokenPipeError:
        _quiet_broken_pipe()
        sys.exit(EXIT_BROKEN_PIPE)
    except KeyboardInterrupt:
        _stderr_line("smcli: interrupted")
        sys.exit(EXIT_INTERRUPTED)


def _stderr_line(line: str) -> None:
    try:
        print(line, file=sys.stderr, flush=True)
    except (BrokenPipeError, OSError):
        pass


def _quiet_broken_pipe() -> None:
    # Python would complain again when flushing stdout at exit; point it at /dev/null.
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):
        pass
