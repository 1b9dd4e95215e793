"""Benchmark of sharded extract-regions: the built-in driver (--shards N, local and ray)
against one plain run over the same photos, the time to finalize, and a paper estimate for
100M photos on K machines from the measured per-shard figures.

    python bench/bench_shards.py [--images DIR] [--n 1000] [--shards 4] \
        [--modes plain local local-fresh ray ray-cluster]

Every mode reads the same @list.txt of the first N photos of DIR (default: the shared
Flickr8k images) and writes into a temporary directory; each mode is one fresh smcli
process, timed wall clock. ray runs inside `unshare -n` with only loopback up when that
works here (as the tests do), else as is; ray-cluster times only the smcli command, on a Ray
head started before it (as on a cluster that is already up). local-fresh is local without
the fork server (a fresh python per shard). The outputs are checked to be the same rows.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine_info import cpu_model, load_average  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
DEFAULT_IMAGES = REPO.parent / "shared" / "data" / "flickr8k" / "images"


def run(argv: list[str], isolated: bool = False, cluster: bool = False, env: dict | None = None) -> tuple[float, str]:
    """Wall time and stderr of ``smcli ARGV``; ``isolated``: inside ``unshare -n``; ``cluster``:
    with a Ray head started (``ray start --head``) before the timed command and stopped after."""
    import os
    import shlex

    cmd = [sys.executable, "-m", "smcli", *argv]
    if cluster:
        ray = str(Path(sys.executable).with_name("ray"))
        script = (f"{shlex.quote(ray)} start --head --num-cpus {os.cpu_count()} --include-dashboard false "
                  f"--disable-usage-stats >/dev/null 2>&1 || exit 99; s=$(date +%s.%N); "
                  f"{' '.join(map(shlex.quote, cmd))}; rc=$?; e=$(date +%s.%N); "
                  f"{shlex.quote(ray)} stop --force >/dev/null 2>&1; echo \"WALL $s $e\" >&2; exit $rc")
        cmd = ["sh", "-c", script]
    if isolated:
        inner = cmd[2] if cluster else "exec " + " ".join(map(shlex.quote, cmd))
        cmd = ["unshare", "-n", "sh", "-c", "ip link set lo up && " + inner]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=REPO, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                          stderr=subprocess.PIPE, text=True,
                          env={**os.environ, "RAY_USAGE_STATS_ENABLED": "0", **(env or {})})
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        sys.exit(f"failed ({proc.returncode}): {' '.join(argv)}\n{proc.stderr[-3000:]}")
    if cluster:
        start, end = proc.stderr.strip().splitlines()[-1].split()[1:]
        wall = float(end) - float(start)
    return wall, proc.stderr


def namespace_ok() -> bool:
    try:
        return subprocess.run(["unshare", "-n", "ip", "link", "set", "lo", "up"], capture_output=True,
                              timeout=20).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def same_rows(a, b) -> bool:
    import numpy as np

    from smcli.images.features import load_regions

    fa, fb = load_regions(a), load_regions(b)
    oa, ob = np.argsort(fa.image_ids), np.argsort(fb.image_ids)
    return (list(np.array(fa.image_ids)[oa]) == list(np.array(fb.image_ids)[ob])
            and np.array_equal(fa.regions[oa], fb.regions[ob]) and np.array_equal(fa.global_[oa], fb.global_[ob]))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--images", default=str(DEFAULT_IMAGES))
    ap.add_argument("--n", type=int, default=1000)
    ap.add_argument("--shards", type=int, default=4)
    ap.add_argument("--modes", nargs="+", default=["plain", "local", "ray", "ray-cluster"],
                    choices=["plain", "local", "local-fresh", "ray", "ray-cluster"],
                    help="local-fresh: local with a fresh python per shard (SMCLI_FORK_SERVER=0); ray-cluster: "
                         "ray on a cluster started before the timed command (--ray-address auto)")
    ap.add_argument("--extra", nargs="*", default=[], help="more extract-regions options for every mode")
    ap.add_argument("--tmp", default=None)
    args = ap.parse_args()
    photos = sorted(Path(args.images).glob("*.jpg"))[: args.n]
    if len(photos) < args.n:
        sys.exit(f"only {len(photos)} photos in {args.images}")
    print(f"# sharded extract-regions: {len(photos)} photos from {args.images}, {args.shards} shards; "
          f"{cpu_model()}, {__import__('os').cpu_count()} CPUs; load average before: {load_average()}")
    results = {}
    with tempfile.TemporaryDirectory(dir=args.tmp) as tmp:
        listing = Path(tmp) / "list.txt"
        listing.write_text("".join(f"{p}\n" for p in photos))
        outputs = {}
        for mode in args.modes:
            out = Path(tmp) / (f"{mode}.parquet" if mode == "plain" else f"{mode}/")
            argv = ["extract-regions", f"@{listing}", "-o", str(out), *args.extra]
            if mode != "plain":
                argv += ["--shards", str(args.shards), "--distributor", mode.split("-")[0]]
            if mode == "ray-cluster":
                argv += ["--ray-address", "auto"]
            wall, err = run(argv, isolated=mode.startswith("ray") and namespace_ok(), cluster=mode == "ray-cluster",
                            env={"SMCLI_FORK_SERVER": "0"} if mode == "local-fresh" else None)
            outputs[mode] = out
            results[mode] = {"wall_s": round(wall, 2), "images_per_s": round(len(photos) / wall, 1)}
            print(f"{mode:6s} {wall:7.1f} s  {len(photos) / wall:6.1f} images/s   load {load_average()}")
        base = results.get("plain", {}).get("wall_s")
        for mode in args.modes:
            if mode != "plain" and base:
                results[mode]["throughput_vs_plain"] = round(base / results[mode]["wall_s"], 3)
                print(f"{mode}: {base / results[mode]['wall_s']:.2f}x the plain run's throughput; same rows as "
                      f"plain: {same_rows(outputs['plain'], outputs[mode])}")
        sharded = next((outputs[m] for m in args.modes if m != "plain"), None)
        if sharded is not None:
            from smcli.distributed.manifest import finalize

            t0 = time.perf_counter()
            manifest = finalize(sharded)
            results["finalize_s"] = round(time.perf_counter() - t0, 3)
            print(f"finalize {sharded} again (in process): {results['finalize_s']:.3f} s")
            # one shard alone: its wall time (process start included) and its part's bytes
            one = Path(tmp) / "one/"
            wall, _ = run(["extract-regions", f"@{listing}", "-o", str(one), "--shard", f"0/{args.shards}",
                           *args.extra])
            part = manifest.data["parts"][0]
            per_image_bytes = sum(p["bytes"] for p in manifest.data["parts"]) / manifest.data["rows"]
            results["one_shard"] = {"images": part["rows"], "wall_s": round(wall, 2),
                                    "bytes_per_image": round(per_image_bytes)}
            print(f"one shard alone: {part['rows']} images in {wall:.1f} s; {per_image_bytes:,.0f} bytes an image "
                  "on disk")
            estimate(results, len(photos), args.shards)
    print(json.dumps(results))


def estimate(results: dict, n: int, shards: int) -> None:
    """100M photos on K machines like this one, from the per-shard figures: a shard of S
    photos costs a fixed start (the one-shard wall time less its photos at the plain run's
    rate) plus S / rate."""
    plain = results["plain"]
    rate = n / plain["wall_s"]  # images/s of one machine, start-up included (a lower bound)
    one = results["one_shard"]
    start = max(0.0, one["wall_s"] - one["images"] / rate)
    total, size = 100_000_000, 100_000  # shards of 100k photos: 1,000 shards
    print(f"# paper estimate, 100M photos in shards of {size:,}: fixed cost {start:.1f} s a shard, "
          f"{rate:.0f} images/s a machine (2 cores), {one['bytes_per_image']:,} bytes an image")
    for k in (1, 10, 100, 1000):
        wall = (total / size) / k * (start + size / rate)
        print(f"K={k:5d}: {wall / 3600:8.1f} h wall, {total * one['bytes_per_image'] / 1e12:.1f} TB of parts")
    results["estimate"] = {"shard_start_s": round(start, 1), "images_per_s": round(rate, 1),
                           "bytes_per_image": one["bytes_per_image"]}


if __name__ == "__main__":
    main()
