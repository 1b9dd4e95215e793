#!/usr/bin/env bash
# The main job on the bundled example: tokenize -> (more stages as they land).
# Writes everything under demo-out/.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=demo-out
mkdir -p "$OUT"

smcli tokenize examples/captions.txt --splits examples/splits.csv -o "$OUT/captions.parquet"
smcli inspect "$OUT/captions.parquet"
