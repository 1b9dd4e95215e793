"""Search: text -> images and image -> texts, exhaustive or two-stage.

Two-stage: a faiss index over the one-to-one embeddings shortlists ``shortlist``
candidates per query, and the many-to-many matcher re-ranks only those. Exhaustive: every
candidate goes through the matcher (the reference). One-to-one models (vse, cca) rank by
their embedding alone, so both modes are the same for them.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from smcli.evaluation.scoring import exhaustive_scores
from smcli.runtime import autocast
from smcli.search.index import build_faiss, search
from smcli.search.session import Gallery, MatchSession, Texts


@dataclass
class Ranking:
    """Top candidates of each query: indices into the candidate list and their scores."""

    items: list[np.ndarray]
    scores: list[np.ndarray]


def _top(scores: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Per row, the k best columns in descending score order (stable for ties)."""
    k = min(k, scores.shape[1])
    order = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    return order, np.take_along_axis(scores, order, 1)


def _rank(session: MatchSession, query_emb: np.ndarray, cand_emb: np.ndarray,
          score_fn, top_k: int, shortlist: int | None) -> Ranking:
    """Generic ranking: queries [Q, d] against candidates [N, d]; score_fn(q_rows, c_rows)
    returns many-to-many scores of aligned (query, candidate) pairs."""
    n_q = len(query_emb)
    if not session.many_to_many or shortlist is not None and shortlist <= 0:
        emb_scores = query_emb @ cand_emb.T
        order, vals = _top(emb_scores, top_k)
        return Ranking(list(order), list(vals))
    if shortlist is None:  # exhaustive
        scores = score_fn(None, None)  # [Q, N]
        order, vals = _top(scores, top_k)
        return Ranking(list(order), list(vals))
    k = max(shortlist, top_k)
    index = build_faiss(cand_emb)
    _, cand = search(index, query_emb, k)  # [Q, k]
    qq = np.repeat(np.arange(n_q), cand.shape[1])
    cc = cand.reshape(-1)
    valid = cc >= 0
    s = np.full(len(cc), -np.inf)
    s[valid] = score_fn(qq[valid], cc[valid])
    s = s.reshape(n_q, -1)
    local, vals = _top(s, top_k)
    items = np.take_along_axis(cand, local, 1)
    return Ranking([i[np.isfinite(v)] for i, v in zip(items, vals)],
                   [v[np.isfinite(v)] for v in vals])


def images_for_texts(session: MatchSession, gallery: Gallery, queries: Texts, top_k: int,
                     shortlist: int | None) -> Ranking:
    """For each query text, the best images of the gallery."""
    def score_fn(q, c):
        if q is None:
            with autocast(session.device, session.precision):
                return exhaustive_scores(session.model, gallery.side, queries.side).T
        return session.score_pairs(gallery, queries, c, q)

    return _rank(session, _np(queries.side.emb), _np(gallery.side.emb), score_fn, top_k, shortlist)


def texts_for_images(session: MatchSession, images: Gallery, texts: Texts, top_k: int,
                     shortlist: int | None) -> Ranking:
    """For each image, the best texts."""
    def score_fn(q, c):
        if q is None:
            with autocast(session.device, session.precision):
                return exhaustive_scores(session.model, images.side, texts.side)
        return session.score_pairs(images, texts, q, c)

    return _rank(session, _np(images.side.emb), _np(texts.side.emb), score_fn, top_k, shortlist)


def _np(t: torch.Tensor) -> np.ndarray:
    return t.float().cpu().numpy()
