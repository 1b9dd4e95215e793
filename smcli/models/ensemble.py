"""An ensemble of trained matchers: the mean of their scores (the paper's sm-LSTM* row).

``--model A,B,C`` anywhere a model is read (``score``, ``retrieve``, ``caption-rank``, the
``--eval`` protocol) scores every pair with each member and averages. Members must read
the same region features and the same caption inputs (the same text encoder, and for
bilstm the same vocabulary); :class:`smcli.inference.matcher.MatchModel` checks that.

The one-to-one side of an ensemble is the members' L2-normalised embeddings side by side,
each divided by sqrt(n): a dot product of two such vectors is the mean of the members'
cosines, so the shortlists and the cosine columns (``score --references``) that read
``side.emb`` need nothing ensemble-specific.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn


@dataclass
class EnsembleSide:
    """One modality's per-item tensors of every member, with the joint embedding."""

    emb: torch.Tensor  # [N, sum of members' emb_dim]: a dot product is the mean cosine
    parts: tuple  # one ImageSide / TextSide per member

    def select(self, index: torch.Tensor) -> EnsembleSide:
        return EnsembleSide(self.emb.index_select(0, index), tuple(p.select(index) for p in self.parts))

    def __len__(self) -> int:
        return len(self.emb)

    @classmethod
    def cat(cls, sides: list[EnsembleSide]) -> EnsembleSide:
        """Batches of one ensemble's sides, concatenated row-wise."""
        parts = tuple(type(members[0]).cat(list(members)) for members in zip(*(s.parts for s in sides)))
        return cls(torch.cat([s.emb for s in sides]), parts)


class Ensemble(nn.Module):
    """Scores are the mean of the members' scores; every member sees the same inputs."""

    def __init__(self, members: list[nn.Module]):
        super().__init__()
        if len(members) < 2:
            raise ValueError("an ensemble needs at least two members")
        self.members = nn.ModuleList(members)

    @property
    def cfg(self):
        """The config the scoring engine asks about: a many-to-many member's when there is one
        (the ensemble is then scored pair by pair, as its slowest member must be)."""
        return next((m.cfg for m in self.members if m.cfg.many_to_many), self.members[0].cfg)

    def _side(self, parts: list) -> EnsembleSide:
        scale = 1.0 / math.sqrt(len(parts))
        return EnsembleSide(torch.cat([p.emb.float() for p in parts], dim=-1) * scale, tuple(parts))

    def encode_images(self, regions: torch.Tensor | None, global_: torch.Tensor) -> EnsembleSide:
        return self._side([m.encode_images(regions, global_) for m in self.members])

    def encode_texts(self, batch: dict[str, torch.Tensor]) -> EnsembleSide:
        return self._side([m.encode_texts(batch) for m in self.members])

    def _mean(self, scores: list[torch.Tensor]) -> torch.Tensor:
        return torch.stack([s.float() for s in scores]).mean(0)

    def score_pairs(self, img: EnsembleSide, txt: EnsembleSide, ii: torch.Tensor, cc: torch.Tensor) -> torch.Tensor:
        return self._mean([m.score_pairs(a, b, ii, cc) for m, a, b in zip(self.members, img.parts, txt.parts)])

    def score_grid(self, img: EnsembleSide, txt: EnsembleSide) -> torch.Tensor:
        return self._mean([m.score_grid(a, b) for m, a, b in zip(self.members, img.parts, txt.parts)])

    def embedding_grid(self, img: EnsembleSide, txt: EnsembleSide) -> torch.Tensor:
        return self._mean([m.embedding_grid(a, b) for m, a, b in zip(self.members, img.parts, txt.parts)])
