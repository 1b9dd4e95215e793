"""Dropout on the features entering the matcher, with a mask that is cheap to draw on the CPU.

``nn.Dropout`` draws its mask with ``bernoulli_``, which on the CPU takes one 64-bit uniform
of the serial generator per element: ~100 ms for the 120 x 49 x 1280 region features of a
training step here, a fifth of the whole step with 2 threads, and it does not get faster with
more threads. The ``bits16`` draw takes 16 random bits per element instead (four elements
from each 64-bit draw of the same seeded generator, ~11 ms) and keeps an element when they
fall below round(q * 65536), q = 1 - p: each element is kept independently with probability
round(q * 65536) / 65536 (within 2^-17 of q; 0.6999969 for p = 0.3) and scaled by its inverse,
so a kept element's expectation is exact, as with ``nn.Dropout``. The masks are a different
stream from ``bernoulli_``'s for the same seed, so a model trained with one draw is not
bit-identical to one trained with the other; ``bernoulli`` keeps the earlier behaviour (and is
what configs saved before the option read as).
"""

from __future__ import annotations

import torch
from torch import nn

from smcli.models.config import DROPOUT_DRAWS


def keep_mask_bits16(shape: torch.Size, keep: float, device: torch.device) -> tuple[torch.Tensor, float]:
    """A boolean keep-mask of ``shape`` and the exact probability each element is kept with."""
    threshold = round(keep * 65536)  # keep when an unsigned 16-bit draw < threshold
    n = shape.numel()
    words = torch.empty((n + 3) // 4, dtype=torch.int64, device=device).random_(-(2**63), None)
    draws = words.view(torch.int16)[:n].view(shape)  # signed: u - 32768 for the unsigned draw u
    return draws < threshold - 32768, threshold / 65536


class FeatureDropout(nn.Module):
    """``nn.Dropout(p)`` with the mask drawn as ``draw`` says (see the module docstring)."""

    def __init__(self, p: float, draw: str = "bits16") -> None:
        super().__init__()
        if draw not in DROPOUT_DRAWS:
            raise ValueError(f"dropout draw {draw!r}: expected one of {', '.join(DROPOUT_DRAWS)}")
        self.p, self.draw = p, draw

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0:
            return x
        if self.draw == "bernoulli" or self.p == 1:
            return nn.functional.dropout(x, self.p, True)
        mask, kept = keep_mask_bits16(x.shape, 1.0 - self.p, x.device)
        if kept == 0:
            return x * 0
        return torch.where(mask, x, 0).mul_(1.0 / kept)

    def extra_repr(self) -> str:
        return f"p={self.p}, draw={self.draw}"
