"""The matcher's dropout on the region features of a training step (120 x 49 x 1280, p 0.3),
each mask draw (smcli/models/dropout.py), best of 5 after one warm-up.

    python bench/bench_dropout.py [--threads N]

Not a test: the figures depend on the machine and its load, which are printed with them.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import torch

from smcli.models.dropout import FeatureDropout, keep_mask_bits16

sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine_info import cpu_model  # noqa: E402


def best_ms(fn, reps: int = 5) -> float:
    fn()
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times) * 1000


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=None)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"# bench/bench_dropout.py on {cpu_model()}, {torch.get_num_threads()} threads, torch {torch.__version__}, "
          f"load {os.getloadavg()[0]:.2f}")
    x = torch.randn(120, 49, 1280)
    print(f"bernoulli_ mask alone: {best_ms(lambda: torch.empty_like(x).bernoulli_(0.7)):.1f} ms")
    print(f"bits16 mask alone: {best_ms(lambda: keep_mask_bits16(x.shape, 0.7, x.device)):.1f} ms")
    for draw in ("bernoulli", "bits16"):
        drop = FeatureDropout(0.3, draw).train()
        print(f"FeatureDropout(0.3, {draw!r}) applied: {best_ms(lambda d=drop: d(x)):.1f} ms")


if __name__ == "__main__":
    main()
