"""The machine a command runs on: devices, numeric precision, threads and the allocator.

Decided once here for every command that runs a network or a model.
"""

from __future__ import annotations

import contextlib
import os
import sys

from smcli.errors import UsageError

PRECISIONS = ("auto", "fp32", "bf16")


def resolve_device(name: str) -> str:
    """``auto`` -> cuda when present, else cpu; ``cpu``, ``cuda`` and ``cuda:N`` as given.
    A CUDA device that is not there is a usage error."""
    import torch

    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cpu":
        return name
    if name == "cuda" or name.startswith("cuda:") and name[5:].isdigit():
        if not torch.cuda.is_available():
            raise UsageError(f"--device {name}: no CUDA device is available here (use --device cpu or auto)")
        if ":" in name and int(name[5:]) >= torch.cuda.device_count():
            raise UsageError(f"--device {name}: only {torch.cuda.device_count()} CUDA device(s) here")
        return name
    raise UsageError(f"--device {name}: choose auto, cpu, cuda or cuda:N")


def device_type(device: str) -> str:
    """"cuda" for "cuda:1", as torch.autocast wants it."""
    return device.split(":", 1)[0]


def resolve_precision(precision: str, device: str) -> str:
    """``auto`` -> bf16 where the hardware does it natively (CUDA, CPUs with AVX512-BF16),
    else fp32. bf16 is mixed precision: weights and losses stay fp32."""
    import torch

    if precision not in PRECISIONS:
        raise UsageError(f"--precision {precision}: choose one of {', '.join(PRECISIONS)}")
    if precision != "auto":
        return precision
    if device_type(device) == "cuda":
        return "bf16"
    return "bf16" if torch.cpu._is_avx512_bf16_supported() else "fp32"


def autocast(device: str, precision: str):
    """The autocast context for ``precision`` (a no-op for fp32)."""
    import torch

    if precision == "bf16":
        return torch.autocast(device_type(device), dtype=torch.bfloat16)
    return contextlib.nullcontext()


def cache_root():
    """Where smcli keeps what it derives from inputs (MiniLM states, mapped region grids):
    $SMCLI_CACHE_DIR, else $XDG_CACHE_HOME/smcli (~/.cache/smcli)."""
    from pathlib import Path

    return Path(os.environ.get("SMCLI_CACHE_DIR") or os.path.join(
        os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")), "smcli"))


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo (platform.processor() elsewhere; "" if unknown)."""
    import platform
    from pathlib import Path

    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def cpu_cores() -> int:
    """The cores this process may run on."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def available_memory() -> int | None:
    """Bytes of memory available to new allocations (Linux MemAvailable); None if unknown."""
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


@contextlib.contextmanager
def torch_threads(threads: int | None):
    """Torch's intra-op threads: ``threads``, or one per core, for a while. Restored after,
    so that a command run from Python (or a test) leaves the next one the process's own
    setting: thread counts change float rounding, hence a training run's bytes."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(threads or cpu_cores())
    try:
        yield
    finally:
        torch.set_num_threads(before)


def one_thread(enabled: bool = True):
    """Torch on one thread for a while (thread counts change float rounding in oneDNN)."""
    return torch_threads(1) if enabled else contextlib.nullcontext()


def tune_malloc() -> None:
    """Keep freed memory in the heap instead of returning it to the OS after every batch.

    glibc serves the network's large activations with mmap and unmaps them when freed, so
    every forward pass page-faults its whole working set again: on a 2-core machine that
    was ~30% of the CPU time in system calls. Raising the mmap and trim thresholds makes
    the allocator reuse the memory: same results, ~1.5x the images/s, a flat RSS.
    """
    if not sys.platform.startswith("linux"):
        return
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6")
        m_trim_threshold, m_mmap_threshold = -1, -3
        libc.mallopt(m_mmap_threshold, 1 << 30)
        libc.mallopt(m_trim_threshold, 1 << 31)
    except (OSError, AttributeError):  # not glibc
        pass


_LOST_PEER = (BrokenPipeError, ConnectionResetError, ConnectionAbortedError, EOFError)


def quiet_lost_peer_threads(_worker_id: int | None = None) -> None:
    """Drop the traceback of a helper thread whose peer process went away.

    Tensors cross from a DataLoader worker to the parent through file descriptors that a
    ``multiprocessing.resource_sharer`` thread in the worker hands out. When the run is
    interrupted the parent stops asking mid-way, that thread fails with BrokenPipeError and
    Python prints "Exception in thread ..." with a traceback on the shared stderr, under
    the run's one closing line. The resource sharer's serving loop catches the error itself
    and hands it to ``sys.excepthook`` (not ``threading.excepthook``), so both hooks are
    wrapped; ``sys.excepthook`` only for calls from threads other than the main one. Only
    lost-peer errors are dropped; anything else still goes to the previous hook. Usable as a
    DataLoader ``worker_init_fn``.
    """
    import threading

    previous = threading.excepthook
    if not getattr(previous, "_smcli_quiet", False):
        def hook(args) -> None:
            if not isinstance(args.exc_value, _LOST_PEER):
                previous(args)

        hook._smcli_quiet = True  # type: ignore[attr-defined]
        threading.excepthook = hook

    previous_sys = sys.excepthook
    if not getattr(previous_sys, "_smcli_quiet", False):
        def sys_hook(kind, value, tb) -> None:
            if isinstance(value, _LOST_PEER) and threading.current_thread() is not threading.main_thread():
                return
            previous_sys(kind, value, tb)

        sys_hook._smcli_quiet = True  # type: ignore[attr-defined]
        sys.excepthook = sys_hook
