#!/usr/bin/env bash
# Issue 13's ablation at the shipped recipe's schedule: smlstm (word-steered attention and
# coverage, the shipped `flickr8k` recipe), no-context (the same without the multimodal
# context) and mean (uniform attention), each as a re-ranker on the seed-0 vse head of
# runs/flickr8k, 3 epochs, seeds 0-2, then test two-stage (shortlist 50). Run
# bench/flickr8k.sh first (features, captions, model-vse). About 50 minutes on a 2-core box.
#
# Usage: bash bench/flickr8k_ablation.sh      WORK (default runs/flickr8k), SEEDS ("0 1 2"),
#        VARIANTS ("smlstm no-context mean"); models in $WORK/model-abl-VARIANT-seedS,
#        test metrics in $WORK/eval-abl-VARIANT-seedS-two-stage.json.
set -euo pipefail
cd "$(dirname "$0")/.."
W="${WORK:-runs/flickr8k}"
SMCLI="${SMCLI:-smcli}"
for f in feats.parquet captions.parquet model-vse/config.json; do
    [ -e "$W/$f" ] || { echo "bench/flickr8k_ablation.sh: no $W/$f: run bench/flickr8k.sh first" >&2; exit 1; }
done
data=(--regions "$W/feats.parquet" --captions "$W/captions.parquet")
recipe=(--inst-dim 256 --att-dim 128 --hidden-dim 256 --local-skip --fuse-global --global-weight val
        --dropout 0.3 --init "$W/model-vse" --freeze-embedding --epochs 3 --patience 2)
for seed in ${SEEDS:-0 1 2}; do
    for v in ${VARIANTS:-smlstm no-context mean}; do
        steer=(--cross-scale 9 --coverage 1)
        [ "$v" = mean ] && steer=()  # no attention to steer
        m="$W/model-abl-$v-seed$seed"
        "$SMCLI" train "${data[@]}" --variant "$v" "${steer[@]}" "${recipe[@]}" --seed "$seed" --overwrite -o "$m"
        "$SMCLI" retrieve --eval --split test --shortlist 50 --model "$m" "${data[@]}" \
            -o "$W/eval-abl-$v-seed$seed-two-stage.json"
    done
done
