"""Devices and numeric precision, decided once for every command that runs a model."""

from __future__ import annotations

import contextlib

from smcli.errors import UsageError

PRECISIONS = ("auto", "fp32", "bf16")


def resolve_device(name: str) -> str:
    """``auto`` -> cuda when present, else cpu; an unavailable cuda is a usage error."""
    import torch

    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        raise UsageError("--device cuda: no CUDA device is available here")
    if name not in ("cpu", "cuda"):
        raise UsageError(f"--device {name}: choose auto, cpu or cuda")
    return name


def resolve_precision(precision: str, device: str) -> str:
    """``auto`` -> bf16 where the hardware does it natively (CUDA, CPUs with AVX512-BF16),
    else fp32. bf16 is mixed precision: weights and losses stay fp32."""
    import torch

    if precision not in PRECISIONS:
        raise UsageError(f"--precision {precision}: choose one of {', '.join(PRECISIONS)}")
    if precision != "auto":
        return precision
    if device == "cuda":
        return "bf16"
    return "bf16" if torch.cpu._is_avx512_bf16_supported() else "fp32"


def autocast(device: str, precision: str):
    """The autocast context for ``precision`` (a no-op for fp32)."""
    import torch

    if precision == "bf16":
        return torch.autocast(device, dtype=torch.bfloat16)
    return contextlib.nullcontext()
