"""Ranking candidates for queries: the one shortlist-and-re-rank, and ranked results as tables.

Two-stage: a faiss index over the one-to-one embeddings shortlists ``shortlist``
candidates per query, and the many-to-many matcher re-ranks only those
(:func:`rerank_shortlists`). Exhaustive: every candidate goes through the matcher (the
reference). One-to-one models (vse, cca) rank by their embedding alone, so both modes are
the same for them. Every text -> image and image -> text search (a regions file, a saved
gallery) goes through :func:`rank`; the evaluation protocol's full score matrices use the
same re-ranking in :func:`smcli.inference.scoring.two_stage_scores`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import pyarrow as pa

# score_fn(query_rows, candidate_rows) -> scores of those aligned pairs, float
PairScorer = Callable[[np.ndarray, np.ndarray], np.ndarray]


@dataclass
class Ranking:
    """Top candidates of each query: indices into the candidate list and their scores."""

    items: list[np.ndarray]
    scores: list[np.ndarray]


def check_finite(values: np.ndarray, what: str) -> None:
    """Refuse NaN/inf scores or embeddings, naming the first row: a NaN must never rank
    (it sorts last, so its candidate would silently drop out) nor count as a hit."""
    values = np.asarray(values)
    bad = ~np.isfinite(values.reshape(len(values), -1)).all(1) if values.size else np.zeros(0, bool)
    if bad.any():
        from smcli.errors import InputError

        raise InputError(f"{what}: non-finite (NaN/inf) values in {int(bad.sum()):,} row(s), first row "
                         f"{int(np.flatnonzero(bad)[0])}; the features or the model hold NaN/inf")


def top_columns(scores: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Per row, the k best columns in descending score order (stable for ties); NaN/inf
    scores are refused."""
    check_finite(scores, "scores")
    k = min(k, scores.shape[1])
    order = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    return order, np.take_along_axis(scores, order, 1)


def rerank_shortlists(candidates: np.ndarray, score_fn: PairScorer, top_k: int) -> Ranking:
    """Re-rank each query's shortlist (``candidates`` [Q, k], -1 where faiss found fewer)
    by ``score_fn`` and keep the ``top_k`` best of each."""
    n_q = len(candidates)
    qq = np.repeat(np.arange(n_q), candidates.shape[1])
    cc = candidates.reshape(-1)
    valid = cc >= 0
    s = np.full(len(cc), -np.inf)
    if valid.any():
        got = np.asarray(score_fn(qq[valid], cc[valid]))
        if not np.isfinite(got).all():
            check_finite(got, "re-ranked scores (rows are query-candidate pairs)")
        s[valid] = got
    s = s.reshape(n_q, -1)
    local, vals = top_columns(s, top_k)
    items = np.take_along_axis(candidates, local, 1)
    return Ranking([i[np.isfinite(v)] for i, v in zip(items, vals)],
                   [v[np.isfinite(v)] for v in vals])


def rank(query_emb: np.ndarray, *, top_k: int, many_to_many: bool, shortlist: int | None,
         score_fn: PairScorer | None = None, exhaustive_fn: Callable[[], np.ndarray] | None = None,
         cand_emb: np.ndarray | None = None, index=None) -> Ranking:
    """Rank candidates for queries [Q, d].

    One-to-one models (or ``shortlist <= 0``) rank by the embedding: against ``cand_emb``
    [N, d], or through a faiss ``index`` when there is one. Many-to-many models score every
    candidate with ``exhaustive_fn()`` -> [Q, N] when ``shortlist`` is None, else shortlist
    ``max(shortlist, top_k)`` candidates by embedding (``index``, or a flat faiss index built
    over ``cand_emb``) and re-rank them with ``score_fn``.
    """
    from smcli.inference.gallery import build_faiss, search

    check_finite(query_emb, "query embeddings")
    if cand_emb is not None:
        check_finite(cand_emb, "candidate embeddings")
    if not many_to_many or shortlist is not None and shortlist <= 0:
        if index is None:
            order, vals = top_columns(query_emb @ cand_emb.T, top_k)
            return Ranking(list(order), list(vals))
        vals, cand = search(index, query_emb, top_k)
        keep = [row >= 0 for row in cand]
        return Ranking([row[k] for row, k in zip(cand, keep)], [s[k] for s, k in zip(vals, keep)])
    if shortlist is None:
        order, vals = top_columns(exhaustive_fn(), top_k)
        return Ranking(list(order), list(vals))
    if index is None:
        index = build_faiss(cand_emb)
    _, cand = search(index, query_emb, max(shortlist, top_k))
    return rerank_shortlists(cand, score_fn, top_k)


def ranking_table(queries: Sequence, ranking: Ranking, query_column: str,
                  columns: dict[str, Callable[[int], object]], order: Sequence[str] | None = None) -> pa.Table:
    """Ranked results as rows: ``query_column``, rank, then ``columns`` (name -> the value
    for a candidate index) with score after the first of them, or the columns in ``order``.
    Ranks start at 1; text columns are strings, rank int32, score float64."""
    names = list(columns)
    out: dict[str, list] = {query_column: [], "rank": [], **{n: [] for n in names}, "score": []}
    for q, items, scores in zip(queries, ranking.items, ranking.scores):
        for r, (c, s) in enumerate(zip(items, scores), start=1):
            out[query_column].append(q)
            out["rank"].append(r)
            for n in names:
                out[n].append(columns[n](int(c)))
            out["score"].append(float(s))
    order = order or [query_column, "rank", names[0], "score", *names[1:]]
    return pa.table({k: (pa.array(out[k], pa.int32()) if k == "rank" else
                         pa.array(out[k], pa.float64()) if k == "score" else
                         pa.array(out[k], pa.string())) for k in order})
