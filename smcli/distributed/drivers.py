"""The built-in driver: run the shards of a command that have no committed part yet, retry
the failed ones, then finalize.

Every shard is one ordinary ``smcli ... --shard i/N`` run in a process of its own, so
torch threads, DataLoader workers and CUDA never live in the driver or in a Ray worker, and
a shard killed anywhere leaves only what finalize sweeps. The process is forked from a fork
server that has imported torch and timm once (:mod:`smcli.distributed.forkserver`; one per
local driver, one per Ray worker), or, where that cannot start, a fresh ``python -m smcli``.
It dies with the process it runs for (``PR_SET_PDEATHSIG``), so a killed Ray worker takes
its shard with it instead of leaving an orphan writing the same part.

- ``local``: as many shards at once as the cores hold (cores // CPUs per shard);
- ``ray``: one Ray task per shard with its CPU/GPU needs, on the cluster at
  ``--ray-address`` (``auto``: the one this machine belongs to) or on a local one started
  for the run. Ray's own task retries are off: the driver retries, the same way for both.
"""

from __future__ import annotations

import functools
import os
import re
import subprocess
import sys
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from smcli.distributed.forkserver import ForkServer
from smcli.distributed.manifest import Manifest, finalize, summary_line
from smcli.distributed.shards import ShardSpec, missing_shards
from smcli.errors import SmcliError, UsageError, first_line
from smcli.report import say
from smcli.runtime import cpu_cores

DISTRIBUTORS = ("local", "ray")
# The shard's smcli, run so that it gets SIGKILL when its parent dies (PR_SET_PDEATHSIG
# survives exec), and gives up if the parent is already gone.
_LAUNCH = """
import os, sys
from smcli.distributed.forkserver import die_with_parent
die_with_parent()
if os.getppid() != int(sys.argv[1]):
    sys.exit(137)
os.execv(sys.executable, [sys.executable, "-m", "smcli", *sys.argv[2:]])
"""


@dataclass
class ShardTask:
    spec: ShardSpec
    argv: list[str]  # smcli's arguments for this shard
    cpus: int = 1
    gpus: int = 0


@dataclass
class ShardResult:
    spec: ShardSpec
    returncode: int
    last_line: str  # the shard's last stderr line: its counts, or its error


def run_shard_process(argv: list[str], server: ForkServer | None = None) -> tuple[int, str]:
    """Run one shard as ``smcli ARGV`` in a process that dies with this one: forked by
    ``server`` (imports paid once), else a fresh ``python -m smcli``."""
    if server is not None:
        returncode, stderr = server.run(argv)
    else:
        proc = subprocess.run([sys.executable, "-c", _LAUNCH, str(os.getpid()), *argv], stdin=subprocess.DEVNULL,
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, check=False)
        returncode, stderr = proc.returncode, proc.stderr.decode("utf-8", "replace")
    lines = [ln for ln in stderr.splitlines() if ln.strip()]
    errors = [ln for ln in lines if ln.startswith("smcli: error:")]
    last = re.sub(r"^smcli( [\w-]+)?: ", "", errors[-1] if errors else (lines[-1] if lines else ""))
    if returncode < 0:
        last = f"killed by signal {-returncode}" + (f" (last said: {last})" if last else "")
    return returncode, last


def start_fork_server() -> ForkServer | None:
    """A fork server for this process's shards, or None (the plain launcher) where it cannot
    start or ``SMCLI_FORK_SERVER=0``."""
    if os.environ.get("SMCLI_FORK_SERVER", "1") == "0" or not hasattr(os, "fork"):
        return None
    try:
        return ForkServer()
    except OSError:
        return None


@functools.cache
def _worker_fork_server() -> ForkServer | None:
    """A Ray worker's own fork server, started by its first shard and kept for the next."""
    return start_fork_server()


def run_shard_in_worker(argv: list[str]) -> tuple[int, str]:
    """A Ray task: the shard forked by this worker's fork server."""
    return run_shard_process(argv, _worker_fork_server())


def run_local(tasks: list[ShardTask], on_done: Callable[[ShardResult], None]) -> list[ShardResult]:
    parallel = max(1, min(len(tasks), cpu_cores() // max(1, max(t.cpus for t in tasks))))
    server = start_fork_server()

    def one(task: ShardTask) -> ShardResult:
        rc, last = run_shard_process(task.argv, server)
        result = ShardResult(task.spec, rc, last)
        on_done(result)
        return result

    pool, finished = ThreadPoolExecutor(parallel), False
    try:
        results = list(pool.map(one, tasks))
        finished = True
        return results
    finally:
        # stopped by a signal or an error: the running shards get 5 s to end, then die with the
        # server, which frees the threads waiting on them
        if server is not None:
            server.close(timeout=60 if finished else 5)
        pool.shutdown(wait=True)


def _ray():
    try:
        import ray
    except ImportError:
        raise UsageError("--distributor ray needs Ray, an optional extra: pip install 'smcli[ray]'") from None
    return ray


def run_ray(tasks: list[ShardTask], on_done: Callable[[ShardResult], None],
            address: str | None = None) -> list[ShardResult]:
    ray = _ray()
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    started = not ray.is_initialized()
    if started:
        kwargs = dict(include_dashboard=False, log_to_driver=False, configure_logging=False)
        if address:
            ray.init(address=address, **kwargs)
        else:  # a local cluster of this machine only, on loopback
            ray.init(num_cpus=cpu_cores(), num_gpus=_local_gpus(), _node_ip_address="127.0.0.1", **kwargs)
    try:
        remote = ray.remote(max_retries=0)(run_shard_in_worker)
        pending = {remote.options(num_cpus=t.cpus, num_gpus=t.gpus).remote(t.argv): t for t in tasks}
        results = []
        while pending:
            done, _ = ray.wait(list(pending), num_returns=1)
            for ref in done:
                task = pending.pop(ref)
                try:
                    rc, last = ray.get(ref)
                except ray.exceptions.RayError as exc:  # the worker died (killed, out of memory)
                    rc, last = -1, f"Ray task failed: {first_line(exc, 120)}"
                result = ShardResult(task.spec, rc, last)
                on_done(result)
                results.append(result)
        return results
    finally:
        if started:
            ray.shutdown()


def _local_gpus() -> int:
    """CUDA devices here, without importing torch into the driver (nvidia-smi -L)."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        return len([d for d in visible.split(",") if d.strip() and d.strip() != "-1"])
    try:
        out = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=20, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return 0
    return sum(1 for ln in out.stdout.splitlines() if ln.startswith("GPU "))


def drive(command: str, directory: Path, count: int, argv_for: Callable[[ShardSpec], list[str]], *,
          distributor: str = "local", ray_address: str | None = None, max_shard_retry: int = 3,
          cpus: int = 1, gpus: int = 0, fingerprint: str | None = None) -> Manifest:
    """Run every shard of ``count`` without a committed part in ``directory`` (each as
    ``smcli argv_for(spec)``), each up to ``max_shard_retry`` times, then finalize. Shards
    still failing are listed and the run fails: rerunning the same command continues."""
    if distributor not in DISTRIBUTORS:
        raise UsageError(f"--distributor {distributor}: choose {' or '.join(DISTRIBUTORS)}")
    if max_shard_retry < 1:
        raise UsageError(f"--max-shard-retry {max_shard_retry}: must be at least 1")
    if distributor == "ray":
        _ray()  # one line now, not after the listing
    todo = missing_shards(directory, count, fingerprint)
    say(command, f"{count - len(todo)} of {count} part(s) already committed in {directory}; "
                 f"submitting {len(todo)} shard(s) to {distributor}")
    last: dict[int, ShardResult] = {}

    def on_done(result: ShardResult) -> None:
        state = "done" if result.returncode == 0 else f"failed (exit {result.returncode})"
        say(command, f"shard {result.spec} {state}: {result.last_line}")

    for attempt in range(1, max_shard_retry + 1):
        if not todo:
            break
        if attempt > 1:
            say(command, f"retrying {len(todo)} shard(s) (try {attempt} of {max_shard_retry})")
        tasks = [ShardTask(s, argv_for(s), cpus, gpus) for s in todo]
        results = (run_ray(tasks, on_done, ray_address) if distributor == "ray" else run_local(tasks, on_done))
        last.update({r.spec.index: r for r in results})
        uncommitted = set(missing_shards(directory, count))
        todo = sorted({r.spec for r in results if r.returncode != 0 or r.spec in uncommitted}, key=lambda s: s.index)
    if todo:
        for spec in todo:
            say(command, f"shard {spec} failed {max_shard_retry} time(s): {last[spec.index].last_line}")
        raise SmcliError(f"{len(todo)} of {count} shard(s) failed ({', '.join(str(s) for s in todo)}); the "
                         f"committed parts are kept in {directory}: rerun the same command to continue")
    manifest = finalize(directory, command=command)
    say(command, summary_line(manifest))
    return manifest


def command_line(command: str, positional: list[str], options: dict[str, object]) -> list[str]:
    """smcli's arguments for a library call: ``field=value`` -> ``--field value`` (the CLI
    spells every option as its field name), True -> ``--field``, False -> ``--no-field``
    for the ``--x/--no-x`` switches named in ``NEGATABLE``, None and other False: left out."""
    argv = [command, *positional]
    for name, value in options.items():
        flag = "--" + name.replace("_", "-")
        if value is None or value is False and name not in NEGATABLE:
            continue
        if value is True:
            argv.append(flag)
        elif value is False:
            argv.append("--no-" + name.replace("_", "-"))
        else:
            argv += [flag, str(value)]
    return argv


NEGATABLE = frozenset({"progress"})
