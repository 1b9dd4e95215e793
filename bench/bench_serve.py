"""Load test of smcli serve on loopback: per-request latency (p50 / p95) and requests per
second for text -> image search, against the per-query latency of the code
``smcli retrieve --index`` runs, on the same gallery and queries.

    python bench/bench_serve.py                       # synthetic 10k gallery, pretrained flickr8k
    python bench/bench_serve.py --images 1000 --requests 100 --concurrency 1 4
    python bench/bench_serve.py --index demo-out/gallery --model demo-out/model

Steps (bounded: a fixed number of requests, every socket with a timeout, the server
stopped at the end whatever happens):
  gallery  --index DIR, or a synthetic gallery of --images images written as
           bench/bench_gallery.py writes its own (clustered one-to-one embeddings, per-image
           sm-LSTM tensors computed by the model from random region maps), deleted after.
  direct   in this process: the gallery opened once (smcli.inference.tasks.open_index),
           then --queries Flickr-like queries one at a time through
           smcli.inference.tasks.query_index, the code of smcli retrieve --index (which, as a
           command, also loads the model and MiniLM for each run: seconds, not counted here).
  server   `python -m smcli serve --index DIR --port 0 --quiet` in its own process; after 5
           warm-up requests, for each --concurrency C: --requests GET /api/search requests
           (q cycling over the same queries, k and shortlist as above) spread over C client
           threads, one keep-alive connection each. Every answer is checked: status 200 and
           the same ranking as the direct call for that query. Also GET /api/info (no model
           work): the HTTP layer alone.
Not a test: the figures depend on the machine and its load, which are printed with them.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import platform
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from urllib.parse import urlencode

import numpy as np
from bench_gallery import child_build, git_commit, mem_total_gb, queries, set_threads, uptime
from machine_info import cpu_model, load_average

REPO = Path(__file__).resolve().parent.parent
TIMEOUT_S = 120  # any one request
START_TIMEOUT_S = 600  # the server loading the model and the gallery


def pct(values: list[float], q: float) -> float:
    return 1000 * float(np.percentile(values, q))


def start_server(index: Path, model: str, threads: int | None) -> tuple[subprocess.Popen, str, int]:
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    if threads:
        env["OMP_NUM_THREADS"] = str(threads)
    cmd = [sys.executable, "-m", "smcli", "serve", "--index", str(index), "--model", model, "--port", "0", "--quiet"]
    proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            text=True, env=env)
    found: list[str] = []

    def read() -> None:  # the first line naming the URL; the rest is drained
        for line in proc.stderr:
            if not found and (m := re.search(r"open http://([\d.]+):(\d+)/", line)):
                found.append(f"{m[1]}:{m[2]}")
            elif "error" in line:
                print(f"# server: {line.rstrip()}", file=sys.stderr)

    threading.Thread(target=read, daemon=True).start()
    deadline = time.monotonic() + START_TIMEOUT_S
    while not found:
        if proc.poll() is not None or time.monotonic() > deadline:
            stop(proc)
            raise SystemExit("smcli serve did not start")
        time.sleep(0.1)
    host, port = found[0].split(":")
    return proc, host, int(port)


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=60)


def search_path(q: str, k: int, shortlist: int) -> str:
    return "/api/search?" + urlencode({"q": q, "k": k, "shortlist": shortlist})


def load(host: str, port: int, paths: list[str], expect: list[list[str]] | None, total: int,
         concurrency: int) -> dict:
    """``total`` requests over ``concurrency`` keep-alive connections; latencies and req/s."""
    latencies: list[float] = []
    failures: list[str] = []
    lock = threading.Lock()
    counter = iter(range(total))

    def worker() -> None:
        conn = http.client.HTTPConnection(host, port, timeout=TIMEOUT_S)
        try:
            while True:
                with lock:
                    i = next(counter, None)
                if i is None:
                    return
                path = paths[i % len(paths)]
                t = time.perf_counter()
                conn.request("GET", path)
                resp = conn.getresponse()
                body = resp.read()
                took = time.perf_counter() - t
                ok = resp.status == 200
                if ok and expect is not None:
                    ok = [r["id"] for r in json.loads(body)["results"]] == expect[i % len(paths)]
                with lock:
                    latencies.append(took)
                    if not ok:
                        failures.append(f"{path}: {resp.status} {body[:120]!r}")
        except (OSError, http.client.HTTPException) as exc:
            with lock:
                failures.append(f"{type(exc).__name__}: {exc}")
        finally:
            conn.close()

    start = time.perf_counter()
    workers = [threading.Thread(target=worker) for _ in range(concurrency)]
    for w in workers:
        w.start()
    for w in workers:
        w.join(timeout=TIMEOUT_S * total)
    wall = time.perf_counter() - start
    return {"concurrency": concurrency, "requests": len(latencies), "failures": failures, "wall_s": wall,
            "p50_ms": pct(latencies, 50), "p95_ms": pct(latencies, 95), "rps": len(latencies) / wall}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--index", help="a saved gallery (smcli index) instead of a synthetic one")
    ap.add_argument("--images", type=int, default=10_000, help="synthetic gallery size (without --index)")
    ap.add_argument("--model", default="flickr8k", help="model name or directory (the gallery's)")
    ap.add_argument("--queries", type=int, default=40, help="distinct queries (direct: each once)")
    ap.add_argument("--requests", type=int, default=200, help="search requests per concurrency level")
    ap.add_argument("--concurrency", type=int, nargs="+", default=[1, 4], help="client connections")
    ap.add_argument("--k", type=int, default=10)
    ap.add_argument("--shortlist", type=int, default=100)
    ap.add_argument("--threads", type=int, help="torch and faiss threads in both processes")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)

    print(f"# {' '.join([Path(sys.executable).name, *sys.argv])}")
    print(f"# {time.strftime('%Y-%m-%d %H:%M %Z')}, {platform.platform()}, nproc {os.cpu_count()}, "
          f"CPU {cpu_model()}, RAM {mem_total_gb():.1f} GB")
    print(f"# {uptime()}; smcli at {git_commit()}; OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}")
    sys.stdout.flush()

    from smcli.inference import tasks
    from smcli.inference.matcher import MatchModel

    set_threads(args.threads)
    work = Path(tempfile.mkdtemp(prefix="smcli-bench-serve-"))
    proc = None
    try:
        if args.index:
            gallery = Path(args.index)
        else:
            gallery = work / "gallery"
            print(f"# building a synthetic gallery of {args.images:,} images ...", file=sys.stderr, flush=True)
            child_build(argparse.Namespace(model=args.model, n=args.images, gallery=str(gallery), chunk=4096,
                                           seed=args.seed, kind="auto", nprobe=32, codec="int8", threads=args.threads,
                                           precision="auto"))
        texts = queries(args.queries + 1, args.seed)
        session = MatchModel(args.model)
        saved = tasks.open_index(session, gallery)
        tasks.query_index(session, saved, [texts[0]], args.k, args.shortlist)  # loads MiniLM
        direct, expect = [], []
        for q in texts[1:]:
            t = time.perf_counter()
            table = tasks.query_index(session, saved, [q], args.k, args.shortlist)
            direct.append(time.perf_counter() - t)
            expect.append(table.column("id").to_pylist())
        cfg = session.loaded.config
        print(f"# gallery: {len(saved):,} images ({saved.meta['index']['kind']} index), model {session.name} "
              f"({cfg.variant}, {cfg.text_encoder}), precision {session.precision}; k {args.k}, "
              f"shortlist {args.shortlist}; {len(direct)} distinct queries")
        del session, saved

        proc, host, port = start_server(gallery, args.model, args.threads)
        paths = [search_path(q, args.k, args.shortlist) for q in texts[1:]]
        load(host, port, paths, expect, 5, 1)  # warm-up
        info = load(host, port, ["/api/info"], None, args.requests, 1)
        runs = [load(host, port, paths, expect, args.requests, c) for c in args.concurrency]
        print(f"# load average at the end: {load_average()}")
        print()
        print("| what | clients | requests | p50 ms | p95 ms | req/s |")
        print("|---|---:|---:|---:|---:|---:|")
        print(f"| query_index in process (retrieve --index's code), one at a time | 1 | {len(direct)} | "
              f"{pct(direct, 50):.1f} | {pct(direct, 95):.1f} | {len(direct) / sum(direct):.1f} |")
        for r in runs:
            print(f"| GET /api/search over HTTP | {r['concurrency']} | {r['requests']} | {r['p50_ms']:.1f} | "
                  f"{r['p95_ms']:.1f} | {r['rps']:.1f} |")
        print(f"| GET /api/info (no model work) | 1 | {info['requests']} | {info['p50_ms']:.2f} | "
              f"{info['p95_ms']:.2f} | {info['rps']:.0f} |")
        failed = [f for r in [*runs, info] for f in r["failures"]]
        print()
        print(f"- HTTP overhead at one client: p50 {runs[0]['p50_ms'] - pct(direct, 50):+.1f} ms against the "
              f"direct call; answers checked: {sum(r['requests'] for r in runs):,} searches, "
              f"{len(failed)} wrong or failed")
        for f in failed[:5]:
            print(f"  - {f}")
        return 1 if failed else 0
    finally:
        if proc is not None:
            stop(proc)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
