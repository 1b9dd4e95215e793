"""The recall protocol on hand-computed cases and against a naive second implementation."""

from __future__ import annotations

import numpy as np
import pytest

from smcli.evaluation.recall import (
    image_to_text_ranks,
    recall_metrics,
    text_to_image_ranks,
)


def naive_metrics(scores: np.ndarray, caption_image: np.ndarray) -> dict[str, float]:
    """Loops and sorting, ties broken against the model (the true item goes last)."""
    n_img, n_cap = scores.shape
    i2t = []
    for i in range(n_img):
        # sort by score descending; among equal scores, other captions come first
        order = sorted(range(n_cap), key=lambda c: (-scores[i, c], caption_image[c] == i))
        i2t.append(min(pos + 1 for pos, c in enumerate(order) if caption_image[c] == i))
    t2i = []
    for c in range(n_cap):
        order = sorted(range(n_img), key=lambda i: (-scores[i, c], i == caption_image[c]))
        t2i.append(order.index(caption_image[c]) + 1)
    out = {}
    for name, ranks in (("i2t", i2t), ("t2i", t2i)):
        for k in (1, 5, 10):
            out[f"{name}_r{k}"] = 100.0 * np.mean([r <= k for r in ranks])
        out[f"{name}_meanr"] = float(np.mean(ranks))
        out[f"{name}_medr"] = float(np.floor(np.median(ranks)))
    out["rsum"] = sum(v for k, v in out.items() if "_r" in k and "medr" not in k and "meanr" not in k)
    return out


def test_hand_computed_case():
    # 3 images, 2 captions each: captions 0,1 -> image 0; 2,3 -> image 1; 4,5 -> image 2
    cap_img = np.array([0, 0, 1, 1, 2, 2])
    s = np.array([
        [0.9, 0.1, 0.5, 0.2, 0.3, 0.0],  # image 0: own best 0.9 is rank 1
        [0.8, 0.7, 0.6, 0.1, 0.0, 0.0],  # image 1: own best 0.6 is behind 0.8, 0.7 -> rank 3
        [0.1, 0.2, 0.3, 0.4, 0.5, 0.6],  # image 2: own best 0.6 -> rank 1
    ])
    assert image_to_text_ranks(s, cap_img).tolist() == [1, 3, 1]
    # caption 0: image 0 has 0.9 (best) -> 1; caption 1: 0.1 vs 0.7, 0.2 -> 3;
    # caption 2: 0.5, 0.6, 0.3 -> image 1 is best -> 1; caption 3: 0.2, 0.1, 0.4 -> 3;
    # caption 4: 0.3, 0.0, 0.5 -> 1; caption 5: 0.0, 0.0, 0.6 -> 1
    assert text_to_image_ranks(s, cap_img).tolist() == [1, 3, 1, 3, 1, 1]
    m = recall_metrics(s, cap_img)
    assert m.i2t_r1 == pytest.approx(200 / 3)
    assert m.i2t_r5 == 100.0
    assert m.t2i_r1 == pytest.approx(400 / 6)
    assert m.t2i_medr == 1.0
    assert m.t2i_meanr == pytest.approx(10 / 6)
    assert m.rsum == pytest.approx(200 / 3 + 100 + 100 + 400 / 6 + 100 + 100)


def test_ties_count_against_the_model():
    cap_img = np.repeat(np.arange(20), 5)
    m = recall_metrics(np.zeros((20, 100)), cap_img)
    assert m.i2t_r1 == 0.0 and m.t2i_r1 == 0.0
    assert m.i2t_meanr == 96.0  # 95 other captions tie with the own ones
    assert m.t2i_meanr == 20.0


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_matches_naive_implementation_on_random_scores(seed):
    rng = np.random.default_rng(seed)
    n_img = 30
    cap_img = np.repeat(np.arange(n_img), 5)
    rng.shuffle(cap_img)
    # coarse values make ties common, which is where implementations differ
    scores = np.round(rng.normal(size=(n_img, len(cap_img))), 1)
    scores[cap_img, np.arange(len(cap_img))] += 0.8  # some signal
    got = recall_metrics(scores, cap_img).to_dict()
    want = naive_metrics(scores, cap_img)
    for key, value in want.items():
        assert got[key] == pytest.approx(value), key


def test_folds_average_the_fold_metrics():
    rng = np.random.default_rng(3)
    cap_img = np.repeat(np.arange(10), 5)
    scores = rng.normal(size=(10, 50))
    m = recall_metrics(scores, cap_img, folds=2)
    a = naive_metrics(scores[:5, :25], cap_img[:25])
    b = naive_metrics(scores[5:, 25:], cap_img[25:] - 5)
    assert m.rsum == pytest.approx((a["rsum"] + b["rsum"]) / 2)
    assert m.i2t_r1 == pytest.approx((a["i2t_r1"] + b["i2t_r1"]) / 2)
    with pytest.raises(ValueError):
        recall_metrics(scores, cap_img, folds=3)


def test_separate_direction_scores_for_two_stage():
    cap_img = np.array([0, 1])
    i2t = np.array([[1.0, 0.0], [0.0, 1.0]])  # perfect one way
    t2i = np.array([[0.0, 1.0], [1.0, 0.0]])  # wrong the other
    m = recall_metrics(i2t, cap_img, t2i)
    assert m.i2t_r1 == 100.0 and m.t2i_r1 == 0.0


def test_global_weight_fuses_two_partly_right_scorers():
    """Each scorer alone ranks half the captions right; their sum ranks all of them."""
    from smcli.training.fusion import choose_global_weight

    n = 6
    cap_img = np.arange(n)
    own = np.eye(n)
    wrong = np.roll(np.eye(n), 1, axis=0)  # each caption prefers the next image
    first, second = np.arange(n) < n // 2, np.arange(n) >= n // 2
    matcher = np.where(first, own + 0.3 * wrong, 0.3 * wrong)  # right on the first half
    cosine = np.where(second, own + 0.3 * wrong, 0.3 * wrong)  # right on the second half
    assert recall_metrics(matcher, cap_img).t2i_r1 == 50.0
    assert recall_metrics(cosine, cap_img).t2i_r1 == 50.0
    weight, m = choose_global_weight(matcher, cosine, cap_img)
    assert 0 < weight and m.t2i_r1 == 100.0 and m.i2t_r1 == 100.0
    # a cosine that only misleads is left out
    weight, m = choose_global_weight(own, wrong, cap_img)
    assert weight == 0.0 and m.rsum == recall_metrics(own, cap_img).rsum


def test_global_weight_grid_extends_while_the_largest_weight_wins():
    """A matcher whose scores are 100x the cosine's needs a weight past the base grid."""
    from smcli.training.fusion import WEIGHT_GRID, choose_global_weight

    n = 6
    cap_img = np.arange(n)
    own, wrong = np.eye(n), np.roll(np.eye(n), 1, axis=0)
    weight, m = choose_global_weight(100 * wrong, own, cap_img)
    assert weight > 100 > WEIGHT_GRID[-1] and m.rsum == 600.0
