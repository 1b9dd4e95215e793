"""What a saved gallery's codec costs in retrieval quality: the standard two-stage protocol
on a split, with the per-image tensors (keys, values, ctx_a, ctx_s) passed through each
codec exactly as ``smcli index`` stores and ``retrieve --index`` reads them back.

    python bench/gallery_codec_quality.py --model flickr8k \
        --regions runs/flickr8k/feats.parquet --captions runs/flickr8k/captions.parquet

Codecs: float16 and int8 (smcli.inference.gallery.encode_int8: int8 per row with a float16
scale), and, for comparison only, int4 (the same per-row rule with 7 levels each side) and
int8 embeddings (the one-to-one vectors too; smcli keeps them float32); ``--pca R ...``: the
256-d projected regions (keys and values are linear in them) on their first R principal axes,
int8 (not offered: see BENCHMARKS.md); ``--transform W ...``: codec pca (smcli index --codec pca),
its keys weighted W in the code's error (``--fit-seeds``: fitted on random draws). Prints one JSON line
per codec: rsum, the six recalls and bytes per image of the stored tensors.
"""

from __future__ import annotations

import argparse
import json

import numpy as np
import torch

from smcli.evaluation import protocol
from smcli.inference.gallery import CHUNK, CODE_FIT_ROWS, encode_int8
from smcli.inference.gallery_codec import DEFAULT_BITS, TransformCode
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
    ap.add_argument("--codecs", nargs="*", default=list(CODECS), choices=list(CODECS))
    ap.add_argument("--no-float32", action="store_true", help="leave out the float32 reference line")
    ap.add_argument("--transform", type=float, nargs="*", default=[],
                    help="also: codec pca (what `smcli index --codec pca` stores) with these keys weights "
                         "(smcli's is 1), fitted as index fits it, on the instances of the split's first images")
    ap.add_argument("--fit-seeds", type=int, nargs="*", default=[],
                    help="with --transform: instead, fit on the images of a random draw of the split per seed "
                         "(the spread of the code's effect on rsum)")
    ap.add_argument("--bits", type=int, default=DEFAULT_BITS, help="with --transform: bits per instance")
    ap.add_argument("--pca", type=int, nargs="*", default=[],
                    help="also: the projected regions on their first R principal axes, int8 (one line per R)")
    args = ap.parse_args()

    model = MatchModel(args.model, device="cpu", precision="fp32")
    encode = model.encode_images
    names = [*([] if args.no_float32 else ["none (float32)"]), *args.codecs, *(f"pca-{r} int8" for r in args.pca)]
    names += [f"transform w{w:g} seed {s}" for w in args.transform for s in (args.fit_seeds or [-1])]
    for name in names:
        def coded(*a, _name=name, **k):
            gallery = encode(*a, **k)
            if _name.startswith("transform"):
                transform_round_trip(gallery.side, float(_name.split()[1][1:]), int(_name.split()[-1]), args.bits)
            elif _name.startswith("pca-"):
                pca_round_trip(model.model, a[2], gallery.side, int(_name[4:].split()[0]))
            elif _name in CODECS:
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
        if name.startswith("transform"):
            per_image = side.values.shape[1] * ((args.bits + 7) // 8) + sum(
                getattr(side, s)[0].numel() + 2 for s in ("ctx_a", "ctx_s") if getattr(side, s, None) is not None)
        elif name.startswith("pca-"):
            r = int(name[4:].split()[0])
            ctx = sum(getattr(side, s)[0].numel() + 2 for s in ("ctx_a", "ctx_s") if getattr(side, s, None) is not None)
            per_image = side.values.shape[1] * (r + 2) + ctx
        else:
            per_image = sum(getattr(side, s)[0].numel() * CODECS.get(name, (None, 4.0))[1]
                            + (getattr(side, s)[0].numel() // getattr(side, s).shape[-1] * 2 if "int" in name else 0)
                            for s in SIDES if getattr(side, s, None) is not None)
        print(json.dumps({"codec": name, "split": args.split, "shortlist": args.shortlist,
                          "rsum": round(result.metrics.rsum, 2), **result.metrics.to_dict(),
                          "side_bytes_per_image": int(per_image)}), flush=True)


@torch.inference_mode()
def pca_round_trip(net, regions, side, r: int) -> None:
    """The 256-d projected regions a (keys = W_a a and values = P_a a + b are linear in them) on
    their first r principal axes (fitted on this gallery's own regions), the coefficients int8
    per row; keys and values recomputed from the decoded a; ctx_a, ctx_s int8."""
    a = net.region_proj(torch.from_numpy(np.asarray(regions, np.float32))).double()  # [N, R, d]
    flat = a.reshape(-1, a.shape[-1])
    mean = flat.mean(0)
    _, _, vt = torch.linalg.svd(flat - mean, full_matrices=False)
    basis = vt[:r]  # [r, d]
    coef = ((a - mean) @ basis.T).float()
    a_hat = (int8_round_trip(coef).double() @ basis + mean).float()
    side.keys, side.values = net.W_a(a_hat), net.P_a(a_hat)
    for name in ("ctx_a", "ctx_s"):
        if getattr(side, name, None) is not None:
            setattr(side, name, int8_round_trip(getattr(side, name)))


@torch.inference_mode()
def transform_round_trip(side, keys_weight: float, seed: int, bits: int) -> None:
    """Keys and values through the transform code of codec "pca" (the embeddings float16, ctx
    int8), fitted as ``smcli index`` fits it, on the instances of its first chunk (CHUNK images):
    the split's first images (seed -1), or a random draw of its images (seed >= 0)."""
    kv = torch.cat([side.keys, side.values], -1).float().numpy()
    order = np.arange(len(kv)) if seed < 0 else np.random.default_rng(seed).permutation(len(kv))
    weights = np.ones(kv.shape[-1])
    weights[:side.keys.shape[-1]] = keys_weight
    code = TransformCode.fit(kv[order[:CHUNK]].reshape(-1, kv.shape[-1])[:CODE_FIT_ROWS], bits, weights=weights)
    dec = torch.from_numpy(code.decode(code.encode(kv)))
    side.keys, side.values = dec[..., :side.keys.shape[-1]].contiguous(), dec[..., side.keys.shape[-1]:].contiguous()
    side.emb = side.emb.half().float()
    for name in ("ctx_a", "ctx_s"):
        if getattr(side, name, None) is not None:
            setattr(side, name, int8_round_trip(getattr(side, name)))


def _one_image(regions: str):
    from smcli.images.features import load_regions

    feats = load_regions(regions)
    return np.asarray(feats.regions[:1], np.float32), np.asarray(feats.global_[:1], np.float32)


if __name__ == "__main__":
    main()
