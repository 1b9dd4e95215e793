"""The table of bench/flickr8k_pair.sh's runs: val and test rsum per seed, mean +- sd, paired
differences between variants (same seed, same head), as markdown (and JSON with --json).

    python bench/flickr8k_pair_report.py --work runs/flickr8k [--variants vse smlstm no-context mean]
        [--ensemble NAME=EVAL.json ...] [--json results/flickr8k-pair.json]

Val is each model's best val rsum (``config.json``, the epoch chosen on val); test is
``eval-pair-VARIANT-seedS[-two-stage].json`` (the head exhaustive, re-rankers two-stage 50).
The sd is the sample standard deviation over the seeds found (ddof 1).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from machine_info import cpu_model  # noqa: E402

from smcli.runtime import resolve_precision  # noqa: E402

LABELS = {"vse": "vse head alone (exhaustive)", "mean": "mean re-ranker, uniform attention (two-stage 50)",
          "no-context": "no-context re-ranker (two-stage 50)", "smlstm": "smlstm re-ranker (two-stage 50)"}
RECALLS = ("i2t_r1", "i2t_r5", "i2t_r10", "t2i_r1", "t2i_r5", "t2i_r10")


def load_runs(work: Path, variant: str, seeds: list[int]) -> dict[int, dict]:
    """seed -> {"val": best val rsum, "test": the test eval record} for the runs present."""
    runs = {}
    for seed in seeds:
        config = work / f"model-pair-{variant}-seed{seed}" / "config.json"
        suffix = "" if variant == "vse" else "-two-stage"
        test = work / f"eval-pair-{variant}-seed{seed}{suffix}.json"
        if config.exists() and test.exists():
            runs[seed] = {"val": json.loads(config.read_text())["best"]["rsum"],
                          "test": json.loads(test.read_text())}
    return runs


def mean_sd(values: list[float]) -> tuple[float, float]:
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else float("nan"))


def summary(runs: dict[int, dict]) -> dict:
    seeds = sorted(runs)
    val = [runs[s]["val"] for s in seeds]
    test = [runs[s]["test"]["rsum"] for s in seeds]
    test_mean, test_sd = mean_sd(test)
    return {"seeds": seeds, "val": val, "test": test, "val_mean": statistics.fmean(val),
            "test_mean": test_mean, "test_sd": test_sd,
            "recalls_mean": {k: statistics.fmean(runs[s]["test"][k] for s in seeds) for k in RECALLS}}


def by_seed(row: dict, key: str) -> dict[int, float]:
    """A summary row's per-seed values ("val" or "test") keyed by seed."""
    return dict(zip(row["seeds"], row[key]))


def fmt_seeds(values: list[float], digits: int) -> str:
    return " / ".join(f"{v:.{digits}f}" for v in values)


def fmt_recalls(r: dict) -> str:
    """The two recall cells of a row: i2t R@1/5/10 | t2i R@1/5/10."""
    return (f"{r['i2t_r1']:.1f} / {r['i2t_r5']:.1f} / {r['i2t_r10']:.1f} "
            f"| {r['t2i_r1']:.1f} / {r['t2i_r5']:.1f} / {r['t2i_r10']:.1f}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work", type=Path, default=Path("runs/flickr8k"))
    ap.add_argument("--variants", nargs="*", default=["vse", "mean", "no-context", "smlstm"])
    ap.add_argument("--seeds", nargs="*", type=int, default=[0, 1, 2])
    ap.add_argument("--ensemble", action="append", default=[], metavar="NAME=VAL.json,TEST.json",
                    help="an ensemble's val and test records (smcli retrieve --eval --model A,B,C)")
    ap.add_argument("--json", type=Path, help="also write the figures here")
    args = ap.parse_args()

    table = {v: summary(r) for v in args.variants if (r := load_runs(args.work, v, args.seeds))}
    if not table:
        sys.exit(f"no bench/flickr8k_pair.sh runs in {args.work}")
    print(f"Runs in {args.work}; this report ran on {cpu_model()}.\n")
    print("| model | best val, seeds | val mean | test rsum, seeds | test mean +- sd "
          "| test i2t R@1/5/10 (mean) | t2i R@1/5/10 (mean) |")
    print("|---|---|---|---|---|---|---|")
    for v, s in table.items():
        print(f"| {LABELS.get(v, v)} | {fmt_seeds(s['val'], 1)} | {s['val_mean']:.2f} | {fmt_seeds(s['test'], 2)} "
              f"| **{s['test_mean']:.2f} +- {s['test_sd']:.2f}** | {fmt_recalls(s['recalls_mean'])} |")
    ensembles = {}
    for spec in args.ensemble:
        name, _, files = spec.partition("=")
        val_file, test_file = files.split(",")
        val, test = (json.loads(Path(f).read_text()) for f in (val_file, test_file))
        ensembles[name] = {"val": val["rsum"], "test": test["rsum"], "members": test.get("members"),
                           "seconds_test": test["seconds"], "recalls": {k: test[k] for k in RECALLS}}
        print(f"| {name} | {val['rsum']:.1f} (one ensemble) | | {test['rsum']:.2f} | | {fmt_recalls(test)} |")

    pairs = [(a, b) for a, b in [("smlstm", "mean"), ("no-context", "mean"), ("smlstm", "no-context"),
                                 ("smlstm", "vse")] if a in table and b in table]
    diffs = {}
    if pairs:
        print("\nPaired differences (same seed, same head), test (val):\n")
        print("| difference | per seed | mean |")
        print("|---|---|---|")
    for a, b in pairs:
        seeds = [s for s in table[a]["seeds"] if s in table[b]["seeds"]]
        test, val = ([by_seed(table[a], key)[s] - by_seed(table[b], key)[s] for s in seeds] for key in ("test", "val"))
        diffs[f"{a} - {b}"] = {"seeds": seeds, "test": test, "val": val}
        per = " / ".join(f"{t:+.2f} ({w:+.1f})" for t, w in zip(test, val))
        print(f"| {a} - {b} | {per} | {statistics.fmean(test):+.2f} ({statistics.fmean(val):+.2f}) |")
    if args.json:
        args.json.write_text(json.dumps({"machine": cpu_model(), "precision_auto": resolve_precision("auto", "cpu"),
                                         "work": str(args.work), "variants": table, "ensembles": ensembles,
                                         "paired_differences": diffs}, indent=1) + "\n")


if __name__ == "__main__":
    main()
