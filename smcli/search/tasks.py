"""What the search commands do, as library functions returning Arrow tables.

- :func:`score_pairs`: a score for each (image, caption) pair, in input order;
- :func:`rank_captions`: candidate captions ranked for each image;
- :func:`search_images` / :func:`search_texts`: retrieval with a text or an image query.
Rows that cannot be scored (unknown ids) go to the run report, never silently away.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from smcli.errors import InputError
from smcli.report import RunReport
from smcli.search.inputs import ImageSet, as_strings, read_table_any, require_columns
from smcli.search.retrieve import Ranking, images_for_texts, texts_for_images
from smcli.search.session import MatchSession


@dataclass
class CaptionSet:
    """Captions from a captions file: ids, image ids, text and token ids."""

    caption_ids: list[str]
    image_ids: list[str | None]
    captions: list[str]
    token_ids: list[list[int]]
    name: str


def load_captions(session: MatchSession, path: str) -> CaptionSet:
    from smcli.stage import open_stage

    stage = open_stage(path, "captions")
    try:
        session.check_captions(stage)
        t = stage.read(["caption_id", "image_id", "caption", "token_ids"])
    finally:
        stage.close()
    return CaptionSet(t.column("caption_id").to_pylist(), t.column("image_id").to_pylist(),
                      t.column("caption").to_pylist(), t.column("token_ids").to_pylist(), stage.name)


def load_features(session: MatchSession, path: str):
    from smcli.images.features import load_regions

    feats = load_regions(path)
    session.check_features(feats.meta, feats.name)
    return feats


# -- score ------------------------------------------------------------------------------

def score_pairs(session: MatchSession, feats, caps: CaptionSet, pairs_path: str | None,
                report: RunReport) -> pa.Table:
    """Scores of (image_id, caption) pairs: from a pairs file (caption_id or caption text),
    or each caption with its own image. Output rows keep the input order."""
    cap_pos = {c: i for i, c in enumerate(caps.caption_ids)}
    img_pos = feats.index()
    if pairs_path is None:
        source = caps.name
        pair_images = caps.image_ids
        pair_caps: list[str | None] = list(caps.caption_ids)
        pair_texts: list[str | None] = [None] * len(pair_images)
    else:
        source = pairs_path
        table = read_table_any(pairs_path, "pairs")
        (img_col,) = require_columns(table, pairs_path, ("image_id", "image"))
        pair_images = as_strings(table, img_col)
        if "caption_id" in table.column_names:
            pair_caps, pair_texts = as_strings(table, "caption_id"), [None] * table.num_rows
        else:
            (text_col,) = require_columns(table, pairs_path, ("caption", "text", "query"))
            pair_caps, pair_texts = [None] * table.num_rows, as_strings(table, text_col)
    keep, ii, text_rows = [], [], []
    extra_texts: list[str] = []
    for row, (image, cap, text) in enumerate(zip(pair_images, pair_caps, pair_texts), start=1):
        where = f"row {row}"
        if image is None or image not in img_pos:
            report.reject(source, where, f"image {image!r} is not in {feats.name}")
            continue
        if cap is not None:
            if cap not in cap_pos:
                report.reject(source, where, f"caption {cap!r} is not in {caps.name}")
                continue
            text_rows.append(("caption", cap_pos[cap]))
        else:
            if not text or not text.strip():
                report.reject(source, where, "empty caption")
                continue
            text_rows.append(("text", len(extra_texts)))
            extra_texts.append(text)
        keep.append(row - 1)
        ii.append(img_pos[image])
    if not keep:
        raise InputError(f"{source}: no pair could be scored (see the rejected rows above)")
    # encode each image and caption once, however many pairs use it
    used_imgs, img_inv = np.unique(ii, return_inverse=True)
    used_caps = sorted({r for kind, r in text_rows if kind == "caption"})
    cap_local = {r: k for k, r in enumerate(used_caps)}
    texts_all = [caps.captions[r] for r in used_caps] + extra_texts
    ids_all = [caps.caption_ids[r] for r in used_caps] + [None] * len(extra_texts)
    tok_all = ([caps.token_ids[r] for r in used_caps] if not extra_texts else None)
    gallery = session.gallery([feats.image_ids[i] for i in used_imgs],
                              [feats.paths[i] for i in used_imgs],
                              feats.regions[used_imgs], feats.global_[used_imgs])
    texts = session.texts(ids_all, texts_all, tok_all, cache=False)
    cc = np.array([cap_local[r] if kind == "caption" else len(used_caps) + r for kind, r in text_rows])
    scores = session.score_pairs(gallery, texts, img_inv, cc)
    return pa.table({
        "image_id": [pair_images[k] for k in keep],
        "caption_id": [ids_all[c] for c in cc],
        "caption": [texts_all[c] for c in cc],
        "score": pa.array(scores, pa.float64()),
    })


# -- caption-rank -----------------------------------------------------------------------

def rank_captions(session: MatchSession, images: ImageSet, caps: CaptionSet | None,
                  candidates_path: str | None, top_k: int, shortlist: int | None,
                  report: RunReport) -> pa.Table:
    """Rank captions for each image: all of ``caps``, or each image's own candidate list."""
    gallery = session.gallery(images.image_ids, images.paths, images.regions, images.global_)
    out = {"image_id": [], "caption_id": [], "caption": [], "rank": [], "score": []}
    if candidates_path is None:
        if caps is None:
            raise InputError("caption-rank needs --captions or --candidates")
        texts = session.texts(caps.caption_ids, caps.captions, caps.token_ids)
        ranking = texts_for_images(session, gallery, texts, top_k or len(caps.captions), shortlist)
        _append_ranking(out, ranking, images.image_ids, texts.ids, texts.texts, key="image_id")
    else:
        table = read_table_any(candidates_path, "candidates")
        img_col, text_col = require_columns(table, candidates_path, ("image_id", "image"),
                                            ("caption", "text"))
        cand_imgs, cand_texts = as_strings(table, img_col), as_strings(table, text_col)
        cand_ids = (as_strings(table, "caption_id") if "caption_id" in table.column_names
                    else [f"{candidates_path}:{r + 1}" for r in range(table.num_rows)])
        pos = gallery.position()
        keep = []
        for r, (im, tx) in enumerate(zip(cand_imgs, cand_texts), start=1):
            if im not in pos:
                report.reject(candidates_path, f"row {r}", f"image {im!r} is not among the images ranked")
            elif not tx or not tx.strip():
                report.reject(candidates_path, f"row {r}", "empty caption")
            else:
                keep.append(r - 1)
        if not keep:
            raise InputError(f"{candidates_path}: no candidate could be ranked")
        texts = session.texts([cand_ids[k] for k in keep], [cand_texts[k] for k in keep], cache=False)
        ii = np.array([pos[cand_imgs[k]] for k in keep])
        scores = session.score_pairs(gallery, texts, ii, np.arange(len(keep)))
        for img_row in np.unique(ii):
            mine = np.flatnonzero(ii == img_row)
            order = mine[np.argsort(-scores[mine], kind="stable")]
            if top_k:
                order = order[:top_k]
            for rank, c in enumerate(order, start=1):
                out["image_id"].append(gallery.image_ids[img_row])
                out["caption_id"].append(texts.ids[c])
                out["caption"].append(texts.texts[c])
                out["rank"].append(rank)
                out["score"].append(float(scores[c]))
    return _ranking_table(out)


# -- retrieve ---------------------------------------------------------------------------

def search_images(session: MatchSession, feats, queries: list[str], top_k: int,
                  shortlist: int | None) -> pa.Table:
    """Text -> images over the gallery ``feats``."""
    for q in queries:
        session.check_query(q)
    gallery = session.gallery(feats.image_ids, feats.paths, feats.regions, feats.global_)
    texts = session.texts([str(i + 1) for i in range(len(queries))], queries, cache=False)
    ranking = images_for_texts(session, gallery, texts, top_k, shortlist)
    return _query_table(queries, ranking.items, ranking.scores, gallery.image_ids, gallery.paths)


def search_index(session: MatchSession, index_dir: str, queries: list[str], top_k: int,
                 shortlist: int | None) -> pa.Table:
    """Text -> images over a saved gallery (``smcli index``): faiss shortlists, and only the
    shortlisted images' tensors are read from the memory maps and re-ranked."""
    for q in queries:
        session.check_query(q)
    saved = open_index(session, index_dir)
    return _query_index(session, saved, queries, top_k, shortlist, None)


def open_index(session: MatchSession, index_dir: str, *, nprobe: int | None = None):
    """A saved gallery, refused unless it was built with the session's model."""
    from smcli.search.index import open_gallery

    saved = open_gallery(index_dir, nprobe=nprobe)
    if saved.meta.get("model_hash") != session.loaded.hash:
        raise InputError(f"{index_dir}: built with model {saved.meta.get('model')} "
                         f"({saved.meta.get('model_hash')}), not {session.name} ({session.loaded.hash}); "
                         "rebuild it with smcli index")
    return saved


def query_index(session: MatchSession, saved, queries: list[str], top_k: int, shortlist: int | None,
                timings: dict[str, float] | None = None) -> pa.Table:
    """The query half of :func:`search_index`, over a gallery opened once with
    :func:`open_index` (a server, a benchmark). ``timings``, when given, gets the seconds
    spent in each step added to it: "encode" (text encoding, MiniLM included), "shortlist"
    (faiss), "read" (shortlisted tensors from the memory maps), "rerank" (the matcher)."""
    for q in queries:
        session.check_query(q)
    return _query_index(session, saved, queries, top_k, shortlist, timings)


def _query_index(session: MatchSession, saved, queries: list[str], top_k: int, shortlist: int | None,
                 timings: dict[str, float] | None) -> pa.Table:
    import time

    import torch

    from smcli.evaluation.scoring import score_pair_list
    from smcli.runtime import autocast
    from smcli.search.index import search

    clock = [time.perf_counter()]

    def lap(step: str) -> None:
        now = time.perf_counter()
        if timings is not None:
            timings[step] = timings.get(step, 0.0) + now - clock[0]
        clock[0] = now

    if shortlist is None:
        raise InputError("--exhaustive needs --regions, not --index (an index is for shortlists)")
    texts = session.texts([str(i + 1) for i in range(len(queries))], queries, cache=False)
    q_emb = texts.side.emb.float().cpu().numpy()
    lap("encode")
    emb_scores, cand = search(saved.index, q_emb, max(shortlist, top_k) if session.many_to_many else top_k)
    lap("shortlist")
    items, scores = [], []
    if not session.many_to_many:
        for row, s in zip(cand, emb_scores):
            keep = row >= 0
            items.append(row[keep])
            scores.append(s[keep])
    else:
        rows = np.unique(cand[cand >= 0])
        side = saved.image_side(rows, device=session.device)
        lap("read")
        local = {int(r): k for k, r in enumerate(rows)}
        qq = np.repeat(np.arange(len(queries)), cand.shape[1])
        cc = cand.reshape(-1)
        ok = cc >= 0
        ii = np.array([local[int(r)] for r in cc[ok]], dtype=np.int64)
        with torch.inference_mode(), autocast(session.device, session.precision):
            s = score_pair_list(session.model, side, texts.side, torch.as_tensor(ii, device=session.device),
                                torch.as_tensor(qq[ok], device=session.device)).float().cpu().numpy()
        full = np.full(len(cc), -np.inf)
        full[ok] = s
        full = full.reshape(len(queries), -1)
        for q in range(len(queries)):
            order = np.argsort(-full[q], kind="stable")[:top_k]
            order = order[np.isfinite(full[q][order])]
            items.append(cand[q][order])
            scores.append(full[q][order])
        lap("rerank")
    return _query_table(queries, items, scores, saved.image_ids, saved.paths)


def _query_table(queries, items, scores, ids, paths) -> pa.Table:
    out = {"query": [], "rank": [], "id": [], "score": [], "path": []}
    for q, its, ss in zip(queries, items, scores):
        for rank, (i, s) in enumerate(zip(its, ss), start=1):
            out["query"].append(q)
            out["rank"].append(rank)
            out["id"].append(ids[i])
            out["score"].append(float(s))
            out["path"].append(paths[i])
    return pa.table({**out, "rank": pa.array(out["rank"], pa.int32()),
                     "score": pa.array(out["score"], pa.float64())})


def search_texts(session: MatchSession, images: ImageSet, caps: CaptionSet, top_k: int,
                 shortlist: int | None) -> pa.Table:
    """Image -> texts over the captions ``caps``."""
    gallery = session.gallery(images.image_ids, images.paths, images.regions, images.global_)
    texts = session.texts(caps.caption_ids, caps.captions, caps.token_ids)
    ranking = texts_for_images(session, gallery, texts, top_k, shortlist)
    out = {"query": [], "rank": [], "id": [], "score": [], "caption": [], "image_id": []}
    for q, items, scores in zip(images.image_ids, ranking.items, ranking.scores):
        for rank, (c, s) in enumerate(zip(items, scores), start=1):
            out["query"].append(q)
            out["rank"].append(rank)
            out["id"].append(caps.caption_ids[c])
            out["score"].append(float(s))
            out["caption"].append(caps.captions[c])
            out["image_id"].append(caps.image_ids[c])
    return pa.table({**out, "rank": pa.array(out["rank"], pa.int32()),
                     "score": pa.array(out["score"], pa.float64())})


def _append_ranking(out: dict, ranking: Ranking, image_ids, text_ids, texts, key: str) -> None:
    for img, items, scores in zip(image_ids, ranking.items, ranking.scores):
        for rank, (c, s) in enumerate(zip(items, scores), start=1):
            out["image_id"].append(img)
            out["caption_id"].append(text_ids[c])
            out["caption"].append(texts[c])
            out["rank"].append(rank)
            out["score"].append(float(s))


def _ranking_table(out: dict) -> pa.Table:
    return pa.table({"image_id": pa.array(out["image_id"], pa.string()),
                     "caption_id": pa.array(out["caption_id"], pa.string()),
                     "caption": pa.array(out["caption"], pa.string()),
                     "rank": pa.array(out["rank"], pa.int32()),
                     "score": pa.array(out["score"], pa.float64())})
