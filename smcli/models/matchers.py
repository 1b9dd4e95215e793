"""The learned matchers: the sm-LSTM (and its ablations) and the one-to-one VSE baseline.

Everything that depends on one side only is computed once per image (:class:`ImageSide`)
or once per sentence (:class:`TextSide`); pair scores then come from batched tensor
operations over a list of pairs (training) or a grid of images x captions (search and
evaluation), never from a Python loop over pairs.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields

import torch
import torch.nn.functional as F
from torch import nn

from smcli.models.config import ModelConfig
from smcli.models.text_encoders import build_text_encoder


@dataclass
class Side:
    """Per-item tensors of one modality; ``select`` picks rows of all of them."""

    def select(self, index: torch.Tensor):
        # index_select: its backward is index_add_, much faster on CPU than v[index]'s
        return type(self)(**{f.name: (None if (v := getattr(self, f.name)) is None
                                      else v.index_select(0, index))
                             for f in fields(self)})

    def __len__(self) -> int:
        return len(getattr(self, fields(self)[0].name))


@dataclass
class ImageSide(Side):
    emb: torch.Tensor  # [N, emb_dim] one-to-one embedding (L2-normalised)
    keys: torch.Tensor | None = None  # [N, R, att_dim]   W_a a_i
    values: torch.Tensor | None = None  # [N, R, sim_dim] P_a a_i
    ctx_a: torch.Tensor | None = None  # [N, att_dim]      image part of D_a m
    ctx_s: torch.Tensor | None = None  # [N, att_dim]      image part of D_s m


@dataclass
class TextSide(Side):
    emb: torch.Tensor  # [N, emb_dim]
    keys: torch.Tensor | None = None  # [N, L, att_dim]   W_s s_j
    values: torch.Tensor | None = None  # [N, L, sim_dim] P_s s_j
    mask: torch.Tensor | None = None  # [N, L]
    ctx_a: torch.Tensor | None = None
    ctx_s: torch.Tensor | None = None


@dataclass
class Attention:
    """Saliency maps of every step: regions [*, T, R] and words [*, T, L]."""

    regions: torch.Tensor
    words: torch.Tensor


class EmbeddingHead(nn.Module):
    """One-to-one embedding: global image feature and sentence vector into a joint space."""

    def __init__(self, cfg: ModelConfig, sent_dim: int):
        super().__init__()
        self.drop = nn.Dropout(cfg.emb_dropout)
        self.image = nn.Linear(cfg.img_dim, cfg.emb_dim)
        self.text = nn.Sequential(nn.Linear(sent_dim, cfg.emb_dim), nn.ReLU(), nn.Dropout(cfg.emb_dropout),
                                  nn.Linear(cfg.emb_dim, cfg.emb_dim))

    def embed_images(self, global_: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.image(self.drop(global_)).float(), dim=-1)

    def embed_texts(self, sentence: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.text(self.drop(sentence)).float(), dim=-1)


def full_precision(t: torch.Tensor):
    """Turn autocast off: scores that get ranked are computed in float32 (bf16 would tie)."""
    return torch.autocast(device_type=t.device.type, enabled=False)


class Matcher(nn.Module):
    """A learned image-sentence matcher with a one-to-one embedding head."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        self.text_encoder = build_text_encoder(cfg)
        self.embedding = EmbeddingHead(cfg, self.text_encoder.sent_dim)

    def encode_images(self, regions: torch.Tensor, global_: torch.Tensor) -> ImageSide:
        return ImageSide(emb=self.embedding.embed_images(global_))

    def encode_texts(self, batch: dict[str, torch.Tensor]) -> TextSide:
        feats = self.text_encoder(batch)
        return TextSide(emb=self.embedding.embed_texts(feats.sentence))

    def score_pairs(self, img: ImageSide, txt: TextSide, ii: torch.Tensor,
                    cc: torch.Tensor) -> torch.Tensor:
        """Scores of the pairs (img[ii[k]], txt[cc[k]]): [P]."""
        with full_precision(img.emb):
            return (img.emb[ii] * txt.emb[cc]).sum(-1)

    def score_grid(self, img: ImageSide, txt: TextSide) -> torch.Tensor:
        """Scores of every image against every caption: [I, C]."""
        return self.embedding_grid(img, txt)

    def embedding_grid(self, img: ImageSide, txt: TextSide) -> torch.Tensor:
        """One-to-one cosine scores [I, C] (the shortlist and negative-mining score)."""
        with full_precision(img.emb):
            return img.emb @ txt.emb.T


class VSE(Matcher):
    """The one-to-one baseline: the embedding head alone, scored by cosine."""


class SmLSTM(Matcher):
    """Selective multimodal LSTM (Huang, Wang & Wang, CVPR 2017).

    At each of T steps, context-modulated attention picks a salient region and a salient
    group of words; their local similarity vector feeds a multimodal LSTM whose final state
    gives the score. ``attention``: "context" (full model), "plain" (no context terms) or
    "uniform" (the mean ablation: no selection).
    """

    def __init__(self, cfg: ModelConfig, attention: str = "context"):
        super().__init__(cfg)
        d, da, ds, dh, dc = cfg.inst_dim, cfg.att_dim, cfg.sim_dim, cfg.hidden_dim, cfg.ctx_dim
        self.attention = attention
        self.region_proj = nn.Linear(cfg.img_dim, d)
        self.word_proj = nn.Linear(self.text_encoder.word_dim, d)
        self.drop = nn.Dropout(cfg.dropout)
        # local similarity projections P_a, P_s
        self.P_a = nn.Linear(d, ds)
        self.P_s = nn.Linear(d, ds)
        if attention != "uniform":
            self.W_a = nn.Linear(d, da, bias=False)
            self.W_s = nn.Linear(d, da, bias=False)
            self.U_a = nn.Linear(dh, da)
            self.U_s = nn.Linear(dh, da)
            self.w_a = nn.Linear(da, 1, bias=False)
            self.w_s = nn.Linear(da, 1, bias=False)
            if cfg.att_scale > 0:  # lets the saliency sharpen (logits start near zero: uniform)
                self.att_log_scale = nn.Parameter(torch.tensor(math.log(cfg.att_scale)))
        if attention == "context":
            # m = [tanh(G_img g_img); tanh(G_sen g_sen)]; D m = D_img m_img + D_sen m_sen
            self.ctx_img = nn.Linear(cfg.img_dim, dc)
            self.ctx_sen = nn.Linear(self.text_encoder.sent_dim, dc)
            self.D_a_img = nn.Linear(dc, da, bias=False)
            self.D_a_sen = nn.Linear(dc, da, bias=False)
            self.D_s_img = nn.Linear(dc, da, bias=False)
            self.D_s_sen = nn.Linear(dc, da, bias=False)
        self.lstm = nn.LSTMCell(ds, dh)
        if cfg.fuse_global:
            # "val": the matcher trains on its own score; the trainer sets this weight on val
            learned = not cfg.global_weight_on_val
            self.global_weight = nn.Parameter(torch.tensor(1.0 if learned else 0.0), requires_grad=learned)
        if cfg.score_head == "sum":
            self.head = nn.Linear(dh, 1)
        else:
            self.head = nn.Sequential(nn.Linear(dh, dh // 2), nn.ReLU(), nn.Linear(dh // 2, 1))

    # -- one side at a time -------------------------------------------------------------
    def encode_images(self, regions: torch.Tensor, global_: torch.Tensor) -> ImageSide:
        a = self.region_proj(self.drop(regions))  # [N, R, d]
        side = ImageSide(emb=self.embedding.embed_images(global_), values=self.P_a(a))
        if self.attention != "uniform":
            side.keys = self.W_a(a)
        if self.attention == "context":
            m = torch.tanh(self.ctx_img(global_))
            side.ctx_a, side.ctx_s = self.D_a_img(m), self.D_s_img(m)
        return side

    def encode_texts(self, batch: dict[str, torch.Tensor]) -> TextSide:
        feats = self.text_encoder(batch)
        s = self.word_proj(self.drop(feats.words))  # [N, L, d]
        side = TextSide(emb=self.embedding.embed_texts(feats.sentence), values=self.P_s(s),
                        mask=feats.mask)
        if self.attention != "uniform":
            side.keys = self.W_s(s)
        if self.attention == "context":
            m = torch.tanh(self.ctx_sen(feats.sentence))
            side.ctx_a, side.ctx_s = self.D_a_sen(m), self.D_s_sen(m)
        return side

    # -- pairs --------------------------------------------------------------------------
    def score_pairs(self, img: ImageSide, txt: TextSide, ii: torch.Tensor,
                    cc: torch.Tensor) -> torch.Tensor:
        return self._fuse(img.select(ii), txt.select(cc), grid=False)[0]

    def score_grid(self, img: ImageSide, txt: TextSide) -> torch.Tensor:
        return self._fuse(img, txt, grid=True)[0]

    def attention_maps(self, img: ImageSide, txt: TextSide, ii: torch.Tensor,
                       cc: torch.Tensor) -> tuple[torch.Tensor, Attention]:
        """Scores and the saliency maps of every step for the given pairs."""
        return self._fuse(img.select(ii), txt.select(cc), grid=False, keep_maps=True)

    def _fuse(self, img: ImageSide, txt: TextSide, *, grid: bool, keep_maps: bool = False):
        """Run T attention + LSTM steps for pairs.

        grid=False: img and txt are aligned lists of P pairs -> scores [P].
        grid=True: every image against every caption -> scores [I, C]. Image tensors are
        broadcast over captions and text tensors over images, never copied per pair.
        """
        if grid:
            shape = (len(img), len(txt))
            word_mask = txt.mask.unsqueeze(0)  # [1, C, L]
        else:
            shape = (len(img),)
            word_mask = txt.mask  # [P, L]
        h = img.values.new_zeros(*shape, self.cfg.hidden_dim)
        c = torch.zeros_like(h)
        ctx_a = ctx_s = None
        if self.attention == "context":
            ctx_a = _pair_add(img.ctx_a, txt.ctx_a, grid)
            ctx_s = _pair_add(img.ctx_s, txt.ctx_s, grid)
        region_maps, word_maps, outputs, cosines = [], [], [], []
        for _ in range(self.cfg.steps):
            if self.attention == "uniform":
                p = img.values.new_full((*shape, img.values.shape[-2]), 1.0 / img.values.shape[-2])
                q = word_mask.expand(*shape, -1).to(h.dtype)
                q = q / q.sum(-1, keepdim=True).clamp(min=1.0)
            else:
                qa, qs = self.U_a(h), self.U_s(h)
                if ctx_a is not None:
                    qa, qs = qa + ctx_a, qs + ctx_s
                e_a = self._logits(self.w_a, img.keys, qa, grid, images=True)
                e = self._logits(self.w_s, txt.keys, qs, grid, images=False)
                if self.cfg.att_scale > 0:
                    scale = self.att_log_scale.exp()
                    e_a, e = e_a * scale, e * scale
                p = torch.softmax(e_a, -1)
                q = torch.softmax(e.masked_fill(~word_mask, float("-inf")), -1)
            a_sel = _weighted(p, img.values, grid, images=True)  # [*shape, sim_dim]
            s_sel = _weighted(q, txt.values, grid, images=False)
            x = F.normalize(a_sel, dim=-1) * F.normalize(s_sel, dim=-1)
            if self.cfg.local_skip:
                cosines.append(x.float().sum(-1))
            h2, c2 = self.lstm(x.reshape(-1, x.shape[-1]),
                               (h.reshape(-1, h.shape[-1]), c.reshape(-1, c.shape[-1])))
            h, c = h2.reshape(h.shape), c2.reshape(c.shape)
            outputs.append(h)
            if keep_maps:
                region_maps.append(p)
                word_maps.append(q)
        with full_precision(h):
            if self.cfg.score_head == "sum":
                score = sum(self.head(o.float()).squeeze(-1) for o in outputs)
            else:
                score = self.head(h.float()).squeeze(-1)
            if self.cfg.local_skip:
                score = score + torch.stack(cosines).mean(0)
            if self.cfg.fuse_global and not (self.training and self.cfg.global_weight_on_val):
                glob = img.emb @ txt.emb.T if grid else (img.emb * txt.emb).sum(-1)
                score = score + self.global_weight * glob
        maps = Attention(torch.stack(region_maps, -2), torch.stack(word_maps, -2)) if keep_maps else None
        return score, maps

    @staticmethod
    def _logits(w: nn.Linear, keys: torch.Tensor, query: torch.Tensor, grid: bool,
                images: bool) -> torch.Tensor:
        """w . tanh(keys + query) over instances; keys [N, K, da], query [*shape, da]."""
        if not grid:
            return w(torch.tanh(keys + query.unsqueeze(-2))).squeeze(-1)
        k = keys.unsqueeze(1) if images else keys.unsqueeze(0)  # [I,1,R,da] or [1,C,L,da]
        return w(torch.tanh(k + query.unsqueeze(-2))).squeeze(-1)


def _pair_add(img_part: torch.Tensor, txt_part: torch.Tensor, grid: bool) -> torch.Tensor:
    return img_part.unsqueeze(1) + txt_part.unsqueeze(0) if grid else img_part + txt_part


def _weighted(weights: torch.Tensor, values: torch.Tensor, grid: bool, images: bool) -> torch.Tensor:
    """Attention-weighted sum of instances without copying values per pair."""
    if not grid:
        return torch.einsum("pk,pkd->pd", weights, values)
    if images:
        return torch.einsum("ick,ikd->icd", weights, values)
    return torch.einsum("ick,ckd->icd", weights, values)

