#!/usr/bin/env bash
# Runs every bench/bench_*.py in turn (add a benchmark by adding a bench_NAME.py file).
# Usage: bash bench/run_all.sh            (make bench runs it with the venv on PATH)
# Each bench_*.py must run with no arguments (sensible defaults), print its figures with
# the command and the machine, and exit 0 with a "skipped" line when its data is absent.
# Set PYTHON to choose the interpreter. A failing benchmark is reported and the others
# still run; the exit status is non-zero if any failed.
set -uo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python3}"

echo "# $(date -u '+%Y-%m-%d %H:%M UTC'), $(uname -srm), nproc $(nproc 2>/dev/null || echo ?)"
echo "# CPU: $(grep -m1 'model name' /proc/cpuinfo 2>/dev/null | cut -d: -f2- | sed 's/^ *//')"
echo "# uptime:$(uptime)"
echo "# smcli $("$PY" -c 'import smcli; print(smcli.__version__)' 2>/dev/null) at $(git rev-parse --short HEAD 2>/dev/null)"

failed=()
shopt -s nullglob
for bench in bench/bench_*.py; do
    echo
    echo "== $bench"
    start=$(date +%s)
    if ! "$PY" "$bench"; then
        failed+=("$bench")
        echo "!! $bench failed"
    fi
    echo "== $bench: $(( $(date +%s) - start )) s"
done

echo
if (( ${#failed[@]} )); then
    echo "failed: ${failed[*]}"
    exit 1
fi
echo "all benchmarks ran"
