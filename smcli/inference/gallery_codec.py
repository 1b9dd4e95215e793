"""Codecs for a saved gallery's per-image sm-LSTM tensors (``smcli index --codec``).

- "int8": each instance's vector (a row) as int8 codes with one float16 scale (symmetric,
  the row's largest magnitude mapped to 127): :func:`encode_int8`.
- "pca": a fixed-rate transform code of the instances' keys and values together
  (:class:`TransformCode`). Keys (W_a a) and values (P_a a) are linear in the same 256-d
  projected region a, so their 384-d concatenation has rank 256: a PCA basis fitted on a
  sample of the gallery's own instances needs 256 coefficients, of unequal variance. Bits are
  given to the axes greedily (each bit to the axis whose quantisation error is largest: the
  classic allocation of transform coding), and every axis is quantised uniformly with a step
  chosen on the sample. 1,240 bits (155 bytes) an instance, 4.8 a coefficient, against 3,072
  bits for int8 per row (BENCHMARKS.md, "Gallery codec: pca").

Why not faiss's product quantiser: at about this rate (144 bytes, 192 sub-vectors of 6
bits) its squared error on the Flickr8k model's keys and values is 15x the transform code's
(4.4e-2 against 2.9e-3 of the variance), and it would need faiss to decode.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

INT8_MAX = 127
MAX_WIDTH = 12  # bits of one coefficient at most
DEFAULT_BITS = 1240  # per instance (155 bytes): the gallery then fits in 11 KB an image


def encode_int8(arr: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Symmetric int8 codes of every row (last axis) and their float16 scales: row = codes *
    scale, the row's largest magnitude mapped to 127 (a zero row has scale 0)."""
    arr = np.asarray(arr, dtype=np.float32)
    peak = np.abs(arr).max(axis=-1)
    scale = (peak / INT8_MAX).astype(np.float16)
    div = scale.astype(np.float32)[..., None]
    codes = np.divide(arr, div, out=np.zeros_like(arr), where=div > 0)
    return np.clip(np.rint(codes), -INT8_MAX, INT8_MAX).astype(np.int8), scale


@dataclass
class TransformCode:
    """PCA basis, per-axis bit widths and quantiser steps; rows of dimension D in, packed
    bytes out (``nbytes`` per row)."""

    mean: np.ndarray  # [D] float64
    basis: np.ndarray  # [D, K] float64, orthonormal columns (axes by decreasing variance)
    widths: np.ndarray  # [K] int: bits of each axis (0: the axis decodes to 0)
    steps: np.ndarray  # [K] float64: quantiser step of each axis
    weights: np.ndarray | None = None  # [D]: rows are coded as rows * weights (None: all 1)

    @property
    def bits(self) -> int:
        return int(self.widths.sum())

    @property
    def nbytes(self) -> int:
        return (self.bits + 7) // 8

    @classmethod
    def fit(cls, sample: np.ndarray, bits: int = DEFAULT_BITS, *, weights: np.ndarray | None = None,
            seed: int = 0) -> TransformCode:
        """Fit on ``sample`` [n, D] (n of a few thousand rows or more): the basis, the
        allocation of ``bits`` bits a row and each axis's step (the one of 13 clipping ranges,
        2 to 5 standard deviations, with the least squared error on the sample).
        ``weights`` [D]: the code minimises the squared error of rows * weights, so a
        dimension of weight 2 is kept about twice as closely."""
        x = np.asarray(sample, dtype=np.float64).reshape(-1, np.shape(sample)[-1])
        if weights is not None:
            weights = np.asarray(weights, dtype=np.float64)
            x = x * weights
        if len(x) < 2:
            raise ValueError("a transform code needs at least 2 sample rows")
        mean = x.mean(0)
        centred = x - mean
        eigval, eigvec = np.linalg.eigh(centred.T @ centred / (len(x) - 1))
        order = np.argsort(eigval)[::-1]
        keep = order[eigval[order] > eigval.max() * 1e-9]  # the rank: axes of no variance get no bits
        basis = eigvec[:, keep]
        coef = centred @ basis
        sd = coef.std(0)
        widths = np.zeros(len(keep), dtype=np.int64)
        err = sd ** 2
        for _ in range(bits if len(keep) else 0):  # each bit to the axis with the largest error; a bit quarters it
            k = int(np.argmax(err))
            if err[k] <= 0:
                break
            widths[k] += 1
            err[k] = 0 if widths[k] >= MAX_WIDTH else err[k] / 4
        rng = np.random.default_rng(seed)
        fit_rows = coef[rng.choice(len(coef), size=min(len(coef), 40_000), replace=False)]
        steps = np.ones(len(keep))
        for k in np.flatnonzero(widths):
            half = 2 ** (widths[k] - 1)
            best = np.inf
            for m in np.linspace(2.0, 5.0, 13):
                step = 2 * m * sd[k] / 2 ** widths[k]
                q = np.clip(np.floor(fit_rows[:, k] / step), -half, half - 1)
                e = float(np.mean(((q + 0.5) * step - fit_rows[:, k]) ** 2))
                if e < best:
                    best, steps[k] = e, step
        return cls(mean, basis, widths, steps, weights)

    # -- rows <-> codes -----------------------------------------------------------------
    PACK_ROWS = 16_384  # rows packed at a time (their bits take PACK_ROWS x 16 x K bytes)

    def _bit_index(self) -> np.ndarray:
        """Where each packed bit comes from in the axes' codes as little-endian uint16 bit
        strings: axis k's bits 0..width-1 are bits 16k..16k+width-1 (axes in order, each
        axis's bits contiguous, least significant first), then zero bits to a whole byte
        (bit 15 of axis 0's code, always 0: no width exceeds MAX_WIDTH)."""
        index = [16 * k + np.arange(w) for k, w in enumerate(self.widths) if w]
        index.append(np.full(self.nbytes * 8 - self.bits, 15))
        return np.concatenate(index).astype(np.int64)

    def encode(self, rows: np.ndarray) -> np.ndarray:
        """Rows [..., D] -> packed codes [..., nbytes] uint8."""
        rows = np.asarray(rows)
        flat = rows.reshape(-1, rows.shape[-1]).astype(np.float32)
        if self.weights is not None:
            flat = flat * self.weights.astype(np.float32)
        coef = (flat - self.mean.astype(np.float32)) @ self.basis.astype(np.float32)
        half = np.where(self.widths > 0, 2.0 ** (self.widths - 1), 0).astype(np.float32)
        q = (np.clip(np.floor(coef / self.steps.astype(np.float32)), -half, np.maximum(half - 1, 0)) + half)
        q = q.astype("<u2")
        index = self._bit_index()
        out = np.zeros((len(flat), self.nbytes), dtype=np.uint8)
        for s in range(0, len(flat) if self.nbytes else 0, self.PACK_ROWS):  # no bits: no bytes
            bits = np.unpackbits(q[s:s + self.PACK_ROWS].view(np.uint8), axis=1, bitorder="little")
            picked = np.take(bits, index, axis=1)  # contiguous, whole bytes per row (np.take: 10x fancy indexing)
            out[s:s + len(picked)] = np.packbits(picked.reshape(-1), bitorder="little").reshape(len(picked), -1)
        return out.reshape(*rows.shape[:-1], self.nbytes)

    def decode(self, codes: np.ndarray) -> np.ndarray:
        """Packed codes [..., nbytes] -> rows [..., D] float32. Each axis's code is read from
        the three bytes that hold it (a width of at most 12 bits starts at most 7 bits into
        its first byte), so decoding is a few gathers and one float32 matrix product: it runs
        on every query's shortlist."""
        codes = np.asarray(codes, dtype=np.uint8)
        flat = codes.reshape(int(np.prod(codes.shape[:-1])), codes.shape[-1])
        padded = np.zeros((len(flat), flat.shape[1] + 3), dtype=np.uint8)
        padded[:, :flat.shape[1]] = flat
        live = np.flatnonzero(self.widths)
        start = np.concatenate([[0], np.cumsum(self.widths)[:-1]])[live]
        first, shift = start // 8, (start % 8).astype(np.uint32)
        word = (padded[:, first].astype(np.uint32) | padded[:, first + 1].astype(np.uint32) << 8
                | padded[:, first + 2].astype(np.uint32) << 16)
        q = (word >> shift) & ((1 << self.widths[live].astype(np.uint32)) - 1)
        half = 2.0 ** (self.widths[live] - 1)
        coef = ((q.astype(np.float32) - (half - 0.5).astype(np.float32)) * self.steps[live].astype(np.float32))
        rows = coef @ self.basis[:, live].T.astype(np.float32) + self.mean.astype(np.float32)
        if self.weights is not None:
            rows /= self.weights.astype(np.float32)
        return rows.reshape(*codes.shape[:-1], len(self.mean))

    # -- files --------------------------------------------------------------------------
    def save(self, path: Path) -> None:
        with open(path, "wb") as f:
            np.savez(f, mean=self.mean, basis=self.basis, widths=self.widths, steps=self.steps,
                     weights=np.ones_like(self.mean) if self.weights is None else self.weights)

    @classmethod
    def load(cls, path: Path) -> TransformCode:
        try:
            with np.load(path, allow_pickle=False) as z:
                code = cls(z["mean"], z["basis"], z["widths"].astype(np.int64), z["steps"], z["weights"])
        except (OSError, ValueError, KeyError, EOFError):
            raise
        except Exception as exc:  # noqa: BLE001 - zipfile.BadZipFile and numpy's header errors
            raise ValueError(f"damaged ({type(exc).__name__})") from None
        d, k = code.basis.shape
        if (code.mean.shape != (d,) or code.widths.shape != (k,) or code.steps.shape != (k,)
                or code.weights.shape != (d,)):
            raise ValueError(f"inconsistent shapes: mean {code.mean.shape}, basis {code.basis.shape}, "
                             f"widths {code.widths.shape}, steps {code.steps.shape}")
        if ((code.widths < 0).any() or (code.widths > MAX_WIDTH).any() or not np.isfinite(code.steps).all()
                or not (code.weights > 0).all()):
            raise ValueError("widths, steps or weights out of range")
        return code
