"""Where a training step of the sm-LSTM re-ranker spends its time, and what bf16 buys on this CPU.

    python bench/bench_train.py --regions runs/flickr8k/feats.parquet \
        --captions runs/flickr8k/captions.parquet --init runs/flickr8k/model-vse

Trains the benchmark's smlstm configuration (re-ranker on the frozen vse head, batch 128,
4 mined negatives per positive) for --warmup + --steps steps of the Flickr8k train split,
once per precision, in this process, through smcli.training.trainer.Trainer (the code
`smcli train` runs), and times only the optimisation steps (not data loading, not val).
Each precision runs once per dropout mask draw (--dropout-draws; smcli/models/dropout.py).
With --profile it prints torch.profiler's top operators for the last run's steps.
Not a test: the figures depend on the machine and its load, which are printed with them.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import tempfile
import time

import torch

from smcli.dataset import load_matching_data
from smcli.models.config import ModelConfig
from smcli.training.trainer import Trainer, TrainOptions


class TimedTrainer(Trainer):
    """A Trainer that records the wall time of each optimisation step (and can profile some)."""

    def __init__(self, *args, warmup: int, steps: int, profile: bool, **kwargs):
        super().__init__(*args, **kwargs)
        self.warmup, self.steps, self.profile = warmup, steps, profile
        self.times, self.pairs, self.prof = [], [], None

    def _step(self, model, optimizer, store, idx):
        n = len(self.times)
        if self.profile and n == self.warmup:
            self.prof = torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU])
            self.prof.__enter__()
        started = time.perf_counter()
        out = super()._step(model, optimizer, store, idx)
        self.times.append(time.perf_counter() - started)
        self.pairs.append(out[2])
        if self.prof is not None and len(self.times) == self.warmup + self.steps:
            self.prof.__exit__(None, None, None)  # the steps only, not the val evaluation after them
        return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--regions", required=True)
    ap.add_argument("--captions", required=True)
    ap.add_argument("--init", required=True, help="the trained vse model the re-ranker starts from")
    ap.add_argument("--variant", default="smlstm")
    ap.add_argument("--steps", type=int, default=20, help="timed steps per precision")
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--precisions", nargs="+", default=["fp32", "bf16"])
    ap.add_argument("--dropout-draws", nargs="+", default=["bernoulli", "bits16"],
                    help="dropout mask draws to time (smcli/models/dropout.py)")
    ap.add_argument("--cross-scale", type=float, default=0.0, help="as smcli train (the shipped recipe: 9)")
    ap.add_argument("--coverage", type=float, default=0.0, help="as smcli train (the shipped recipe: 1)")
    ap.add_argument("--profile", action="store_true")
    args = ap.parse_args()

    print(f"# python bench/bench_train.py ... ({platform.platform()}, nproc {os.cpu_count()}, "
          f"torch {torch.__version__}, {torch.get_num_threads()} threads; load {os.getloadavg()[0]:.1f})")
    data = load_matching_data(args.regions, args.captions, with_regions=True)
    runs = [(p, d) for p in args.precisions for d in args.dropout_draws]
    for precision, draw in runs:
        cfg = ModelConfig(variant=args.variant, text_encoder="minilm", inst_dim=256, sim_dim=256, att_dim=128,
                          hidden_dim=256, local_skip=True, fuse_global=True, dropout=0.3, dropout_draw=draw,
                          cross_scale=args.cross_scale, coverage=args.coverage)
        opts = TrainOptions(epochs=1, max_steps_per_epoch=args.warmup + args.steps, precision=precision,
                            device="cpu", init_from=args.init, freeze_embedding=True, val_shortlist=20,
                            overwrite=True, checkpoint_every=10**9)
        with tempfile.TemporaryDirectory() as out:
            trainer = TimedTrainer(data, out, cfg, opts, log=lambda msg: None, warmup=args.warmup, steps=args.steps,
                                   profile=args.profile and (precision, draw) == runs[-1])
            trainer.run()
        timed = trainer.times[args.warmup:]
        med = statistics.median(timed)
        rate = sum(trainer.pairs[args.warmup:]) / sum(timed)
        print(f"{args.variant} {precision}, {draw} dropout draw: median step {med * 1000:.0f} ms over "
              f"{len(timed)} steps (min {min(timed) * 1000:.0f}), {rate:,.0f} scored pairs/s, "
              f"{235 * med:.0f} s per 235-step epoch")
        if trainer.prof is not None:
            print(trainer.prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=15))


if __name__ == "__main__":
    main()
