"""Search by the words written in images (text spotting), and its fusion with the matcher.

Matching a query against the words read-text found (:func:`text_scores`):

- query and OCR words are normalised alike: Unicode NFKD, accents dropped, case folded,
  only letters and digits kept. The query's terms are its words less a few English
  stopwords (all of them when it has nothing else);
- a term matches an OCR word with similarity ``1 - lev(term, word) / max(len)``
  (Levenshtein distance normalised by the longer length), and, for terms of 4 characters or
  more, also a stretch inside one of the image's text lines with spaces removed, with
  ``0.9 * (1 - d / len(term))`` where d is the fewest edits that turn the term into any
  substring of the line (approximate substring matching, Sellers' algorithm). The second
  catches words the recogniser ran together ("londonbridge") or split ("lon don"), at a
  small discount against a whole word;
- a term counts when its best similarity in the image is at least ``MATCH_THRESHOLD``
  (0.75: one wrong, missing or extra letter in a word of 4 to 7 letters, two from 8; words
  of 3 letters or fewer must be read exactly);
- the image's text score for the query, 0 to 1, is the mean over the query's terms of
  their similarity where they count, 0 where they do not.

The edit distances are computed for every distinct OCR word (and line) at once with numpy,
one row of the dynamic programme per character of the term (a running minimum does the
insertions), after a length filter; the cost grows with the number of distinct words.

Fusion with the matcher (:func:`fuse`), per query over the images it scores (the
shortlist, plus the images whose text matches, which are always scored: in a two-stage
search the best ``TEXT_CANDIDATES`` times the shortlist of them by text score):
``fused = matcher + weight * (max matcher - min matcher) * text_score``. From weight 1 an
image whose text matches every term of the query ranks above every image whose text does not
match, whatever the matcher says (a tie with the best of them goes to the text); the default,
2, chosen on val (text queries and the plain protocol both gained most there), lifts an image
matching half of the query's terms as high too; a weight of 0 is the matcher alone. Text
spotting alone (:func:`spot_images`) ranks the images whose text matches by their text score
(ties by the matched words' confidence).
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa

MATCH_THRESHOLD = 0.75
SUBSTRING_DISCOUNT = 0.9
MIN_SUBSTRING_TERM = 4
DEFAULT_TEXT_WEIGHT = 2.0  # chosen on val (bench/ocr_synthetic.py; BENCHMARKS.md)
TEXT_CANDIDATES = 10  # a two-stage search scores at most this many times its shortlist of text matches
STOPWORDS = frozenset(
    "a an the of in on at and or with is are was to for by from as its it this that his her their "
    "into onto over under near".split())
_SPLIT = re.compile(r"[\s\-_/.,;:!?\"'()\[\]{}]+")


def normalize(text: str) -> str:
    """Case-folded letters and digits of ``text``, accents dropped ("Café-2" -> "cafe2")."""
    decomposed = unicodedata.normalize("NFKD", text)
    return "".join(ch for ch in decomposed.casefold() if ch.isalnum() and not unicodedata.combining(ch))


def query_terms(query: str) -> list[str]:
    """The terms of a query that are matched against the words in the images, in order,
    each once: its normalised words less stopwords (all of them when only stopwords)."""
    words = [w for w in (normalize(p) for p in _SPLIT.split(query)) if w]
    content = [w for w in words if w not in STOPWORDS] or words
    return list(dict.fromkeys(content))


# ---------------------------------------------------------------------------------------
# Edit distances over many strings at once


def _codes(strings: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """Strings as a [V, L] array of code points (0-padded) and their lengths."""
    lengths = np.array([len(s) for s in strings], np.int64)
    width = int(lengths.max(initial=0))
    codes = np.zeros((len(strings), max(width, 1)), np.int32)
    for k, s in enumerate(strings):
        if s:
            codes[k, :len(s)] = np.frombuffer(s.encode("utf-32-le"), np.uint32)
    return codes, lengths


def _dp_rows(term: str, codes: np.ndarray, substring: bool) -> np.ndarray:
    """The last row of the edit-distance table of ``term`` against each row of ``codes``
    ([V, L+1]); ``substring``: the match may start anywhere (row 0 all zeros)."""
    n, width = codes.shape
    cols = np.arange(width + 1)
    prev = np.zeros((n, width + 1), np.int32) if substring else np.broadcast_to(cols, (n, width + 1)).astype(np.int32)
    for i, ch in enumerate(term, start=1):
        best = np.minimum(prev[:, :-1] + (codes != ord(ch)), prev[:, 1:] + 1)  # substitution, deletion
        # insertions: cur[j] = min(best[j-1], cur[j-1] + 1), a running minimum of best - j
        start = np.full((n, 1), i, np.int32)
        cur = np.minimum.accumulate(np.concatenate([start, best], 1) - cols, axis=1) + cols
        prev = cur.astype(np.int32)
    return prev


def levenshtein(term: str, strings: list[str]) -> np.ndarray:
    """Edit distance of ``term`` to each string."""
    codes, lengths = _codes(strings)
    if not strings:
        return np.zeros(0, np.int64)
    return _dp_rows(term, codes, substring=False)[np.arange(len(strings)), lengths]


def substring_distance(term: str, strings: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """Fewest edits that turn ``term`` into a substring of each string, and where that
    substring ends (character offset, exclusive)."""
    codes, lengths = _codes(strings)
    if not strings:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    last = _dp_rows(term, codes, substring=True).astype(np.int64)
    beyond = np.arange(last.shape[1])[None, :] > lengths[:, None]
    last[beyond] = np.iinfo(np.int64).max // 2
    end = last.argmin(1)
    return last[np.arange(len(strings)), end], end


# ---------------------------------------------------------------------------------------
# The index of the words read in a gallery


@dataclass
class TermMatch:
    """The best match of one query term in one image."""

    term: str
    similarity: float
    words: list[int]  # indices of the OCR words it matched (in ImageText's flat word list)


@dataclass
class ImageMatch:
    """How one image's text matches one query."""

    score: float  # 0 to 1
    terms: list[TermMatch] = field(default_factory=list)


class TextIndex:
    """The words of an image-text file, ready to be matched against query terms."""

    def __init__(self, image_text):
        self.text = image_text
        norm = [normalize(t) for t in image_text.word_text]
        self.word_norm = norm
        # distinct whole words -> their occurrences
        self.vocab: list[str] = []
        self.vocab_words: list[list[int]] = []
        seen: dict[str, int] = {}
        for k, w in enumerate(norm):
            if not w:
                continue
            if w not in seen:
                seen[w] = len(self.vocab)
                self.vocab.append(w)
                self.vocab_words.append([])
            self.vocab_words[seen[w]].append(k)
        self.vocab_len = np.array([len(v) for v in self.vocab], np.int64)
        # lines (words of one image and line, spaces removed) with each word's character span
        self.lines: list[str] = []
        self.line_words: list[list[tuple[int, int, int]]] = []  # (word index, start, end)
        key_to_line: dict[tuple[int, int], int] = {}
        for k, (img, ln) in enumerate(zip(image_text.word_image, image_text.word_line)):
            if not norm[k]:
                continue
            key = (img, ln)
            if key not in key_to_line:
                key_to_line[key] = len(self.lines)
                self.lines.append("")
                self.line_words.append([])
            li = key_to_line[key]
            start = len(self.lines[li])
            self.lines[li] += norm[k]
            self.line_words[li].append((k, start, len(self.lines[li])))
        self.line_len = np.array([len(s) for s in self.lines], np.int64)

    def term_matches(self, term: str) -> dict[int, TermMatch]:
        """Image row -> the term's best match there, for the images where it counts."""
        m = len(term)
        best: dict[int, TermMatch] = {}
        if not m:
            return best

        def offer(words: list[int], sim: float) -> None:
            img = self.text.word_image[words[0]]
            old = best.get(img)
            if old is None or sim > old.similarity + 1e-12:
                best[img] = TermMatch(term, sim, words)

        # whole words: lev / max(len) <= 1 - threshold needs |len(w) - m| small enough
        max_edits = int(np.floor((1 - MATCH_THRESHOLD) * max(m, 1) / MATCH_THRESHOLD + 1e-9))
        cand = np.flatnonzero(np.abs(self.vocab_len - m) <= max_edits)
        if len(cand):
            dist = levenshtein(term, [self.vocab[c] for c in cand])
            sim = 1 - dist / np.maximum(self.vocab_len[cand], m)
            for c, s in zip(cand[sim >= MATCH_THRESHOLD - 1e-9], sim[sim >= MATCH_THRESHOLD - 1e-9]):
                for w in self.vocab_words[c]:
                    offer([w], float(s))
        if m >= MIN_SUBSTRING_TERM:
            cand = np.flatnonzero(self.line_len >= m - 1)
            if len(cand):
                dist, end = substring_distance(term, [self.lines[c] for c in cand])
                sim = SUBSTRING_DISCOUNT * (1 - dist / m)
                for c, s, e in zip(cand, sim, end):
                    if s < MATCH_THRESHOLD - 1e-9:
                        continue
                    start = max(0, int(e) - m)
                    words = [w for w, a, b in self.line_words[c] if a < int(e) and b > start]
                    offer(words or [self.line_words[c][0][0]], float(s))
        return best

    def match(self, query: str) -> dict[int, ImageMatch]:
        """Image row (of the image-text file) -> how its text matches ``query``, for the
        images with a positive text score."""
        terms = query_terms(query)
        out: dict[int, ImageMatch] = {}
        for term in terms:
            for img, tm in self.term_matches(term).items():
                out.setdefault(img, ImageMatch(0.0)).terms.append(tm)
        for im in out.values():
            im.score = sum(t.similarity for t in im.terms) / len(terms)
        return out

    # -- what the results show -------------------------------------------------------------
    def describe(self, im: ImageMatch | None) -> str:
        """'term=WORD [x0,y0,x1,y1] cells a,b' for each matched term (empty when none)."""
        if im is None:
            return ""
        parts = []
        for t in im.terms:
            box = self.union_box(t.words)
            shown = " ".join(self.text.word_text[w] for w in t.words)
            cells = sorted({c for w in t.words for c in self.text.word_cells[w]})
            parts.append(f"{t.term}={shown} ({t.similarity:.2f}) [{box[0]:.0f},{box[1]:.0f},"
                         f"{box[2]:.0f},{box[3]:.0f}] cells {','.join(map(str, cells))}")
        return "; ".join(parts)

    def union_box(self, words: list[int]) -> list[float]:
        boxes = np.asarray([self.text.word_box[w] for w in words], np.float64)
        return [float(boxes[:, 0].min()), float(boxes[:, 1].min()), float(boxes[:, 2].max()), float(boxes[:, 3].max())]

    def records(self, im: ImageMatch | None) -> list[dict]:
        """The matches as structs (the Parquet column text_matches)."""
        if im is None:
            return []
        return [{"term": t.term, "words": " ".join(self.text.word_text[w] for w in t.words),
                 "similarity": float(t.similarity), "box": self.union_box(t.words),
                 "cells": sorted({c for w in t.words for c in self.text.word_cells[w]}),
                 "confidence": float(np.mean([self.text.word_confidence[w] for w in t.words]))}
                for t in im.terms]

    def confidence(self, im: ImageMatch) -> float:
        return float(np.mean([self.text.word_confidence[w] for t in im.terms for w in t.words]))


MATCH_TYPE = pa.list_(pa.struct([
    ("term", pa.string()), ("words", pa.string()), ("similarity", pa.float64()),
    ("box", pa.list_(pa.float64(), 4)), ("cells", pa.list_(pa.int32())), ("confidence", pa.float64()),
]))


def text_scores(index: TextIndex, queries: list[str], rows_of: np.ndarray | None = None,
                n_rows: int | None = None) -> list[dict[int, ImageMatch]]:
    """For each query, gallery row -> its match. ``rows_of`` maps image-text rows to gallery
    rows (-1: not in the gallery), ``n_rows`` is the gallery size (default: the text file)."""
    out = []
    for q in queries:
        got = index.match(q)
        if rows_of is not None:
            got = {int(rows_of[r]): m for r, m in got.items() if rows_of[r] >= 0}
        out.append(got)
    return out


def fuse(matcher: np.ndarray, text: np.ndarray, weight: float = DEFAULT_TEXT_WEIGHT) -> np.ndarray:
    """``matcher + weight * (max - min of matcher) * text`` over one query's candidates
    (see the module's docstring); a constant matcher counts as a spread of 1."""
    matcher = np.asarray(matcher, np.float64)
    if matcher.size == 0:
        return matcher
    spread = float(matcher.max() - matcher.min())
    return matcher + weight * (spread if spread > 0 else 1.0) * np.asarray(text, np.float64)


def align_rows(index: TextIndex, image_ids: list[str]) -> np.ndarray:
    """For each image-text row, its row in a gallery of ``image_ids`` (-1 when absent)."""
    pos = {k: i for i, k in enumerate(image_ids)}
    return np.array([pos.get(k, -1) for k in index.text.image_ids], np.int64)


# ---------------------------------------------------------------------------------------
# Searches


def _ranked_table(queries: list[str], picks: list[list[tuple[int, float, float, float]]],
                  ids: list[str], paths: list[str], index: TextIndex,
                  matches: list[dict[int, ImageMatch]], with_matcher: bool) -> pa.Table:
    """Rows: query, rank, id, score, path, [matcher_score], text_score, matched, text_matches."""
    cols: dict[str, list] = {k: [] for k in ("query", "rank", "id", "score", "path", "matcher_score",
                                             "text_score", "matched", "text_matches")}
    for q, rows, got in zip(queries, picks, matches):
        for r, (row, score, m_score, t_score) in enumerate(rows, start=1):
            im = got.get(row)
            cols["query"].append(q)
            cols["rank"].append(r)
            cols["id"].append(ids[row])
            cols["score"].append(score)
            cols["path"].append(paths[row])
            cols["matcher_score"].append(m_score)
            cols["text_score"].append(t_score)
            cols["matched"].append(index.describe(im))
            cols["text_matches"].append(index.records(im))
    types = {"query": pa.string(), "rank": pa.int32(), "id": pa.string(), "score": pa.float64(),
             "path": pa.string(), "matcher_score": pa.float64(), "text_score": pa.float64(),
             "matched": pa.string(), "text_matches": MATCH_TYPE}
    names = [k for k in types if with_matcher or k != "matcher_score"]
    return pa.table({k: pa.array(cols[k], types[k]) for k in names})


def spot_images(image_text, queries: list[str], top_k: int) -> pa.Table:
    """Text spotting alone: for each query the images whose text matches it, best first
    (text score, then the matched words' mean confidence, then file order)."""
    from smcli.errors import InputError

    index = TextIndex(image_text)
    for q in queries:
        if not query_terms(q):
            raise InputError(f"query {q!r}: no letter or digit to look for in the images' text")
    matches = text_scores(index, queries)
    picks = []
    for got in matches:
        order = sorted(got, key=lambda r: (-got[r].score, -index.confidence(got[r]), r))[:top_k]
        picks.append([(r, got[r].score, float("nan"), got[r].score) for r in order])
    return _ranked_table(queries, picks, image_text.image_ids, image_text.paths, index, matches, False)


def search_images_with_text(model, feats, image_text, queries: list[str], top_k: int,
                            shortlist: int | None, weight: float = DEFAULT_TEXT_WEIGHT) -> pa.Table:
    """Text -> images over the gallery ``feats``, the matcher's score fused with the text
    score (see the module's docstring). Images whose text matches are always scored, inside
    the shortlist or not."""
    from smcli.inference.gallery import build_faiss, search
    from smcli.inference.ranking import check_finite

    for q in queries:
        if not query_terms(q):  # nothing to look for in the images' text: the matcher's own checks
            model.check_query(q)
    # a word the model never saw (a name on a sign) is still a query: the text score carries it
    texts = model.encode_texts([str(i + 1) for i in range(len(queries))], queries, cache=False)
    gallery = model.encode_image_set(feats)
    index = TextIndex(image_text)
    rows_of = align_rows(index, gallery.image_ids)
    joined = int((rows_of >= 0).sum())
    if joined == 0:
        from smcli.errors import InputError

        raise InputError(f"{image_text.name}: none of its {len(image_text):,} images is in {feats.name} "
                         "(they join on image_id: read-text and extract-regions over the same inputs)")
    if joined < len(gallery.image_ids):
        from smcli.report import warn

        warn("retrieve", f"{image_text.name} has the words of {joined:,} of the {len(gallery.image_ids):,} "
                         "images searched; the others count as showing no text")
    matches = text_scores(index, queries, rows_of)
    q_emb = texts.side.emb.float().cpu().numpy()
    g_emb = gallery.side.emb.float().cpu().numpy()
    check_finite(q_emb, "query embeddings")
    n = len(gallery.image_ids)
    if not model.many_to_many:
        full = q_emb @ g_emb.T  # [Q, N]
        cands = [np.arange(n) for _ in queries]
        scored = [full[q] for q in range(len(queries))]
    elif shortlist is None:
        full = model.exhaustive_scores(gallery, texts).T
        cands = [np.arange(n) for _ in queries]
        scored = [full[q] for q in range(len(queries))]
    else:
        k = max(shortlist, top_k)
        _, short = search(build_faiss(g_emb), q_emb, k)
        # the images whose text matches join the shortlist (the best TEXT_CANDIDATES x k of them)
        cands = [np.union1d(row[row >= 0], np.array(sorted(got, key=lambda r: -got[r].score)[:TEXT_CANDIDATES * k],
                                                    np.int64))
                 for row, got in zip(short, matches)]
        qq = np.concatenate([np.full(len(c), q) for q, c in enumerate(cands)])
        cc = np.concatenate(cands)
        s = model.score_pairs(gallery, texts, cc, qq)
        bounds = np.cumsum([0] + [len(c) for c in cands])
        scored = [s[bounds[q]:bounds[q + 1]] for q in range(len(queries))]
    picks = []
    for q, (cand, m) in enumerate(zip(cands, scored)):
        check_finite(np.asarray(m)[:, None], "matcher scores")
        t = np.array([matches[q][int(r)].score if int(r) in matches[q] else 0.0 for r in cand])
        fused = fuse(m, t, weight)
        # ties (a full match lifted exactly to the best non-match) go to the text, then the matcher
        order = np.lexsort((-np.asarray(m, np.float64), -t, -np.round(fused, 12)))[:top_k]
        picks.append([(int(cand[k]), float(fused[k]), float(m[k]), float(t[k])) for k in order])
    return _ranked_table(queries, picks, gallery.image_ids, gallery.paths, index, matches, True)


# ---------------------------------------------------------------------------------------
# The evaluation protocol with the fusion on (retrieve --eval --image-text)


def text_pairs(image_text, image_ids: list[str], captions: list[str]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(image rows, caption columns, text scores) of the pairs whose text score is positive,
    for a gallery of ``image_ids`` and the texts ``captions``."""
    index = TextIndex(image_text)
    rows_of = align_rows(index, list(image_ids))
    ii, cc, ss = [], [], []
    memo: dict[str, dict[int, ImageMatch]] = {}
    for c, got in enumerate(captions):
        if got not in memo:
            memo[got] = text_scores(index, [got], rows_of)[0]
        for i, m in memo[got].items():
            ii.append(i)
            cc.append(c)
            ss.append(m.score)
    return np.array(ii, np.int64), np.array(cc, np.int64), np.array(ss, np.float64)


def fuse_text_to_image(t2i: np.ndarray, pairs: tuple[np.ndarray, np.ndarray, np.ndarray],
                       weight: float = DEFAULT_TEXT_WEIGHT, candidates: np.ndarray | None = None) -> np.ndarray:
    """A text -> image score matrix [I, C] with the fusion applied to each caption's column:
    over the candidates of the column (``candidates`` [I, C] bool, default all), ``fuse``
    with the pairs' text scores; entries outside the candidates are left as they are."""
    out = np.array(t2i, np.float64, copy=True)
    ii, cc, ss = pairs
    if len(ii) == 0 or weight == 0:
        return out
    for c in np.unique(cc):
        mine = cc == c
        rows = np.flatnonzero(candidates[:, c]) if candidates is not None else np.arange(out.shape[0])
        text = np.zeros(len(rows))
        where = np.searchsorted(rows, ii[mine])
        ok = (where < len(rows)) & (rows[np.minimum(where, len(rows) - 1)] == ii[mine])
        text[where[ok]] = ss[mine][ok]
        out[rows, c] = fuse(out[rows, c], text, weight)
    return out
