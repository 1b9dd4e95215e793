"""Does the attention select? Caption steering, step-to-step movement and a deletion test.

    python bench/selection.py flickr8k --regions runs/flickr8k/feats.parquet \
        --captions runs/flickr8k/captions.parquet [--images 100] [--seed 0]

Over ``--images`` test images (each with one of its own captions and one caption of another
test image, drawn with ``--seed``), from the maps ``smcli explain`` draws:
- caption steering: mean total variation distance between the region maps of the same image
  under its own caption and under the other one (0: the caption does not steer; 1: disjoint);
- step movement: mean total variation between consecutive steps' region maps, and the top
  region's weight (x uniform), over all steps and step by step, and the share of steps whose
  top region differs from the previous step's; the same for the word weights (and the share of steps whose
  most weighted word differs from the previous step's);
- deletion: the own-caption score after zeroing the k regions the model attends to most
  (summed over the steps) against zeroing k random regions, for k = 1, 2, 4, 8, 16; the
  region features are zeroed before the model's projections, the global feature is kept.
  Attention that finds what the caption names lowers the score far more than random deletion.
"""

from __future__ import annotations

import argparse

import numpy as np
import pyarrow.parquet as pq

from smcli.inference import explain, tasks
from smcli.inference.inputs import ImageSet, resolve_images
from smcli.inference.matcher import MatchModel

KS = (1, 2, 4, 8, 16)


def tv(p: np.ndarray, q: np.ndarray) -> float:
    return float(0.5 * np.abs(p - q).sum())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model")
    ap.add_argument("--regions", required=True)
    ap.add_argument("--captions", required=True)
    ap.add_argument("--split", default="test")
    ap.add_argument("--images", type=int, default=100)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    model = MatchModel(args.model, device="cpu", precision="fp32")
    feats = tasks.load_features(model, args.regions)
    rows = pq.read_table(args.captions, columns=["image_id", "caption", "split"]).to_pylist()
    by_image: dict[str, list[str]] = {}
    for r in rows:
        if r["split"] == args.split:
            by_image.setdefault(r["image_id"], []).append(r["caption"])
    rng = np.random.default_rng(args.seed)
    images = sorted(by_image)
    chosen = rng.choice(len(images), size=min(args.images, len(images)), replace=False)
    word_move, word_switch = [], []
    region_switch, top_by_step = [], []
    steer, move, top, drop_att, drop_rand = [], [], [], {k: [] for k in KS}, {k: [] for k in KS}
    for i in chosen:
        image_id = images[i]
        own = by_image[image_id][rng.integers(len(by_image[image_id]))]
        other_id = images[(i + 1 + rng.integers(len(images) - 1)) % len(images)]
        other = by_image[other_id][rng.integers(len(by_image[other_id]))]
        one = resolve_images([image_id], feats, model.features)
        ex_own = explain.explain_pair(model, one, own)
        ex_other = explain.explain_pair(model, one, other)
        maps = ex_own.region_maps.reshape(ex_own.steps, -1)
        steer.append(np.mean([tv(a, b) for a, b in zip(maps, ex_other.region_maps.reshape(ex_other.steps, -1))]))
        move.append(np.mean([tv(maps[t], maps[t + 1]) for t in range(len(maps) - 1)]) if len(maps) > 1 else 0.0)
        top.append(float(maps.max(1).mean() * maps.shape[1]))
        top_by_step.append(maps.max(1) * maps.shape[1])
        if len(maps) > 1:
            region_switch.append(np.mean(maps[1:].argmax(1) != maps[:-1].argmax(1)))
        w = ex_own.word_weights
        if len(w) > 1:
            word_move.append(np.mean([tv(w[t], w[t + 1]) for t in range(len(w) - 1)]))
            word_switch.append(np.mean(w[1:].argmax(1) != w[:-1].argmax(1)))
        order = np.argsort(-maps.sum(0), kind="stable")
        base = ex_own.score
        for k in KS:
            for store, idx in ((drop_att, order[:k]), (drop_rand, rng.choice(maps.shape[1], k, replace=False))):
                regions = np.array(one.regions, dtype=np.float32, copy=True)
                regions[0, idx] = 0.0
                masked = ImageSet(one.image_ids, one.paths, regions, one.global_)
                store[k].append(base - explain.explain_pair(model, masked, own).score)
    print(f"{args.model} ({model.loaded.config.variant}): {len(chosen)} {args.split} images, seed {args.seed}")
    print(f"  caption steering: mean TV between the maps of own and other caption {np.mean(steer):.3f}")
    print(f"  step movement: mean TV between consecutive steps {np.mean(move):.3f}; "
          f"top region {np.mean(top):.2f}x uniform"
          + (f"; top region changes at {np.mean(region_switch):.0%} of the steps" if region_switch else ""))
    print("  top region by step (x uniform): "
          + " / ".join(f"{v:.2f}" for v in np.mean(top_by_step, axis=0)))
    if word_move:
        print(f"  word step movement: mean TV between consecutive steps {np.mean(word_move):.3f}; "
              f"top word changes at {np.mean(word_switch):.0%} of the steps")
    print("  deletion (score drop of the own caption, mean over images): k | attended | random")
    for k in KS:
        print(f"    {k:2d} | {np.mean(drop_att[k]):.4f} | {np.mean(drop_rand[k]):.4f}")


if __name__ == "__main__":
    main()
