"""The exp-form attention logits in one fused loop (``torch.compile``), for long scoring jobs.

On a CPU the eager kernel (:func:`smcli.models.matchers._grid_logits`) computes
``w . tanh(keys + query)`` as ``2 w . 1 / (1 + ea eb) - sum(w)`` in three passes over each
[.., K, att] block: a multiply-add, a reciprocal and a matrix-vector product. Inductor fuses
the three and the reduction into one vectorised loop that never stores the block: the
attention alone runs about 3.6x faster, exhaustive scoring 1.2-1.6x in pairs/s on 2-core
boxes, and a whole Flickr8k test run (`retrieve --eval --exhaustive`, the shipped recipe)
1.31x on the AVX2 box (BENCHMARKS.md, "Pair-scoring kernel: the fused attention loop" and
the section after it). Scores move by float rounding only (the sum over att
runs in another order; 4.5e-08 on the bench's grid, 7e-07 on Flickr8k, recalls identical).

Compiling costs about 24 s on a machine's first run and 4 s after (inductor keeps the
generated code on disk), which pays only on long jobs: :func:`fused_scope` switches
the loop on, and exhaustive scoring asks for it from :data:`MIN_PAIRS` pairs. Where
``torch.compile`` does not work (no C++ compiler, a platform inductor does not support) the
first call fails, smcli says so in one line on stderr and the eager kernel runs.

``SMCLI_COMPILE=0`` never compiles; ``SMCLI_COMPILE=1`` compiles for any job size.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
from collections.abc import Callable, Iterator

import torch

MIN_PAIRS = 4_000_000  # a cold inductor cache's ~24 s of compiling against a ~20% faster scoring

_state: dict = {"active": False, "fn": None, "failed": None}


def wanted(n_pairs: int) -> bool:
    """Whether a job of ``n_pairs`` image-caption pairs should use the fused loop."""
    setting = os.environ.get("SMCLI_COMPILE", "auto").strip().lower()
    if setting in ("0", "off", "false", "no"):
        return False
    if setting in ("1", "on", "true", "yes"):
        return True
    return n_pairs >= MIN_PAIRS


@contextlib.contextmanager
def fused_scope(enabled: bool = True) -> Iterator[None]:
    """Within the block, grid attention logits on the CPU use the fused loop (if it compiles)."""
    before = _state["active"]
    _state["active"] = bool(enabled)
    try:
        yield
    finally:
        _state["active"] = before


def active() -> bool:
    return _state["active"] and _state["failed"] is None


def _logits(ea: torch.Tensor, eb: torch.Tensor, w2: torch.Tensor, w_sum: float) -> torch.Tensor:
    # ea [.., K, da] broadcast against eb [I, C, 1, da]: [I, C, K]
    return (w2 / (1 + ea * eb.unsqueeze(-2))).sum(-1) - w_sum


def _compiled() -> Callable:
    if _state["fn"] is None:
        # torch's extension loader logs a CUDA_HOME note on import; not for smcli's users
        logging.getLogger("torch.utils.cpp_extension").setLevel(logging.ERROR)
        import torch._inductor.config as inductor_config

        inductor_config.compile_threads = 1  # no pool of compiler processes beside the run
        _state["fn"] = torch.compile(_logits, dynamic=True)
    return _state["fn"]


def _grow(t: torch.Tensor, dim: int, size: int) -> torch.Tensor:
    """``t`` with ``dim`` padded to ``size`` by ones (finite in the loop; cut off after)."""
    if t.shape[dim] >= size:
        return t
    pad = list(t.shape)
    pad[dim] = size - t.shape[dim]
    return torch.cat([t, t.new_ones(pad)], dim)


def grid_logits(ea: torch.Tensor, eb: torch.Tensor, w2: torch.Tensor, w_sum: float, *,
                images: bool) -> torch.Tensor | None:
    """``(w2 / (1 + ea eb)).sum(-1) - w_sum`` over att for a grid, fused: [I, C, K]; None once
    compiling has failed (the caller then runs its eager kernel).

    ea: exp(-2 keys) of the images [I, K, da] (``images``) or of the captions [C, K, da];
    eb: exp(-2 query) [I, C, da]. A size of 1 would make dynamo compile the loop again for
    it (it specialises sizes 0 and 1), so sizes under 2 are padded and the result cut back.
    """
    if _state["failed"] is not None:
        return None
    n_img, n_cap, _ = eb.shape
    K = ea.shape[1]
    eb = _grow(_grow(eb, 0, 2), 1, 2)
    ea = _grow(_grow(ea, 0, 2), 1, 2)
    ea = ea[:, None] if images else ea[None]
    try:
        out = _compiled()(ea, eb, w2, w_sum)
    except Exception as exc:  # noqa: BLE001 - any compiler failure: the eager kernel is always there
        reason = " ".join(str(exc).split()) or type(exc).__name__
        _state["failed"] = reason
        print(f"smcli: note: the fused attention loop did not compile ({type(exc).__name__}: {reason[:160]}); "
              "scoring with the eager kernel (SMCLI_COMPILE=0 skips the attempt)", file=sys.stderr, flush=True)
        return None
    return out[:n_img, :n_cap, :K]
