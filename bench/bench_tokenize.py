"""Tokenize time for the Flickr8k token file (40,460 captions), end to end and by phase.

Usage: python bench/bench_tokenize.py [--data DIR] [--repeat N]

End to end: the documented command in a fresh process,
    smcli tokenize Flickr8k.token.txt --splits splits.csv -o caps.parquet
and the same writing to a pipe. By phase, in process: read + normalise + tokenize, build
the vocabulary and encode, write Parquet. DIR defaults to ../shared/data/flickr8k beside the
repository; without it the benchmark says so and exits 0. Not a test: the figures depend
on the machine and its load, which are printed with them.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from machine_info import cpu_model, load_average

REPO = Path(__file__).resolve().parent.parent
DEFAULT_DATA = REPO.parent / "shared" / "data" / "flickr8k"


def machine() -> str:
    return f"nproc {os.cpu_count()}, CPU {cpu_model()}, load average (1/5/15 min) {load_average()}"


def smcli_cmd() -> list[str]:
    script = shutil.which("smcli")
    return [script] if script else [sys.executable, "-m", "smcli"]


def run_timed(cmd: list[str], repeat: int, stdout=subprocess.DEVNULL) -> list[float]:
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        subprocess.run(cmd, stdout=stdout, stderr=subprocess.DEVNULL, check=True)
        times.append(time.perf_counter() - t0)
    return times


def phases(tokens: Path, splits: Path, out: Path) -> dict[str, float]:
    """One in-process run, timed by phase (the same steps as tokenize_file)."""
    import pyarrow as pa

    from smcli.report import RunReport
    from smcli.stage import OutputTarget, StageWriter, new_meta
    from smcli.text.captions import CAPTIONS_SCHEMA, TokenizeOptions, choose_vocab, clean_records
    from smcli.text.readers import read_captions, read_splits

    report = RunReport("tokenize")
    t = {}
    t0 = time.perf_counter()
    split_map = read_splits(str(splits))
    _, records = read_captions(str(tokens), "auto", report)
    rows, toks, _ = clean_records(records, str(tokens), report)
    for r in rows:
        r.split = split_map.get(r.image_id)
    t["read + normalise + tokenize"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    vocab, _ = choose_vocab(rows, toks, TokenizeOptions())
    ids = [vocab.encode(x) for x in toks]
    t["vocabulary + encode"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    table = pa.table({
        "caption_id": [r.caption_id for r in rows], "image_id": [r.image_id for r in rows],
        "caption": [r.caption for r in rows], "tokens": toks, "token_ids": ids,
        "split": [r.split for r in rows],
    }, schema=CAPTIONS_SCHEMA)
    with StageWriter(OutputTarget(out), CAPTIONS_SCHEMA, new_meta("captions", {})) as w:
        w.write(table)
    t["Arrow table + write Parquet"] = time.perf_counter() - t0
    t["rows"] = len(rows)
    return t


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    tokens = args.data / "Flickr8k_text" / "Flickr8k.token.txt"
    splits = args.data / "splits.csv"
    if not tokens.is_file() or not splits.is_file():
        print(f"# bench_tokenize: skipped, no Flickr8k under {args.data} (use --data DIR)")
        return
    smcli = smcli_cmd()
    print(f"# bench_tokenize: {tokens} ({tokens.stat().st_size / 1e6:.1f} MB); "
          f"{args.repeat} runs each")
    print(f"# {machine()}")
    with tempfile.TemporaryDirectory(prefix="smcli-bench-") as tmp:
        out = Path(tmp) / "caps.parquet"
        cmd = smcli + ["tokenize", str(tokens), "--splits", str(splits)]
        run_timed(cmd + ["-o", str(out)], 1)  # warm the page cache
        to_file = run_timed(cmd + ["-o", str(out)], args.repeat)
        to_pipe = run_timed(cmd, args.repeat, stdout=subprocess.PIPE)
        size = out.stat().st_size
        print(f"{'case':<42} {'median s':>9} {'min s':>7}")
        print(f"{'tokenize ... -o caps.parquet (process)':<42} "
              f"{statistics.median(to_file):9.3f} {min(to_file):7.3f}")
        print(f"{'tokenize ... | (stdout to a pipe)':<42} "
              f"{statistics.median(to_pipe):9.3f} {min(to_pipe):7.3f}")
        best = min(to_file)
        t = phases(tokens, splits, Path(tmp) / "phases.parquet")
        rows = int(t.pop("rows"))
        print(f"# {rows:,} captions, {size / 1e6:.2f} MB Parquet; "
              f"{rows / best:,.0f} captions/s end to end (best run)")
        for name, seconds in t.items():
            print(f"{'  phase: ' + name:<42} {seconds:9.3f}")


if __name__ == "__main__":
    main()
