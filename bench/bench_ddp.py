"""Data-parallel training: a step's time and its parts (compute, collectives) for 1 vs P processes.

    flock /work/cpu.lock python bench/bench_ddp.py --regions runs/flickr8k/feats.parquet \
        --captions runs/flickr8k/captions.parquet --procs 1 2
    python bench/bench_ddp.py --synthetic 4096 --device cuda --procs 1 2    # a GPU machine

For each process count P it launches ``python -m torch.distributed.run --standalone
--nproc-per-node P bench/bench_ddp.py --worker ...`` (loopback only; gloo on the CPU, nccl on
CUDA with one GPU per process), and each process trains the benchmark's smlstm configuration
(jointly from scratch, batch 128, 4 mined negatives per positive) through
smcli.training.trainer.Trainer, the code ``smcli train`` runs: --warmup + --steps steps, of
which --steps are timed (optimisation steps only, not loading, not val). The parts:

- all-gather: the sides' forward all-gather plus the backward all-reduce of their gradients;
- gradient sum: the all-reduce of the parameters' gradients (and the step's loss values);
- compute: the rest of the step.

A collective's time includes waiting for the slower process (on CUDA every part is timed
between synchronisations). One process is run with --threads-1 threads too (default: one
per core, as ``smcli train`` would use), since P processes share the machine's cores.
--synthetic N trains on N random images (7x7 x 1280 float16 grids, 5 captions each, random
MiniLM-sized token states), which needs no files and no MiniLM model. Not a test: the
figures depend on the machine and its load, which are printed with them.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
SYNTHETIC_META = {"backbone": "synthetic", "weights": "random", "pretrained": False, "image_size": 224,
                  "grid": [7, 7], "dim": 1280}
BENCH_DIMS = dict(inst_dim=256, sim_dim=256, att_dim=128, hidden_dim=256, local_skip=True, fuse_global=True)


def synthetic_data(n_images: int, seed: int = 0):
    """N random images with 5 captions each: 7/8 train, 1/8 val (a MatchingData and its text store)."""
    import numpy as np

    from smcli.dataset import MatchingData
    from smcli.models.minilm import DIM, TokenStates
    from smcli.models.text_inputs import MiniLMStore
    from smcli.text.vocab import Vocab

    rng = np.random.default_rng(seed)
    caps = 5 * n_images
    lengths = rng.integers(8, 20, caps)
    states = TokenStates(rng.standard_normal((int(lengths.sum()), DIM), dtype=np.float32).astype(np.float16),
                         np.concatenate([[0], np.cumsum(lengths)]), rng.standard_normal((caps, DIM), dtype=np.float32))
    split = np.where(np.arange(caps) // 5 < n_images * 7 // 8, "train", "val").astype(object)
    data = MatchingData(
        image_ids=[f"img{i}" for i in range(n_images)],
        regions=rng.random((n_images, 49, 1280), dtype=np.float32).astype(np.float16),
        global_=rng.random((n_images, 1280), dtype=np.float32), features_meta=SYNTHETIC_META,
        caption_ids=[str(i) for i in range(caps)], captions=["synthetic"] * caps, token_ids=[[1]] * caps,
        caption_image=np.arange(caps) // 5, split=split, vocab=Vocab(["<pad>", "<unk>"]), captions_name="synthetic")
    return data, states, MiniLMStore


def worker(args) -> None:
    """One process of a run: train, time every step and its collectives, write rank's JSON."""
    import numpy as np
    import torch

    from smcli.dataset import load_matching_data
    from smcli.models.config import ModelConfig
    from smcli.runtime import resolve_device
    from smcli.training import distributed
    from smcli.training.trainer import Trainer, TrainOptions

    if args.threads:
        torch.set_num_threads(args.threads)
    world = distributed.join_world(resolve_device(args.device))
    cuda = args.device.startswith("cuda")
    clock = {"gather": 0.0, "grad_sum": 0.0}

    def sync():
        if cuda:
            torch.cuda.synchronize()

    def timed(part, fn):
        def run(*a, **k):
            sync()
            t = time.perf_counter()
            try:
                return fn(*a, **k)
            finally:
                sync()
                clock[part] += time.perf_counter() - t
        return run

    # every collective goes through these: time them where they are looked up
    distributed._gather_plain = timed("gather", distributed._gather_plain)
    backward = distributed._GatherRows.backward
    distributed._GatherRows.backward = staticmethod(timed("gather", backward))
    distributed.World.sum_gradients = timed("grad_sum", distributed.World.sum_gradients)
    distributed.World.sum_values = timed("grad_sum", distributed.World.sum_values)

    grids = contextlib.nullcontext()
    if args.synthetic:
        data, states, store_type = synthetic_data(args.synthetic)
    else:
        with world.quiet():
            data = load_matching_data(args.regions, args.captions, with_regions=world.size == 1)
        if world.size > 1:  # mapped once for the machine, as smcli train maps them
            from smcli.training.region_cache import mapped_regions

            grids = mapped_regions(args.regions, data.image_ids, world)
    rows = []

    class TimedTrainer(Trainer):
        def _text_store(self):
            if not args.synthetic:
                return super()._text_store()
            used = np.concatenate([self.train_caps, self.val_caps])
            self.store_row = np.full(len(self.data.captions), -1, dtype=np.int64)
            self.store_row[used] = used
            return store_type(states)

        def validate(self, model, store, caps=None, shortlist=None):  # not timed: keep it short
            return super().validate(model, store, self.val_caps[:50], shortlist)

        def _step(self, model, optimizer, store, idx):
            before = dict(clock)
            sync()
            t = time.perf_counter()
            out = super()._step(model, optimizer, store, idx)
            sync()
            rows.append({"step": time.perf_counter() - t, "pairs": out[2],
                         **{k: clock[k] - before[k] for k in clock}})
            return out

    cfg = ModelConfig(variant="smlstm", text_encoder="minilm", **BENCH_DIMS)
    opts = TrainOptions(epochs=1, batch_size=args.batch_size, max_steps_per_epoch=args.warmup + args.steps,
                        device=args.device, precision=args.precision, val_shortlist=20, overwrite=True,
                        checkpoint_every=10**9)
    with tempfile.TemporaryDirectory() as out, grids as mapped:
        if mapped is not None:
            data.regions = mapped
        trainer = TimedTrainer(data, out, cfg, opts, log=lambda msg: None, world=world)
        trainer.run()
    world.leave()
    Path(args.worker, f"rank{world.rank}.json").write_text(json.dumps(
        {"rank": world.rank, "threads": torch.get_num_threads(), "precision": trainer.precision,
         "device": trainer.device, "rows": rows[args.warmup:]}))


def launch(args, procs: int, threads: int) -> dict:
    """One torchrun of ``procs`` processes; the median step and parts over the timed steps
    (each step's figure: the slowest process's)."""
    with tempfile.TemporaryDirectory() as res:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(procs),
               "--max-restarts", "0", __file__, "--worker", res, "--threads", str(threads),
               *sys.argv[1:]]
        env = {**os.environ, "OMP_NUM_THREADS": str(threads), "GLOO_SOCKET_IFNAME": "lo",
               "TORCH_CPP_LOG_LEVEL": "ERROR", "PYTHONPATH": str(Path(__file__).resolve().parent.parent)}
        subprocess.run(cmd, env=env, check=True, stdout=subprocess.DEVNULL)
        ranks = [json.loads(p.read_text()) for p in sorted(Path(res).glob("rank*.json"))]
    steps = [{k: max(r["rows"][i][k] for r in ranks) for k in ("step", "gather", "grad_sum")}
             | {"pairs": ranks[0]["rows"][i]["pairs"]}  # the whole batch's, in every process
             for i in range(len(ranks[0]["rows"]))]
    med = {k: statistics.median(s[k] for s in steps) for k in ("step", "gather", "grad_sum", "pairs")}
    med["compute"] = statistics.median(s["step"] - s["gather"] - s["grad_sum"] for s in steps)
    return {"procs": procs, "threads": threads, "precision": ranks[0]["precision"], "device": ranks[0]["device"], **med}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--regions")
    ap.add_argument("--captions")
    ap.add_argument("--synthetic", type=int, default=0, help="N random images instead of files")
    ap.add_argument("--procs", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--precision", default="auto")
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    ap.add_argument("--threads", type=int, default=0, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        return worker(args)
    if not args.synthetic and not (args.regions and args.captions):
        ap.error("give --regions and --captions, or --synthetic N")
    import torch
    from machine_info import cpu_model, load_average

    cores = len(os.sched_getaffinity(0))
    gpus = torch.cuda.device_count() if args.device.startswith("cuda") else 0
    print(f"# {' '.join(sys.argv)}\n# {cpu_model()}, {cores} cores, torch {torch.__version__}"
          + (f", {gpus} x {torch.cuda.get_device_name(0)}" if gpus else "") + f"; load {load_average()}")
    print("| processes | threads each | median step | all-gather | gradient sum | compute | pairs/s | vs 1 process |")
    print("|---|---|---|---|---|---|---|---|")
    configs = []
    for p in args.procs:
        if gpus and p > gpus:
            print(f"# {p} processes need {p} GPUs (nccl: one per process); {gpus} here")
            continue
        configs.append((p, 1 if gpus else max(1, cores // p)))
        if p == 1 and not gpus and cores > 1:
            configs.append((1, 1))
    base = None
    for p, threads in configs:
        r = launch(args, p, threads)
        base = base or r["step"]
        print(f"| {p} | {threads} | {r['step'] * 1000:.0f} ms | {r['gather'] * 1000:.1f} ms | "
              f"{r['grad_sum'] * 1000:.1f} ms | {r['compute'] * 1000:.0f} ms | {r['pairs'] / r['step']:,.0f} | "
              f"{base / r['step']:.2f}x |", flush=True)
    print(f"# {args.precision} -> {r['precision']} on {r['device']}; load {load_average()} at the end")


if __name__ == "__main__":
    main()
