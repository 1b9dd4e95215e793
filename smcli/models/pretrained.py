"""Named pretrained models shipped with smcli: ``--model flickr8k`` wherever a model directory goes.

Each lives in ``smcli/pretrained/NAME/`` (a model directory as ``smcli train`` writes it,
with float16 weights, plus ``card.json``: where it came from, the exact commands, val and
test metrics, the features it expects, the sha256 of its weights, its limits). Nothing is
downloaded: the files install with the package. ``make pretrained`` rebuilds them from the
Flickr8k benchmark (bench/package_pretrained.py).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from smcli.errors import InputError

ROOT = Path(__file__).resolve().parent.parent / "pretrained"
DEFAULT = "flickr8k"  # what score, retrieve, caption-rank and explain use when no model is given
CARD_FILE = "card.json"


@dataclass
class Pretrained:
    name: str
    directory: Path
    card: dict[str, Any]

    @property
    def size_bytes(self) -> int:
        return sum(p.stat().st_size for p in self.directory.iterdir() if p.is_file())

    def weights_sha256(self) -> str:
        from smcli.models.factory import WEIGHTS_FILE

        return hashlib.sha256((self.directory / WEIGHTS_FILE).read_bytes()).hexdigest()


def available() -> dict[str, Pretrained]:
    """name -> pretrained model, for every model shipped in this install."""
    out = {}
    if ROOT.is_dir():
        for d in sorted(ROOT.iterdir()):
            card = d / CARD_FILE
            if card.is_file():
                out[d.name] = Pretrained(d.name, d, json.loads(card.read_text()))
    return out


def get(name: str) -> Pretrained:
    models = available()
    if name not in models:
        names = ", ".join(models) or "none in this install"
        raise InputError(f"--model {name}: neither a model directory nor a pretrained model ({names})")
    return models[name]


def resolve_model(name_or_dir: str | Path) -> Path:
    """A model directory as given, or the directory of the pretrained model of that name."""
    p = Path(name_or_dir)
    if p.is_dir() or any(sep in str(name_or_dir) for sep in ("/", "\\")) or str(name_or_dir).startswith("."):
        return p
    return get(str(name_or_dir)).directory
