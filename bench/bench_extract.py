"""Benchmark of extract-regions: end-to-end images/s against the backbone's forward-only
images/s, and streaming memory.

    python bench/bench_extract.py                 # both, with the defaults below
    python bench/bench_extract.py throughput [--images DIR] [--n 1000] [--sizes 224 448]
    python bench/bench_extract.py memory [--images DIR] [--sizes 224] [--out FILE]

throughput: for each image size, the same N images are run alternately (--rounds times)
  (a) forward only: images decoded beforehand into memory, only the network runs, batch
      by batch (uint8 -> normalise -> network -> float16 on the host), two ways:
      (a1) one process with a torch thread per core, and
      (a2) one single-threaded process per worker, each on its share of the batches (how
           extract-regions runs the network on the CPU);
  (b) end to end: the real pipeline (listing, decoding and network in worker processes,
      Parquet + resume journal writing) into a temporary file, on the N images and on 2N
      (the N and the next N); "marginal" is N / (time for 2N - time for N): the rate once
      started, without the per-run costs that forward-only leaves out too (its warm-up
      batch): forking the workers, their first passes, and the first touch of each
      worker's activation memory (on the Firecracker VMs here ~2 s of system time per
      worker, ~24 us per 4 KiB page, while the host backs the memory),
  so that other load on the machine hits all alike; the load average is printed with the
  figures. Reports the median of each, and end-to-end / the faster forward-only.
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
    from smcli.images.extract import default_workers
    from smcli.runtime import cpu_cores

    paths = sorted(Path(args.images).glob("*.jpg"))[: 2 * args.n]
    if len(paths) < 2 * args.n:
        sys.exit(f"only {len(paths)} images in {args.images}: --n at most half of them")
    workers = default_workers("cpu") if args.workers is None else args.workers
    threads = args.threads or cpu_cores()
    print(f"# extract-regions throughput: {len(paths)} images from {args.images}, backbone "
          f"{args.backbone}, batch {args.batch_size or 'auto'}, {workers} worker process(es); "
          f"forward-only (a1) with {threads} torch threads; {os.cpu_count()} CPUs; each "
          "measurement in a fresh process")
    print(f"# load average before: {load_avg()}")
    with tempfile.TemporaryDirectory(dir=args.tmp) as tmp:
        listing, listing2 = Path(tmp) / "images.txt", Path(tmp) / "images2.txt"
        listing.write_text("".join(f"{p}\n" for p in paths[: args.n]))
        listing2.write_text("".join(f"{p}\n" for p in paths))
        rows = [_one_size(args, size, listing, listing2, Path(tmp), workers, threads) for size in args.sizes]
    print()
    print(f"| image size | batch | forward-only, 1 process x {threads} threads "
          f"| forward-only, {workers} processes x 1 thread | end-to-end images/s | end-to-end / faster "
          "forward-only | end-to-end marginal images/s | marginal / faster forward-only |")
    print("|---|---|---|---|---|---|---|---|")
    for size, batch, f1, f2, e, m in rows:
        best = max(f1, f2)
        print(f"| {size} | {batch} | {f1:.1f} | {f2:.1f} | {e:.1f} | {e / best:.0%} | {m:.1f} | {m / best:.0%} |")
    print(f"\nload average after: {load_avg()}")


def _one_size(args, size: int, listing: Path, listing2: Path, tmp: Path, workers: int, threads: int):
    batch = args.batch_size or default_batch(size)
    common = ["--images", str(listing), "--size", str(size), "--batch", str(batch),
              "--backbone", args.backbone]

    def forward(procs: int) -> float:
        cmd = [sys.executable, __file__, "_forward", *common, "--procs", str(procs),
               "--threads", str(threads if procs == 1 else 1)]
        return float(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.split()[-1])

    def end_to_end(images: Path = listing) -> tuple[float, float]:
        out = tmp / f"feats-{size}.parquet"
        cmd = [sys.executable, "-m", "smcli", "extract-regions", f"@{images}", "-o", str(out),
               "--image-size", str(size), "--batch-size", str(batch), "--workers", str(workers),
               "--backbone", args.backbone]
        err = subprocess.run(cmd, check=True, capture_output=True, text=True).stderr
        out.unlink()
        # the CLI's own time and rate: from after the model is loaded to the closed output file
        m = re.search(r" in ([\d.]+) s \(([\d.]+) images/s\)", err)
        return float(m.group(1)), float(m.group(2))

    fwd, fwd_p, e2e, marginal = [], [], [], []
    for _ in range(args.rounds):
        fwd.append(forward(1))
        fwd_p.append(forward(workers))
        t1, rate = end_to_end()
        t2, _ = end_to_end(listing2)
        e2e.append(rate)
        marginal.append(round(args.n / max(t2 - t1, 1e-9), 1))
    f1, f2 = statistics.median(fwd), statistics.median(fwd_p)
    e, m = statistics.median(e2e), statistics.median(marginal)
    print(f"# size {size}, batch {batch}: forward-only {fwd} (1 process), {fwd_p} ({workers} "
          f"processes), end-to-end {e2e} images/s, marginal {marginal}; load average {load_avg()}", flush=True)
    return (size, batch, f1, f2, e, m)


def _forward(args) -> None:
    """Forward-only images/s of the network alone, on images decoded beforehand: one process
    with ``--threads`` threads, or ``--procs`` forked single-threaded processes, each timing
    every procs-th batch after a warm-up batch and a common start (the slowest one counts)."""
    import multiprocessing as mp

    import numpy as np
    import torch

    from smcli.images.backbones import load_backbone
    from smcli.images.decode import load_image
    from smcli.runtime import tune_malloc

    tune_malloc()  # as extract-regions does
    paths = Path(args.images).read_text().split()
    bb = load_backbone(args.backbone, args.size, "default", "cpu")
    decoded = torch.from_numpy(np.stack([load_image(p, args.size)[0] for p in paths]))
    starts = list(range(0, len(decoded), args.batch))

    def run(mine: list[int]) -> float:
        t0 = time.perf_counter()
        for i in mine:
            r, g = bb(decoded[i:i + args.batch])
            r.numpy().astype(np.float16)
            g.numpy().astype(np.float16)
        return time.perf_counter() - t0

    if args.procs == 1:
        torch.set_num_threads(args.threads)
        bb(decoded[:args.batch])  # warm-up
        print(f"{len(decoded) / run(starts):.1f}")
        return
    ctx = mp.get_context("fork")  # the parent never ran the network: no OpenMP pool to inherit
    barrier, results = ctx.Barrier(args.procs), ctx.Queue()

    def child(k: int) -> None:
        torch.set_num_threads(1)
        bb(decoded[:args.batch])  # warm-up
        barrier.wait()
        results.put(run(starts[k::args.procs]))

    procs = [ctx.Process(target=child, args=(k,)) for k in range(args.procs)]
    for p in procs:
        p.start()
    times = [results.get() for _ in procs]
    for p in procs:
        p.join()
    print(f"{len(decoded) / max(times):.1f}")


def default_batch(size: int) -> int:
    from smcli.images.extract import default_batch_size

    return default_batch_size(size)


def _tree_pss_kb(pid: int) -> int:
    """Memory of a process and its children (the workers), in kB: the sum of their PSS
    (proportional set size), so pages they share after fork (torch, the model) count once."""
    total = 0
    pids = [pid]
    try:
        out = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout
        pids += [int(x) for x in out.split()]
    except OSError:
        pass
    for p in pids:
        try:
            with open(f"/proc/{p}/smaps_rollup") as fh:
                m = re.search(r"^Pss:\s+(\d+)", fh.read(), re.M)
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
                samples.append((time.perf_counter() - t0, _tree_pss_kb(child)))
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
        print("memory of the process tree (main + workers, summed PSS: shared pages once) at "
              f"10% / 50% / 90% of the run: "
              f"{at[0.1] / 1024:.0f} / {at[0.5] / 1024:.0f} / {at[0.9] / 1024:.0f} MiB; "
              f"max {max(s[1] for s in samples) / 1024:.0f} MiB")
    print(f"output {size / 1e6:.1f} MB = {size / n / 1024:.1f} KiB per image ({out})")
    if not args.out:
        out.unlink()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("mode", nargs="?", default="all", choices=["all", "throughput", "memory", "_forward"],
                    help="all (default): throughput, then memory")
    ap.add_argument("--images", default=str(DEFAULT_IMAGES))
    ap.add_argument("--n", type=int, default=1000)
    ap.add_argument("--sizes", type=int, nargs="+", default=[224, 448])
    ap.add_argument("--backbone", default="efficientnet-lite0")
    ap.add_argument("--batch-size", type=int, default=None, help="default: as the CLI (32 up to 448 px)")
    ap.add_argument("--workers", type=int, default=None)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--tmp", default=None, help="where temporary outputs go")
    ap.add_argument("--out", default=None, help="memory: keep the output here")
    ap.add_argument("--size", type=int, help=argparse.SUPPRESS)  # _forward
    ap.add_argument("--batch", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--procs", type=int, default=1, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.mode == "_forward":
        _forward(args)
        return
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
