"""What the search commands do, as library functions returning Arrow tables.

- :func:`score_pairs`: a score for each (image, caption) pair, in input order;
- :func:`rank_captions`: candidate captions ranked for each image;
- :func:`search_images` / :func:`search_texts`: retrieval with a text or an image query
  (:func:`search_gallery` and :func:`query_index`: over a gallery opened once).
Rows that cannot be scored (unknown ids) go to the run report, never silently away.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from smcli.errors import InputError
from smcli.inference.inputs import ImageSet, as_strings, read_table_any, require_columns
from smcli.inference.matcher import Gallery, MatchModel, Texts
from smcli.inference.ranking import Ranking, rank, ranking_table
from smcli.report import RunReport


@dataclass
class CaptionSet:
    """Captions from a captions file: ids, image ids, text and token ids."""

    caption_ids: list[str]
    image_ids: list[str | None]
    captions: list[str]
    token_ids: list[list[int]] | None  # None: tokenized from the text with the model's vocabulary
    name: str


def load_captions(model: MatchModel, path: str) -> CaptionSet:
    from smcli.stage import open_stage

    stage = open_stage(path, "captions")
    try:
        model.check_captions(stage)
        t = stage.read(["caption_id", "image_id", "caption", "token_ids"])
    finally:
        stage.close()
    return CaptionSet(t.column("caption_id").to_pylist(), t.column("image_id").to_pylist(),
                      t.column("caption").to_pylist(), t.column("token_ids").to_pylist(), stage.name)


def load_features(model: MatchModel, path: str | None, image_ids=None):
    """The regions file (or finalized directory of parts) at ``path``, checked against the
    model; with ``image_ids``, only those images' rows (streamed, not all read)."""
    from smcli.images.features import load_regions

    feats = load_regions(path, image_ids=image_ids)
    model.check_features(feats.meta, feats.name)
    return feats


# -- score ------------------------------------------------------------------------------

@dataclass
class PairList:
    """Pairs to score: image ids with caption ids or caption text; ``rows`` numbers them in
    the original input (0-based; None: 0..n-1), the ``input_row`` a sharded run keeps."""

    source: str
    images: list[str | None]
    caption_ids: list[str | None]
    texts: list[str | None]
    rows: list[int] | None = None


def read_pairs(caps: CaptionSet | None, pairs_path: str | None, table: pa.Table | None = None,
               source: str | None = None) -> PairList:
    """The pairs of a pairs file (or ``table``, read from ``source``), or each caption of
    ``caps`` with its own image when there is no pairs file."""
    if pairs_path is None and table is None:
        if caps is None:
            raise InputError("score needs --pairs or --captions")
        return PairList(caps.name, list(caps.image_ids), list(caps.caption_ids), [None] * len(caps.image_ids))
    source = source or str(pairs_path)
    if table is None:
        table = read_table_any(str(pairs_path), "pairs")
    (img_col,) = require_columns(table, source, ("image_id", "image"))
    images = as_strings(table, img_col)
    rows = table.column("input_row").to_pylist() if "input_row" in table.column_names else None
    if "caption_id" in table.column_names:
        if caps is None or not caps.caption_ids:
            raise InputError(f"{source}: pairs name caption_id, so --captions is needed to look them up")
        return PairList(source, images, as_strings(table, "caption_id"), [None] * table.num_rows, rows)
    (text_col,) = require_columns(table, source, ("caption", "text", "query"))
    return PairList(source, images, [None] * table.num_rows, as_strings(table, text_col), rows)


def score_file(model: MatchModel, regions: str, caps: CaptionSet | None, pairs: PairList, report: RunReport,
               references: dict[str, list[str]] | None = None, **options: bool) -> pa.Table:
    """:func:`score_pairs` reading only the features of the images the pairs name."""
    feats = load_features(model, regions, image_ids={i for i in pairs.images if i is not None})
    return score_pairs(model, feats, caps, None, report, references, pairs=pairs, **options)


def score_pairs(model: MatchModel, feats, caps: CaptionSet | None, pairs_path: str | None,
                report: RunReport, references: dict[str, list[str]] | None = None, *,
                pairs: PairList | None = None, input_rows: bool = False, allow_empty: bool = False) -> pa.Table:
    """Scores of (image_id, caption) pairs: from a pairs file (caption_id or caption text),
    or each caption with its own image. Output rows keep the input order. ``caps`` may be
    None when the pairs file holds the caption text itself. ``pairs`` instead of a file;
    ``input_rows`` adds the ``input_row`` column (the pair's row in the original input);
    ``allow_empty``: no pair to score gives an empty table (a shard), not an error."""
    if pairs is None:
        pairs = read_pairs(caps, pairs_path)
    if caps is None:
        caps = CaptionSet([], [], [], [], "no captions file")
    cap_pos = {c: i for i, c in enumerate(caps.caption_ids)}
    img_pos = feats.index()
    source, pair_images, pair_caps, pair_texts = pairs.source, pairs.images, pairs.caption_ids, pairs.texts
    numbers = pairs.rows if pairs.rows is not None else range(len(pair_images))
    keep, ii, text_rows = [], [], []
    extra_texts: list[str] = []
    for row, (image, cap, text, number) in enumerate(zip(pair_images, pair_caps, pair_texts, numbers), start=1):
        where = f"row {number + 1}"
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
    if not keep and allow_empty:
        names = ["image_id", "caption_id", "caption", "score", *(["input_row"] if input_rows else []),
                 *(["image_cosine", "reference_cosine", "ref_score"] if references is not None else [])]
        types = {"score": pa.float64(), "input_row": pa.int64(), "image_cosine": pa.float64(),
                 "reference_cosine": pa.float64(), "ref_score": pa.float64()}
        return pa.table({n: pa.array([], types.get(n, pa.string())) for n in names})
    if not keep:
        raise InputError(f"{source}: no pair could be scored (see the rejected rows above)")
    # encode each image and caption once, however many pairs use it
    used_imgs, img_inv = np.unique(ii, return_inverse=True)
    used_caps = sorted({r for kind, r in text_rows if kind == "caption"})
    cap_local = {r: k for k, r in enumerate(used_caps)}
    texts_all = [caps.captions[r] for r in used_caps] + extra_texts
    ids_all = [caps.caption_ids[r] for r in used_caps] + [None] * len(extra_texts)
    tok_all = ([caps.token_ids[r] for r in used_caps] if not extra_texts else None)
    gallery = model.encode_images([feats.image_ids[i] for i in used_imgs],
                              [feats.paths[i] for i in used_imgs],
                              feats.regions[used_imgs], feats.global_[used_imgs])
    texts = model.encode_texts(ids_all, texts_all, tok_all, cache=False)
    cc = np.array([cap_local[r] if kind == "caption" else len(used_caps) + r for kind, r in text_rows])
    scores = model.score_pairs(gallery, texts, img_inv, cc)
    columns = {
        "image_id": [pair_images[k] for k in keep],
        "caption_id": [ids_all[c] for c in cc],
        "caption": [texts_all[c] for c in cc],
        "score": pa.array(scores, pa.float64()),
    }
    if input_rows:
        columns["input_row"] = pa.array([numbers[k] for k in keep], pa.int64())
    if references is not None:
        columns.update(reference_scores(model, gallery, texts, img_inv, cc, references, report))
    return pa.table(columns)


def read_references(path: str) -> dict[str, list[str]]:
    """image_id -> reference captions, from a Parquet/CSV file of image_id, caption rows
    (a captions file from tokenize works too)."""
    table = read_table_any(path, "references")
    img_col, text_col = require_columns(table, path, ("image_id", "image"), ("caption", "reference", "text"))
    refs: dict[str, list[str]] = {}
    for image, text in zip(as_strings(table, img_col), as_strings(table, text_col)):
        if image is not None and text and text.strip():
            refs.setdefault(image, []).append(text)
    if not refs:
        raise InputError(f"{path}: no reference caption")
    return refs


def reference_scores(model: MatchModel, gallery: Gallery, texts: Texts, img_inv: np.ndarray, cc: np.ndarray,
                     references: dict[str, list[str]], report: RunReport) -> dict[str, pa.Array]:
    """The reference-augmented score of each pair (as RefCLIPScore builds it): the harmonic
    mean of the image-caption cosine of the one-to-one head and the caption's best cosine to
    one of the image's references, each clipped at 0, so on a fixed scale of 0 to 1. Pairs
    whose image has no reference get nulls (and are counted on stderr)."""
    image_emb = gallery.side.emb.float().cpu().numpy()[img_inv]
    text_emb = texts.side.emb.float().cpu().numpy()[cc]
    image_cos = np.maximum((image_emb * text_emb).sum(1), 0.0)
    ref_ids = [gallery.image_ids[i] for i in img_inv]
    ref_texts = sorted({r for i in set(ref_ids) for r in references.get(i, [])})
    ref_cos = np.full(len(cc), np.nan)
    if ref_texts:
        refs = model.encode_texts([str(k) for k in range(len(ref_texts))], ref_texts, cache=False)
        ref_emb = refs.side.emb.float().cpu().numpy()
        row = {t: k for k, t in enumerate(ref_texts)}
        for p, image_id in enumerate(ref_ids):
            mine = [row[t] for t in references.get(image_id, [])]
            if mine:
                ref_cos[p] = max(0.0, float((ref_emb[mine] @ text_emb[p]).max()))
    missing = int(np.isnan(ref_cos).sum())
    if missing:
        from smcli.report import warn

        warn("score", f"{missing:,} pair(s) have no reference caption for their image: ref_score left empty")
    denom = image_cos + ref_cos
    ref_score = np.where(denom > 0, 2 * image_cos * ref_cos / np.where(denom > 0, denom, 1.0), 0.0)
    ok = ~np.isnan(ref_cos)
    return {"image_cosine": pa.array(image_cos, pa.float64()),
            "reference_cosine": pa.array(np.where(ok, ref_cos, 0.0), pa.float64(), mask=~ok),
            "ref_score": pa.array(np.where(ok, ref_score, 0.0), pa.float64(), mask=~ok)}


# -- ranking texts for images, images for texts -------------------------------------------

def texts_for_images(model: MatchModel, gallery: Gallery, texts: Texts, top_k: int,
                     shortlist: int | None) -> Ranking:
    """For each image, the best texts."""
    return rank(_np(gallery.side.emb), cand_emb=_np(texts.side.emb), top_k=top_k,
                many_to_many=model.many_to_many, shortlist=shortlist,
                score_fn=lambda q, c: model.score_pairs(gallery, texts, q, c),
                exhaustive_fn=lambda: model.exhaustive_scores(gallery, texts))


def images_for_texts(model: MatchModel, gallery: Gallery, queries: Texts, top_k: int,
                     shortlist: int | None) -> Ranking:
    """For each query text, the best images of the gallery."""
    return rank(_np(queries.side.emb), cand_emb=_np(gallery.side.emb),
                top_k=top_k, many_to_many=model.many_to_many, shortlist=shortlist,
                score_fn=lambda q, c: model.score_pairs(gallery, queries, c, q),
                exhaustive_fn=lambda: model.exhaustive_scores(gallery, queries).T)


def _np(t) -> np.ndarray:
    return t.float().cpu().numpy()


# -- caption-rank -----------------------------------------------------------------------

CAPTION_RANK_COLUMNS = ["image_id", "caption_id", "caption", "rank", "score"]


def rank_captions(model: MatchModel, images: ImageSet, caps: CaptionSet | None,
                  candidates_path: str | None, top_k: int, shortlist: int | None,
                  report: RunReport, *, cache: bool = True) -> pa.Table:
    """Rank captions for each image: all of ``caps``, or each image's own candidate list."""
    gallery = model.encode_image_set(images)
    if candidates_path is None:
        if caps is None:
            raise InputError("caption-rank needs --captions or --candidates")
        texts = model.encode_texts(caps.caption_ids, caps.captions, caps.token_ids, cache=cache)
        ranking = texts_for_images(model, gallery, texts, top_k or len(caps.captions), shortlist)
        return ranking_table(images.image_ids, ranking, "image_id",
                             {"caption_id": texts.ids.__getitem__, "caption": texts.texts.__getitem__},
                             order=CAPTION_RANK_COLUMNS)
    table = read_table_any(candidates_path, "candidates")
    img_col, text_col = require_columns(table, candidates_path, ("image_id", "image"), ("caption", "text"))
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
    texts = model.encode_texts([cand_ids[k] for k in keep], [cand_texts[k] for k in keep], cache=False)
    ii = np.array([pos[cand_imgs[k]] for k in keep])
    scores = model.score_pairs(gallery, texts, ii, np.arange(len(keep)))
    # each image's own candidates, best first
    ranked = np.unique(ii)
    items, vals = [], []
    for img_row in ranked:
        mine = np.flatnonzero(ii == img_row)
        order = mine[np.argsort(-scores[mine], kind="stable")]
        if top_k:
            order = order[:top_k]
        items.append(order)
        vals.append(scores[order])
    return ranking_table([gallery.image_ids[i] for i in ranked], Ranking(items, vals), "image_id",
                         {"caption_id": texts.ids.__getitem__, "caption": texts.texts.__getitem__},
                         order=CAPTION_RANK_COLUMNS)


# -- retrieve ---------------------------------------------------------------------------

def _check_queries(model: MatchModel, queries: list[str]) -> Texts:
    for q in queries:
        model.check_query(q)
    return model.encode_texts([str(i + 1) for i in range(len(queries))], queries, cache=False)


def _image_table(queries: list[str], ranking: Ranking, ids: list[str], paths: list[str]) -> pa.Table:
    return ranking_table(queries, ranking, "query", {"id": ids.__getitem__, "path": paths.__getitem__})


def search_images(model: MatchModel, feats, queries: list[str], top_k: int,
                  shortlist: int | None) -> pa.Table:
    """Text -> images over the gallery ``feats``."""
    for q in queries:
        model.check_query(q)
    return search_gallery(model, model.encode_image_set(feats), queries, top_k, shortlist)


def search_gallery(model: MatchModel, gallery: Gallery, queries: list[str], top_k: int,
                   shortlist: int | None) -> pa.Table:
    """Text -> images over a gallery encoded once (:meth:`MatchModel.encode_image_set`),
    for many queries (a server): the table of :func:`search_images`."""
    texts = _check_queries(model, queries)
    ranking = images_for_texts(model, gallery, texts, top_k, shortlist)
    return _image_table(queries, ranking, gallery.image_ids, gallery.paths)


def search_index(model: MatchModel, index_dir: str, queries: list[str], top_k: int,
                 shortlist: int | None) -> pa.Table:
    """Text -> images over a saved gallery (``smcli index``): faiss shortlists, and only the
    shortlisted images' tensors are read from the memory maps and re-ranked."""
    for q in queries:
        model.check_query(q)
    saved = open_index(model, index_dir)
    return query_index(model, saved, queries, top_k, shortlist)


def open_index(model: MatchModel, index_dir: str, *, nprobe: int | None = None):
    """A saved gallery, refused unless it was built with the model."""
    from smcli.inference.gallery import open_gallery

    saved = open_gallery(index_dir, nprobe=nprobe)
    if saved.meta.get("model_hash") != model.hash:
        raise InputError(f"{index_dir}: built with model {saved.meta.get('model')} "
                         f"({saved.meta.get('model_hash')}), not {model.name} ({model.hash}); "
                         "rebuild it with smcli index")
    return saved


def query_index(model: MatchModel, saved, queries: list[str], top_k: int, shortlist: int | None,
                timings: dict[str, float] | None = None) -> pa.Table:
    """The query half of :func:`search_index`, over a gallery opened once with
    :func:`open_index` (a server, a benchmark). ``timings``, when given, gets the seconds
    spent in each step added to it: "encode" (text encoding, MiniLM included), "shortlist"
    (faiss), "read" (shortlisted tensors from the memory maps), "rerank" (the matcher)."""
    import time

    if shortlist is None:
        raise InputError("--exhaustive needs --regions, not --index (an index is for shortlists)")
    clock = [time.perf_counter()]

    def lap(step: str) -> None:
        now = time.perf_counter()
        if timings is not None:
            timings[step] = timings.get(step, 0.0) + now - clock[0]
        clock[0] = now

    texts = _check_queries(model, queries)
    lap("encode")

    def score_fn(q: np.ndarray, c: np.ndarray) -> np.ndarray:
        lap("shortlist")
        rows = np.unique(c)
        side = saved.image_side(rows, device=model.device)
        lap("read")
        local = np.searchsorted(rows, c)
        s = model.score_pairs(Gallery([], [], side), texts, local, q)
        lap("rerank")
        return s

    ranking = rank(_np(texts.side.emb), index=saved.index, top_k=top_k, many_to_many=model.many_to_many,
                   shortlist=shortlist, score_fn=score_fn)
    if not model.many_to_many:
        lap("shortlist")
    return _image_table(queries, ranking, saved.image_ids, saved.paths)


def search_texts(model: MatchModel, images: ImageSet, caps: CaptionSet, top_k: int,
                 shortlist: int | None) -> pa.Table:
    """Image -> texts over the captions ``caps``."""
    gallery = model.encode_image_set(images)
    texts = model.encode_texts(caps.caption_ids, caps.captions, caps.token_ids)
    ranking = texts_for_images(model, gallery, texts, top_k, shortlist)
    return ranking_table(images.image_ids, ranking, "query",
                         {"id": caps.caption_ids.__getitem__, "caption": caps.captions.__getitem__,
                          "image_id": caps.image_ids.__getitem__})
