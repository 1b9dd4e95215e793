#!/usr/bin/env bash
# A quality gate for CI: extract the example photos, evaluate a model on their test split
# and score a few captions, failing (exit 3) when a figure falls short. The outputs are
# written before the gate is checked, so a failing run still leaves them to look at.
#
#   bash examples/ci/quality-gate.sh            # pretrained flickr8k model
#   MODEL=model/ MIN_RSUM=450 bash examples/ci/quality-gate.sh
set -euo pipefail
cd "$(dirname "$0")/../.."
OUT="${OUT:-ci-out}"
MODEL="${MODEL:-flickr8k}"
MIN_RSUM="${MIN_RSUM:-500}"        # the 8 test photos of examples/: flickr8k scores 600
MIN_SCORE="${MIN_SCORE:-0.05}"     # mean score of the matching captions below
mkdir -p "$OUT"

smcli extract-regions examples/images -o "$OUT/feats.parquet"
smcli tokenize examples/captions.txt --splits examples/splits.csv -o "$OUT/captions.parquet"
smcli retrieve --eval --split test --model "$MODEL" --regions "$OUT/feats.parquet" \
    --captions "$OUT/captions.parquet" -o "$OUT/metrics.json" --fail-under "rsum=$MIN_RSUM"
cat > "$OUT/pairs.csv" <<'CSV'
image_id,caption
509778093_21236bb64d.jpg,a brown and white dog chasing a ball on the grass
459814265_d48ba48978.jpg,a dog runs on the grass
CSV
smcli score --model "$MODEL" --regions "$OUT/feats.parquet" --pairs "$OUT/pairs.csv" \
    -o "$OUT/scores.parquet" --fail-under "$MIN_SCORE"
echo "quality gate passed: metrics in $OUT/metrics.json, scores in $OUT/scores.parquet"
