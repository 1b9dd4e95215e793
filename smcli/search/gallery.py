"""``smcli index``: turn a regions file into a saved, memory-mapped search gallery."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from smcli.report import say
from smcli.runtime import autocast
from smcli.search.index import save_gallery

CHUNK = 512  # images encoded at a time


def build_index(session, regions_path: str, out: Path, kind: str = "auto") -> int:
    """Encode every image of ``regions_path`` once and save the gallery; returns its size."""
    from smcli.images.features import load_regions

    feats = load_regions(regions_path)
    session.check_features(feats.meta, feats.name)
    embeddings = []

    def chunks():
        for start in range(0, len(feats.image_ids), CHUNK):
            with torch.inference_mode(), autocast(session.device, session.precision):
                r = torch.from_numpy(np.asarray(feats.regions[start:start + CHUNK], np.float32))
                g = torch.from_numpy(np.asarray(feats.global_[start:start + CHUNK], np.float32))
                side = session.model.encode_images(r.to(session.device), g.to(session.device))
            embeddings.append(side.emb.float().cpu().numpy())
            yield {name: getattr(side, name).float().cpu().numpy()
                   for name in ("keys", "values", "ctx_a", "ctx_s") if getattr(side, name, None) is not None}

    meta = {"model_hash": session.loaded.hash, "model": session.name,
            "features": session.loaded.info.features, "regions_file": feats.name}
    # save_gallery consumes the chunks before it needs the embeddings
    save_gallery(Path(out), meta=meta, image_ids=feats.image_ids, paths=feats.paths,
                 embeddings=_Deferred(embeddings), side_chunks=chunks(), kind=kind)
    say("index", f"{len(feats.image_ids):,} images indexed in {out}")
    return len(feats.image_ids)


class _Deferred:
    """Concatenates the embedding chunks when faiss asks for them."""

    def __init__(self, parts: list[np.ndarray]):
        self.parts = parts

    def __array__(self, dtype=None, copy=None):
        arr = np.concatenate(self.parts)
        return arr.astype(dtype) if dtype is not None else arr
