#!/usr/bin/env bash
# The Flickr8k benchmark, end to end through the smcli commands only, as a user runs them:
#   extract-regions -> tokenize (vocabulary from train) -> train each variant (epoch chosen
#   on val) -> retrieve --eval on test, exhaustive and two-stage -> BENCHMARKS.md + JSON.
#
# Usage: bash bench/flickr8k.sh [DATA]          (make bench-flickr8k DATA=...)
#   DATA      the Flickr8k folder (default ../shared/data/flickr8k)
#   VARIANT   run one variant only (cca, vse, mean, no-context, smlstm); default: all
#   STEP      run one step only: extract, tokenize, train, eval, report; default: all
#   WORK      where features, models and logs go (default runs/flickr8k)
#   SEED      training seed (default 0)
#   SMLSTM_EXTRA  more smlstm train options (make pretrained: the shipped build's
#                 "--cross-scale 9 --coverage 1 --epochs 3")
#   EXHAUSTIVE=0  skip the exhaustive test evaluation of the many-to-many variants
#                 (two-stage only; bench/flickr8k_seeds.sh uses it)
# Steps reuse what earlier runs left in WORK (features, models), so each step and each
# variant can run on its own; results/flickr8k.json accumulates variants.
set -euo pipefail
cd "$(dirname "$0")/.."
DATA="${1:-${DATA:-../shared/data/flickr8k}}"
WORK="${WORK:-runs/flickr8k}"
SEED="${SEED:-0}"
VARIANTS="${VARIANT:-cca vse mean no-context smlstm}"
STEP="${STEP:-all}"
mkdir -p "$WORK/logs"
FEATS="$WORK/feats.parquet"
CAPS="$WORK/captions.parquet"

if [ ! -d "$DATA/images" ]; then
    echo "bench/flickr8k.sh: no Flickr8k images under $DATA/images (give DATA=...)" >&2
    exit 1
fi

# Hyperparameters, chosen on val (BENCHMARKS.md "Flickr8k: how the recipe was chosen").
# Every variant uses the same features, the same MiniLM text encoder and the same seed.
# vse: the learning rate drops tenfold after epoch 8 (the default --lr-decay-epochs).
# The many-to-many variants are trained on the vse model's one-to-one head (kept fixed):
# the head shortlists and mines hard negatives, the matcher learns to rank on its own, and
# the weight of the head's cosine added to its score is chosen on val (--global-weight val).
M2M="--inst-dim 256 --att-dim 128 --hidden-dim 256 --local-skip --fuse-global --global-weight val
     --dropout 0.3 --init $WORK/model-vse --freeze-embedding --epochs 8 --patience 2"
declare -A ARGS=(
    [cca]=""
    [vse]="--emb-dropout 0.2 --epochs 20 --patience 6"
    [mean]="$M2M"
    [no-context]="$M2M"
    [smlstm]="$M2M ${SMLSTM_EXTRA:-}"
)

timed() {  # timed NAME CMD...: run, keep wall time and peak RSS in $WORK/logs/NAME.time
    local name=$1; shift
    echo "+ $*" | tee "$WORK/logs/$name.cmd" >&2
    /usr/bin/time -f "%e %M" -o "$WORK/logs/$name.time" "$@" 2> >(tee "$WORK/logs/$name.log" >&2)
}

want() { [ "$STEP" = all ] || [ "$STEP" = "$1" ]; }

if want extract; then
    if [ ! -f "$FEATS" ]; then
        resume=""
        [ -d "$WORK/.feats.parquet.resume" ] && resume="--resume"
        timed extract smcli extract-regions "$DATA/images" -o "$FEATS" $resume
    fi
fi

if want tokenize; then
    timed tokenize smcli tokenize "$DATA/Flickr8k_text/Flickr8k.token.txt" \
        --splits "$DATA/splits.csv" -o "$CAPS"
fi

for v in $VARIANTS; do
    [ -n "${ARGS[$v]+x}" ] || { echo "unknown variant $v" >&2; exit 2; }
    model="$WORK/model-$v"
    if want train; then
        if [[ "${ARGS[$v]}" == *--init* ]] && [ ! -f "$WORK/model-vse/config.json" ]; then
            echo "bench/flickr8k.sh: $v starts from the vse model: run VARIANT=vse first" >&2
            exit 1
        fi
        # shellcheck disable=SC2086
        timed "train-$v" smcli train --regions "$FEATS" --captions "$CAPS" -o "$model" \
            --variant "$v" --seed "$SEED" --overwrite ${ARGS[$v]}
    fi
    if want eval; then
        if [ "${EXHAUSTIVE:-1}" = 1 ] || [ "$v" = cca ] || [ "$v" = vse ]; then
            timed "eval-$v-exhaustive" smcli retrieve --eval --split test --exhaustive \
                --model "$model" --regions "$FEATS" --captions "$CAPS" -o "$WORK/eval-$v-exhaustive.json"
        fi
        if [ "$v" != cca ] && [ "$v" != vse ]; then
            timed "eval-$v-two-stage" smcli retrieve --eval --split test --shortlist 50 \
                --model "$model" --regions "$FEATS" --captions "$CAPS" -o "$WORK/eval-$v-two-stage.json"
        fi
    fi
done

if want report; then
    python3 bench/flickr8k_report.py --work "$WORK" --data "$DATA" --variants $VARIANTS
fi
