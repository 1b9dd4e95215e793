"""The shard fork server's loop (``python -m smcli.cli.forkserver OWNER_PID``): import the
modules every shard command needs once, then fork one process per request that runs
``smcli ARGV`` and exits. The client, the protocol and why: :mod:`smcli.distributed.forkserver`.
"""

from __future__ import annotations

import json
import os
import sys
import time

from smcli.distributed.forkserver import OWNER_ENV, die_with_parent

# what every shard command imports first; a module missing here is simply not preloaded
PRELOAD = ("numpy", "pyarrow.parquet", "PIL.Image", "torch", "timm", "smcli.cli", "smcli.images.extract",
           "smcli.inference.tasks")


def serve(owner: int) -> None:
    """The server's loop: preload, then fork a shard process per request line."""
    import importlib
    import selectors
    import signal

    die_with_parent()
    if os.getppid() != owner:
        sys.exit(137)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the shards (same process group), not us
    for name in PRELOAD:
        try:
            importlib.import_module(name)
        except ImportError:
            pass
    out = sys.stdout
    out.write(json.dumps({"ready": os.getpid()}) + "\n")
    out.flush()
    running: dict[int, str] = {}  # pid -> request id
    buffer = b""
    sel = selectors.DefaultSelector()
    sel.register(sys.stdin.fileno(), selectors.EVENT_READ)
    eof = False
    while not eof or running:
        if not eof and sel.select(timeout=0.02):
            chunk = os.read(sys.stdin.fileno(), 65536)
            eof = not chunk
            buffer += chunk
            while b"\n" in buffer:
                line, buffer = buffer.split(b"\n", 1)
                request = json.loads(line)
                running[_fork_shard(request)] = request["id"]
        elif eof:
            time.sleep(0.02)
        while running:
            pid, status = os.waitpid(-1, os.WNOHANG)
            if pid == 0:
                break
            code = -os.WTERMSIG(status) if os.WIFSIGNALED(status) else os.WEXITSTATUS(status)
            out.write(json.dumps({"id": running.pop(pid), "returncode": code}) + "\n")
            out.flush()


def _fork_shard(request: dict) -> int:
    pid = os.fork()
    if pid:
        return pid
    code = 1
    try:  # the shard process: never returns into the server's loop
        import signal

        die_with_parent()
        signal.signal(signal.SIGINT, signal.default_int_handler)
        devnull = os.open(os.devnull, os.O_RDWR)
        err = os.open(request["stderr"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        os.dup2(devnull, 0)
        os.dup2(devnull, 1)
        os.dup2(err, 2)
        os.environ[OWNER_ENV] = str(request["owner"])
        sys.argv = ["smcli", *request["argv"]]
        from smcli.cli import main

        try:
            main()
            code = 0
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    except BaseException as exc:  # noqa: BLE001 - a shard process reports, it never unwinds into the server
        try:
            os.write(2, f"smcli: error: shard process: {type(exc).__name__}: {exc}\n".encode())
        except OSError:
            pass
    finally:
        try:
            sys.stdout.flush()
            sys.stderr.flush()
        except Exception:  # noqa: BLE001
            pass
        os._exit(code)


if __name__ == "__main__":
    serve(int(sys.argv[1]))
