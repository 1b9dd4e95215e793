"""Resumable training state in one safetensors file (no pickle).

Holds the model and optimizer tensors, the torch RNG state and, as JSON metadata, the
position in training (epoch, step), the best validation result so far and the metrics log.
Written atomically, so a kill -9 at any moment leaves the previous state intact.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

STATE_FILE = "train_state.safetensors"


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
        progress = _restore(path, model, optimizer)
        if not isinstance(progress, dict):
            raise ValueError("progress is not a JSON object")
        return progress
    except Exception as exc:  # noqa: BLE001 - any failure here means a damaged or foreign file
        _damaged(path, exc)


def _restore(path: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata()
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    model.load_state_dict({k[6:]: v for k, v in tensors.items() if k.startswith("model.")})
    state: dict[int, dict[str, torch.Tensor]] = {}
    for key, value in tensors.items():
        if key.startswith("opt."):
            _, pid, name = key.split(".", 2)
            state.setdefault(int(pid), {})[name] = value
    optimizer.load_state_dict({"state": state, "param_groups": json.loads(meta["param_groups"])})
    torch.set_rng_state(tensors["rng.torch"])
    return json.loads(meta["progress"])


def read_progress(directory: Path) -> dict[str, Any] | None:
    """The progress dict of a saved state without loading its tensors."""
    path = directory / STATE_FILE
    if not path.is_file():
        return None
    try:
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as f:
            progress = json.loads(f.metadata()["progress"])
        if not isinstance(progress, dict):
            raise ValueError("progress is not a JSON object")
        return progress
    except Exception as exc:  # noqa: BLE001 - any failure here means a damaged or foreign file
        _damaged(path, exc)


def _damaged(path: Path, exc: BaseException):
    from smcli.errors import InputError, first_line

    raise InputError(f"{path}: damaged resume state ({first_line(exc, 100)}); rerun without --resume "
                     "(with --overwrite) to start afresh") from None
