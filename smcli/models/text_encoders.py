"""Sentence side: word instances, their mask and a sentence context vector.

Two encoders share one interface, ``forward(batch) -> TextFeatures``:
- :class:`BiLSTMText`: word embeddings (optionally GloVe-initialised) into a bidirectional
  LSTM; word instances are the [forward; backward] states (the paper's sentence side).
- :class:`FrozenMiniLMText`: cached all-MiniLM-L6-v2 token states (see ``minilm.py``),
  which the matcher projects; the sentence vector is MiniLM's sentence embedding.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from smcli.models.config import ModelConfig
from smcli.models.minilm import DIM as MINILM_DIM


@dataclass
class TextFeatures:
    words: torch.Tensor  # [B, L, word_dim]
    mask: torch.Tensor  # [B, L] bool, True at real words
    sentence: torch.Tensor  # [B, sent_dim]


def masked_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    m = mask.unsqueeze(-1).to(x.dtype)
    return (x * m).sum(-2) / m.sum(-2).clamp(min=1.0)


class BiLSTMText(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.embed = nn.Embedding(cfg.vocab_size, cfg.word_dim, padding_idx=0)
        self.lstm = nn.LSTM(cfg.word_dim, cfg.lstm_dim // 2, batch_first=True, bidirectional=True)
        self.word_dim = self.sent_dim = cfg.lstm_dim

    def forward(self, batch: dict[str, torch.Tensor]) -> TextFeatures:
        ids, mask = batch["ids"], batch["mask"]
        lengths = mask.sum(1).clamp(min=1).cpu()
        packed = nn.utils.rnn.pack_padded_sequence(self.embed(ids), lengths, batch_first=True,
                                                   enforce_sorted=False)
        out, _ = self.lstm(packed)
        words, _ = nn.utils.rnn.pad_packed_sequence(out, batch_first=True, total_length=ids.shape[1])
        return TextFeatures(words, mask, masked_mean(words, mask))


class FrozenMiniLMText(nn.Module):
    """Passes cached MiniLM states through; nothing here is trained. The word states are
    those of ``cfg.word_layers`` side by side; the sentence vector is the last layer's."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.word_dim = MINILM_DIM * len(cfg.minilm_layers)
        self.sent_dim = MINILM_DIM

    def forward(self, batch: dict[str, torch.Tensor]) -> TextFeatures:
        return TextFeatures(batch["states"], batch["mask"], batch["sentence"])


def build_text_encoder(cfg: ModelConfig) -> nn.Module:
    return {"bilstm": BiLSTMText, "minilm": FrozenMiniLMText}[cfg.text_encoder](cfg)
