"""The learned matchers: the sm-LSTM (and its ablations) and the one-to-one VSE baseline.

Everything that depends on one side only is computed once per image (:class:`ImageSide`)
or once per sentence (:class:`TextSide`); pair scores then come from batched tensor
operations over a list of pairs (training) or a grid of images x captions (search and
evaluation), never from a Python loop over pairs.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator
from dataclasses import dataclass, fields

import torch
import torch.nn.functional as F
from torch import nn

from smcli.models import fused_attention
from smcli.models.config import ModelConfig
from smcli.models.dropout import FeatureDropout
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

    @classmethod
    def cat(cls, parts: list):
        """Batches of sides, concatenated row-wise."""
        return cls(**{f.name: (None if getattr(parts[0], f.name) is None
                               else torch.cat([getattr(p, f.name) for p in parts]))
                      for f in fields(parts[0])})


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
        self.drop = FeatureDropout(cfg.dropout, cfg.dropout_draw)
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
            if cfg.cross_scale > 0:  # the temperature of the word-steered region logits
                self.cross_log_scale = nn.Parameter(torch.tensor(math.log(cfg.cross_scale)))
            if cfg.coverage > 0:  # how much a word already selected is held back
                self.coverage_log_scale = nn.Parameter(torch.tensor(math.log(cfg.coverage)))
            if cfg.region_coverage > 0:  # how much a region already selected is held back
                self.region_coverage_log_scale = nn.Parameter(torch.tensor(math.log(cfg.region_coverage)))
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
        return self._fuse(img, txt, pairs=(ii, cc))[0]

    def score_grid(self, img: ImageSide, txt: TextSide) -> torch.Tensor:
        if len(txt) > 1 and txt.mask is not None:
            # captions sorted by length: a block of word attention spans only its own longest caption
            order = length_order(txt.mask)
            if bool((order != torch.arange(len(order), device=order.device)).any()):
                score = self._fuse(img, txt.select(order))[0]
                return score.index_select(1, torch.argsort(order))
        return self._fuse(img, txt)[0]

    def attention_maps(self, img: ImageSide, txt: TextSide, ii: torch.Tensor,
                       cc: torch.Tensor) -> tuple[torch.Tensor, Attention]:
        """Scores and the saliency maps of every step for the given pairs."""
        return self._fuse(img, txt, pairs=(ii, cc), keep_maps=True)

    def _fused_weights(self):
        """The LSTM's weights with the cell-input gate doubled (tanh(g) = 2 sigmoid(2g) - 1, so one
        sigmoid covers all four gates), and U_a, U_s stacked under W_hh: one matrix product of
        h_{t-1} per step gives the gates' recurrent part and both attention queries. Built from
        the parameters on every call (cheap), so they always follow the parameters."""
        lstm, dh = self.lstm, self.cfg.hidden_dim
        scale = torch.ones(4 * dh, dtype=lstm.weight_ih.dtype, device=lstm.weight_ih.device)
        scale[2 * dh:3 * dh] = 2.0
        w_x = lstm.weight_ih * scale[:, None]
        w_h = [lstm.weight_hh * scale[:, None]]
        b_h = [(lstm.bias_ih + lstm.bias_hh) * scale]
        if self.attention != "uniform":
            w_h += [self.U_a.weight, self.U_s.weight]
            b_h += [self.U_a.bias, self.U_s.bias]
        return w_x, torch.cat(w_h), torch.cat(b_h)

    def _fuse(self, img: ImageSide, txt: TextSide, pairs: tuple[torch.Tensor, torch.Tensor] | None = None, *,
              keep_maps: bool = False):
        """Run T attention + LSTM steps for pairs.

        pairs=(ii, cc): the P pairs (img[ii[k]], txt[cc[k]]) -> scores [P]; no per-image or
        per-caption tensor is copied per pair (attention-weighted sums are batched per image
        and per caption, see :class:`_Groups`).
        pairs=None: every image against every caption -> scores [I, C]. Image tensors are
        broadcast over captions and text tensors over images, never copied per pair.

        The attention logits w . tanh(keys + query) are computed in cache-sized blocks by
        :func:`_att_logits` (the [pairs, instances, att_dim] tensor is never materialised);
        the recurrent matrix products are fused (see :meth:`_fused_weights`).
        """
        cfg = self.cfg
        dh, da = cfg.hidden_dim, cfg.att_dim
        grid = pairs is None
        if grid:
            shape = (len(img), len(txt))
            word_mask = txt.mask.unsqueeze(0)  # [1, C, L]
            groups = None
        else:
            ii, cc = pairs
            shape = (len(ii),)
            word_mask = txt.mask.index_select(0, cc)  # [P, L]
            groups = (_Groups(ii, len(img)), _Groups(cc, len(txt)))
        n_pairs = math.prod(shape)
        L = txt.mask.shape[-1]
        lengths = txt.mask.sum(-1)
        # words past the longest caption here are padding everywhere: left out of the kernel
        L_used = max(1, int(lengths.max())) if L and len(txt) else L
        word_mask_used = word_mask[..., :L_used]
        w_x, w_h, b_h = self._fused_weights()
        track = torch.is_grad_enabled()
        mm_dtype = _autocast_dtype(img.values) if not track else None
        if mm_dtype is not None:
            # under autocast, without gradients: the LSTM's and queries' weights cast once per
            # call, not by autocast at every product (the biases stay float32, as autocast
            # passes them: rounded to bf16 first, scores would move by ~3e-4)
            w_x, w_h = w_x.to(mm_dtype), w_h.to(mm_dtype)
        h = c = None
        if self.attention == "uniform":
            p_uni = img.values.new_full((*shape, img.values.shape[-2]), 1.0 / img.values.shape[-2])
            q_uni = word_mask.expand(*shape, -1).to(img.values.dtype)
            q_uni = q_uni / q_uni.sum(-1, keepdim=True).clamp(min=1.0)
            # the same selection for every pair: one mean per image and per caption
            q_cap = txt.mask.to(img.values.dtype)
            q_cap = q_cap / q_cap.sum(-1, keepdim=True).clamp(min=1.0)
            a_sel, s_sel = img.values.mean(-2), torch.einsum("ck,ckd->cd", q_cap, txt.values)
            a_sel, s_sel = F.normalize(a_sel, dim=-1), F.normalize(s_sel, dim=-1)
            x_uni = (a_sel.unsqueeze(1) * s_sel.unsqueeze(0) if grid
                     else a_sel.index_select(0, ii) * s_sel.index_select(0, cc))  # [*shape, ds]
            gx_uni = x_uni.reshape(n_pairs, -1) @ w_x.T  # the input part of the gates: the same every step
        else:
            ctx_a = ctx_s = None
            if self.attention == "context":
                ctx_a = _pair_add(img.ctx_a, txt.ctx_a, pairs)
                ctx_s = _pair_add(img.ctx_s, txt.ctx_s, pairs)
            keys_w = txt.keys[:, :L_used]
            txt_values = txt.values[:, :L_used]
            if grid and mm_dtype is not None:  # read at every step by a batched product: cast and laid out once
                txt_values = txt_values.to(mm_dtype).contiguous()
            ea_img, ea_txt = _exp_keys(img.keys), _exp_keys(txt.keys)
            ea_txt = None if ea_txt is None else ea_txt[:, :L_used]
            if not grid:  # read twice a step (forward, backward): gathered per pair once
                ea_img = None if ea_img is None else ea_img.index_select(0, ii)
                ea_txt = None if ea_txt is None else ea_txt.index_select(0, cc)
            w_a, w_s = self.w_a.weight[0], self.w_s.weight[0]
            scale = self.att_log_scale.exp() if cfg.att_scale > 0 else None
            cross = cross_scale = covered = None
            coverage = self.coverage_log_scale.exp() if cfg.coverage > 0 else None
            region_covered = None
            region_coverage = (self.region_coverage_log_scale.exp() * img.values.shape[-2]
                               if cfg.region_coverage > 0 else None)
            if cfg.cross_scale > 0:  # unit region values, once per call
                cross, cross_scale = F.normalize(img.values, dim=-1), self.cross_log_scale.exp()
        region_maps, word_maps, outputs, cosines = [], [], [], []
        hp = None  # h_{t-1} @ [W_hh; U_a; U_s]^T + biases, [pairs, 4 dh (+ 2 da)]; None while h = 0
        for step in range(cfg.steps):
            if self.attention == "uniform":
                p, q = p_uni, q_uni
                x = x_uni
                gates = gx_uni + (b_h if hp is None else hp)
            else:
                if hp is None:  # h_0 = 0: the queries are U's biases
                    qa = b_h[4 * dh:4 * dh + da].expand(*shape, da)
                    qs = b_h[4 * dh + da:].expand(*shape, da)
                else:
                    qa = hp[:, 4 * dh:4 * dh + da].reshape(*shape, da)
                    qs = hp[:, 4 * dh + da:].reshape(*shape, da)
                if ctx_a is not None:
                    qa, qs = qa + ctx_a, qs + ctx_s
                e_a = _att_logits(img.keys, ea_img, qa, w_a, None if grid else ii, images=True)
                e = _att_logits(keys_w, ea_txt, qs, w_s, None if grid else cc, images=False, lengths=lengths)
                if scale is not None:
                    e_a, e = e_a * scale, e * scale
                if covered is not None:
                    e = e - coverage * covered
                q = torch.softmax(e.masked_fill(~word_mask_used, float("-inf")), -1)
                if cfg.coverage > 0:
                    covered = q if covered is None else covered + q
                s_sel = _weighted(q, txt_values, groups and groups[1], images=False)
                if cross is not None:  # regions that match this step's words gain weight
                    e_a = e_a + cross_scale * _cross_logits(cross, F.normalize(s_sel, dim=-1),
                                                            groups and groups[0])
                if region_covered is not None:
                    e_a = e_a - region_coverage * region_covered
                p = torch.softmax(e_a, -1)
                if region_coverage is not None and step < cfg.steps - 1:
                    region_covered = p if region_covered is None else region_covered + p
                a_sel = _weighted(p, img.values, groups and groups[0], images=True)  # [*shape, sim_dim]
                if keep_maps and L_used < L:
                    q = F.pad(q, (0, L - L_used))
                x = F.normalize(a_sel, dim=-1) * F.normalize(s_sel, dim=-1)
                if mm_dtype is not None:
                    x = x.to(mm_dtype)
                if hp is None:
                    gates = torch.addmm(b_h[:4 * dh], x.reshape(n_pairs, -1), w_x.T)
                elif track or not hp.dtype == x.dtype == w_x.dtype:  # (autocast: dtypes differ)
                    gates = torch.addmm(hp[:, :4 * dh], x.reshape(n_pairs, -1), w_x.T)
                else:  # in place, into the recurrent part (no copy of it)
                    gates = hp[:, :4 * dh].addmm_(x.reshape(n_pairs, -1), w_x.T)
            if self.cfg.local_skip:
                cosines.append(x.float().sum(-1))
            if track:
                i_g, f_g, g_g, o_g = gates.sigmoid().split(dh, -1)
                g_g = g_g * 2 - 1  # tanh of the cell input (its pre-activation was doubled)
                c = i_g * g_g if c is None else torch.addcmul(f_g * c, i_g, g_g)
                h = o_g * (torch.sigmoid(c * 2) * 2 - 1)  # o * tanh(c)
            else:  # the same, in place
                i_g, f_g, g_g, o_g = gates.sigmoid_().split(dh, -1)
                g_g.mul_(2).sub_(1)
                c = i_g * g_g if c is None else c.mul_(f_g).addcmul_(i_g, g_g)
                h = torch.mul(c, 2).sigmoid_().mul_(2).sub_(1).mul_(o_g)
            if step < cfg.steps - 1:
                hp = torch.addmm(b_h if self.attention != "uniform" else b_h[:4 * dh], h, w_h.T)
            outputs.append(h.reshape(*shape, dh))
            if keep_maps:
                region_maps.append(p)
                word_maps.append(q)
        h = outputs[-1]
        with full_precision(h):
            if self.cfg.score_head == "sum":
                score = sum(self.head(o.float()).squeeze(-1) for o in outputs)
            else:
                score = self.head(h.float()).squeeze(-1)
            if self.cfg.local_skip:
                score = score + torch.stack(cosines).mean(0)
            if self.cfg.fuse_global and not (self.training and self.cfg.global_weight_on_val):
                glob = (img.emb @ txt.emb.T if grid
                        else (img.emb.index_select(0, ii) * txt.emb.index_select(0, cc)).sum(-1))
                score = score + self.global_weight * glob
        maps = Attention(torch.stack(region_maps, -2), torch.stack(word_maps, -2)) if keep_maps else None
        return score, maps


# -- the attention kernel ------------------------------------------------------------------
# w . tanh(keys + query) over [pairs, instances, att_dim] is most of a pair's element-wise work.
# On a CPU it runs in blocks of about _BLOCK elements (32 MB of float32 at most in flight, in
# cache), and tanh(z) = 2 / (1 + exp(-2 k) exp(-2 q)) - 1, with exp(-2 k) computed once per
# image or caption and exp(-2 q) once per pair: no transcendental per element, one multiply-add
# and one reciprocal instead. That form is used while |k|, |q| <= _EXP_RANGE (the products then
# stay normal floats); otherwise, and on other devices, tanh itself.
_BLOCK = 1 << 21
_EXP_RANGE = 20.0


def length_order(mask: torch.Tensor) -> torch.Tensor:
    """Captions by word-piece count, shortest first, ties in their own order: the order
    :meth:`SmLSTM.score_grid` scores in (exhaustive scoring sorts a caption block by it once,
    so that score_grid finds it sorted and reuses the block's tensors)."""
    return torch.sort(mask.sum(-1), stable=True).indices


def _autocast_dtype(t: torch.Tensor) -> torch.dtype | None:
    """The lower precision autocast runs products in on ``t``'s device, or None when it is off."""
    kind = t.device.type
    if not torch.is_autocast_enabled(kind):
        return None
    return torch.get_autocast_dtype(kind)


_reused: list = []  # [(keys, exp(-2 keys))] held by reuse_exp_keys


@contextlib.contextmanager
def reuse_exp_keys(keys: torch.Tensor | None) -> Iterator[None]:
    """Within the block, exp(-2 ``keys``) is computed once, not on every call that scores
    against them (exhaustive scoring runs one caption block against every image block). The
    caller promises not to change ``keys`` in place meanwhile."""
    entry = (keys, _exp_keys(keys))
    _reused.append(entry)
    try:
        yield
    finally:
        del _reused[next(i for i, e in enumerate(_reused) if e is entry)]  # by identity: == on tensors is elementwise


def _exp_keys(keys: torch.Tensor | None) -> torch.Tensor | None:
    """exp(-2 keys) for the exp form of the attention, or None where it does not apply."""
    if keys is None or keys.device.type != "cpu" or keys.numel() == 0:
        return None
    for held, exp in _reused:
        if held is keys:
            return exp
    with torch.no_grad():
        k = keys.detach().float()
        if not bool(k.abs().amax() <= _EXP_RANGE):
            return None
        return torch.exp(k * -2.0)


def _exp_query(query: torch.Tensor, exp_keys: torch.Tensor | None) -> torch.Tensor | None:
    if exp_keys is None:
        return None
    with torch.no_grad():
        q = query.detach().float()
        if not bool(q.abs().amax() <= _EXP_RANGE):
            return None
        return torch.exp(q * -2.0)


_ONE = torch.ones(())


def _tanh_block(k, q, ea, eb, out: torch.Tensor) -> tuple[float, float]:
    """Fill ``out`` with (tanh(k + q) - b) / a and return (a, b): the exp form gives the
    reciprocal r = 1 / (1 + ea eb), tanh = 2 r - 1."""
    if eb is None:
        torch.add(k, q, out=out)
        out.tanh_()
        return 1.0, 0.0
    torch.addcmul(_ONE, ea, eb, out=out)
    out.reciprocal_()
    return 2.0, -1.0


def _att_logits(keys, exp_keys, query, w, index=None, *, images: bool, lengths=None) -> torch.Tensor:
    """w . tanh(keys + query) over instances: keys [N, K, da] -> [*shape, K].

    index=None (a grid): N is the images (images=True, query [N, C, da]) or the captions
    (query [I, N, da]); ``lengths`` of the captions (which come sorted by length) let a block
    of captions stop at its longest one; logits past a caption's length are left 0.
    index [P] (pairs): pair k uses keys[index[k]] and query [P, da].
    """
    if keys.device.type != "cpu":  # one broadcast operation: fast where tanh is cheap
        if index is not None:
            k = keys.index_select(0, index)
        else:
            k = keys.unsqueeze(1) if images else keys.unsqueeze(0)
        return torch.tanh(k + query.unsqueeze(-2)) @ w
    eb = _exp_query(query, exp_keys)
    if index is not None:
        return _PairLogits.apply(keys, exp_keys if eb is not None else None, index, query, w, eb)
    if torch.is_grad_enabled() and (keys.requires_grad or query.requires_grad or w.requires_grad):
        k = keys.unsqueeze(1) if images else keys.unsqueeze(0)  # a grid with gradients: plain autograd
        return torch.tanh(k + query.unsqueeze(-2)) @ w
    return _grid_logits(keys, exp_keys, query, w, eb, images=images, lengths=lengths)


@torch.no_grad()
def _grid_logits(keys, ea, query, w, eb, *, images: bool, lengths) -> torch.Tensor:
    n_img, n_cap, da = query.shape
    K = keys.shape[1]
    w = w.float()
    if eb is not None and fused_attention.active():  # reads exp(-2 keys) only, never keys
        out = _fused_grid_logits(ea, w, eb, images=images, lengths=lengths)
        if out is not None:
            return out
    keys, query = keys.float(), query.float()
    out = torch.zeros(n_img, n_cap, K)
    buf = torch.empty(_BLOCK + K * da)
    if images:  # keys [I, R, da]: blocks of (images, captions)
        cb = max(1, min(n_cap, _BLOCK // (K * da)))
        ib = max(1, min(n_img, _BLOCK // (cb * K * da))) if cb == n_cap else 1
        for i0 in range(0, n_img, ib):
            i1 = min(n_img, i0 + ib)
            for c0 in range(0, n_cap, cb):
                c1 = min(n_cap, c0 + cb)
                blk = buf[:(i1 - i0) * (c1 - c0) * K * da].view(i1 - i0, c1 - c0, K, da)
                a, b = _tanh_block(keys[i0:i1, None], query[i0:i1, c0:c1, None],
                                   None if eb is None else ea[i0:i1, None],
                                   None if eb is None else eb[i0:i1, c0:c1, None], blk)
                torch.mv(blk.view(-1, da), w * a, out=out[i0:i1, c0:c1].view(-1))
                if b:
                    out[i0:i1, c0:c1].add_(b * float(w.sum()))
        return out
    # keys [C, L, da] of captions sorted by length: blocks of (captions, images), each block
    # only as long as its longest caption
    cb = max(1, min(n_cap, 64, _BLOCK // (K * da)))
    w_sum = float(w.sum())
    for c0, c1, Kb in _caption_blocks(n_cap, K, lengths, cb):
        ib = max(1, min(n_img, _BLOCK // ((c1 - c0) * Kb * da)))
        for i0 in range(0, n_img, ib):
            i1 = min(n_img, i0 + ib)
            blk = buf[:(i1 - i0) * (c1 - c0) * Kb * da].view(i1 - i0, c1 - c0, Kb, da)
            a, b = _tanh_block(keys[None, c0:c1, :Kb], query[i0:i1, c0:c1, None],
                               None if eb is None else ea[None, c0:c1, :Kb],
                               None if eb is None else eb[i0:i1, c0:c1, None], blk)
            part = torch.mv(blk.view(-1, da), w * a).view(i1 - i0, c1 - c0, Kb)
            if b:
                part.add_(b * w_sum)
            out[i0:i1, c0:c1, :Kb] = part
    return out


def _caption_blocks(n_cap: int, K: int, lengths, size: int):
    """(start, end, length) over captions sorted by length, ``size`` at a time, each block
    only as long as its longest caption (all K when the lengths are not known)."""
    for c0 in range(0, n_cap, size):
        c1 = min(n_cap, c0 + size)
        yield c0, c1, K if lengths is None else max(1, min(K, int(lengths[c0:c1].max())))


def _fused_grid_logits(ea, w, eb, *, images: bool, lengths) -> torch.Tensor | None:
    """_grid_logits' exp form as one fused loop (smcli.models.fused_attention); None if it
    did not compile. Captions keep their blocks of 64, each as long as its longest caption."""
    w2, w_sum = w * 2.0, float(w.sum())
    if images:
        return fused_attention.grid_logits(ea, eb, w2, w_sum, images=True)
    n_img, n_cap, _ = eb.shape
    K = ea.shape[1]
    out = torch.zeros(n_img, n_cap, K)
    for c0, c1, Kb in _caption_blocks(n_cap, K, lengths, 64):
        part = fused_attention.grid_logits(ea[c0:c1, :Kb], eb[:, c0:c1], w2, w_sum, images=False)
        if part is None:
            return None
        out[:, c0:c1, :Kb] = part
    return out


class _PairLogits(torch.autograd.Function):
    """w . tanh(keys[index] + query) for pairs: keys [N, K, da], index [P], query [P, da] ->
    [P, K], in blocks of pairs (each block gathers its own keys); the backward recomputes tanh
    block by block instead of keeping [P, K, da] tensors. ``ea`` = exp(-2 keys[index]) [P, K, da]
    and ``eb`` = exp(-2 query) select the exp form (see _tanh_block); both None: tanh itself."""

    @staticmethod
    def forward(ctx, keys, ea, index, query, w, eb):
        n = len(index)
        K, da = keys.shape[1:]
        out = torch.empty(n, K, dtype=torch.float32, device=keys.device)
        kf, qf, wf = keys.detach().float(), query.detach().float(), w.detach().float()
        ctx.save_for_backward(kf, ea, index, qf, wf, eb)
        ctx.dtypes = keys.dtype, query.dtype, w.dtype
        w_sum = float(wf.sum())
        for p0, p1, blk in _pair_blocks(n, K, da):
            a, b = _gathered_tanh_block(kf, None if eb is None else ea[p0:p1], index[p0:p1], qf[p0:p1],
                                        None if eb is None else eb[p0:p1], blk)
            torch.mv(blk.view(-1, da), wf * a, out=out[p0:p1].view(-1))
            if b:
                out[p0:p1].add_(b * w_sum)
        return out

    @staticmethod
    def backward(ctx, grad):
        kf, ea, index, qf, wf, eb = ctx.saved_tensors
        n = len(index)
        K, da = kf.shape[1:]
        grad = grad.float().contiguous()
        d_keys = torch.zeros(kf.shape, device=kf.device)
        d_query = torch.empty(n, da, device=kf.device)
        d_w = torch.zeros(da, device=kf.device)
        dz = None
        for p0, p1, blk in _pair_blocks(n, K, da):
            g = grad[p0:p1]
            a, b = _gathered_tanh_block(kf, None if eb is None else ea[p0:p1], index[p0:p1], qf[p0:p1],
                                        None if eb is None else eb[p0:p1], blk)
            if dz is None:
                dz = torch.empty_like(blk)
            dzb = dz[:p1 - p0]
            if b:  # blk = r, tanh = 2 r - 1, 1 - tanh^2 = 4 r (1 - r)
                d_w += torch.mv(blk.view(-1, da).T, g.reshape(-1)) * 2.0 - float(g.sum())
                blk.addcmul_(blk, blk, value=-1.0)
                torch.mul(blk, (g * 4.0)[..., None], out=dzb)
            else:  # blk = tanh
                d_w += torch.mv(blk.view(-1, da).T, g.reshape(-1))
                blk.mul_(blk).neg_().add_(1.0)
                torch.mul(blk, g[..., None], out=dzb)
            dzb.mul_(wf)
            torch.sum(dzb, 1, out=d_query[p0:p1])
            d_keys.view(len(kf), -1).index_add_(0, index[p0:p1], dzb.view(p1 - p0, -1))  # 2-D: 3-D is slow
        k_dtype, q_dtype, w_dtype = ctx.dtypes
        return d_keys.to(k_dtype), None, None, d_query.to(q_dtype), d_w.to(w_dtype), None


def _pair_blocks(n: int, K: int, da: int):
    """(start, end, buffer [end - start, K, da]) over n pairs, about _BLOCK elements at a time."""
    pb = max(1, min(n, _BLOCK // max(1, K * da)))
    buf = torch.empty(pb * K * da)
    for p0 in range(0, n, pb):
        p1 = min(n, p0 + pb)
        yield p0, p1, buf[:(p1 - p0) * K * da].view(p1 - p0, K, da)


def _gathered_tanh_block(keys, ea, index, query, eb, out):
    """_tanh_block for a block of pairs: ``index`` into keys [N, K, da], their queries [b, da],
    exp(-2 keys) of these pairs ``ea`` [b, K, da] and exp(-2 query) ``eb`` [b, da] (or None)."""
    if eb is None:
        torch.index_select(keys, 0, index, out=out)
        out.add_(query[:, None])
        out.tanh_()
        return 1.0, 0.0
    torch.addcmul(_ONE, ea, eb[:, None], out=out)
    out.reciprocal_()
    return 2.0, -1.0


class _Groups:
    """Pairs grouped by their image (or caption) for batched attention-weighted sums: pair k
    sits in slot ``slot[k]`` of a [rows, M] table, row j holding pairs of item ``row_item[j]``.
    M is about twice the mean number of pairs per item; an item with more pairs (a hub of
    mined negatives) takes several rows, an item without pairs none."""

    def __init__(self, index: torch.Tensor, n: int):
        counts = torch.bincount(index, minlength=n)
        P = len(index)
        self.m = max(1, min(int(counts.max()) if P else 1, max(8, 2 * -(-P // max(1, n)))))
        rows = (counts + self.m - 1) // self.m  # per item
        self.rows = int(rows.sum())
        self.row_item = torch.repeat_interleave(torch.arange(n, device=index.device), rows)
        self.all_items = self.rows == n and bool((rows == 1).all())  # row j is item j
        order = torch.argsort(index, stable=True)
        starts = torch.cumsum(counts, 0) - counts
        rank = torch.arange(P, device=index.device) - starts[index[order]]  # within its item
        row_start = torch.cumsum(rows, 0) - rows
        self.slot = torch.empty_like(index)
        self.slot[order] = (row_start[index[order]] + rank // self.m) * self.m + rank % self.m


def _pair_add(img_part: torch.Tensor, txt_part: torch.Tensor, pairs) -> torch.Tensor:
    if pairs is None:
        return img_part.unsqueeze(1) + txt_part.unsqueeze(0)
    return img_part.index_select(0, pairs[0]) + txt_part.index_select(0, pairs[1])


def _cross_logits(values: torch.Tensor, query: torch.Tensor, groups: _Groups | None) -> torch.Tensor:
    """<values_i, query> over each image's instances: values [I, R, d], query [*shape, d] ->
    [*shape, R]; pairs are batched per image like :func:`_weighted` (no per-pair copy)."""
    values = values.to(query.dtype)
    if groups is not None:
        rows, m = groups.rows, groups.m
        table = query.new_zeros(rows * m, query.shape[-1]).index_copy(0, groups.slot, query)
        if not groups.all_items:
            values = values.reshape(len(values), -1).index_select(0, groups.row_item).view(rows, *values.shape[1:])
        out = torch.bmm(table.view(rows, m, -1), values.transpose(1, 2))
        return out.view(rows * m, -1).index_select(0, groups.slot)
    return torch.einsum("icd,ird->icr", query, values)


def _weighted(weights: torch.Tensor, values: torch.Tensor, groups: _Groups | None, images: bool) -> torch.Tensor:
    """Attention-weighted sum of instances without copying values per pair."""
    if groups is not None:  # pairs: weights [P, K] into a [rows, M, K] table, one batched product per row
        rows, m = groups.rows, groups.m
        table = weights.new_zeros(rows * m, weights.shape[-1]).index_copy(0, groups.slot, weights)
        values = values.to(weights.dtype)
        if not groups.all_items:  # rows of other items (2-D: its backward, index_add_, is slow in 3-D)
            values = values.reshape(len(values), -1).index_select(0, groups.row_item).view(rows, *values.shape[1:])
        out = torch.bmm(table.view(rows, m, -1), values)
        return out.view(rows * m, -1).index_select(0, groups.slot)
    if images:
        return torch.einsum("ick,ikd->icd", weights, values)
    return torch.einsum("ick,ckd->icd", weights, values)
