"""Eager against fused grid attention on a trained model's real Flickr8k sides, interleaved.

    python bench/bench_fused_full.py --model runs/flickr8k/model-pair-smlstm-wl06-seed1 \
        --regions runs/flickr8k/feats-pair.parquet --captions runs/flickr8k/captions.parquet \
        --images 200 --rounds 2
    python bench/bench_fused_full.py ... --cli --rounds 2   # whole `retrieve --eval --exhaustive` runs, alternating

Issue 19's open question: bench_kernel.py's random model scores 1.2-1.4x faster with the
fused loop, yet whole `smcli retrieve --eval --split test --exhaustive` runs, made one after
the other on a box whose speed swings, did not finish sooner. This script measures the two on
the same loaded sides in one process, alternating, so a swing of the box hits both alike:
``exhaustive_scores`` (the function the CLI's evaluation calls) over the first ``--images``
test images x every test caption, eager then fused, ``--rounds`` times, and the largest score
difference. ``--cli`` instead runs the whole CLI evaluation in fresh processes, alternating
SMCLI_COMPILE=0 and =1, and reads each run's own scoring seconds. ``--profile`` adds
torch.profiler's top operators for one block of each.
Not a test: the figures depend on the machine and its load, printed with them.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine_info import cpu_model  # noqa: E402


def _sides(model_dir: str, regions: str, captions: str, split: str, n_images: int):
    from smcli.dataset import load_matching_data
    from smcli.inference.api import Model

    model = Model(model_dir, precision="fp32")
    data = load_matching_data(regions, captions, command="bench", with_regions=True)
    rows = np.flatnonzero(data.split == split)
    images = np.unique(data.caption_image[rows])[:n_images]
    gallery = model.encode_images([data.image_ids[i] for i in images], [""] * len(images),
                                  data.regions[images], data.global_[images])
    texts = model.encode_texts([data.caption_ids[i] for i in rows], [data.captions[i] for i in rows],
                               [data.token_ids[i] for i in rows])
    return model, gallery, texts


def _timed(model, gallery, texts, compile_setting: str) -> tuple[float, np.ndarray]:
    from smcli.inference.scoring import exhaustive_scores

    os.environ["SMCLI_COMPILE"] = compile_setting
    t0 = time.perf_counter()
    scores = exhaustive_scores(model.model, gallery.side, texts.side)
    return time.perf_counter() - t0, scores


def _profile(model, gallery, texts, compile_setting: str, n_images: int = 8) -> None:
    from torch.profiler import ProfilerActivity, profile

    from smcli.inference.scoring import exhaustive_scores
    from smcli.models.fused_attention import fused_scope

    os.environ["SMCLI_COMPILE"] = compile_setting
    g = gallery.side.select(torch.arange(n_images))
    t = texts.side.select(torch.arange(512))
    with fused_scope(compile_setting == "1"):
        exhaustive_scores(model.model, g, t)  # warm
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            exhaustive_scores(model.model, g, t)
    print(f"\n-- profile, SMCLI_COMPILE={compile_setting}, {n_images} x 512 pairs")
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=12))


def in_process(args) -> None:
    model, gallery, texts = _sides(args.model, args.regions, args.captions, args.split, args.images)
    pairs = len(gallery.image_ids) * len(texts.ids)
    print(f"{len(gallery.image_ids)} images x {len(texts.ids)} captions = {pairs:,} pairs; "
          f"torch threads {torch.get_num_threads()}")
    t_compile, first = _timed(model, gallery, texts, "1")  # the first fused call compiles
    print(f"fused, first run (compiling included): {t_compile:.1f} s")
    rows = []
    for r in range(args.rounds):
        for setting, name in (("0", "eager"), ("1", "fused")):
            sec, scores = _timed(model, gallery, texts, setting)
            diff = float(np.abs(scores - first).max())
            rows.append((r, name, sec, pairs / sec, diff))
            print(f"round {r} {name:5s} {sec:7.1f} s  {pairs / sec:9,.0f} pairs/s  max |d| vs first fused {diff:.1e}",
                  flush=True)
    for name in ("eager", "fused"):
        secs = [s for _, n, s, _, _ in rows if n == name]
        print(f"{name}: median {np.median(secs):.1f} s, {pairs / np.median(secs):,.0f} pairs/s")
    if args.profile:
        _profile(model, gallery, texts, "0")
        _profile(model, gallery, texts, "1")


def cli_runs(args) -> None:
    base = ["smcli", "retrieve", "--eval", "--split", args.split, "--exhaustive", "--model", args.model,
            "--regions", args.regions, "--captions", args.captions]
    for r in range(args.rounds):
        for setting, name in (("0", "eager"), ("1", "fused")):
            with tempfile.TemporaryDirectory() as tmp:
                out = Path(tmp) / "eval.json"
                t0 = time.perf_counter()
                subprocess.run(base + ["-o", str(out)], check=True, stdout=subprocess.DEVNULL,
                               env={**os.environ, "SMCLI_COMPILE": setting})
                wall = time.perf_counter() - t0
                res = json.loads(out.read_text())
            print(f"round {r} {name:5s} scoring {res['seconds']:7.1f} s  wall {wall:6.1f} s  "
                  f"{res['pairs_scored'] / res['seconds']:9,.0f} pairs/s  rsum {res['rsum']}", flush=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True)
    p.add_argument("--regions", required=True)
    p.add_argument("--captions", required=True)
    p.add_argument("--split", default="test")
    p.add_argument("--images", type=int, default=200, help="first N images of the split (in-process mode)")
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--cli", action="store_true", help="whole CLI evaluations in fresh processes instead")
    p.add_argument("--profile", action="store_true")
    args = p.parse_args()
    print(f"machine: {cpu_model()}, {os.cpu_count()} cores; torch {torch.__version__}; fp32; "
          f"load average {os.getloadavg()[0]:.2f}; {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}")
    cli_runs(args) if args.cli else in_process(args)
    print(f"load average at the end {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
