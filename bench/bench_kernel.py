"""The sm-LSTM pair-scoring kernel, the previous one against the current one, side by side.

    python bench/bench_kernel.py                      # about 3-4 minutes on a 2-core box
    python bench/bench_kernel.py --profile            # plus torch.profiler's top operators
    python bench/bench_kernel.py --train-only         # only the training steps (old, kernel work, now)
    python bench/bench_kernel.py --precision bf16     # all of it under bf16 autocast (CPUs with AVX512-BF16)

Model: the Flickr8k benchmark sizes (smlstm, attention "context", inst 256, att 128, sim 256,
hidden 256, 3 steps, 7x7 = 49 regions of 1280-d, MiniLM 384-d word pieces, fuse_global,
local_skip), random weights (speed does not depend on them). Captions: word-piece counts
drawn from the Flickr8k test split's histogram (mean 12.3, max 35; all captions padded to 35,
as exhaustive evaluation pads them).

Measures, in one run: the fp32 matmul bound (2048^3); the FLOPs of a pair (by hand from the
shapes, checked against torch.profiler's count for the previous kernel); exhaustive scoring
(caption blocks of 512, image blocks of pairs_per_chunk // 512): the old kernel in the bench's
own loop, the current one in smcli's (smcli.inference.scoring), and for the current one at other chunk sizes; peak
memory (the rise of the process's peak RSS during the run); a training step (encode_images,
encode_texts, score_pairs forward and backward on 128 captions with 4 negatives each way =
1,152 pairs, AdamW): the old kernel with bernoulli dropout masks (before the issue), the new
kernel with them, and the new kernel with the bits16 draw (smcli/models/dropout.py, the
default). Not a test: the figures depend on the machine and its
load, which are printed with them.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from smcli.inference.scoring import _exhaustive_chunks
from smcli.models import ModelConfig, create_model, fused_attention
from smcli.runtime import autocast, resolve_precision

REGIONS = 49  # a 7x7 grid
# MiniLM word pieces per caption, Flickr8k test split (5,000 captions): count of captions with 0, 1, 2, ... pieces
TEST_PIECES = [0, 0, 1, 7, 24, 58, 121, 265, 367, 423, 477, 553, 491, 477, 397, 332, 270, 226, 159, 110, 78, 46,
               42, 24, 18, 8, 5, 7, 5, 3, 0, 2, 2, 0, 1, 1]


# -- the previous kernel (smcli before the kernel work), for reference: the one the tests
# check the new kernel against (tests/test_kernel.py reference_fuse), not a copy of it
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine_info import cpu_model  # noqa: E402
from test_kernel import reference_fuse  # noqa: E402


def old_fuse(model, img, txt, *, grid: bool):
    return reference_fuse(model, img, txt, grid=grid)[0]


KERNELS = {
    "old": (lambda m, img, txt: old_fuse(m, img, txt, grid=True),
            lambda m, img, txt, ii, cc: old_fuse(m, img.select(ii), txt.select(cc), grid=False)),
    "new": (lambda m, img, txt: m.score_grid(img, txt),
            lambda m, img, txt, ii, cc: m.score_pairs(img, txt, ii, cc)),
}


def fused_grid(m, img, txt):
    """The new kernel with its grid attention as one compiled loop (smcli.models.fused_attention),
    as exhaustive scoring runs it from fused_attention.MIN_PAIRS pairs."""
    with fused_attention.fused_scope(True):
        return m.score_grid(img, txt)


KERNELS["fused"] = (fused_grid, KERNELS["new"][1])


# -- inputs ---------------------------------------------------------------------------------
def build_model(train: bool = False, dropout_draw: str = "bits16"):
    torch.manual_seed(0)
    cfg = ModelConfig(variant="smlstm", text_encoder="minilm", inst_dim=256, att_dim=128, sim_dim=256,
                      hidden_dim=256, ctx_dim=256, steps=3, img_dim=1280, local_skip=True,
                      fuse_global=True, dropout=0.3, dropout_draw=dropout_draw)
    model = create_model(cfg)
    return model.train() if train else model.eval()


def make_inputs(n_img: int, n_cap: int, seed: int, pad_to: int = len(TEST_PIECES) - 1):
    g = torch.Generator().manual_seed(seed)
    probs = torch.tensor(TEST_PIECES, dtype=torch.float64)
    lengths = torch.multinomial(probs, n_cap, replacement=True, generator=g).clamp(max=pad_to)
    regions = torch.rand(n_img, REGIONS, 1280, generator=g) * 3  # ReLU6-like activations
    mask = torch.arange(pad_to)[None] < lengths[:, None]
    states = torch.randn(n_cap, pad_to, 384, generator=g) * 0.3 * mask[..., None]
    sentence = F.normalize(torch.randn(n_cap, 384, generator=g), dim=-1)
    return regions, regions.mean(1), {"states": states, "mask": mask, "sentence": sentence}


# -- measurements -----------------------------------------------------------------------------
def matmul_gflops(n: int = 2048, reps: int = 8, dtype: torch.dtype = torch.float32) -> float:
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    a @ b
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        a @ b
        times.append(time.perf_counter() - t)
    return 2 * n ** 3 / min(times) / 1e9


def flops_per_pair(cfg: ModelConfig, words: float) -> dict[str, float]:
    """By hand from the shapes, one pair with ``words`` word pieces (multiply-add = 2 FLOPs)."""
    R, da, ds, dh, T = REGIONS, cfg.att_dim, cfg.sim_dim, cfg.hidden_dim, cfg.steps
    lstm = 2 * (ds + dh) * 4 * dh  # W_ih x + W_hh h
    queries = 2 * 2 * dh * da  # U_a h, U_s h
    head = 2 * dh * (dh // 2) + 2 * (dh // 2)
    logits = 3 * (R + words) * da  # add, then w . (multiply-add) over att_dim
    weighted = 2 * (R + words) * ds
    total = T * (lstm + queries + logits + weighted) + head
    matmul = T * (lstm + queries + 2 * (R + words) * da + weighted) + head  # what the profiler counts
    executed = T * lstm - (2 * dh * 4 * dh) + (T - 1) * queries + head  # the new kernel skips h_0 = 0
    return {"total": total, "matmul": matmul, "lstm_share": T * lstm / total, "new_matmul": executed}


def profiler_flops(model, img, txt) -> float:
    from torch.profiler import ProfilerActivity, profile

    with torch.inference_mode(), profile(activities=[ProfilerActivity.CPU], with_flops=True) as prof:
        old_fuse(model, img, txt, grid=True)
    return sum(e.flops for e in prof.key_averages() if e.flops)


class PeakRSS:
    """Rise of the process's peak resident set (VmHWM, reset through /proc/self/clear_refs)."""

    def __enter__(self):
        self.ok = True
        try:
            with open("/proc/self/clear_refs", "w") as fh:
                fh.write("5")
        except OSError:
            self.ok = False
        self.base = _status_kb("VmRSS")
        return self

    def __exit__(self, *exc):
        self.mib = (_status_kb("VmHWM") - self.base) / 1024 if self.ok else float("nan")


def _status_kb(key: str) -> int:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    return 0


def exhaustive(model, grid_fn, img, txt, pairs_per_chunk: int, cap_block: int = 512, precision: str = "fp32"):
    """The bench's own exhaustive loop, for the old kernel (smcli's loop sorts captions for the
    current one): caption blocks of ``cap_block``, image blocks of pairs_per_chunk // cap_block,
    under ``precision``'s autocast as `smcli retrieve --eval` runs it."""
    n_img, n_cap = len(img), len(txt)
    out = np.empty((n_img, n_cap), dtype=np.float32)
    cap_block = min(n_cap, cap_block)
    img_block = max(1, pairs_per_chunk // cap_block)
    with torch.inference_mode(), autocast("cpu", precision):
        for c0 in range(0, n_cap, cap_block):
            t = txt.select(torch.arange(c0, min(c0 + cap_block, n_cap)))
            for i0 in range(0, n_img, img_block):
                i1 = min(i0 + img_block, n_img)
                block = img.select(torch.arange(i0, i1))
                out[i0:i1, c0:c0 + len(t)] = grid_fn(model, block, t).float().numpy()
    return out


def smcli_exhaustive(model, img, txt, pairs_per_chunk: int, *, fused: bool, precision: str = "fp32"):
    """smcli's own exhaustive loop (smcli.inference.scoring, as `smcli retrieve --eval
    --exhaustive` runs it: caption blocks sorted by length once, their exp keys reused over
    the image blocks), with or without the fused attention loop."""
    with torch.inference_mode(), autocast("cpu", precision), fused_attention.fused_scope(fused):
        return _exhaustive_chunks(model, img, txt, pairs_per_chunk, None)


def train_step_times(kernel: str, steps: int, warmup: int = 2, B: int = 128, k: int = 4, n_img: int = 120,
                     profile: bool = False, dropout_draw: str = "bits16", precision: str = "fp32"):
    """Median time of a training step of the matcher (as `smcli train` runs the re-ranker: the
    embedding head frozen, negatives given, dropout 0.3 on regions and words, its masks drawn
    as ``dropout_draw`` says)."""
    model = build_model(train=True, dropout_draw=dropout_draw)
    model.embedding.requires_grad_(False)
    model.embedding.eval()
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=2e-4)
    regions, glob, batch = make_inputs(n_img, B, seed=11, pad_to=30)
    g = torch.Generator().manual_seed(12)
    inv = torch.randint(0, n_img, (B,), generator=g)  # image of each caption
    neg_c = torch.randint(0, B, (B, k), generator=g)
    neg_i = torch.randint(0, B, (B, k), generator=g)
    ar = torch.arange(B)
    ii = torch.cat([inv, inv.repeat_interleave(k), inv[neg_i.reshape(-1)]])
    cc = torch.cat([ar, neg_c.reshape(-1), ar.repeat_interleave(k)])
    pairs_fn = KERNELS[kernel][1]
    times = []
    torch.manual_seed(13)
    prof = None
    for step in range(warmup + steps + (1 if profile else 0)):
        if step == warmup + steps:  # one more step, profiled (not timed)
            from torch.profiler import ProfilerActivity
            prof = torch.profiler.profile(activities=[ProfilerActivity.CPU])
            prof.__enter__()
        t = time.perf_counter()
        with autocast("cpu", precision):  # as the trainer runs its forward
            img, txt = model.encode_images(regions, glob), model.encode_texts(batch)
            s = pairs_fn(model, img, txt, ii, cc).float()
            pos, s_c, s_i = s[:B], s[B:B + B * k].reshape(B, k), s[B + B * k:].reshape(B, k)
            hinge = (0.2 - pos[:, None] + s_c).clamp(min=0).amax(1) + (0.2 - pos[:, None] + s_i).clamp(min=0).amax(1)
            loss = hinge.mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if warmup <= step < warmup + steps:
            times.append(time.perf_counter() - t)
    if prof is not None:
        prof.__exit__(None, None, None)
        print(f"\n{kernel} kernel, {dropout_draw} dropout draw, one training step:")
        print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=25))
    return statistics.median(times), len(ii)


def train_steps(args, bound_at_end: bool = True) -> None:
    """The training step before the issue (old kernel, bernoulli masks), after the kernel work
    (new kernel, bernoulli masks) and now (new kernel, bits16 masks: smcli/models/dropout.py)."""
    print("\ntraining step (encode + score_pairs forward/backward + AdamW), 128 captions x (1 + 4 + 4) pairs")
    print("| kernel | dropout draw | median step | pairs/s | speed-up over the first row |")
    print("|---|---|---|---|---|")
    first = None
    for kernel, draw in (("old", "bernoulli"), ("new", "bernoulli"), ("new", "bits16")):
        med, n = train_step_times(kernel, args.train_steps, profile=args.profile, dropout_draw=draw,
                                  precision=args.precision)
        first = first or med
        print(f"| {kernel} | {draw} | {med * 1000:.0f} ms | {n / med:,.0f} | {first / med:.2f}x |", flush=True)
    if bound_at_end:
        print(f"matmul bound again at the end: {matmul_gflops():.1f} GFLOP/s")
        print(f"# load average at end {os.getloadavg()[0]:.2f}; other smcli jobs: {background()}")


def background() -> str:
    try:
        out = subprocess.run(["pgrep", "-fa", "smcli (train|retrieve|extract-regions|score)"], capture_output=True,
                             text=True, timeout=5).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "?"
    return "; ".join(line.split(" ", 1)[1][:90] for line in out.splitlines()) or "none"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=48, help="images of the scored grid")
    ap.add_argument("--captions", type=int, default=1024, help="captions of the scored grid")
    ap.add_argument("--chunks", type=int, nargs="+", default=[1024, 4096, 16384],  # at most images x 512 apply
                    help="pairs per chunk tried with the new kernel (4096: smcli's CPU default, also run with the old)")
    ap.add_argument("--train-steps", type=int, default=6)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--profile", action="store_true", help="print torch.profiler's top operators of each kernel")
    ap.add_argument("--train-only", action="store_true", help="only the training steps (and the matmul bound)")
    ap.add_argument("--no-fused", action="store_true", help="leave out the rows of the compiled attention loop")
    ap.add_argument("--precision", choices=["fp32", "bf16"], default="fp32",
                    help="bf16: scoring and training under bf16 autocast, as smcli runs them on a CPU with "
                         "AVX512-BF16 (--precision auto); the %% of bound is then of the bf16 matmul bound")
    args = ap.parse_args()
    if args.precision == "bf16" and resolve_precision("auto", "cpu") != "bf16":
        ap.error("--precision bf16: this CPU has no AVX512-BF16 (smcli runs fp32 here)")
    if args.threads:
        torch.set_num_threads(args.threads)

    amx = "amx_bf16" in open("/proc/cpuinfo").read() if os.path.exists("/proc/cpuinfo") else False
    print(f"# bench/bench_kernel.py on {cpu_model()} ({os.cpu_count()} CPUs, {torch.get_num_threads()} threads, "
          f"torch {torch.__version__}, capability {torch.backends.cpu.get_cpu_capability()}"
          f"{', AMX-BF16' if amx else ''}); precision {args.precision}")
    print(f"# load average at start {os.getloadavg()[0]:.2f}; other smcli jobs: {background()}")
    bound = matmul_gflops()
    print(f"matmul bound: {bound:.1f} GFLOP/s (2048^3 fp32, best of 8)")
    if args.precision == "bf16":
        bound = matmul_gflops(dtype=torch.bfloat16)
        print(f"matmul bound: {bound:.1f} GFLOP/s (2048^3 bf16, best of 8; the % below are of this one)")

    if args.train_only:
        return train_steps(args)
    model = build_model()
    cfg = model.cfg
    mean_words = float(np.dot(np.arange(len(TEST_PIECES)), TEST_PIECES) / sum(TEST_PIECES))
    fl = flops_per_pair(cfg, mean_words)
    regions, glob, batch = make_inputs(args.images, args.captions, seed=1)
    with torch.inference_mode():
        img, txt = model.encode_images(regions, glob), model.encode_texts(batch)
        small_img, small_txt = img.select(torch.arange(2)), txt.select(torch.arange(64))
    L = txt.mask.shape[1]
    by_hand = flops_per_pair(cfg, L)["matmul"]
    measured = profiler_flops(model, small_img, small_txt) / (2 * 64)
    print(f"FLOPs per pair ({mean_words:.1f} word pieces): {fl['total'] / 1e6:.3f} M "
          f"({fl['lstm_share']:.0%} LSTM); matrix products of the old kernel with captions padded to {L}: "
          f"{by_hand / 1e6:.3f} M by hand, {measured / 1e6:.3f} M by torch.profiler; the new kernel's matrix "
          f"products: {fl['new_matmul'] / 1e6:.3f} M (no products of h_0 = 0)")

    with torch.inference_mode():
        ref = KERNELS["old"][0](model, small_img, small_txt)
        new = KERNELS["new"][0](model, small_img, small_txt)
    print(f"max |new - old| score on 128 pairs: {float((new - ref).abs().max()):.2e}")

    n_pairs = len(img) * len(txt)
    print(f"\nexhaustive scoring, {len(img)} images x {len(txt)} captions = {n_pairs:,} pairs, caption blocks of 512")
    print("| kernel | pairs/chunk | seconds | pairs/s | GFLOP/s (model FLOPs) | % of matmul bound | peak RSS rise |")
    print("|---|---|---|---|---|---|---|")
    if not args.no_fused:  # compiled once before the timed rows (inductor caches it on disk afterwards)
        t = time.perf_counter()
        with torch.inference_mode(), autocast("cpu", args.precision):
            fused_grid(model, img.select(torch.arange(min(8, len(img)))), txt.select(torch.arange(min(512, len(txt)))))
        failed = fused_attention._state["failed"]
        print(f"fused attention loop: {'did not compile: ' + failed if failed else 'compiled'} in "
              f"{time.perf_counter() - t:.1f} s (not counted below)")
    runs = [("old", 4096)] + [("new", c) for c in args.chunks] + \
        ([] if args.no_fused else [("fused", c) for c in args.chunks])
    scores = {}
    for kernel, chunk in runs:
        with PeakRSS() as mem:
            t = time.perf_counter()
            if kernel == "old":
                scores[kernel, chunk] = exhaustive(model, KERNELS[kernel][0], img, txt, chunk, precision=args.precision)
            else:
                scores[kernel, chunk] = smcli_exhaustive(model, img, txt, chunk, fused=kernel == "fused",
                                                         precision=args.precision)
            dt = time.perf_counter() - t
        rate = n_pairs / dt
        gflops = rate * fl["total"] / 1e9
        print(f"| {kernel} | {chunk:,} | {dt:.1f} | {rate:,.0f} | {gflops:.1f} | {gflops / bound:.0%} | "
              f"{mem.mib:,.0f} MiB |", flush=True)
    base = scores["old", 4096]
    diff = max(float(np.abs(s - base).max()) for s in scores.values())
    top = {key: np.argsort(-s, 1, kind="stable")[:, :10] for key, s in scores.items()}
    same = np.mean([np.array_equal(top[key][i], top["old", 4096][i]) for key in top for i in range(len(img))])
    print(f"max |new - old| score over the grid: {diff:.2e}; images whose top-10 captions (in order) are the "
          f"same as the old kernel's: {same:.1%}")
    fused_keys = [key for key in scores if key[0] == "fused"]
    if fused_keys:
        eager = scores["new", 4096] if ("new", 4096) in scores else scores[next(k for k in scores if k[0] == "new")]
        order = np.argsort(-eager, 1, kind="stable")
        d = max(float(np.abs(scores[key] - eager).max()) for key in fused_keys)
        rank = np.mean([(np.argsort(-scores[key], 1, kind="stable") == order).all(1) for key in fused_keys])
        print(f"max |fused - new| score: {d:.2e}; images whose whole caption ranking is the same as the new "
              f"kernel's: {rank:.1%}")

    train_steps(args, bound_at_end=False)
    print(f"matmul bound again at the end: {matmul_gflops():.1f} GFLOP/s (the % above use the first figure)")
    print(f"# load average at end {os.getloadavg()[0]:.2f}; other smcli jobs: {background()}")

    if args.profile:
        from torch.profiler import ProfilerActivity, profile

        block, t = img.select(torch.arange(8)), txt.select(torch.arange(512))
        for kernel in ("old", "new") if args.no_fused else ("old", "new", "fused"):
            fn = KERNELS[kernel][0]
            with torch.inference_mode(), autocast("cpu", args.precision):
                fn(model, block, t)
                with profile(activities=[ProfilerActivity.CPU]) as prof:
                    fn(model, block, t)
            print(f"\n{kernel} kernel, one 8 x 512 chunk ({args.precision}):")
            print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=12))


if __name__ == "__main__":
    main()
