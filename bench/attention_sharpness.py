"""How selective a trained model's attention is, over test pairs (each caption with its own image).

    python bench/attention_sharpness.py runs/flickr8k/model-smlstm \
        --regions runs/flickr8k/feats.parquet --captions runs/flickr8k/captions.parquet

For every step of every pair (smcli.inference.explain.explain_pair, the maps `smcli explain` draws):
the largest weight times the number of instances (1.0 = uniform attention) and the entropy
as a fraction of the uniform distribution's (1.0 = uniform), for regions and for words,
averaged over the pairs. A model that selects instances as the paper's pictures show has a
top share of several times uniform and an entropy well below 1.
"""

from __future__ import annotations

import argparse

import numpy as np
import pyarrow.parquet as pq

from smcli.inference import explain, tasks
from smcli.inference.inputs import resolve_images
from smcli.inference.matcher import MatchModel


def sharpness(weights: np.ndarray) -> tuple[float, float]:
    """(top share x n, entropy / log n) of [T, n] attention rows, averaged over the T steps."""
    n = weights.shape[1]
    top = (weights.max(1) * n).mean()
    entropy = (-(weights * np.log(weights + 1e-12)).sum(1) / np.log(n)).mean()
    return float(top), float(entropy)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model")
    ap.add_argument("--regions", required=True)
    ap.add_argument("--captions", required=True)
    ap.add_argument("--split", default="test")
    ap.add_argument("--every", type=int, default=25, help="use every Nth caption of the split")
    args = ap.parse_args()

    session = MatchModel(args.model, device="cpu", precision="fp32")
    feats = tasks.load_features(session, args.regions)
    rows = pq.read_table(args.captions, columns=["image_id", "caption", "split"]).to_pylist()
    rows = [r for r in rows if r["split"] == args.split][:: args.every]
    regions, words = [], []
    for r in rows:
        images = resolve_images([r["image_id"]], feats, session.features)
        ex = explain.explain_pair(session, images, r["caption"])
        regions.append(sharpness(ex.region_maps.reshape(ex.steps, -1)))
        words.append(sharpness(ex.piece_weights))
    reg, wrd = np.mean(regions, 0), np.mean(words, 0)
    print(f"{args.model} ({session.loaded.config.variant}): {len(rows)} {args.split} pairs, "
          f"{ex.steps} steps, {ex.region_maps[0].size} regions")
    print(f"  regions: top weight {reg[0]:.2f}x uniform, entropy {reg[1]:.3f} of uniform")
    print(f"  words:   top weight {wrd[0]:.2f}x uniform, entropy {wrd[1]:.3f} of uniform")


if __name__ == "__main__":
    main()
