"""The pair-scoring engine: per-side tensors in batches, pair lists, exhaustive and two-stage grids.

Exhaustive scoring is the reference: every pair goes through the matcher, in chunks of an
image block x a caption block so that memory stays bounded. Two-stage scoring shortlists
``k`` candidates per query with the one-to-one embedding and re-ranks only those with the
many-to-many matcher; candidates outside the shortlist keep their embedding order below
the shortlisted ones.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from smcli.models.fused_attention import fused_scope, wanted
from smcli.models.matchers import ImageSide, TextSide, length_order, reuse_exp_keys

SHORTLIST_OFFSET = 1e6  # re-ranked candidates sort above every embedding-only score


def as_tensor(array: np.ndarray, device: str = "cpu") -> torch.Tensor:
    """A float32 tensor of a (possibly float16) feature array."""
    return torch.from_numpy(np.asarray(array, dtype=np.float32)).to(device)


@torch.inference_mode()
def encode_images(model, regions: np.ndarray | None, global_: np.ndarray, *, batch_size: int = 256,
                  device: str = "cpu") -> ImageSide:
    """Per-image tensors for all images (float16 features are computed in float32).
    ``regions`` may be None for one-to-one models, which use the global feature only."""
    parts = []
    for start in range(0, len(global_), batch_size):
        r = None if regions is None else as_tensor(regions[start:start + batch_size], device)
        parts.append(model.encode_images(r, as_tensor(global_[start:start + batch_size], device)))
    return type(parts[0]).cat(parts)


@torch.inference_mode()
def encode_texts(model, store, index: np.ndarray | None = None, *, batch_size: int = 512,
                 device: str = "cpu") -> TextSide:
    """Per-caption tensors for captions ``index`` of a text store (all by default),
    padded to one length so that any pair can be scored."""
    index = np.arange(len(store)) if index is None else np.asarray(index)
    max_len = store.max_len(index)
    parts = [model.encode_texts(store.batch(index[s:s + batch_size], device=device, max_len=max_len))
             for s in range(0, len(index), batch_size)]
    return type(parts[0]).cat(parts)


def is_many_to_many(model) -> bool:
    return bool(getattr(model.cfg, "many_to_many", False))


@torch.inference_mode()
def exhaustive_scores(model, img: ImageSide, txt: TextSide, *, pairs_per_chunk: int | None = None,
                      progress=None) -> np.ndarray:
    """Scores of every image x every caption, [I, C] float32.

    Chunks of about ``pairs_per_chunk`` pairs bound memory: 4,096 on a CPU, 65,536 on a GPU
    (4x faster there than 4,096: 0.8 s for Flickr8k's 5M test pairs on an H200). A long job
    on the CPU runs the attention as one compiled loop (:mod:`smcli.models.fused_attention`).
    """
    if pairs_per_chunk is None:
        pairs_per_chunk = 65536 if img.emb.is_cuda else 4096
    n_img, n_cap = len(img), len(txt)
    if not is_many_to_many(model):
        return model.score_grid(img, txt).float().cpu().numpy()
    with fused_scope(not img.emb.is_cuda and wanted(n_img * n_cap)):
        return _exhaustive_chunks(model, img, txt, pairs_per_chunk, progress)


def _exhaustive_chunks(model, img: ImageSide, txt: TextSide, pairs_per_chunk: int, progress) -> np.ndarray:
    n_img, n_cap = len(img), len(txt)
    out = np.empty((n_img, n_cap), dtype=np.float32)
    cap_block = min(n_cap, 512)
    img_block = max(1, pairs_per_chunk // cap_block)
    for c0 in range(0, n_cap, cap_block):
        cols = torch.arange(c0, min(c0 + cap_block, n_cap), device=txt.emb.device)
        if getattr(txt, "mask", None) is not None and len(cols) > 1:  # (an ensemble's side has none)
            # sorted by length once per caption block (score_grid would sort it per image
            # block), so the block's tensors, and the exp of its keys, serve every image block
            cols = cols[length_order(txt.mask.index_select(0, cols))]
        t = txt.select(cols)
        at = cols.cpu().numpy()
        with reuse_exp_keys(getattr(t, "keys", None)):
            for i0 in range(0, n_img, img_block):
                i1 = min(i0 + img_block, n_img)
                block = img.select(torch.arange(i0, i1, device=img.emb.device))
                out[i0:i1, at] = model.score_grid(block, t).float().cpu().numpy()
                if progress is not None:
                    progress((i1 - i0) * len(t))
    return out


@dataclass
class TwoStageScores:
    i2t: np.ndarray  # [I, C] image -> text ranking scores
    t2i: np.ndarray  # [I, C] text -> image ranking scores
    pairs_scored: int


def top_k(scores: torch.Tensor, k: int, dim: int) -> torch.Tensor:
    return scores.topk(min(k, scores.shape[dim]), dim=dim).indices


@torch.inference_mode()
def score_pair_list(model, img: ImageSide, txt: TextSide, ii: torch.Tensor, cc: torch.Tensor,
                    *, chunk: int = 4096, progress=None) -> torch.Tensor:
    """Scores of the pairs (img[ii[k]], txt[cc[k]]), [P] float32.

    When many pairs share an image (or a caption), they are scored as a 1 x n grid per
    image (n x 1 per caption), so that image's tensors are broadcast instead of copied per
    pair; a list of unrelated pairs is scored pair by pair, in chunks.
    """
    n = len(ii)
    if n == 0:
        return torch.zeros(0)
    by_image = torch.unique(ii).numel() <= torch.unique(cc).numel()
    key = ii if by_image else cc
    groups, counts = torch.unique(key, return_counts=True)
    if n < 8 * len(groups):  # small groups: plain pairs
        out = []
        for s in range(0, n, chunk):
            out.append(model.score_pairs(img, txt, ii[s:s + chunk], cc[s:s + chunk]).float())
            if progress is not None:
                progress(len(out[-1]))
        return torch.cat(out)
    order = torch.argsort(key, stable=True)
    out = torch.empty(n, dtype=torch.float32, device=ii.device)
    start = 0
    for g, count in zip(groups.tolist(), counts.tolist()):
        rows = order[start:start + count]
        start += count
        one = torch.tensor([g], device=ii.device)
        for s in range(0, count, chunk):
            sub = rows[s:s + chunk]
            if by_image:
                out[sub] = model.score_grid(img.select(one), txt.select(cc[sub]))[0].float()
            else:
                out[sub] = model.score_grid(img.select(ii[sub]), txt.select(one))[:, 0].float()
            if progress is not None:
                progress(len(sub))
    return out


@torch.inference_mode()
def two_stage_scores(model, img: ImageSide, txt: TextSide, shortlist: int, *,
                     progress=None) -> TwoStageScores:
    """Shortlist ``shortlist`` candidates per query by embedding, re-rank them by the model."""
    emb = model.embedding_grid(img, txt).float()  # [I, C]
    if not is_many_to_many(model):
        e = emb.cpu().numpy()
        return TwoStageScores(e, e, 0)
    n_img, n_cap = emb.shape
    cap_for_img = top_k(emb, shortlist, dim=1)  # [I, k]
    img_for_cap = top_k(emb, shortlist, dim=0)  # [k, C]
    ii_a = torch.arange(n_img, device=emb.device).repeat_interleave(cap_for_img.shape[1])
    cc_a = cap_for_img.reshape(-1)
    ii_b = img_for_cap.T.reshape(-1)
    cc_b = torch.arange(n_cap, device=emb.device).repeat_interleave(img_for_cap.shape[0])
    # score the union of both shortlists once
    key = torch.cat([ii_a * n_cap + cc_a, ii_b * n_cap + cc_b])
    uniq, inverse = torch.unique(key, return_inverse=True)
    s = score_pair_list(model, img, txt, uniq // n_cap, uniq % n_cap, progress=progress)
    s_a, s_b = s[inverse[: len(ii_a)]], s[inverse[len(ii_a):]]
    i2t = emb.double().clone()
    i2t[ii_a, cc_a] = SHORTLIST_OFFSET + s_a.double()
    t2i = emb.double().clone()
    t2i[ii_b, cc_b] = SHORTLIST_OFFSET + s_b.double()
    return TwoStageScores(i2t.cpu().numpy(), t2i.cpu().numpy(), len(uniq))
