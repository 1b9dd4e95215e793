"""Write the Flickr8k results of bench/flickr8k.sh into results/flickr8k.json and BENCHMARKS.md.

Reads what the benchmark left in its work folder: eval-VARIANT-{exhaustive,two-stage}.json
(from `smcli retrieve --eval -o`), model-VARIANT/config.json and metrics.jsonl, and the
wall time / peak RSS of each command (logs/NAME.time, from /usr/bin/time). The JSON file
accumulates variants (each with when and at which commit it ran); the BENCHMARKS.md section
between the flickr8k markers is regenerated from the JSON, never edited by hand.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import subprocess
from pathlib import Path

from machine_info import cpu_model

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "results" / "flickr8k.json"
BENCHMARKS = REPO / "BENCHMARKS.md"
BEGIN, END = "<!-- flickr8k:begin -->", "<!-- flickr8k:end -->"
ORDER = ("cca", "vse", "mean", "no-context", "smlstm")

PUBLISHED = [  # DESIGN.md section 1, Flickr8k rows (earlier methods), R@1/5/10 i2t | t2i
    ("DVSA (published)", (16.5, 40.6, 54.2), (11.8, 32.1, 44.7), 199.9),
    ("m-CNN ensemble (published)", (24.8, 53.7, 67.1), (20.3, 47.6, 61.7), 275.2),
    ("DSPE (published)", (30.1, 60.4, 73.7), (23.0, 51.3, 64.8), 303.3),
]
DESIGN_BASELINE = ("one-to-one MiniLM baseline (DESIGN.md section 5)", (30.0, 57.2, 71.0),
                   (21.7, 49.7, 63.2), 292.8)


def _time(work: Path, name: str) -> dict | None:
    f = work / "logs" / f"{name}.time"
    if not f.exists():
        return None
    last = f.read_text().strip().splitlines()[-1].split()
    return {"seconds": float(last[0]), "peak_rss_mb": round(int(last[1]) / 1024, 1)}


def _cmd(work: Path, name: str) -> str | None:
    f = work / "logs" / f"{name}.cmd"
    return f.read_text().strip().removeprefix("+ ") if f.exists() else None


def machine() -> str:
    return f"{platform.system()} {platform.machine()}, {os.cpu_count()} cores ({cpu_model()}), no GPU"


def commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True,
                              text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "?"


def collect(work: Path, variant: str) -> dict | None:
    model = work / f"model-{variant}"
    if not (model / "config.json").exists():
        return None
    cfg = json.loads((model / "config.json").read_text())
    rows = [json.loads(x) for x in (model / "metrics.jsonl").read_text().splitlines() if x.strip()]
    entry = {
        "variant": variant,
        "text_encoder": cfg["model"]["text_encoder"],
        "features": cfg["features"],
        "seed": cfg.get("training", {}).get("seed"),
        "best_epoch": cfg["best"]["epoch"],
        "epochs_run": len(rows),
        "val_rsum": round(cfg["best"]["rsum"], 2),
        "global_weight": cfg["best"].get("global_weight"),  # chosen on val (--global-weight val)
        "seconds_per_epoch": round(sum(r.get("train_seconds", 0) for r in rows) / max(1, len(rows)), 1),
        "pairs_per_second": round(sum(r.get("pairs_per_second", 0) for r in rows) / max(1, len(rows))),
        "train": _time(work, f"train-{variant}"),
        "train_command": _cmd(work, f"train-{variant}"),
        "model": {k: cfg["model"][k] for k in ("inst_dim", "att_dim", "hidden_dim", "emb_dim", "steps",
                                                "local_skip", "fuse_global", "dropout", "emb_dropout")
                  if k in cfg["model"]},
        "run_at": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "commit": commit(),
        "machine": machine(),
    }
    for mode in ("exhaustive", "two-stage"):
        f = work / f"eval-{variant}-{mode}.json"
        if f.exists():
            r = json.loads(f.read_text())
            entry[mode] = {k: r[k] for k in ("i2t_r1", "i2t_r5", "i2t_r10", "t2i_r1", "t2i_r5", "t2i_r10",
                                             "rsum", "i2t_medr", "t2i_medr", "seconds", "encode_seconds",
                                             "pairs_scored", "mode", "shortlist")}
            entry[mode]["run"] = _time(work, f"eval-{variant}-{mode}")
            entry[mode]["command"] = _cmd(work, f"eval-{variant}-{mode}")
    return entry


def _secs(s: float) -> str:
    return f"{s:.0f} s" if s >= 10 else f"{s:.2f} s"


def collect_seeds(work: Path, variants: list[str]) -> dict:
    """Test (two-stage) and val rsum per variant and seed: seed 0 from WORK, others from WORK-seedN."""
    spread: dict = {}
    dirs = [(0, work)] + sorted((int(d.name.rsplit("-seed", 1)[1]), d)
                                for d in work.parent.glob(f"{work.name}-seed*")
                                if d.name.rsplit("-seed", 1)[1].isdigit())
    for v in variants:
        for seed, d in dirs:
            cfg, ev = d / f"model-{v}" / "config.json", d / f"eval-{v}-two-stage.json"
            if cfg.exists() and ev.exists():
                r = json.loads(ev.read_text())
                spread.setdefault(v, {})[str(seed)] = {
                    "val_rsum": round(json.loads(cfg.read_text())["best"]["rsum"], 2),
                    "test_rsum": round(r["rsum"], 2),
                    "test": {k: r[k] for k in ("i2t_r1", "i2t_r5", "i2t_r10", "t2i_r1", "t2i_r5", "t2i_r10")},
                }
    return spread


def _spread_lines(results: dict) -> list[str]:
    spread = results.get("seeds") or {}
    if not spread:
        return []
    seeds = sorted({int(k) for runs in spread.values() for k in runs})
    vse = results.get("variants", {}).get("vse", {}).get("exhaustive", {}).get("rsum")
    lines = ["", "How much the seed moves it (`bash bench/flickr8k_seeds.sh`: the many-to-many variants",
             "retrained with other seeds on the same seed-0 vse head, each evaluated two-stage on test;",
             f"vse alone: {vse:.1f} test)." if vse else "", "",
             "| model | " + " | ".join(f"seed {k} val / test" for k in seeds) + " | test mean ± sd |",
             "|---|" + "---|" * (len(seeds) + 1)]
    for v in ORDER:
        runs = spread.get(v)
        if not runs:
            continue
        cells = [f"{runs[str(k)]['val_rsum']:.1f} / {runs[str(k)]['test_rsum']:.1f}" if str(k) in runs else ""
                 for k in seeds]
        tests = [r["test_rsum"] for r in runs.values()]
        mean = sum(tests) / len(tests)
        if len(tests) > 1:
            sd = (sum((t - mean) ** 2 for t in tests) / (len(tests) - 1)) ** 0.5
            summary = f"{mean:.1f} ± {sd:.1f}"
        else:
            summary = "one seed only"
        lines.append(f"| {v} | " + " | ".join(cells) + f" | {summary} |")
    return lines


def render(results: dict) -> str:
    lines = [BEGIN, "", "## Flickr8k (the paper's protocol)", ""]
    lines += [
        "Generated by `bench/flickr8k_report.py` from `results/flickr8k.json`; reproduce with",
        "`make bench-flickr8k DATA=../shared/data/flickr8k` (or `VARIANT=smlstm` for one variant).",
        "Train on the 6,000 train images (30,000 captions), choose the epoch on the 1,000 val",
        "images, report on the 1,000 test images (5,000 captions). Same features for every row:",
        "EfficientNet-Lite0 (ImageNet, offline weights) at 224x224, 7x7x1280 regions; same text",
        "encoder: frozen all-MiniLM-L6-v2 token states.",
        "",
        "| model | mode | i2t R@1 | R@5 | R@10 | t2i R@1 | R@5 | R@10 | rsum | val rsum | train | eval |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for v in ORDER:
        e = results.get("variants", {}).get(v)
        if not e:
            continue
        for mode in ("exhaustive", "two-stage"):
            r = e.get(mode)
            if not r:
                continue
            train = e.get("train") or {}
            label = "one-to-one" if r["mode"] == "one-to-one" else (
                mode if mode == "exhaustive" else f"two-stage ({r['shortlist']})")
            lines.append(
                f"| {v} | {label} | {r['i2t_r1']:.1f} | {r['i2t_r5']:.1f} | {r['i2t_r10']:.1f} | "
                f"{r['t2i_r1']:.1f} | {r['t2i_r5']:.1f} | {r['t2i_r10']:.1f} | **{r['rsum']:.1f}** | "
                f"{e['val_rsum']:.1f} | {train.get('seconds', 0) / 60:.1f} min, epoch {e['best_epoch']}"
                f"/{e['epochs_run']} | {_secs(r['seconds'])} |")
    for name, i2t, t2i, rsum in (DESIGN_BASELINE, *PUBLISHED):
        lines.append(f"| {name} | | {i2t[0]} | {i2t[1]} | {i2t[2]} | {t2i[0]} | {t2i[1]} | {t2i[2]} | "
                     f"{rsum} | | | |")
    lines += _spread_lines(results)
    pipeline = results.get("pipeline", {})
    if pipeline:
        lines += ["", "Shared steps (run once; every variant reuses their output):", ""]
        for step, what in (("extract", "8,091 images -> region grids"), ("tokenize", "40,460 captions")):
            r = pipeline.get(step)
            if r:
                lines.append(f"- {step} ({what}): `{r['command']}` — {r['seconds']:.0f} s, "
                             f"peak RSS {r['peak_rss_mb']:,.0f} MB")
    lines += ["", "Training speed on the 30,000 train captions (mean over the epochs run; pairs = image-caption",
              "pairs scored by the matcher, or by the embedding for vse):", "",
              "| model | s/epoch | pairs/s | epochs run | best epoch |", "|---|---|---|---|---|"]
    for v in ORDER:
        e = results.get("variants", {}).get(v)
        if e and v != "cca":
            lines.append(f"| {v} | {e['seconds_per_epoch']} | {e['pairs_per_second']:,} | {e['epochs_run']} | "
                         f"{e['best_epoch']} |")
    lines += ["", "`train` is the wall time of the whole `smcli train` run (including its per-epoch val",
              "evaluations), with the best epoch and the epochs run; `eval` is the time spent scoring",
              "and ranking the 1,000 x 5,000 test pairs (per-caption text states may come from the cache).",
              "", "Per variant, the exact commands, peak memory, seed, commit and machine:", ""]
    for v in ORDER:
        e = results.get("variants", {}).get(v)
        if not e:
            continue
        train = e.get("train") or {}
        lines.append(f"- **{v}** (run {e['run_at']} at commit {e['commit']}, seed {e['seed']}; {e['machine']}):")
        lines.append(f"  `{e['train_command']}` — {train.get('seconds', 0):.0f} s, "
                     f"peak RSS {train.get('peak_rss_mb', 0):,.0f} MB")
        for mode in ("exhaustive", "two-stage"):
            r = e.get(mode)
            if r and r.get("command"):
                run = r.get("run") or {}
                lines.append(f"  `{r['command']}` — {run.get('seconds', 0):.0f} s in all, peak RSS "
                             f"{run.get('peak_rss_mb', 0):,.0f} MB, {r['pairs_scored']:,} pairs scored")
    lines += ["", END]
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--work", type=Path, required=True)
    ap.add_argument("--data", default="")
    ap.add_argument("--variants", nargs="*", default=list(ORDER))
    ap.add_argument("--seeds-only", action="store_true",
                    help="only (re)collect the seed spread from WORK and WORK-seedN (bench/flickr8k_seeds.sh)")
    args = ap.parse_args()
    results = json.loads(RESULTS.read_text()) if RESULTS.exists() else {"variants": {}}
    for v in args.variants:
        entry = collect(args.work, v)
        if entry is not None:
            results["variants"][v] = entry
    spread = collect_seeds(args.work, [v for v in ORDER if v not in ("cca", "vse")])
    if spread:
        results["seeds"] = spread
    for step in ("extract", "tokenize") if not args.seeds_only else ():
        run = _time(args.work, step)
        known = results.get("pipeline", {}).get(step, {})
        if run is None or {k: known.get(k) for k in run} == run:
            continue  # a step that reused earlier output keeps its figures, commit and date
        ran = dt.datetime.fromtimestamp((args.work / "logs" / f"{step}.time").stat().st_mtime, dt.UTC)
        run.update(command=_cmd(args.work, step), commit=commit(), machine=machine(),
                   run_at=ran.strftime("%Y-%m-%d %H:%M UTC"))
        results.setdefault("pipeline", {})[step] = run
    results["protocol"] = ("Flickr8k: train 6,000 images / val 1,000 (model selection) / test 1,000 "
                           "(5,000 captions); R@K in percent; rsum = sum of the six")
    RESULTS.parent.mkdir(exist_ok=True)
    RESULTS.write_text(json.dumps(results, indent=2, sort_keys=True) + "\n")
    section = render(results)
    text = BENCHMARKS.read_text() if BENCHMARKS.exists() else "# smcli benchmarks\n"
    if BEGIN in text and END in text:
        head, rest = text.split(BEGIN, 1)
        text = head + section + rest.split(END, 1)[1]
    else:
        text = text.rstrip() + "\n\n" + section + "\n"
    BENCHMARKS.write_text(text)
    print(f"wrote {RESULTS} and the Flickr8k section of {BENCHMARKS}")


if __name__ == "__main__":
    main()
