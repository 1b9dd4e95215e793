"""Build, save and load matchers: a registry of variants and the model directory format.

A model directory holds ``config.json`` (every hyperparameter, the features and vocabulary
the model was trained on), ``model.safetensors`` (weights; no pickle) and ``vocab.txt``.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from smcli._version import __version__
from smcli.errors import InputError, SmcliError, first_line
from smcli.models.config import VARIANTS, ModelConfig

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
VOCAB_FILE = "vocab.txt"
INCOMPLETE_FILE = "INCOMPLETE"  # present while smcli train runs, and after a run that was killed

# variant -> (constructor, keyword arguments)
_REGISTRY: dict[str, tuple[str, dict[str, Any]]] = {
    "smlstm": ("SmLSTM", {"attention": "context"}),
    "no-context": ("SmLSTM", {"attention": "plain"}),
    "mean": ("SmLSTM", {"attention": "uniform"}),
    "vse": ("VSE", {}),
    "cca": ("CCA", {}),
}
assert set(_REGISTRY) == set(VARIANTS)


def create_model(cfg: ModelConfig):
    """A fresh (untrained) model of ``cfg.variant``."""
    from smcli.models import cca, matchers

    name, kwargs = _REGISTRY[cfg.variant]
    cls = getattr(cca if name == "CCA" else matchers, name)
    return cls(cfg, **kwargs)


@dataclass
class ModelInfo:
    """What a model directory says about its model."""

    config: ModelConfig
    features: dict[str, Any]  # signature of the region features it was trained on
    vocab_hash: str | None
    extra: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {"smcli_version": __version__, "model": self.config.to_dict(),
                "features": self.features, "vocab_hash": self.vocab_hash, **self.extra}


@dataclass
class LoadedModel:
    model: Any
    info: ModelInfo
    vocab: Any  # smcli.text.vocab.Vocab
    directory: Path
    hash: str

    @property
    def config(self) -> ModelConfig:
        return self.info.config


def save_model(directory: Path, model, info: ModelInfo, vocab) -> str:
    """Write weights, config and vocabulary atomically; returns the weights hash."""
    from safetensors.torch import save

    from smcli.stage import AtomicFile

    directory.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    blob = save(state)
    with AtomicFile(directory / WEIGHTS_FILE) as weights:  # a failed write leaves no temporary
        weights.handle.write(blob)
    vocab.save(directory / VOCAB_FILE)
    write_config(directory, info.to_json())
    return hashlib.sha256(blob).hexdigest()[:16]


def write_config(directory: Path, config: dict[str, Any]) -> None:
    """A model directory's config.json, atomically."""
    from smcli.stage import AtomicFile

    with AtomicFile(directory / CONFIG_FILE) as cfg_file:
        cfg_file.handle.write(json.dumps(config, indent=2, sort_keys=True).encode())


def load_model(directory: str | Path, device: str = "cpu") -> LoadedModel:
    """Load a model directory (weights without unpickling anything)."""
    from safetensors.torch import load

    from smcli.text.vocab import Vocab

    d = Path(directory)
    if not (d / CONFIG_FILE).is_file():
        raise InputError(f"{directory}: not a model directory (no {CONFIG_FILE}); train one with smcli train")
    try:
        raw = json.loads((d / CONFIG_FILE).read_text())
        cfg = ModelConfig.from_dict(raw["model"])
    except (ValueError, KeyError, TypeError, AttributeError, SmcliError) as exc:
        raise InputError(f"{d / CONFIG_FILE}: unreadable model config ({first_line(exc)})") from None
    if not (d / WEIGHTS_FILE).is_file():
        raise InputError(f"{directory}: no {WEIGHTS_FILE}; was training interrupted before the first epoch?")
    blob = (d / WEIGHTS_FILE).read_bytes()
    try:
        model = create_model(cfg)
    except (ValueError, TypeError, RuntimeError, OverflowError, MemoryError) as exc:  # sizes torch refuses
        raise InputError(f"{d / CONFIG_FILE}: unusable model config ({first_line(exc)})") from None
    try:
        state = load(blob)
        model.load_state_dict(state)
    except Exception as exc:  # noqa: BLE001 - any failure here means a damaged or foreign file
        raise InputError(f"{d / WEIGHTS_FILE}: weights do not fit the config ({first_line(exc)})") from None
    import torch

    bad = [k for k, v in state.items() if v.is_floating_point() and not bool(torch.isfinite(v).all())]
    if bad:  # NaN weights give NaN scores, and a NaN must never rank
        raise InputError(f"{d / WEIGHTS_FILE}: non-finite (NaN/inf) weights in {len(bad)} tensor(s) "
                         f"(first: {bad[0]}); the model is damaged")
    model.to(device).eval()
    if (d / INCOMPLETE_FILE).exists():
        from smcli.report import warn

        warn("model", f"{directory}: left by an interrupted smcli train (the best epoch so far, not the finished "
                      f"run); smcli train --resume -o {directory} continues it")
    extra = {k: v for k, v in raw.items() if k not in ("model", "features", "vocab_hash", "smcli_version")}
    info = ModelInfo(cfg, raw.get("features", {}), raw.get("vocab_hash"), extra)
    vocab = Vocab.load(d / VOCAB_FILE)
    return LoadedModel(model, info, vocab, d, hashlib.sha256(blob).hexdigest()[:16])
