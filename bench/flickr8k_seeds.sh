#!/usr/bin/env bash
# How much the Flickr8k results move with the seed: retrain the many-to-many variants
# (re-rankers on the seed-0 vse head of runs/flickr8k) with other seeds, evaluate each on
# test two-stage (its recalls equal exhaustive scoring's, see BENCHMARKS.md), and add the
# spread to results/flickr8k.json and BENCHMARKS.md. Run bench/flickr8k.sh first.
#
# Usage: bash bench/flickr8k_seeds.sh [DATA]     SEEDS (default "1 2"), VARIANT (default
#        "mean no-context smlstm"); about 25 minutes per seed for the three variants here.
set -euo pipefail
cd "$(dirname "$0")/.."
DATA="${1:-${DATA:-../shared/data/flickr8k}}"
BASE="${WORK:-runs/flickr8k}"
SEEDS="${SEEDS:-1 2}"
VARIANTS="${VARIANT:-mean no-context smlstm}"
for f in feats.parquet captions.parquet model-vse/config.json; do
    [ -e "$BASE/$f" ] || { echo "bench/flickr8k_seeds.sh: no $BASE/$f: run bench/flickr8k.sh first" >&2; exit 1; }
done
for seed in $SEEDS; do
    work="$BASE-seed$seed"
    mkdir -p "$work"
    for f in feats.parquet captions.parquet model-vse; do
        ln -sfn "$(realpath "$BASE/$f")" "$work/$f"
    done
    for step in train eval; do
        WORK="$work" SEED="$seed" VARIANT="$VARIANTS" STEP="$step" EXHAUSTIVE=0 bash bench/flickr8k.sh "$DATA"
    done
done
python3 bench/flickr8k_report.py --work "$BASE" --data "$DATA" --variants --seeds-only
