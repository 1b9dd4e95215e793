"""How many worker processes extract-regions runs on a CPU: measured on this machine, remembered.

Every CPU worker decodes its batches and runs the network on one thread, so the features do
not depend on the layout and the layout is a number of processes. The best number depends
on the machine (cores, caches, a shared host's neighbours): one per core was the fastest on
the 2-core boxes measured (BENCHMARKS.md, "extract-regions"), but that is a measurement of
those boxes, not a rule. ``--tune-layout`` measures the candidates (:func:`candidates`) on
the run's own first images, each on whole batches, so their rows are kept and the output is
the one an untuned run writes, bit for bit; it picks the fastest (:func:`choose`) and
remembers it for this machine, backbone and image size. A later run with ``--workers`` unset
uses the remembered number (one per core while none is); ``--workers N`` always wins.
"""

from __future__ import annotations

import json
import os
import platform
import time
from pathlib import Path

from smcli.runtime import cache_root, cpu_cores, cpu_model

LAYOUT_FILE = "extract-layout.json"
PROBE_BATCHES = 4  # batches a candidate runs per worker: long enough to pass the workers' start
TIE = 0.03  # rates within 3% of the best count as equal: the fewer processes (less memory) win


def candidates(cores: int, most: int) -> list[int]:
    """Worker counts to measure: half the cores, one per core and one more (at most ``most``)."""
    return sorted({max(1, min(most, n)) for n in (cores // 2, cores, cores + 1)})


def choose(rates: dict[int, float]) -> int:
    """The fastest worker count; among those within :data:`TIE` of it, the fewest."""
    best = max(rates.values())
    return min(n for n, r in rates.items() if r >= best * (1 - TIE))


def machine_key(backbone: str, image_size: int, batch_size: int) -> str:
    """What a remembered layout holds for: the CPU, the cores this process may use, torch,
    the backbone, the image size and the batch size."""
    import torch

    return (f"{cpu_model() or platform.machine()} | {cpu_cores()} cores | torch {torch.__version__} | {backbone} | "
            f"{image_size}px | batch {batch_size}")


def _path() -> Path:
    return cache_root() / LAYOUT_FILE


def _read() -> dict:
    try:
        data = json.loads(_path().read_text())
    except (OSError, ValueError):
        return {}  # none yet, or unreadable: measured again by the next --tune-layout
    return data if isinstance(data, dict) else {}


def remembered(key: str) -> int | None:
    """The worker count measured best for ``key``, or None."""
    entry = _read().get(key)
    n = entry.get("workers") if isinstance(entry, dict) else None
    return n if isinstance(n, int) and not isinstance(n, bool) and n >= 1 else None


def remember(key: str, rates: dict[int, float]) -> int:
    """Store the measured images/s per worker count and the choice; returns the choice. A
    cache that cannot be written only loses the memory, never the run."""
    workers = choose(rates)
    data = _read()
    data[key] = {"workers": workers, "images_per_s": {str(n): round(r, 1) for n, r in sorted(rates.items())},
                 "measured": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    path = _path()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(data, indent=2, sort_keys=True))
        os.replace(tmp, path)
    except OSError:
        pass
    return workers
