"""Start-up time of the CLI: `smcli --help` (the goal: well under a second, no torch).

Usage: python bench/bench_startup.py [--repeat N]

Runs each command N times in a fresh process and reports the median and the fastest wall
time, next to a bare `python -c pass` for the interpreter's own share. Also lists any heavy
module (torch, ...) the command imported, from `-X importtime`. Not a test: the figures
depend on the machine and its load, which are printed with them.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

from machine_info import cpu_model, load_average

REPO = Path(__file__).resolve().parent.parent
HEAVY = ("torch", "torchvision", "timm", "transformers", "faiss")


def machine() -> str:
    return f"nproc {os.cpu_count()}, CPU {cpu_model()}, load average (1/5/15 min) {load_average()}"


def smcli_cmd() -> list[str]:
    """The installed console script when there is one (what users run), else -m smcli."""
    script = shutil.which("smcli")
    return [script] if script else [sys.executable, "-m", "smcli"]


def timed(cmd: list[str], repeat: int) -> list[float]:
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True,
                       cwd=REPO)
        times.append(time.perf_counter() - t0)
    return times


def heavy_imports(args: list[str]) -> list[str]:
    proc = subprocess.run([sys.executable, "-X", "importtime", "-m", "smcli", *args],
                          capture_output=True, text=True, cwd=REPO)
    names = {ln.rsplit("|", 1)[1].strip() for ln in proc.stderr.splitlines()
             if ln.startswith("import time:") and "|" in ln}
    return sorted(n for n in names if n.split(".")[0] in HEAVY)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=20)
    args = parser.parse_args()
    smcli = smcli_cmd()
    print(f"# bench_startup: {' '.join(smcli)}; {args.repeat} runs each")
    print(f"# {machine()}")
    timed(smcli + ["--version"], 2)  # warm the page cache
    cases = [
        ("python -c pass", [sys.executable, "-c", "pass"], None),
        ("smcli --version", smcli + ["--version"], ["--version"]),
        ("smcli --help", smcli + ["--help"], ["--help"]),
        ("smcli tokenize --help", smcli + ["tokenize", "--help"], ["tokenize", "--help"]),
    ]
    print(f"{'command':<24} {'median s':>9} {'min s':>7}  heavy imports")
    for name, cmd, probe in cases:
        t = timed(cmd, args.repeat)
        heavy = ", ".join(heavy_imports(probe)[:3]) or "none" if probe else "-"
        print(f"{name:<24} {statistics.median(t):9.3f} {min(t):7.3f}  {heavy}")


if __name__ == "__main__":
    main()
