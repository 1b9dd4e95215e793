"""Benchmark of extract-regions: end-to-end images/s against the backbone's forward-only
images/s, and streaming memory.

    python bench/bench_extract.py                 # both, with the defaults below
    python bench/bench_extract.py throughput [--images DIR] [--n 1000] [--sizes 224 448]
    python bench/bench_extract.py memory [--images DIR] [--sizes 224] [--out FILE]

throughput: for each image size, the same N images are run alternately (--rounds times)
  (a) forward only: images decoded beforehand into memory, only the network runs, batch
      by batch (uint8 -> normalise -> network -> float16 on the host), and
  (b) end to end: the real pipeline (listing, decoding in worker processes, network,
      Parquet + resume journal writing) into a temporary file,
  so that other load on the machine hits both alike; the load average is printed with the
  figures. Reports the median of each, and end-to-end / forward-only.
memory: runs the CLI on all images of DIR under /usr/bin/time -v, samples the RSS of the
  process tree every 0.5 s, and reports wall time, peak RSS, RSS at 10% / 50% / 90% of
  the run (flat means streaming), and bytes per image on disk.

Default images: ../shared/data/flickr8k/images beside the repository.
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
DEFAULT_IMAGES = REPO.parent / "shared" / "data" / "flickr8k" / "images"


def load_avg() -> str:
    return "/".join(f"{x:.2f}" for x in os.getloadavg())


def throughput(args) -> None:
    import torch

    from smcli.images.extract import default_workers
    from smcli.images.sources import ImageItem

    paths = sorted(Path(args.images).glob("*.jpg"))[: args.n]
    if len(paths) < args.n:
        sys.exit(f"only {len(paths)} images in {args.images}")
    items = [ImageItem(str(p), p.name) for p in paths]
    workers = default_workers() if args.workers is None else args.workers
    torch.set_num_threads(args.threads or len(os.sched_getaffinity(0)))
    print(f"# extract-regions throughput: {len(paths)} images from {args.images}, backbone "
          f"{args.backbone}, batch {args.batch_size or 'auto'}, {workers} decoding worker(s), "
          f"{torch.get_num_threads()} torch threads, {os.cpu_count()} CPUs")
    print(f"# load average before: {load_avg()}")
    rows = []
    for size in args.sizes:
        rows.append(_one_size(args, size, paths, items, workers))
    print()
    print("| image size | batch | grid | forward-only images/s | end-to-end images/s "
          "| end-to-end / forward |")
    print("|---|---|---|---|---|---|")
    for size, batch, grid, f, e, ratio in rows:
        print(f"| {size} | {batch} | {grid} | {f:.1f} | {e:.1f} | {ratio:.0%} |")
    print(f"\nload average after: {load_avg()}")


def _one_size(args, size: int, paths, items, workers: int):
    import numpy as np
    import torch

    from smcli.images.backbones import load_backbone
    from smcli.images.decode import load_image
    from smcli.images.extract import ExtractOptions, run_extract
    from smcli.report import RunReport
    from smcli.stage import OutputTarget

    batch = args.batch_size or default_batch(size)
    bb = load_backbone(args.backbone, size, "default", "cpu")
    decoded = torch.from_numpy(np.stack([load_image(str(p), size)[0] for p in paths]))
    bb(decoded[:batch])  # warm-up

    def forward_only() -> float:
        t0 = time.perf_counter()
        for i in range(0, len(decoded), batch):
            r, g = bb(decoded[i:i + batch])
            r.numpy().astype(np.float16)
            g.numpy().astype(np.float16)
        return len(decoded) / (time.perf_counter() - t0)

    def end_to_end() -> float:
        with tempfile.TemporaryDirectory(dir=args.tmp) as tmp:
            out = Path(tmp) / "feats.parquet"
            opts = ExtractOptions(backbone=args.backbone, image_size=size, batch_size=batch,
                                  workers=workers, threads=args.threads, progress=False)
            t0 = time.perf_counter()
            counts = run_extract(items, OutputTarget(out), opts, RunReport("bench"), backbone=bb)
            dt = time.perf_counter() - t0
            assert counts["written"] == len(items)
            return len(items) / dt

    fwd, e2e = [], []
    for _ in range(args.rounds):
        fwd.append(forward_only())
        e2e.append(end_to_end())
    f, e = statistics.median(fwd), statistics.median(e2e)
    print(f"# size {size}, batch {batch}: forward-only {[round(x, 1) for x in fwd]}, end-to-end "
          f"{[round(x, 1) for x in e2e]} images/s; load average {load_avg()}", flush=True)
    return (size, batch, f"{bb.grid[0]}x{bb.grid[1]}", f, e, e / f)


def default_batch(size: int) -> int:
    from smcli.images.extract import default_batch_size

    return default_batch_size(size)


def _tree_rss_kb(pid: int) -> int:
    """RSS of a process and its children (decoding workers), in kB."""
    total = 0
    pids = [pid]
    try:
        out = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout
        pids += [int(x) for x in out.split()]
    except OSError:
        pass
    for p in pids:
        try:
            with open(f"/proc/{p}/status") as fh:
                m = re.search(r"VmRSS:\s+(\d+)", fh.read())
                total += int(m.group(1)) if m else 0
        except OSError:
            pass
    return total


def memory(args) -> None:
    images = Path(args.images)
    n = sum(1 for _ in images.rglob("*.jpg"))
    out = Path(args.out) if args.out else Path(tempfile.mkdtemp(dir=args.tmp)) / "feats.parquet"
    cmd = ["/usr/bin/time", "-v", sys.executable, "-m", "smcli", "extract-regions", str(images),
           "-o", str(out), "--image-size", str(args.sizes[0])]
    if args.batch_size:
        cmd += ["--batch-size", str(args.batch_size)]
    if args.workers is not None:
        cmd += ["--workers", str(args.workers)]
    print(f"# {' '.join(cmd[2:])}  ({n} images)")
    print(f"# load average before: {load_avg()}")
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True)
    samples: list[tuple[float, int]] = []

    def sample() -> None:
        child = None
        while proc.poll() is None:
            if child is None:
                kids = subprocess.run(["pgrep", "-P", str(proc.pid)], capture_output=True,
                                      text=True).stdout.split()
                child = int(kids[0]) if kids else None
            if child is not None:
                samples.append((time.perf_counter() - t0, _tree_rss_kb(child)))
            time.sleep(0.5)

    th = threading.Thread(target=sample, daemon=True)
    th.start()
    _, err = proc.communicate()
    wall = time.perf_counter() - t0
    th.join()
    if proc.returncode != 0:
        sys.exit(err)
    peak = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", err).group(1))
    size = out.stat().st_size
    print("\n".join(line for line in err.splitlines() if line.startswith("smcli")))
    print(f"\nwall {wall:.0f} s ({n / wall:.1f} images/s), peak RSS (largest process, time -v) "
          f"{peak / 1024:.0f} MiB, load average after {load_avg()}")
    if samples:
        total = samples[-1][0]
        at = {}
        for frac in (0.1, 0.5, 0.9):
            near = min(samples, key=lambda s: abs(s[0] - frac * total))
            at[frac] = near[1]
        print(f"RSS of the process tree (main + workers) at 10% / 50% / 90% of the run: "
              f"{at[0.1] / 1024:.0f} / {at[0.5] / 1024:.0f} / {at[0.9] / 1024:.0f} MiB; "
              f"max {max(s[1] for s in samples) / 1024:.0f} MiB")
    print(f"output {size / 1e6:.1f} MB = {size / n / 1024:.1f} KiB per image ({out})")
    if not args.out:
        out.unlink()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("mode", nargs="?", default="all", choices=["all", "throughput", "memory"],
                    help="all (default): throughput, then memory")
    ap.add_argument("--images", default=str(DEFAULT_IMAGES))
    ap.add_argument("--n", type=int, default=1000)
    ap.add_argument("--sizes", type=int, nargs="+", default=[224, 448])
    ap.add_argument("--backbone", default="efficientnet-lite0")
    ap.add_argument("--batch-size", type=int, default=None, help="default: as the CLI (32 at 224, 8 at 448)")
    ap.add_argument("--workers", type=int, default=None)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--tmp", default=None, help="where temporary outputs go")
    ap.add_argument("--out", default=None, help="memory: keep the output here")
    args = ap.parse_args()
    if not Path(args.images).is_dir():
        print(f"skipped: no images at {args.images} (the shared Flickr8k copy; give --images DIR)")
        return
    if args.mode in ("all", "throughput"):
        throughput(args)
    if args.mode in ("all", "memory"):
        print()
        memory(args)


if __name__ == "__main__":
    main()
