"""Resumable training state in one safetensors file (no pickle).

Holds the model and optimizer tensors, the torch RNG state and, as JSON metadata, the
position in training (epoch, step), the best validation result so far and the metrics log.
Written atomically, so a kill -9 at any moment leaves the previous state intact.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

if TYPE_CHECKING:
    from smcli.models.config import ModelConfig
    from smcli.training.options import TrainOptions

STATE_FILE = "train_state.safetensors"

# The progress a resumed run reads: key -> (type, required). Counts are non-negative
# integers, sums finite numbers; anything else is a damaged state, refused in one line.
PROGRESS_FIELDS: dict[str, tuple[type, bool]] = {
    "epoch": (int, True), "step": (int, True), "best_epoch": (int, True), "bad_epochs": (int, True),
    "best_rsum": (float, True), "config": (dict, True), "options": (dict, True),
    "loss_sum": (float, False), "match_loss_sum": (float, False), "pairs": (int, False),
}


def save_state(directory: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
               progress: dict[str, Any]) -> None:
    from safetensors.torch import save

    from smcli.stage import AtomicFile

    tensors: dict[str, torch.Tensor] = {
        f"model.{k}": v.detach().cpu().contiguous() for k, v in model.state_dict().items()
    }
    opt = optimizer.state_dict()
    for pid, state in opt["state"].items():
        for name, value in state.items():
            t = value if torch.is_tensor(value) else torch.tensor(value)
            tensors[f"opt.{pid}.{name}"] = t.detach().cpu().contiguous()
    tensors["rng.torch"] = torch.get_rng_state()
    meta = {"progress": json.dumps(progress), "param_groups": json.dumps(opt["param_groups"])}
    directory.mkdir(parents=True, exist_ok=True)
    with AtomicFile(directory / STATE_FILE) as out:  # a failed write leaves no temporary
        out.handle.write(save(tensors, metadata=meta))


def load_state(directory: Path, model: torch.nn.Module,
               optimizer: torch.optim.Optimizer) -> dict[str, Any] | None:
    """Restore model, optimizer and RNG; returns the progress dict (None if no state)."""
    path = directory / STATE_FILE
    if not path.is_file():
        return None
    try:
        return check_progress(_restore(path, model, optimizer))
    except Exception as exc:  # noqa: BLE001 - any failure here means a damaged or foreign file
        _damaged(path, exc)


def _restore(path: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata()
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    _check_values(tensors)
    model.load_state_dict({k[6:]: v for k, v in tensors.items() if k.startswith("model.")})
    state: dict[int, dict[str, torch.Tensor]] = {}
    for key, value in tensors.items():
        if key.startswith("opt."):
            _, pid, name = key.split(".", 2)
            state.setdefault(int(pid), {})[name] = value
    optimizer.load_state_dict({"state": state, "param_groups": json.loads(meta["param_groups"])})
    torch.set_rng_state(tensors["rng.torch"])
    return json.loads(meta["progress"])


def _check_values(tensors: dict[str, torch.Tensor]) -> None:
    """A flipped bit in a stored value shows up here, not as NaN scores epochs later: every
    weight and optimizer moment finite, AdamW's second moments not negative."""
    for key, value in tensors.items():
        if not (key.startswith(("model.", "opt.")) and value.is_floating_point()):
            continue
        if not bool(torch.isfinite(value).all()):
            raise ValueError(f"non-finite (NaN/inf) values in {key}")
        if key.endswith(".exp_avg_sq") and bool((value < 0).any()):
            raise ValueError(f"negative values in {key} (a second moment)")


def read_progress(directory: Path) -> dict[str, Any] | None:
    """The progress dict of a saved state without loading its tensors."""
    path = directory / STATE_FILE
    if not path.is_file():
        return None
    try:
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as f:
            return check_progress(json.loads(f.metadata()["progress"]))
    except Exception as exc:  # noqa: BLE001 - any failure here means a damaged or foreign file
        _damaged(path, exc)


def check_progress(progress: Any) -> dict[str, Any]:
    """``progress`` if it holds every key a resumed run reads, with the right types (else
    ValueError naming the first bad key)."""
    if not isinstance(progress, dict):
        raise ValueError("progress is not a JSON object")
    for key, (kind, required) in PROGRESS_FIELDS.items():
        if key not in progress:
            if required:
                raise ValueError(f"progress lacks {key!r}")
            continue
        value = progress[key]
        if kind is int:
            ok = isinstance(value, int) and not isinstance(value, bool) and value >= 0
        elif kind is float:
            ok = isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
        else:
            ok = isinstance(value, kind)
        if not ok:
            what = {int: "a non-negative integer", float: "a finite number", dict: "an object"}[kind]
            raise ValueError(f"progress {key!r} is {json.dumps(value)[:40]}, not {what}")
    return progress


def resume_settings(directory: Path) -> tuple[ModelConfig, TrainOptions] | None:
    """The model config and training options a saved run started with (None: no state);
    a state whose settings do not check out is damaged, refused in one line."""
    from dataclasses import fields

    from smcli.errors import SmcliError
    from smcli.models.config import ModelConfig
    from smcli.training.options import TrainOptions

    saved = read_progress(directory)
    if saved is None:
        return None
    known = {f.name for f in fields(TrainOptions)}
    try:
        cfg = ModelConfig.from_dict(saved["config"])
        opts = TrainOptions(**{**{k: v for k, v in saved["options"].items() if k in known}, "resume": True})
    except SmcliError as exc:
        _damaged(directory / STATE_FILE, exc)
    return cfg, opts


def _damaged(path: Path, exc: BaseException):
    from smcli.errors import InputError, first_line

    raise InputError(f"{path}: damaged resume state ({first_line(exc, 100)}); rerun without --resume "
                     "(with --overwrite) to start afresh") from None
