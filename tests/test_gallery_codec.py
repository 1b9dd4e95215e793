"""The gallery's transform code (smcli.inference.gallery_codec.TransformCode) on its own."""

from __future__ import annotations

import numpy as np
import pytest

from smcli.inference.gallery_codec import TransformCode


def low_rank(rng, n: int, d: int, rank: int) -> np.ndarray:
    """Rows of dimension d spanned by ``rank`` axes of falling variance, plus an offset."""
    latent = rng.standard_normal((n, rank)) * np.geomspace(4.0, 0.5, rank)
    return (latent @ rng.standard_normal((rank, d)) + rng.standard_normal(d)).astype(np.float32)


def rel_mse(got: np.ndarray, want: np.ndarray) -> float:
    return float(((got - want) ** 2).mean() / ((want - want.mean(0)) ** 2).mean())


def test_more_bits_code_rows_more_closely():
    rng = np.random.default_rng(0)
    sample, rows = low_rank(rng, 5_000, 24, 12), low_rank(np.random.default_rng(0), 5_000, 24, 12)[:400]
    errors = []
    for bits in (12, 24, 48, 96):
        code = TransformCode.fit(sample, bits)
        assert code.bits == bits and code.nbytes == (bits + 7) // 8
        packed = code.encode(rows)
        assert packed.dtype == np.uint8 and packed.shape == (400, code.nbytes)
        errors.append(rel_mse(code.decode(packed), rows))
    assert errors == sorted(errors, reverse=True) and errors[-1] < 1e-3 < errors[0]


def test_bits_go_to_the_axes_of_most_variance_and_none_to_empty_axes():
    code = TransformCode.fit(low_rank(np.random.default_rng(1), 4_000, 16, 5), 30)
    assert code.basis.shape == (16, 5)  # the rank: the 11 axes without variance are left out
    assert code.widths.sum() == 30 and list(code.widths) == sorted(code.widths, reverse=True)
    assert code.widths[0] > code.widths[-1] > 0


def test_packing_keeps_every_axis_code():
    """decode(encode(x)) is the quantiser of each axis, applied to x's coefficients."""
    rng = np.random.default_rng(2)
    x = low_rank(rng, 3_000, 10, 10)
    code = TransformCode.fit(x, 37)  # widths of several sizes, not a multiple of 8 bits
    rows = x[:50].reshape(5, 10, 10)  # any leading shape
    got = code.decode(code.encode(rows))
    assert got.shape == rows.shape and got.dtype == np.float32
    coef = (rows.reshape(-1, 10).astype(np.float64) - code.mean) @ code.basis
    half = 2.0 ** (code.widths - 1)
    q = np.clip(np.floor(coef / code.steps), -half, half - 1)
    want = ((q + 0.5) * code.steps) @ code.basis.T + code.mean
    # encode computes in float32: a coefficient within rounding of a step boundary may land
    # on the neighbouring level, nowhere more than one step away
    close = np.isclose(got.reshape(-1, 10), want, rtol=1e-4, atol=1e-4)
    assert close.mean() > 0.99
    assert np.abs(got.reshape(-1, 10) - want).max() <= 1.01 * code.steps.max() * np.abs(code.basis).max() * 10


def test_a_saved_code_loads_the_same_and_a_damaged_one_is_refused(tmp_path):
    x = low_rank(np.random.default_rng(3), 2_000, 8, 4)
    code = TransformCode.fit(x, 20)
    code.save(tmp_path / "c.npz")
    again = TransformCode.load(tmp_path / "c.npz")
    np.testing.assert_array_equal(again.encode(x[:30]), code.encode(x[:30]))
    data = (tmp_path / "c.npz").read_bytes()
    (tmp_path / "bad.npz").write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError):
        TransformCode.load(tmp_path / "bad.npz")
    np.savez(tmp_path / "shapes.npz", mean=code.mean, basis=code.basis, widths=code.widths[:-1], steps=code.steps,
             weights=np.ones(8))
    with pytest.raises(ValueError, match="inconsistent shapes"):
        TransformCode.load(tmp_path / "shapes.npz")


def test_a_weighted_dimension_is_kept_more_closely():
    rng = np.random.default_rng(4)
    x = rng.standard_normal((4_000, 6)) * np.array([1, 1, 1, 2, 2, 2])
    plain = TransformCode.fit(x, 12)
    weighted = TransformCode.fit(x, 12, weights=np.array([3.0, 3, 3, 1, 1, 1]))
    err_plain = ((plain.decode(plain.encode(x[:500])) - x[:500]) ** 2).mean(0)
    err_weighted = ((weighted.decode(weighted.encode(x[:500])) - x[:500]) ** 2).mean(0)
    assert err_weighted[:3].mean() < err_plain[:3].mean() / 2
    assert err_weighted[3:].mean() > err_plain[3:].mean()


def test_rows_without_variance_code_in_no_bytes_and_decode_to_their_mean():
    rows = np.tile(np.array([[1.0, -2.0, 3.0]], np.float32), (60, 1))
    code = TransformCode.fit(rows, 16)
    assert code.nbytes == 0 and code.encode(rows).shape == (60, 0)
    np.testing.assert_allclose(code.decode(code.encode(rows)), rows, rtol=1e-6)
