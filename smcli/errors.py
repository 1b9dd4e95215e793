"""Errors that end a command with one clear line and a documented exit code."""

from __future__ import annotations

EXIT_ERROR = 1  # bad input, incompatible files, a failed run
EXIT_USAGE = 2  # bad arguments or options that do not make sense together
EXIT_BELOW_GATE = 3  # a quality gate (--fail-under) was not met; the output was still written
EXIT_INTERRUPTED = 130  # Ctrl-C
EXIT_TERMINATED = 143  # SIGTERM (128 + 15), handled like Ctrl-C: the same cleanup, one line
EXIT_BROKEN_PIPE = 141  # the reader of stdout went away (like SIGPIPE), quietly: not bad input


class SmcliError(Exception):
    """An error the user can act on; printed as one line, never as a traceback."""

    exit_code = EXIT_ERROR


class InputError(SmcliError):
    """A file or row the user gave is missing, malformed or of the wrong kind."""


class GateError(SmcliError):
    """A figure fell short of a --fail-under gate (the run itself succeeded)."""

    exit_code = EXIT_BELOW_GATE


class UsageError(SmcliError):
    """Arguments that do not make sense together."""

    exit_code = EXIT_USAGE


def first_line(exc: BaseException, limit: int | None = None) -> str:
    """The first line of an exception's message (at most ``limit`` characters), or its
    type's name when it has none: what a one-line error quotes of a library's exception."""
    text = str(exc).strip().splitlines()
    return (text[0] if text else type(exc).__name__)[:limit]
