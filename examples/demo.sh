#!/usr/bin/env bash
# The main job on the bundled example, end to end:
#   extract-regions -> tokenize -> train -> retrieve / eval / caption-rank / explain -> index
# Everything is written under demo-out/; smcli.toml (written here unless you have your
# own) makes `smcli retrieve --query "a dog on grass"` work afterwards without flags.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=demo-out
mkdir -p "$OUT"

echo "== 1. region grids and global features of 32 photos (EfficientNet-Lite0, ImageNet)"
smcli extract-regions examples/images -o "$OUT/feats.parquet"

echo "== 2. captions -> tokens, vocabulary from the train split"
smcli tokenize examples/captions.txt --splits examples/splits.csv -o "$OUT/captions.parquet"

echo "== 3. train on the 16 train images, choosing each epoch on the 8 val images:"
echo "   first the one-to-one embedding (vse), then the sm-LSTM as a re-ranker on top of it"
smcli train --variant vse --regions "$OUT/feats.parquet" --captions "$OUT/captions.parquet" \
    -o "$OUT/model-vse" --epochs 10 --batch-size 16 --lr 1e-3 --overwrite
smcli train --regions "$OUT/feats.parquet" --captions "$OUT/captions.parquet" -o "$OUT/model" \
    --init "$OUT/model-vse" --freeze-embedding --epochs 8 --batch-size 16 --lr 1e-3 --overwrite

# defaults for later commands (kept if you have an smcli.toml of your own)
MARK="written by examples/demo.sh"
if [ ! -e smcli.toml ] || grep -q "$MARK" smcli.toml; then
    printf '# %s\nmodel = "%s/model"\nregions = "%s/feats.parquet"\ncaptions = "%s/captions.parquet"\n' \
        "$MARK" "$OUT" "$OUT" "$OUT" > smcli.toml
fi

echo "== 4. text -> images (defaults from smcli.toml)"
smcli retrieve --query "a dog on grass" --top-k 5 --table

echo "== 5. the recall protocol on the 8 test images (40 captions)"
smcli retrieve --eval --split test -o "$OUT/metrics.json"

echo "== 6. captions ranked for a test photo"
smcli caption-rank --image 509778093_21236bb64d.jpg --top-k 3 --table

echo "== 7. what the model selected, step by step"
smcli explain --image 509778093_21236bb64d.jpg \
    --caption "a brown and white dog chasing a ball on some grass" -o "$OUT/explain.png"

echo "== 8. a saved gallery for fast search and for the web page (smcli serve)"
smcli index --regions "$OUT/feats.parquet" -o "$OUT/gallery" --overwrite

echo "demo done: outputs in $OUT/ (explain.png shows the saliency maps);"
echo "   browse them with: smcli serve --index $OUT/gallery, then open http://127.0.0.1:8000/"
