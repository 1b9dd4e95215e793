"""``smcli retrieve --eval``: a trained model on one split, by the standard protocol."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from smcli.errors import InputError
from smcli.evaluation.recall import RecallMetrics, recall_metrics
from smcli.inference.scoring import exhaustive_scores, two_stage_scores
from smcli.runtime import autocast


@dataclass
class EvalResult:
    split: str
    mode: str  # "exhaustive" or "two-stage"
    shortlist: int
    metrics: RecallMetrics
    seconds: float  # scoring and ranking, the part exhaustive and two-stage differ in
    encode_seconds: float  # per-image and per-caption tensors (MiniLM states may be cached)
    pairs_scored: int
    folds: int

    def to_dict(self) -> dict[str, Any]:
        return {"split": self.split, "mode": self.mode, "shortlist": self.shortlist,
                "folds": self.folds, "seconds": round(self.seconds, 2),
                "encode_seconds": round(self.encode_seconds, 2),
                "pairs_scored": self.pairs_scored, **self.metrics.to_dict()}


def evaluate(model, regions: str, captions: str, split: str = "test", *,
             shortlist: int | None = 100, folds: int = 1, progress=None,
             image_text=None, text_weight: float = 2.0) -> EvalResult:
    """R@1/5/10 both ways on ``split``; ``shortlist=None`` scores every pair.

    ``image_text`` (an :class:`~smcli.images.read_text.ImageText`, the words read in the
    images): text -> image scores are fused with the caption's text score as
    ``retrieve --image-text`` does (:mod:`smcli.inference.text_spotting`; pairs whose text
    matches are scored by the matcher even outside the shortlist); image -> text is left
    as it is (the fusion is for text queries)."""
    from smcli.dataset import load_matching_data
    from smcli.stage import open_stage

    caps = open_stage(captions, "captions")
    model.check_captions(caps)
    caps.close()
    data = load_matching_data(regions, captions, command="retrieve", with_regions=model.many_to_many)
    model.check_features(data.features_meta, regions)
    rows = np.flatnonzero(data.split == split)
    if len(rows) == 0:
        found = sorted({str(s) for s in data.split})
        raise InputError(f"{captions}: no caption in split {split!r} (splits found: {', '.join(found)})")
    images = np.unique(data.caption_image[rows])
    if folds > 1 and len(images) % folds:
        raise InputError(f"--folds {folds}: {len(images)} {split} images do not split into equal folds")
    pos = np.full(len(data.image_ids), -1)
    pos[images] = np.arange(len(images))
    started = time.time()
    gallery = model.encode_images([data.image_ids[i] for i in images], [""] * len(images),
                              None if data.regions is None else data.regions[images],
                              data.global_[images])
    texts = model.encode_texts([data.caption_ids[i] for i in rows], [data.captions[i] for i in rows],
                          [data.token_ids[i] for i in rows])
    cap_img = pos[data.caption_image[rows]]
    encoded = time.time()
    spotted = None
    if image_text is not None:
        from smcli.inference.text_spotting import text_pairs

        spotted = text_pairs(image_text, gallery.image_ids, texts.texts)
    with autocast(model.device, model.precision):
        if shortlist is None or not model.many_to_many:
            scores = exhaustive_scores(model.model, gallery.side, texts.side, progress=progress)
            t2i = None if spotted is None else _fused(scores, spotted, text_weight)
            metrics = recall_metrics(scores, cap_img, t2i, folds=folds)
            pairs = scores.size if model.many_to_many else 0
            mode = "exhaustive" if model.many_to_many else "one-to-one"
        else:
            two = two_stage_scores(model.model, gallery.side, texts.side, shortlist, progress=progress)
            t2i = two.t2i
            if spotted is not None:
                t2i = _fused_two_stage(model, gallery, texts, t2i, spotted, text_weight)
            metrics = recall_metrics(two.i2t, cap_img, t2i, folds=folds)
            pairs, mode = two.pairs_scored, "two-stage"
    return EvalResult(split, mode, shortlist or 0, metrics, time.time() - encoded,
                      encoded - started, pairs, folds)


def _fused(scores: np.ndarray, spotted, weight: float) -> np.ndarray:
    from smcli.inference.text_spotting import fuse_text_to_image

    return fuse_text_to_image(scores, spotted, weight)


def _fused_two_stage(model, gallery, texts, t2i: np.ndarray, spotted, weight: float) -> np.ndarray:
    """Two-stage t2i with the fusion: text-matched pairs outside the shortlist are scored
    and joined to it, then each caption's shortlist is fused (re-ranked entries keep their
    offset above the embedding-only ones)."""
    from smcli.inference.scoring import SHORTLIST_OFFSET
    from smcli.inference.text_spotting import fuse_text_to_image

    t2i = np.array(t2i, np.float64, copy=True)
    ii, cc, _ = spotted
    outside = t2i[ii, cc] < SHORTLIST_OFFSET / 2
    if outside.any():
        t2i[ii[outside], cc[outside]] = SHORTLIST_OFFSET + model.score_pairs(gallery, texts, ii[outside], cc[outside])
    shortlisted = t2i >= SHORTLIST_OFFSET / 2
    fused = fuse_text_to_image(np.where(shortlisted, t2i - SHORTLIST_OFFSET, t2i), spotted, weight, shortlisted)
    return np.where(shortlisted, fused + SHORTLIST_OFFSET, t2i)
