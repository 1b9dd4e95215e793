"""Canonical correlation analysis: the statistical one-to-one baseline.

Fitted in closed form on training pairs (global image feature, sentence vector), scored by
cosine in the CCA space with each canonical dimension weighted by its correlation ** power.
The sentence vector is MiniLM's sentence embedding, or the mean of the GloVe vectors of the
words (``text_encoder="bilstm"``, which for CCA means "word vectors").
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from smcli.models.config import ModelConfig
from smcli.models.matchers import ImageSide, TextSide, full_precision
from smcli.models.minilm import DIM as MINILM_DIM
from smcli.models.text_encoders import masked_mean


class CCA(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        k = cfg.cca_dim
        dy = MINILM_DIM if cfg.text_encoder == "minilm" else cfg.word_dim
        self.register_buffer("mean_x", torch.zeros(cfg.img_dim))
        self.register_buffer("mean_y", torch.zeros(dy))
        self.register_buffer("proj_x", torch.zeros(cfg.img_dim, k))
        self.register_buffer("proj_y", torch.zeros(dy, k))
        self.register_buffer("weights", torch.ones(k))
        if cfg.text_encoder == "bilstm":
            self.register_buffer("word_vectors", torch.zeros(cfg.vocab_size, cfg.word_dim))

    def sentence_vectors(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        if self.cfg.text_encoder == "minilm":
            return batch["sentence"]
        vecs = self.word_vectors[batch["ids"]]
        known = batch["mask"] & (vecs.abs().sum(-1) > 0)  # words without a vector are skipped
        return masked_mean(vecs, known)

    def fit(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        """Fit on paired rows of x (images) and y (sentences); returns the correlations."""
        x = x.astype(np.float64)
        y = y.astype(np.float64)
        mx, my = x.mean(0), y.mean(0)
        xc, yc = x - mx, y - my
        n = len(x) - 1
        reg = self.cfg.cca_reg
        cxx = xc.T @ xc / n
        cyy = yc.T @ yc / n
        cxy = xc.T @ yc / n
        # ridge relative to the average variance keeps reg meaningful at any feature scale
        cxx += reg * np.trace(cxx) / len(cxx) * np.eye(len(cxx))
        cyy += reg * np.trace(cyy) / len(cyy) * np.eye(len(cyy))
        wx = _inv_sqrt(cxx)
        wy = _inv_sqrt(cyy)
        u, s, vt = np.linalg.svd(wx @ cxy @ wy, full_matrices=False)
        k = min(self.cfg.cca_dim, len(s))
        self.mean_x.copy_(torch.from_numpy(mx).float())
        self.mean_y.copy_(torch.from_numpy(my).float())
        px = torch.zeros_like(self.proj_x)
        py = torch.zeros_like(self.proj_y)
        px[:, :k] = torch.from_numpy(wx @ u[:, :k]).float()
        py[:, :k] = torch.from_numpy(wy @ vt.T[:, :k]).float()
        self.proj_x.copy_(px)
        self.proj_y.copy_(py)
        w = torch.zeros_like(self.weights)
        w[:k] = torch.from_numpy(np.clip(s[:k], 0, None) ** self.cfg.cca_power).float()
        self.weights.copy_(w)
        return s[:k]

    def _embed(self, v: torch.Tensor, mean: torch.Tensor, proj: torch.Tensor) -> torch.Tensor:
        with full_precision(v):
            return F.normalize(((v.float() - mean) @ proj) * self.weights.sqrt(), dim=-1)

    def encode_images(self, regions: torch.Tensor, global_: torch.Tensor) -> ImageSide:
        return ImageSide(emb=self._embed(global_, self.mean_x, self.proj_x))

    def encode_texts(self, batch: dict[str, torch.Tensor]) -> TextSide:
        return TextSide(emb=self._embed(self.sentence_vectors(batch), self.mean_y, self.proj_y))

    def score_pairs(self, img: ImageSide, txt: TextSide, ii: torch.Tensor,
                    cc: torch.Tensor) -> torch.Tensor:
        with full_precision(img.emb):
            return (img.emb[ii] * txt.emb[cc]).sum(-1)

    def score_grid(self, img: ImageSide, txt: TextSide) -> torch.Tensor:
        with full_precision(img.emb):
            return img.emb @ txt.emb.T

    embedding_grid = score_grid


def _inv_sqrt(c: np.ndarray) -> np.ndarray:
    vals, vecs = np.linalg.eigh(c)
    return (vecs / np.sqrt(np.clip(vals, 1e-12, None))) @ vecs.T
