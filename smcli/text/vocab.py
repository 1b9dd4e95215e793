"""Vocabulary: token <-> id, built from training captions only."""

from __future__ import annotations

import hashlib
from collections import Counter
from collections.abc import Iterable
from pathlib import Path

from smcli.errors import InputError

PAD, UNK = "<pad>", "<unk>"
SPECIALS = (PAD, UNK)
PAD_ID, UNK_ID = 0, 1


class Vocab:
    """An ordered list of tokens; ids are positions. ``<pad>`` is 0 and ``<unk>`` is 1."""

    def __init__(self, tokens: Iterable[str]):
        self.tokens = list(tokens)
        if tuple(self.tokens[:2]) != SPECIALS:
            raise ValueError("a vocabulary starts with <pad>, <unk>")
        self.index = {t: i for i, t in enumerate(self.tokens)}
        if len(self.index) != len(self.tokens):
            raise ValueError("duplicate tokens in vocabulary")

    @classmethod
    def build(cls, sentences: Iterable[list[str]], min_count: int = 1) -> Vocab:
        """Most frequent first (ties alphabetical), words seen fewer than min_count dropped."""
        counts = Counter(tok for sent in sentences for tok in sent)
        kept = sorted((t for t, c in counts.items() if c >= min_count and t not in SPECIALS),
                      key=lambda t: (-counts[t], t))
        return cls([*SPECIALS, *kept])

    def __len__(self) -> int:
        return len(self.tokens)

    def encode(self, tokens: Iterable[str]) -> list[int]:
        return [self.index.get(t, UNK_ID) for t in tokens]

    @property
    def hash(self) -> str:
        """A short content hash: two files share a vocabulary iff their hashes match."""
        return hashlib.sha256("\n".join(self.tokens).encode()).hexdigest()[:16]

    def to_text(self) -> str:
        return "\n".join(self.tokens) + "\n"

    @classmethod
    def from_text(cls, text: str, name: str = "vocabulary") -> Vocab:
        tokens = text.split("\n")
        if tokens and tokens[-1] == "":
            tokens.pop()
        try:
            return cls(tokens)
        except ValueError as exc:
            raise InputError(f"{name}: not an smcli vocabulary ({exc})") from None

    @classmethod
    def load(cls, path: str | Path) -> Vocab:
        p = Path(path)
        if not p.is_file():
            raise InputError(f"{path}: no such vocabulary file")
        try:
            text = p.read_text(encoding="utf-8")
        except UnicodeDecodeError:
            raise InputError(f"{path}: vocabulary is not UTF-8 text") from None
        return cls.from_text(text, str(path))

    def save(self, path: str | Path) -> None:
        from smcli.stage import AtomicFile

        with AtomicFile(Path(path)) as out:  # a failed write leaves no temporary
            out.handle.write(self.to_text().encode())
