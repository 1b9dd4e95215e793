"""Benchmark of search over a saved gallery (smcli index / smcli retrieve --index) as it grows:
build time, disk, memory and per-query latency for synthetic galleries of N images.

    python bench/bench_gallery.py          # N = 10k, 100k, 1M (a size without disk room is skipped)
    python bench/bench_gallery.py --sizes 10000 --queries 20
    python bench/bench_gallery.py --model runs/m1 --tmp /big/disk --keep

For each N, in two fresh processes (so that each peak RSS is that step's own):
  build  a gallery directory written with smcli.inference.gallery.save_gallery, without any
         regions file: seeded synthetic one-to-one embeddings (unit vectors around 1,024
         random centres in 32 groups: real image embeddings cluster; isotropic random
         vectors do not, and give IVF an unrealistically low recall) and per-image
         sm-LSTM tensors (keys, values, ctx_a, ctx_s) computed by the model from 1,024
         random region feature maps and repeated, streamed chunk by chunk (memory stays
         bounded); faiss index kind "auto" (exact up to 200k images, IVF-SQ8 above)
         unless --kind. Then every file is fsynced (counted in the build time).
  query  opens the gallery once (smcli.inference.tasks.open_index), then runs --queries
         Flickr-like text queries one at a time through smcli.inference.tasks.query_index,
         the code smcli retrieve --index runs: (a) MiniLM text encoding, (b) faiss
         shortlist of --shortlist, (c) reading the shortlisted images' tensors (one
         pread per image and tensor file: smcli.inference.gallery.read_rows), (d) sm-LSTM
         re-rank of the shortlist. One warm-up query first (it loads MiniLM).
         Two passes: "as built" (the page cache holds whatever the build left there; a
         gallery larger than RAM is then partly on disk) and "cold" (before each query
         the gallery's tensor files are dropped from the page cache with
         posix_fadvise(DONTNEED) on those files only: no root, nothing else is touched),
         so every tensor read goes to the disk. Then the shortlist's recall@shortlist
         against exact search, for the text queries and for in-distribution probes.

Latency needs no trained weights: without --model a model of the benchmark configuration
with random weights is used (and the output says so). Not a test: the figures depend on
the machine and its load, which are printed with them. Set OMP_NUM_THREADS or --threads
to bound the threads (both torch and faiss).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from machine_info import cpu_model

REPO = Path(__file__).resolve().parent.parent
GB = 1e9
MARGIN = 5 * GB  # disk left free beyond what a size needs
DEFAULT_SIZES = (10_000, 100_000, 1_000_000)
POOL = 1024  # distinct per-image tensor sets computed by the model
CENTRES = 1024  # clusters of the synthetic embeddings
SUPER = 32  # groups of clusters
STEPS = ("encode", "shortlist", "read", "rerank")

REGIONS = 49  # a 7x7 grid
BENCH_CONFIG = dict(variant="smlstm", text_encoder="minilm", inst_dim=256, sim_dim=256, att_dim=128,
                    hidden_dim=256, emb_dim=1024, local_skip=True, fuse_global=True, img_dim=1280)

SUBJECTS = ["a black dog", "a brown dog", "two dogs", "a little girl", "a young boy", "two children",
            "a man in a red shirt", "a woman in a blue dress", "a group of people", "a skier",
            "a surfer", "a cyclist", "an old man", "a football player", "three men", "a white puppy"]
ACTIONS = ["running through", "playing in", "jumping over", "sitting on", "walking along", "climbing",
           "riding a bike on", "standing in", "lying on", "looking at", "swimming in",
           "carrying a ball across"]
PLACES = ["the grass", "the snow", "a sandy beach", "a busy street", "the water", "a large rock",
          "a wooden bench", "a field of flowers", "a muddy trail", "the ocean waves", "a city sidewalk",
          "a playground"]
TAILS = ["", "", " at sunset", " near a fence", " in the park", " while people watch",
         " with a stick in its mouth", " under a blue sky"]


def queries(n: int, seed: int) -> list[str]:
    """n different Flickr-like captions (4 to 16 words)."""
    rng = np.random.default_rng(seed)
    out: list[str] = []
    seen = set()
    while len(out) < n:
        q = (f"{SUBJECTS[rng.integers(len(SUBJECTS))]} {ACTIONS[rng.integers(len(ACTIONS))]} "
             f"{PLACES[rng.integers(len(PLACES))]}{TAILS[rng.integers(len(TAILS))]}")
        if q not in seen:
            seen.add(q)
            out.append(q)
    return out


# -- machine and process -------------------------------------------------------------------

def status_kb(*keys: str) -> dict[str, int]:
    """Fields of /proc/self/status in kB (VmRSS, RssAnon, RssFile, VmHWM)."""
    out = {}
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            k, _, v = line.partition(":")
            if k in keys:
                out[k] = int(v.split()[0])
    except OSError:
        pass
    return out


def peak_rss_mb() -> float:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # kB on Linux


def rss_mb() -> dict[str, float]:
    return {k: v / 1024 for k, v in status_kb("VmRSS", "RssAnon", "RssFile").items()}


def mem_total_gb() -> float:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) * 1024 / GB
    except OSError:
        pass
    return float("nan")


def git_commit() -> str:
    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True).stdout.strip()

    head = git("rev-parse", "--short", "HEAD") or "?"
    dirty = git("status", "--porcelain", "--untracked-files=no", "--", "smcli", "bench/bench_gallery.py")
    return head + (" + uncommitted changes under smcli/ or in this script" if dirty else "")


def uptime() -> str:
    try:
        return subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
    except OSError:
        return "load average " + " ".join(f"{x:.2f}" for x in os.getloadavg())


def disk_bytes(path: Path) -> int:
    """Bytes the files under ``path`` take on disk."""
    return sum(p.stat().st_blocks * 512 for p in path.rglob("*") if p.is_file())


def cached_fraction(files: list[Path]) -> float | None:
    """Share of the files' bytes in the page cache (util-linux fincore), or None."""
    if not files or not shutil.which("fincore"):
        return None
    try:
        r = subprocess.run(["fincore", "--bytes", "--noheadings", "--raw", "-o", "RES,SIZE",
                            *map(str, files)], capture_output=True, text=True, timeout=60)
        res = size = 0
        for line in r.stdout.splitlines():
            a, b = line.split()
            res, size = res + int(a), size + int(b)
        return res / size if size else None
    except (OSError, ValueError, subprocess.SubprocessError):
        return None


def set_threads(threads: int | None) -> None:
    if threads:
        import faiss
        import torch

        torch.set_num_threads(threads)
        faiss.omp_set_num_threads(threads)


def threads_used() -> str:
    import faiss
    import torch

    return f"torch {torch.get_num_threads()}, faiss {faiss.omp_get_max_threads()}"


# -- the model -----------------------------------------------------------------------------

def random_model(directory: Path, seed: int) -> Path:
    """A model directory of the benchmark configuration with random weights (latency does
    not depend on the weights). Its vocabulary holds the query words, so the queries pass
    the unknown-words check."""
    import torch

    from smcli.models.config import ModelConfig
    from smcli.models.factory import ModelInfo, create_model, save_model
    from smcli.text.normalize import tokenize
    from smcli.text.vocab import Vocab

    torch.manual_seed(seed)
    cfg = ModelConfig(**BENCH_CONFIG)
    vocab = Vocab.build(tokenize(" ".join(part)) for part in (SUBJECTS, ACTIONS, PLACES, TAILS))
    cfg.vocab_size = len(vocab)
    model = create_model(cfg).eval()
    save_model(directory, model, ModelInfo(cfg, {"synthetic": True}, vocab.hash,
                                           {"note": "random weights (bench_gallery.py)"}), vocab)
    return directory


def side_bytes_per_image(cfg) -> int:
    """Bytes of the float16 per-image tensors of an sm-LSTM of ``cfg``."""
    r, da, ds = REGIONS, cfg.att_dim, cfg.sim_dim
    if not cfg.many_to_many:
        return 0
    if cfg.variant == "mean":
        return 2 * r * ds
    if cfg.variant == "no-context":
        return 2 * r * (da + ds)
    return 2 * (r * (da + ds) + 2 * da)


def disk_needed(n: int, cfg, kind: str) -> float:
    """Bytes a gallery of n images needs while it is built (the float32 embeddings are
    written, then an exact index is written beside them before they are deleted)."""
    from smcli.inference.gallery import index_spec

    spec = index_spec(n, kind)
    emb = 4 * cfg.emb_dim
    index = {"flat": emb, "hnsw": emb + 2 * 32 * 4 + 8, "ivf": cfg.emb_dim + 8}[spec.kind]
    return n * (side_bytes_per_image(cfg) + emb + index + 40)


# -- synthetic gallery ---------------------------------------------------------------------

def centres(d: int, seed: int) -> np.ndarray:
    """CENTRES cluster centres in SUPER groups: a centre is its group's direction plus its
    own (norm 0.8), so clusters have neighbours too, as in a real embedding space."""
    rng = np.random.default_rng([seed, 1])
    groups = unit(rng.standard_normal((SUPER, d), dtype=np.float32))
    own = 0.8 * unit(rng.standard_normal((CENTRES, d), dtype=np.float32))
    return groups[np.arange(CENTRES) % SUPER] + own


def unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def synthetic_embeddings(cent: np.ndarray, n: int, rng) -> np.ndarray:
    """Unit vectors: a random centre plus noise of norm 0.8 (cosine ~0.7 within a cluster,
    ~0.4 within a group of clusters, ~0 otherwise)."""
    d = cent.shape[1]
    noise = 0.8 * unit(rng.standard_normal((n, d), dtype=np.float32))
    return unit(cent[rng.integers(0, len(cent), n)] + noise)


def side_pool(session, seed: int) -> dict[str, np.ndarray]:
    """Per-image tensors of POOL random region feature maps, computed by the model."""
    import torch

    from smcli.runtime import autocast

    cfg = session.loaded.config
    rng = np.random.default_rng([seed, 2])
    parts: dict[str, list[np.ndarray]] = {}
    for _ in range(0, POOL, 256):
        # CNN region features are non-negative (after a ReLU); their mean is the global one
        regions = np.abs(rng.standard_normal((256, REGIONS, cfg.img_dim), dtype=np.float32))
        with torch.inference_mode(), autocast(session.device, session.precision):
            side = session.model.encode_images(torch.from_numpy(regions),
                                               torch.from_numpy(regions.mean(1)))
        for name in ("keys", "values", "ctx_a", "ctx_s"):
            t = getattr(side, name, None)
            if t is not None:
                parts.setdefault(name, []).append(t.float().numpy().astype(np.float16))
    return {k: np.concatenate(v) for k, v in parts.items()}


def child_build(args) -> dict:
    """Write the synthetic gallery of args.n images to args.gallery."""
    from smcli.inference.gallery import save_gallery
    from smcli.inference.matcher import MatchModel

    set_threads(args.threads)
    session = MatchModel(args.model, device="cpu", precision=args.precision)
    cfg = session.loaded.config
    n, chunk = args.n, args.chunk
    t0 = time.perf_counter()
    pool = side_pool(session, args.seed)
    pool_s = time.perf_counter() - t0
    cent = centres(cfg.emb_dim, args.seed)
    sides_done = [0.0]

    def chunks():
        for c, start in enumerate(range(0, n, chunk)):
            m = min(chunk, n - start)
            rng = np.random.default_rng([args.seed, 3, c])
            pick = rng.integers(0, POOL, m)
            yield {"emb": synthetic_embeddings(cent, m, rng), **{k: v[pick] for k, v in pool.items()}}
            if c % 25 == 0:
                say(f"  build {min(start + m, n):,}/{n:,} images, {time.perf_counter() - t0:.0f} s")
        sides_done[0] = time.perf_counter()

    ids = [f"syn{i:07d}" for i in range(n)]
    paths = [f"synthetic/{i:07d}.jpg" for i in range(n)]
    meta = {"model_hash": session.loaded.hash, "model": session.name,
            "features": session.features, "synthetic": True, "seed": args.seed}
    out = Path(args.gallery)
    t1 = time.perf_counter()
    save_gallery(out, meta=meta, image_ids=ids, paths=paths, embeddings=None, side_chunks=chunks(),
                 kind=args.kind, nprobe=args.nprobe, codec=args.codec)
    t2 = time.perf_counter()
    for f in out.iterdir():  # durable before the query process measures anything
        fd = os.open(f, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    t3 = time.perf_counter()
    gallery_meta = json.loads((out / "meta.json").read_text())
    files = {f.name: f.stat().st_blocks * 512 for f in out.iterdir()}
    return {"n": n, "index": gallery_meta["index"], "pool_s": pool_s,
            "sides_s": sides_done[0] - t1, "faiss_s": t2 - sides_done[0], "fsync_s": t3 - t2,
            "build_s": t3 - t0, "disk": sum(files.values()), "files": files,
            "peak_rss_mb": peak_rss_mb(), "threads": threads_used(),
            "precision": session.precision}


def drop_from_cache(files: list[Path]) -> None:
    """Evict these files' clean pages from the page cache (not mapped pages: reopen first)."""
    for f in files:
        fd = os.open(f, os.O_RDONLY)
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def exact_top(source, q: np.ndarray, k: int) -> np.ndarray:
    """Exact top-k rows by inner product, streaming ``source`` [N, d] in chunks."""
    from smcli.inference.gallery import read_range

    best_s = np.full((len(q), 0), -np.inf, np.float32)
    best_i = np.zeros((len(q), 0), np.int64)
    step = 65_536
    for s in range(0, len(source), step):
        sc = q @ np.asarray(read_range(source, s, s + step), np.float32).T
        allsc = np.concatenate([best_s, sc], 1)
        alli = np.concatenate([best_i, np.broadcast_to(np.arange(s, s + sc.shape[1]), sc.shape)], 1)
        keep = np.argpartition(-allsc, min(k, allsc.shape[1] - 1), 1)[:, :k]
        best_s, best_i = np.take_along_axis(allsc, keep, 1), np.take_along_axis(alli, keep, 1)
    return best_i


def child_query(args) -> dict:
    """Open the gallery once, time the queries, then check the shortlist's recall."""
    import torch

    from smcli.inference import tasks
    from smcli.inference.gallery import FAISS_FILE, search
    from smcli.inference.matcher import MatchModel
    from smcli.models import minilm

    set_threads(args.threads)
    gallery = Path(args.gallery)
    session = MatchModel(args.model, device="cpu", precision=args.precision)
    cfg = session.loaded.config
    rss_before = rss_mb()
    t0 = time.perf_counter()
    saved = tasks.open_index(session, gallery)
    open_s = time.perf_counter() - t0
    rss_open = rss_mb()
    side_files = [f for name in saved.meta.get("sides", [])
                  for f in (gallery / f"{name}.npy", gallery / f"{name}.scale.npy") if f.exists()]
    texts = queries(args.queries + 1, args.seed)
    warm, texts = texts[0], texts[1:]

    def reopen() -> None:  # unmap the tensor files (fadvise leaves mapped pages alone)
        saved.sides.clear()
        saved.scales.clear()
        for f in side_files:
            name = f.stem.removesuffix(".scale")
            (saved.scales if f.stem.endswith(".scale") else saved.sides)[name] = np.load(f, mmap_mode="r")

    def one(q: str) -> dict[str, float]:
        t = {s: 0.0 for s in STEPS}
        start = time.perf_counter()
        tasks.query_index(session, saved, [q], args.top_k, args.shortlist, t)
        t["total"] = time.perf_counter() - start
        return t

    t_first = one(warm)  # loads MiniLM the first time
    cached_before = cached_fraction(side_files)
    passes = {"as built": [one(q) for q in texts]}
    if not args.no_cold:
        cold = []
        for q in texts:
            reopen()
            drop_from_cache(side_files)
            cold.append(one(q))
        passes["cold"] = cold
    peak_query = peak_rss_mb()
    rss_after = rss_mb()
    load = []
    for _ in range(5):  # the share of "encode" that is MiniLM being loaded again, every call
        t = time.perf_counter()
        minilm._load_model("cpu")
        load.append(time.perf_counter() - t)

    # recall of the shortlist against exact search, for the text queries and for probes
    # drawn like the gallery's own embeddings
    recall = {}
    k = args.shortlist
    if saved.meta["index"]["kind"] != "flat":
        with torch.inference_mode():
            q_text = session.encode_texts([str(i) for i in range(len(texts))], texts, cache=False).side.emb
        probes = synthetic_embeddings(centres(cfg.emb_dim, args.seed), 50,
                                      np.random.default_rng([args.seed, 9]))
        source = saved.sides.get("emb")
        if source is None:  # hnsw without a float32 copy: the index holds exact vectors
            source = saved.index.reconstruct_n(0, saved.index.ntotal)
        for name, q in (("text queries", q_text.float().numpy()), ("probes", probes)):
            _, got = search(saved.index, q, k)
            want = exact_top(source, q, k)
            recall[name] = float(np.mean([len(set(a) & set(b)) / k for a, b in zip(got, want)]))
    summary = {p: {s: [x[s] for x in runs] for s in (*STEPS, "total")} for p, runs in passes.items()}
    return {"n": len(saved), "open_s": open_s, "rss_before_mb": rss_before, "rss_open_mb": rss_open,
            "rss_after_mb": rss_after, "peak_rss_mb": peak_query,
            "index_file": (gallery / FAISS_FILE).stat().st_size, "index_meta": saved.meta["index"],
            "first_query_s": t_first["total"], "cached_before": cached_before, "passes": summary,
            "minilm_load_s": statistics.median(load), "recall": recall, "threads": threads_used(),
            "precision": session.precision}


# -- driver --------------------------------------------------------------------------------

def say(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def run_child(args, step: str, n: int, gallery: Path, model: Path) -> dict:
    cmd = [sys.executable, __file__, "--child", step, "--n", str(n), "--gallery", str(gallery),
           "--model", str(model), "--kind", args.kind, "--nprobe", str(args.nprobe),
           "--codec", args.codec, "--queries", str(args.queries), "--shortlist", str(args.shortlist),
           "--top-k", str(args.top_k),
           "--seed", str(args.seed), "--chunk", str(args.chunk), "--precision", args.precision]
    if args.threads:
        cmd += ["--threads", str(args.threads)]
    if args.no_cold:
        cmd.append("--no-cold")
    r = subprocess.run(cmd, stdout=subprocess.PIPE, text=True)
    if r.returncode != 0:
        raise SystemExit(f"{step} of {n:,} images failed (exit {r.returncode})")
    return json.loads(r.stdout.strip().splitlines()[-1])


def ms(values: list[float], q: float) -> str:
    return f"{1000 * float(np.percentile(values, q)):.1f}"


def human(nbytes: float) -> str:
    return f"{nbytes / GB:.2f} GB" if nbytes >= 0.1 * GB else f"{nbytes / 1e6:.1f} MB"


def report(args, rows: list[tuple[dict, dict]], skipped: list[str], model_note: str) -> None:
    print()
    print(f"# gallery search benchmark: {model_note}")
    print(f"# shortlist {args.shortlist}, top-k {args.top_k}, {args.queries} queries one at a time "
          f"(after 1 warm-up), kind {args.kind}, nprobe {args.nprobe} (IVF)")
    for line in skipped:
        print(line)
    if not rows:
        return
    b0, q0 = rows[0]
    print(f"# threads: {q0['threads']}; precision {q0['precision']}")
    print()
    print("| images | index | build | of which faiss | disk | bytes/image | index file (~ its memory) | "
          "open | RSS after open (+ opening) | peak RSS query | peak RSS build |")
    print("|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for b, q in rows:
        spec = b["index"]
        params = ", ".join(f"{k} {v}" for k, v in spec.items() if k not in ("kind", "trained_on", "codes"))
        kind = spec["kind"] + ("-" + spec["codes"] if "codes" in spec else "")
        kind += f" ({params})" if params else ""
        print(f"| {b['n']:,} | {kind} | {b['build_s']:.1f} s | {b['faiss_s']:.1f} s | {human(b['disk'])} | "
              f"{b['disk'] / b['n']:,.0f} | {human(q['index_file'])} | {q['open_s']:.2f} s | "
              f"{q['rss_open_mb']['VmRSS']:,.0f} MB "
              f"(+{q['rss_open_mb']['VmRSS'] - q['rss_before_mb']['VmRSS']:,.0f}) | "
              f"{q['peak_rss_mb']:,.0f} MB | {b['peak_rss_mb']:,.0f} MB |")
    print()
    print("Per query, milliseconds, median / p90:")
    print()
    print("| images | page cache | encode (MiniLM) | shortlist (faiss) | read tensors | re-rank | total |")
    print("|---:|---|---:|---:|---:|---:|---:|")
    for b, q in rows:
        for name, steps in q["passes"].items():
            cache = name
            if name == "as built" and q["cached_before"] is not None:
                cache = f"as built ({100 * q['cached_before']:.0f}% of tensors cached)"
            elif name == "cold":
                cache = "cold (dropped before each query)"
            cells = " | ".join(f"{ms(steps[s], 50)} / {ms(steps[s], 90)}" for s in (*STEPS, "total"))
            print(f"| {b['n']:,} | {cache} | {cells} |")
    print()
    for b, q in rows:
        rec = ", ".join(f"{k} {v:.3f}" for k, v in q["recall"].items()) or "exact index (1.000)"
        rss = q["rss_after_mb"]
        print(f"- {b['n']:,}: shortlist recall@{args.shortlist} vs exact: {rec}; first query "
              f"{1000 * q['first_query_s']:.0f} ms (MiniLM loading); RSS after the queries "
              f"{rss.get('VmRSS', 0):,.0f} MB (anon {rss.get('RssAnon', 0):,.0f}, "
              f"file {rss.get('RssFile', 0):,.0f}); "
              f"build: tensor pool {b['pool_s']:.1f} s, tensors written {b['sides_s']:.1f} s, "
              f"faiss {b['faiss_s']:.1f} s, fsync {b['fsync_s']:.1f} s")
    print(f"- encode includes MiniLM being loaded again on every call (smcli.models.minilm.encode): "
          f"{1000 * rows[-1][1]['minilm_load_s']:.0f} ms median here")
    print("- peak RSS: ru_maxrss of the build or the query process alone (torch, the model and "
          "MiniLM are ~0.7 GB of it before any gallery); tensors are written and read with plain "
          "file I/O, so the page cache they fill is not in it. \"of which faiss\": from the last "
          "tensor written to the index, ids and meta.json written")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", type=int, nargs="+", default=list(DEFAULT_SIZES), help="gallery sizes N")
    ap.add_argument("--queries", type=int, default=50, help="timed queries per size")
    ap.add_argument("--shortlist", type=int, default=100, help="faiss shortlist re-ranked per query")
    ap.add_argument("--top-k", type=int, default=10)
    ap.add_argument("--model", help="model directory (default: the benchmark configuration, random weights)")
    ap.add_argument("--tmp", help="folder for the galleries (default: the system temporary folder)")
    ap.add_argument("--keep", action="store_true", help="keep each gallery (default: deleted after its size)")
    ap.add_argument("--kind", default="auto", help="faiss index kind: auto | flat | ivf | hnsw")
    ap.add_argument("--nprobe", type=int, default=32, help="IVF lists visited per query")
    ap.add_argument("--codec", default="int8", help="how the per-image tensors are stored: int8 | float16 | pca")
    ap.add_argument("--threads", type=int, help="torch and faiss threads (default: their own default)")
    ap.add_argument("--precision", default="auto",
                    help="as smcli retrieve --precision (auto: bf16 where the CPU does it natively)")
    ap.add_argument("--no-cold", action="store_true", help="skip the cold page-cache pass")
    ap.add_argument("--chunk", type=int, default=4096, help="images generated and written at a time")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--child", choices=("build", "query"), help=argparse.SUPPRESS)
    ap.add_argument("--n", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--gallery", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)

    if args.child:
        result = child_build(args) if args.child == "build" else child_query(args)
        print(json.dumps(result))
        return 0

    print(f"# {' '.join([Path(sys.executable).name, *sys.argv])}")
    print(f"# {time.strftime('%Y-%m-%d %H:%M %Z')}, {platform.platform()}, nproc {os.cpu_count()}, "
          f"CPU {cpu_model()}, RAM {mem_total_gb():.1f} GB")
    print(f"# {uptime()}")
    print(f"# smcli at {git_commit()}; OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}")
    sys.stdout.flush()

    from smcli.models.factory import load_model

    root = Path(args.tmp or tempfile.gettempdir())
    root.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="smcli-bench-gallery-", dir=root))
    rows, skipped = [], []
    try:
        if args.model:
            model = Path(args.model)
            note = f"model {model}"
        else:
            model = random_model(work / "model", args.seed)
            note = "benchmark configuration with RANDOM weights (latency does not depend on them)"
        cfg = load_model(model).config
        note += (f"; {cfg.variant}, {cfg.text_encoder}, inst {cfg.inst_dim}, sim {cfg.sim_dim}, "
                 f"att {cfg.att_dim}, hidden {cfg.hidden_dim}, emb {cfg.emb_dim}, T {cfg.steps}, "
                 f"{REGIONS} regions x {cfg.img_dim}; synthetic gallery (seed {args.seed})")
        for n in args.sizes:
            need = disk_needed(n, cfg, args.kind)
            free = shutil.disk_usage(work).free
            if free < need + MARGIN:
                line = (f"skipped {n:,} images: needs {need / GB:.1f} GB + {MARGIN / GB:.0f} GB spare on "
                        f"{work.parent}, {free / GB:.1f} GB free (use --tmp on a larger disk)")
                say(line)
                skipped.append(line)
                continue
            gallery = work / f"gallery-{n}"
            say(f"{n:,} images: building {gallery} (about {need / GB:.1f} GB)")
            built = run_child(args, "build", n, gallery, model)
            say(f"{n:,} images: built in {built['build_s']:.1f} s; querying")
            queried = run_child(args, "query", n, gallery, model)
            rows.append((built, queried))
            if not args.keep:
                shutil.rmtree(gallery, ignore_errors=True)
    finally:
        if args.keep:
            say(f"galleries kept in {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    report(args, rows, skipped, note)
    return 0


if __name__ == "__main__":
    sys.exit(main())
