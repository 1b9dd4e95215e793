"""The ``smcli`` command line: a thin typer layer over the library.

Each module here registers the commands of one area on :data:`app`; the work itself lives
in the library (``smcli.text``, ``smcli.images``, ...), imported inside each command so that
``smcli --help`` starts without loading torch.
"""

from __future__ import annotations

import _thread
import os
import signal
import sys

from smcli.cli.app import StdoutClosed, app
from smcli.runtime import quiet_lost_peer_threads

# Registration order is the order of ``smcli --help``.
from smcli.cli import extract as _extract  # noqa: E402,F401
from smcli.cli import read_text as _read_text  # noqa: E402,F401
from smcli.cli import tokenize as _tokenize  # noqa: E402,F401
from smcli.cli import train as _train  # noqa: E402,F401
from smcli.cli import search as _search  # noqa: E402,F401
from smcli.cli import inspect as _inspect  # noqa: E402,F401
from smcli.cli import explain as _explain  # noqa: E402,F401
from smcli.cli import models as _models  # noqa: E402,F401
from smcli.cli import serve as _serve  # noqa: E402,F401
from smcli.cli import shards as _shards  # noqa: E402,F401


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised where the program is, like Ctrl-C: the same cleanup runs (temporary
    files removed, workers stopped, resume journals kept)."""


_signalled: list[int] = []  # SIGINT/SIGTERM seen (typer may turn the exception into a plain Exit(130))


def _quiet_unraisable(unraisable) -> None:
    """After a signal: objects the signal caught half-built (a DataLoader iterator in its
    __init__) may fail in __del__ while the stack unwinds; Python's "Exception ignored"
    report of that is not for the user, who gets the one interrupted/terminated line.

    The signal's own exception can land there too: when the signal arrives while a __del__
    or a weakref callback runs, the handler raises inside it and Python drops the exception,
    so the run would go on as if never signalled. Then the signal is sent again, to be
    raised in the main program once the finaliser has returned."""
    if isinstance(unraisable.exc_value, KeyboardInterrupt):
        # From another thread, a moment later, so that the handler runs in the main program
        # after this hook and the finaliser have returned (raised here, it would be dropped
        # the same way). Each drop sends it once more.
        sig = signal.SIGTERM if isinstance(unraisable.exc_value, Terminated) else signal.SIGINT
        try:
            _thread.start_new_thread(_send_later, (sig,))
        except RuntimeError:  # the interpreter is shutting down: the run is ending anyway
            pass


def _send_later(sig: int) -> None:
    import time

    time.sleep(0.005)
    os.kill(os.getpid(), sig)


def _on_sigterm(signum, frame) -> None:
    _signalled.append(signum)
    sys.unraisablehook = _quiet_unraisable
    quiet_lost_peer_threads()
    raise Terminated()


def _on_sigint(signum, frame) -> None:
    _signalled.append(signum)
    sys.unraisablehook = _quiet_unraisable
    quiet_lost_peer_threads()
    raise KeyboardInterrupt()


def main() -> None:
    """Console entry point: one error line and an exit code, never a traceback."""
    try:
        previous = signal.signal(signal.SIGTERM, _on_sigterm)
        previous_int = (signal.signal(signal.SIGINT, _on_sigint)
                        if signal.getsignal(signal.SIGINT) is signal.default_int_handler else None)
    except ValueError:  # not the main thread: leave the signals alone
        previous = previous_int = None
    _signalled.clear()
    try:
        _main()
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
        if previous_int is not None:
            signal.signal(signal.SIGINT, previous_int)


def _main() -> None:
    import errno

    import typer

    from smcli.errors import (EXIT_BROKEN_PIPE, EXIT_ERROR, EXIT_INTERRUPTED, EXIT_TERMINATED, SmcliError,
                              first_line)

    try:  # typer >= 0.2x vendors click as typer._click; older versions use click itself
        from typer._click import exceptions as click_exc
    except ImportError:  # pragma: no cover - depends on the installed typer
        from click import exceptions as click_exc

    try:
        try:
            # standalone_mode=False: click hands usage errors, a broken pipe and Ctrl-C to us
            # instead of printing a boxed usage message or exiting 1 on EPIPE.
            rv = app(standalone_mode=False)
        except Exception:
            if _signalled:  # stopped by a signal: what failed while the run unwound is its consequence
                raise (Terminated() if _sigterm_seen() else KeyboardInterrupt()) from None
            raise
    except StdoutClosed:
        _quiet_broken_pipe()
        sys.exit(EXIT_BROKEN_PIPE)
    except SystemExit as exc:
        # rich (typer's help pages) ends a broken pipe itself: stdout pointed at /dev/null,
        # then exit 1, the code of bad input
        if exc.code == 1 and _stdout_is_devnull():
            sys.exit(EXIT_BROKEN_PIPE)
        raise
    except SmcliError as exc:
        _stderr_line(f"smcli: error: {exc}")
        sys.exit(exc.exit_code)
    except click_exc.ClickException as exc:
        if type(exc).__name__ == "NoArgsIsHelpError":  # help was already printed
            sys.exit(exc.exit_code)
        message = " ".join(exc.format_message().split())
        ctx = getattr(exc, "ctx", None)
        hint = f" (see '{ctx.command_path} --help')" if ctx is not None else ""
        _stderr_line(f"smcli: error: {message}{hint}")
        sys.exit(exc.exit_code)
    except (KeyboardInterrupt, typer.Abort) as exc:
        if _sigterm_seen() or isinstance(exc, Terminated):
            _stderr_line("smcli: terminated")
            sys.exit(EXIT_TERMINATED)
        _stderr_line("smcli: interrupted")
        sys.exit(EXIT_INTERRUPTED)
    except OSError as exc:
        # a broken pipe outside a command (--help, --version) ends quietly too
        if isinstance(exc, BrokenPipeError) or exc.errno == errno.EPIPE:
            _quiet_broken_pipe()
            sys.exit(EXIT_BROKEN_PIPE)
        # A file system problem (permission denied, disk full, missing directory): one line.
        where = f": {exc.filename}" if exc.filename else ""
        _stderr_line(f"smcli: error: {exc.strerror or first_line(exc)}{where}")
        sys.exit(EXIT_ERROR)
    if rv == EXIT_INTERRUPTED and _sigterm_seen():  # typer turns Ctrl-C (and so SIGTERM) into Exit(130)
        _stderr_line("smcli: terminated")
        sys.exit(EXIT_TERMINATED)
    if rv == EXIT_INTERRUPTED:
        _stderr_line("smcli: interrupted")
    sys.exit(rv if isinstance(rv, int) else 0)


def _sigterm_seen() -> bool:
    return signal.SIGTERM in _signalled


def _stderr_line(line: str) -> None:
    try:
        print(line, file=sys.stderr, flush=True)
    except (BrokenPipeError, OSError):
        pass


def _stdout_is_devnull() -> bool:
    try:
        out, null = os.fstat(sys.stdout.fileno()), os.stat(os.devnull)
    except (OSError, ValueError, AttributeError):  # io.UnsupportedOperation is an OSError
        return False
    return (out.st_dev, out.st_ino) == (null.st_dev, null.st_ino)


def _quiet_broken_pipe() -> None:
    # Python would complain again when flushing stdout at exit; point it at /dev/null.
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):
        pass
