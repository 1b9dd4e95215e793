#!/usr/bin/env bash
# Issue 13's backbone lever: the same recipe on efficientnet-lite0+lite2 features (both
# ImageNet networks side by side, 7x7x2560 at 224) instead of Lite0's 7x7x1280. For each
# seed: the vse head (the benchmark's vse command), then the sm-LSTM recipe as a
# re-ranker on that seed's head (3 epochs, word-steered attention, word and region
# coverage, word instances from MiniLM's embedding layer beside its last layer;
# EXTRA="--word-layers 6" gives the recipe before "Word instances with less sentence
# context", and EXTRA="--word-layers 6 --coverage 1 --region-coverage 0 --att-scale 0" the
# one before "Attention that moves"), then
# test: the head alone (exhaustive) and the re-ranker two-stage (shortlist 50).
# Run bench/flickr8k.sh first (captions). About 25 minutes a seed on a 2-core box, plus
# 6 minutes of extraction once.
#
# Usage: bash bench/flickr8k_pair.sh [DATA]   DATA: the Flickr8k folder (default
#        ../shared/data/flickr8k); WORK (default runs/flickr8k), SEEDS ("0 1 2"),
#        VARIANTS ("smlstm"; add mean / no-context for the ablation on these features),
#        EXTRA (more train options for the re-rankers, e.g. "--region-coverage 1"), TAG (a
#        suffix for those re-rankers' names, so a lever's runs sit beside the recipe's),
#        REUSE_HEAD=1 (keep a seed's vse head and its test metrics where they exist).
#        Features in $WORK/feats-pair.parquet, models in $WORK/model-pair-{vse,VARIANT}-seedS,
#        test metrics in $WORK/eval-pair-*-seedS.json.
set -euo pipefail
cd "$(dirname "$0")/.."
DATA="${1:-../shared/data/flickr8k}"
W="${WORK:-runs/flickr8k}"
SMCLI="${SMCLI:-smcli}"
[ -e "$W/captions.parquet" ] || { echo "bench/flickr8k_pair.sh: no $W/captions.parquet: run bench/flickr8k.sh first" >&2; exit 1; }
mkdir -p "$W/logs"
run() {  # run NAME CMD...: the command line in logs/NAME.cmd (package_pretrained.py cites it)
    local name="$1"; shift
    echo "+ $*" | tee "$W/logs/$name.cmd" >&2
    "$@"
}
F="$W/feats-pair.parquet"
[ -e "$F" ] || run extract-pair "$SMCLI" extract-regions "$DATA/images" --backbone efficientnet-lite0+lite2 -o "$F"
data=(--regions "$F" --captions "$W/captions.parquet")
for seed in ${SEEDS:-0 1 2}; do
    head="$W/model-pair-vse-seed$seed"
    if [ "${REUSE_HEAD:-0}" != 1 ] || [ ! -e "$W/eval-pair-vse-seed$seed.json" ]; then
        run "train-pair-vse-seed$seed" "$SMCLI" train "${data[@]}" --variant vse --emb-dropout 0.2 --epochs 20 --patience 6 \
            --seed "$seed" --overwrite -o "$head"
        "$SMCLI" retrieve --eval --split test --exhaustive --model "$head" "${data[@]}" \
            -o "$W/eval-pair-vse-seed$seed.json"
    fi
    for v in ${VARIANTS:-smlstm}; do
        # word-steered attention, word coverage 10, region coverage 1 (the steps select
        # different regions), sharper attention; BENCHMARKS.md "Attention that moves"
        steer=(--cross-scale 9 --coverage 10 --region-coverage 1 --att-scale 3)
        [ "$v" = mean ] && steer=()  # no attention to steer
        # word instances: MiniLM's word-piece embeddings (layer 0, no sentence context) beside
        # its last layer; BENCHMARKS.md "Word instances with less sentence context"
        words=(--word-layers 0+6)
        m="$W/model-pair-$v${TAG:-}-seed$seed"
        # shellcheck disable=SC2086  # EXTRA is a list of options
        run "train-pair-$v${TAG:-}-seed$seed" "$SMCLI" train "${data[@]}" --variant "$v" "${steer[@]}" "${words[@]}" --inst-dim 256 --att-dim 128 \
            --hidden-dim 256 --local-skip --fuse-global --global-weight val --dropout 0.3 \
            --init "$head" --freeze-embedding --epochs 3 --patience 2 --seed "$seed" ${EXTRA:-} --overwrite -o "$m"
        "$SMCLI" retrieve --eval --split test --shortlist 50 --model "$m" "${data[@]}" \
            -o "$W/eval-pair-$v${TAG:-}-seed$seed-two-stage.json"
    done
done
