"""The weight of the one-to-one cosine in a many-to-many score, chosen on val.

With ``--global-weight val`` the matcher is trained on its own score (the cosine of the
one-to-one head is left out), and after every epoch the weight w of
``score = matcher + w * cosine`` is the grid value with the best val rsum. This keeps the
head's cosine out of what the matcher learns from: on the training images the head is
nearly perfect (Flickr8k: rsum 548 on train against 307 on val), so a weight learned there
teaches the matcher to correct errors the head does not make on new images.
"""

from __future__ import annotations

import numpy as np

from smcli.evaluation.recall import RecallMetrics, recall_metrics

# 0 and 0.1 .. 12.8 in steps of sqrt(2) (val rsum is flat within a step near the best),
# extended upwards in the same steps while the largest weight tried is as good as the best
WEIGHT_GRID = (0.0, *(round(0.1 * 2 ** (k / 2), 4) for k in range(15)))
MAX_WEIGHT = 1e4  # the cosine alone, in effect


def choose_global_weight(i2t: np.ndarray, cosine: np.ndarray, caption_image: np.ndarray,
                         t2i: np.ndarray | None = None) -> tuple[float, RecallMetrics]:
    """The grid weight whose fused scores give the best rsum, and those metrics.

    ``i2t``/``t2i`` are the matcher's ranking scores [images, captions] without the cosine
    (two-stage: shortlisted entries offset above the rest, the rest the cosine itself, whose
    order adding ``w * cosine`` keeps); ``cosine`` is the one-to-one head's [images, captions].
    """
    cosine = np.asarray(cosine, dtype=np.float64)

    def fused(w: float) -> RecallMetrics:
        return recall_metrics(i2t + w * cosine, caption_image, None if t2i is None else t2i + w * cosine)

    weights = list(WEIGHT_GRID)
    best: tuple[float, RecallMetrics] | None = None
    for w in weights:  # grows while the largest weight tried is (one of) the best
        m = fused(w)
        if best is None or m.rsum > best[1].rsum:
            best = (w, m)
        if w == weights[-1] and m.rsum >= best[1].rsum and w < MAX_WEIGHT:
            weights.append(round(w * 2 ** 0.5, 4))
    assert best is not None
    return best
