"""What a saved gallery's codec costs in retrieval quality: the standard two-stage protocol
on a split, with the per-image tensors (keys, values, ctx_a, ctx_s) passed through each
codec exactly as ``smcli index`` stores and ``retrieve --index`` reads them back.

    python bench/gallery_codec_quality.py --model flickr8k \
        --regions runs/flickr8k/feats.parquet --captions runs/flickr8k/captions.parquet

Codecs: float16 and int8 (smcli.inference.gallery.encode_int8: int8 per row with a float16
scale), and, for comparison only, int4 (the same per-row rule with 7 levels each side) and
int8 embeddings (the one-to-one vectors too; smcli keeps them float32). Prints one JSON line
per codec: rsum, the six recalls and bytes per image of the stored tensors.
"""

from __future__ import annotations

import argparse
import json

import numpy as np
import torch

from smcli.evaluation import protocol
from smcli.inference.gallery import encode_int8
from smcli.inference.matcher import MatchModel

SIDES = ("keys", "values", "ctx_a", "ctx_s")


def int8_round_trip(t: torch.Tensor) -> torch.Tensor:
    codes, scale = encode_int8(t.float().numpy())
    return torch.from_numpy(codes.astype(np.float32) * scale.astype(np.float32)[..., None])


def int4_round_trip(t: torch.Tensor) -> torch.Tensor:
    a = t.float().numpy()
    scale = (np.abs(a).max(-1, keepdims=True) / 7).astype(np.float16).astype(np.float32)
    codes = np.clip(np.rint(np.divide(a, scale, out=np.zeros_like(a), where=scale > 0)), -7, 7)
    return torch.from_numpy(codes * scale)


CODECS = {
    "float16": (lambda t: t.half().float(), 2.0, False),
    "int8": (int8_round_trip, 1.0, False),
    "int4 (not offered)": (int4_round_trip, 0.5, False),
    "int8 + int8 embeddings (not offered)": (int8_round_trip, 1.0, True),
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="flickr8k")
    ap.add_argument("--regions", required=True)
    ap.add_argument("--captions", required=True)
    ap.add_argument("--split", default="test")
    ap.add_argument("--shortlist", type=int, default=50)
    ap.add_argument("--codecs", nargs="+", default=list(CODECS), choices=list(CODECS))
    args = ap.parse_args()

    model = MatchModel(args.model, device="cpu", precision="fp32")
    encode = model.encode_images
    for name in ["none (float32)", *args.codecs]:
        def coded(*a, _name=name, **k):
            gallery = encode(*a, **k)
            if _name in CODECS:
                fn, _, emb_too = CODECS[_name]
                for side in SIDES:
                    if getattr(gallery.side, side, None) is not None:
                        setattr(gallery.side, side, fn(getattr(gallery.side, side)))
                if emb_too:
                    gallery.side.emb = torch.nn.functional.normalize(int8_round_trip(gallery.side.emb), dim=-1)
            return gallery

        model.encode_images = coded
        result = protocol.evaluate(model, args.regions, args.captions, args.split, shortlist=args.shortlist)
        side = coded(["x"], [""], *_one_image(args.regions)).side
        per_image = sum(getattr(side, s)[0].numel() * CODECS.get(name, (None, 4.0))[1]
                        + (getattr(side, s)[0].numel() // getattr(side, s).shape[-1] * 2 if "int" in name else 0)
                        for s in SIDES if getattr(side, s, None) is not None)
        print(json.dumps({"codec": name, "split": args.split, "shortlist": args.shortlist,
                          "rsum": round(result.metrics.rsum, 2), **result.metrics.to_dict(),
                          "side_bytes_per_image": int(per_image)}), flush=True)


def _one_image(regions: str):
    from smcli.images.features import load_regions

    feats = load_regions(regions)
    return np.asarray(feats.regions[:1], np.float32), np.asarray(feats.global_[:1], np.float32)


if __name__ == "__main__":
    main()
