"""The image-sentence retrieval protocol, in one place.

Given scores of every test image against every test caption (5 captions per image in
Flickr8k/30k and COCO):

- image -> text: for each image, the rank of the best-ranked of its own captions among all
  captions; R@K is the share of images with that rank <= K.
- text -> image: for each caption, the rank of its image among all images.
- rsum = the sum of the six R@K (K = 1, 5, 10), in percent; also median and mean rank.

Ties count against the model: a candidate scoring the same as the true one is ranked above
it, so a constant scorer gets the worst ranks, not the best.
``folds`` splits the images into equal consecutive folds (COCO "1K" protocol) and averages.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

KS = (1, 5, 10)


@dataclass
class RecallMetrics:
    i2t_r1: float
    i2t_r5: float
    i2t_r10: float
    i2t_medr: float
    i2t_meanr: float
    t2i_r1: float
    t2i_r5: float
    t2i_r10: float
    t2i_medr: float
    t2i_meanr: float
    rsum: float
    images: int
    captions: int

    def to_dict(self) -> dict[str, float]:
        return asdict(self)

    def short(self) -> str:
        return (f"i2t {self.i2t_r1:.1f}/{self.i2t_r5:.1f}/{self.i2t_r10:.1f} "
                f"t2i {self.t2i_r1:.1f}/{self.t2i_r5:.1f}/{self.t2i_r10:.1f} rsum {self.rsum:.1f}")


def image_to_text_ranks(scores: np.ndarray, caption_image: np.ndarray) -> np.ndarray:
    """Rank (1 = best) of each image's best own caption; scores is [images, captions]."""
    n_img = scores.shape[0]
    own = caption_image[None, :] == np.arange(n_img)[:, None]  # [I, C]
    best_own = np.where(own, scores, -np.inf).max(1)
    if np.isneginf(best_own).any():
        raise ValueError("every image needs at least one caption")
    # other captions scoring at least as high as the best own caption rank above it
    return 1 + ((scores >= best_own[:, None]) & ~own).sum(1)


def text_to_image_ranks(scores: np.ndarray, caption_image: np.ndarray) -> np.ndarray:
    """Rank (1 = best) of each caption's own image; scores is [images, captions]."""
    cols = np.arange(scores.shape[1])
    own = scores[caption_image, cols]  # [C]
    return (scores >= own[None, :]).sum(0)  # counts the own image itself once -> rank


def _summary(ranks: np.ndarray) -> tuple[float, ...]:
    recalls = tuple(100.0 * float((ranks <= k).mean()) for k in KS)
    return (*recalls, float(np.floor(np.median(ranks)) + 0.0), float(ranks.mean()))


def check_finite(scores: np.ndarray, what: str) -> None:
    """Refuse NaN/inf scores, naming the first: a NaN compares false with everything, so
    it would rank first or never, and give hits and mean ranks below 1 that mean nothing."""
    bad = ~np.isfinite(scores)
    if bad.any():
        from smcli.errors import InputError

        i, c = (int(x[0]) for x in np.nonzero(bad))
        raise InputError(f"{what} scores: {int(bad.sum()):,} non-finite (NaN/inf), first at image row {i}, "
                         f"caption column {c}; the features or the model hold NaN/inf")


def recall_metrics(i2t_scores: np.ndarray, caption_image: np.ndarray,
                   t2i_scores: np.ndarray | None = None, folds: int = 1) -> RecallMetrics:
    """Protocol metrics. ``t2i_scores`` defaults to ``i2t_scores`` (they differ only in
    two-stage search, where each direction has its own shortlist)."""
    i2t_scores = np.asarray(i2t_scores, dtype=np.float64)
    t2i_scores = i2t_scores if t2i_scores is None else np.asarray(t2i_scores, dtype=np.float64)
    caption_image = np.asarray(caption_image)
    check_finite(i2t_scores, "image-to-text")
    if t2i_scores is not i2t_scores:
        check_finite(t2i_scores, "text-to-image")
    n_img, n_cap = i2t_scores.shape
    if folds == 1:
        a = _summary(image_to_text_ranks(i2t_scores, caption_image))
        b = _summary(text_to_image_ranks(t2i_scores, caption_image))
        return RecallMetrics(*a, *b, rsum=sum(a[:3]) + sum(b[:3]), images=n_img, captions=n_cap)
    if n_img % folds:
        raise ValueError(f"{n_img} images do not split into {folds} equal folds")
    size = n_img // folds
    parts = []
    for f in range(folds):
        lo, hi = f * size, (f + 1) * size
        cols = np.flatnonzero((caption_image >= lo) & (caption_image < hi))
        parts.append(recall_metrics(i2t_scores[lo:hi][:, cols], caption_image[cols] - lo,
                                    t2i_scores[lo:hi][:, cols]))
    mean = {k: float(np.mean([getattr(p, k) for p in parts]))
            for k in RecallMetrics.__dataclass_fields__ if k not in ("images", "captions")}
    return RecallMetrics(**mean, images=n_img, captions=n_cap)


GATE_METRICS = frozenset({"i2t_r1", "i2t_r5", "i2t_r10", "t2i_r1", "t2i_r5", "t2i_r10", "rsum"})  # higher is better


def parse_gates(specs: list[str], metrics: set[str]) -> dict[str, float]:
    """``METRIC=VALUE`` gates (``rsum=300``, ``t2i_r1=20``) -> {metric: value}."""
    from smcli.errors import UsageError

    gates = {}
    for spec in specs:
        name, sep, value = spec.partition("=")
        name = name.strip().lower().replace("@", "")  # i2t_R@1 -> i2t_r1
        try:
            number = float(value)
        except ValueError:
            number = None
        if not sep or number is None or name not in metrics:
            raise UsageError(f"--fail-under {spec}: give METRIC=VALUE, METRIC one of {', '.join(sorted(metrics))}")
        gates[name] = number
    return gates


def check_gates(values: dict[str, float], gates: dict[str, float], command: str) -> None:
    """Raise :class:`~smcli.errors.GateError` naming every figure below its gate."""
    from smcli.errors import GateError

    short = [f"{k} {values[k]:g} < {v:g}" for k, v in gates.items() if not values[k] >= v]
    if short:
        raise GateError(f"{command}: below --fail-under: {', '.join(short)}")
