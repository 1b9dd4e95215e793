"""Caption inputs for the text encoders: everything computed once per caption, batched on demand.

- bilstm: token ids (from the captions file, or from text with the model's vocabulary);
- minilm: frozen MiniLM token states, computed once per caption and cached on disk.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from smcli.models.config import ModelConfig
from smcli.text.normalize import tokenize
from smcli.text.vocab import Vocab

MAX_WORDS = 64  # bilstm captions are cut to this many tokens


class TokenIdStore:
    """Token ids per caption; batches are padded with 0 (<pad>)."""

    def __init__(self, token_ids: Sequence[Sequence[int]]):
        self.ids = [np.asarray(t[:MAX_WORDS], dtype=np.int64) for t in token_ids]
        self.lengths = np.array([max(1, len(t)) for t in self.ids])

    def __len__(self) -> int:
        return len(self.ids)

    def max_len(self, index: np.ndarray) -> int:
        return int(self.lengths[index].max(initial=1))

    def batch(self, index: np.ndarray, device: str = "cpu", max_len: int | None = None):
        L = max_len or self.max_len(index)
        ids = np.zeros((len(index), L), dtype=np.int64)
        for row, i in enumerate(index):
            t = self.ids[i][:L]
            ids[row, : len(t)] = t
        ids_t = torch.from_numpy(ids)
        mask = torch.zeros_like(ids_t, dtype=torch.bool)
        for row, i in enumerate(index):
            mask[row, : min(L, self.lengths[i])] = True
        return {"ids": ids_t.to(device), "mask": mask.to(device)}


class MiniLMStore:
    """Cached MiniLM token states and sentence vectors per caption."""

    def __init__(self, states):
        self.states = states  # smcli.models.minilm.TokenStates

    def __len__(self) -> int:
        return len(self.states)

    def max_len(self, index: np.ndarray) -> int:
        return int(max(1, self.states.lengths()[index].max(initial=1)))

    def batch(self, index: np.ndarray, device: str = "cpu", max_len: int | None = None):
        index = np.asarray(index)
        padded, mask = self.states.padded(index, max_len or self.max_len(index))
        return {
            "states": torch.from_numpy(padded).to(device),
            "mask": torch.from_numpy(mask).to(device),
            "sentence": torch.from_numpy(self.states.sentence[index]).to(device),
        }


def make_text_store(cfg: ModelConfig, captions: Sequence[str], vocab: Vocab,
                    token_ids: Sequence[Sequence[int]] | None = None, *,
                    cache: bool = True, progress=None, device: str = "cpu"):
    """The text store a model of ``cfg`` reads. ``token_ids`` (from a captions file with the
    model's vocabulary) avoids re-tokenizing; without them the text is tokenized here."""
    if cfg.text_encoder == "minilm":
        from smcli.models import minilm

        fn = minilm.encode_cached if cache else minilm.encode
        return MiniLMStore(fn(list(captions), layers=cfg.minilm_layers, device=device, progress=progress))
    if token_ids is None:
        token_ids = [vocab.encode(tokenize(c)) for c in captions]
    return TokenIdStore(token_ids)
