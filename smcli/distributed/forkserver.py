"""Shard processes forked from a warm process: the imports are paid once per machine.

A fresh ``python -m smcli`` pays ~6 s before its first photo on a 2-core box (torch 3.6 s,
timm and torchvision 2.8 s: torchvision's ops import torch._dynamo), which is most of a
shard of a few hundred photos. The fork server is a child process that imports those
modules once and then forks one process per shard; each forked process runs the shard's
ordinary ``smcli ARGV`` (``smcli.cli.main``) and exits. So a shard is still a process of its
own (its torch threads, DataLoader workers and CUDA never live in the driver or in a Ray
worker), and a killed shard still leaves only what finalize sweeps.

Death follows the parent: the server gets SIGKILL when the process that started it dies (a
driver or a Ray worker; ``PR_SET_PDEATHSIG``), and a shard process when the server dies, so
a killed Ray worker still takes its shard with it. The server imports but never runs torch
(no thread pool, no CUDA context exists when it forks).

This module is the client (:class:`ForkServer`, what the drivers use); the server's loop is
:mod:`smcli.cli.forkserver`, since what it runs is the CLI. Protocol (one JSON object a
line): the client writes ``{"id", "argv", "stderr", "owner"}`` to the server's stdin, the
server answers ``{"id", "returncode"}`` (negative: killed by that signal) on its stdout when
that shard process ends. The shard's stderr goes to the file named in the request; its
stdout and stdin to /dev/null, as with the plain launcher.
"""

from __future__ import annotations

import itertools
import json
import os
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

OWNER_ENV = "SMCLI_SHARD_OWNER"  # pid of the process a shard runs for (the kill hook's "parent")
SERVER_MODULE = "smcli.cli.forkserver"  # the server's loop: it runs the CLI, so it lives with the CLI


def die_with_parent() -> None:
    """This process gets SIGKILL when its parent dies (Linux; elsewhere nothing happens)."""
    import ctypes
    import signal

    try:
        ctypes.CDLL(None).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (AttributeError, OSError):  # not Linux: a shard may outlive a killed parent
        pass


class ForkServer:
    """The client: ``run(argv)`` from any number of threads, each waiting for its own shard."""

    def __init__(self) -> None:
        self._proc = subprocess.Popen([sys.executable, "-m", SERVER_MODULE, str(os.getpid())],
                                      stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
        ready = self._proc.stdout.readline()
        if not ready.startswith(b'{"ready"'):
            self._proc.kill()
            self._proc.wait()
            raise OSError("the shard fork server did not start")
        self._lock = threading.Lock()
        self._ids = itertools.count()
        self._waiting: dict[str, list] = {}  # id -> [event, returncode]
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        self._tmp = tempfile.TemporaryDirectory(prefix="smcli-shards-")

    def _read(self) -> None:
        for line in self._proc.stdout:
            reply = json.loads(line)
            with self._lock:
                slot = self._waiting.get(reply["id"])
            if slot is not None:
                slot[1] = reply["returncode"]
                slot[0].set()
        with self._lock:  # the server is gone: its shard processes died with it
            for slot in self._waiting.values():
                if slot[1] is None:
                    slot[1] = -9
                slot[0].set()

    def run(self, argv: list[str]) -> tuple[int, str]:
        """(returncode, the shard's stderr) of ``smcli ARGV`` in a forked shard process."""
        rid = str(next(self._ids))
        stderr = Path(self._tmp.name) / f"{rid}.err"
        slot = [threading.Event(), None]
        request = json.dumps({"id": rid, "argv": list(argv), "stderr": str(stderr), "owner": os.getpid()})
        with self._lock:
            self._waiting[rid] = slot
            try:
                self._proc.stdin.write(request.encode() + b"\n")
                self._proc.stdin.flush()
            except (BrokenPipeError, ValueError):
                slot[1] = -9
                slot[0].set()
        slot[0].wait()
        with self._lock:
            del self._waiting[rid]
        try:
            text = stderr.read_text("utf-8", "replace")
            stderr.unlink()
        except OSError:
            text = ""
        return slot[1], text

    def close(self, timeout: float = 60) -> None:
        """No more shards: the server exits when the running ones end; after ``timeout``
        seconds it is killed, and they with it (their runs report the kill)."""
        try:
            self._proc.stdin.close()
        except OSError:
            pass
        try:
            self._proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.wait()
        self._tmp.cleanup()
