"""Bidirectional hinge ranking losses (margin alpha), and the negatives they are mined from.

``negatives`` chooses how the negatives of each positive pair are combined:
"hardest" (VSE++: only the hardest), "sum" (the paper: all of them), or an integer K
(the sum over the K hardest).
"""

from __future__ import annotations

import torch


def _reduce(violations: torch.Tensor, negatives: str | int) -> torch.Tensor:
    """violations [B, K] (a huge negative where not a negative) -> hinge loss [B]."""
    if negatives == "hardest":
        violations = violations.max(1, keepdim=True).values
    elif negatives != "sum":
        violations = violations.topk(min(int(negatives), violations.shape[1]), dim=1).values
    return violations.clamp(min=0).sum(1)


def ranking_loss_grid(scores: torch.Tensor, positive: torch.Tensor, margin: float,
                      negatives: str | int = "hardest", rows: torch.Tensor | None = None) -> torch.Tensor:
    """Loss over a square batch: scores[i, j] = s(image of pair i, caption of pair j).

    ``positive[i, j]`` marks pairs that match (the diagonal, plus captions of the same image).
    ``rows`` (data-parallel training): only the terms of those positives (each reads its row
    and its column), divided by the whole batch's size, so the processes' parts add up to
    the batch's mean.
    """
    diag = scores.diagonal()
    neg_inf = torch.finfo(scores.dtype).min
    cost_c = (margin + scores - diag[:, None]).masked_fill(positive, neg_inf)  # image i vs caption j
    cost_i = (margin + scores - diag[None, :]).masked_fill(positive, neg_inf)  # caption j vs image i
    if rows is not None:
        return (_reduce(cost_c[rows], negatives) + _reduce(cost_i.T[rows], negatives)).sum() / len(scores)
    return (_reduce(cost_c, negatives) + _reduce(cost_i.T, negatives)).mean()


def ranking_loss_mined(pos: torch.Tensor, neg_captions: torch.Tensor, neg_images: torch.Tensor,
                       margin: float, negatives: str | int = "hardest",
                       valid_captions: torch.Tensor | None = None,
                       valid_images: torch.Tensor | None = None, of: int | None = None) -> torch.Tensor:
    """Loss from mined negatives: pos [B], neg_captions [B, K] (other captions for the
    positive's image), neg_images [B, K] (other images for the positive's caption). ``of``
    (data-parallel training): these are some of a batch of ``of`` positives: their sum / of."""
    neg_inf = torch.finfo(pos.dtype).min
    cost_c = margin + neg_captions - pos[:, None]
    cost_i = margin + neg_images - pos[:, None]
    if valid_captions is not None:
        cost_c = cost_c.masked_fill(~valid_captions, neg_inf)
    if valid_images is not None:
        cost_i = cost_i.masked_fill(~valid_images, neg_inf)
    terms = _reduce(cost_c, negatives) + _reduce(cost_i, negatives)
    return terms.mean() if of is None else terms.sum() / of


def mine_negatives(emb: torch.Tensor, positive: torch.Tensor, k: int):
    """The ``k`` hardest negatives of each positive pair by the (cheap) one-to-one score.

    ``emb[i, j]`` = s(image of pair i, caption of pair j), ``positive`` as in
    :func:`ranking_loss_grid`. Returns (captions [B, k]: other captions for pair i's image,
    images [B, k]: the pairs whose images are negatives for caption j, and where each is a
    real negative: [B, k] bools, False where a batch has fewer than k negatives).
    """
    masked = emb.masked_fill(positive, float("-inf"))
    neg_c = masked.topk(k, dim=1).indices
    neg_i = masked.topk(k, dim=0).indices.T
    valid_c = torch.isfinite(masked.gather(1, neg_c))
    valid_i = torch.isfinite(masked.T.gather(1, neg_i))
    return neg_c, neg_i, valid_c, valid_i
