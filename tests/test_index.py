"""The faiss index kinds and the saved gallery (smcli.inference.gallery), without a model."""

from __future__ import annotations

import json

import numpy as np
import pytest

from smcli.inference.gallery import (
    FLAT_UP_TO,
    IVF_NPROBE,
    build_faiss,
    index_spec,
    open_gallery,
    read_range,
    read_rows,
    save_gallery,
    search,
)


def unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def clustered(rng, n: int, d: int, clusters: int = 200, noise: float = 0.15) -> np.ndarray:
    """Unit vectors around random centres: embeddings of real images cluster (isotropic
    random vectors have no near neighbours, and no index but the exact one finds them)."""
    centres = unit(rng.standard_normal((clusters, d)))
    return unit(centres[rng.integers(0, clusters, n)] + noise * rng.standard_normal((n, d)))


def recall(found: np.ndarray, truth: np.ndarray) -> float:
    return float(np.mean([len(set(a) & set(b)) / len(b) for a, b in zip(found, truth)]))


def test_auto_is_exact_up_to_the_limit_and_ivf_above():
    assert index_spec(FLAT_UP_TO).kind == "flat"
    big = index_spec(1_000_000)
    assert big.kind == "ivf" and big.lossy
    assert big.params["nlist"] == 4000 and big.params["nprobe"] == IVF_NPROBE
    assert index_spec(10, "ivf").params["nlist"] == 1  # never more lists than it can train
    assert index_spec(10, "hnsw").kind == "hnsw"
    with pytest.raises(ValueError, match="unknown index kind"):
        index_spec(10, "lsh")


def test_ivf_finds_what_exact_search_finds():
    points = clustered(np.random.default_rng(0), 20_200, 64)
    data, queries = points[:20_000], points[20_000:]  # queries from the same distribution
    ivf = build_faiss(data, "ivf")
    assert ivf.nlist == 500 and ivf.nprobe == IVF_NPROBE
    _, got = search(ivf, queries, 10)
    _, want = search(build_faiss(data, "flat"), queries, 10)
    assert recall(got, want) >= 0.9


def sides(n: int, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {"keys": rng.standard_normal((n, 3, 4)), "values": rng.standard_normal((n, 3, 5)),
            "ctx_a": rng.standard_normal((n, 4)), "ctx_s": rng.standard_normal((n, 4))}


def chunks_of(tensors: dict[str, np.ndarray], size: int):
    n = len(next(iter(tensors.values())))
    for s in range(0, n, size):
        yield {k: v[s:s + size] for k, v in tensors.items()}


def save(tmp_path, n: int, kind: str, *, stream_emb: bool = False, d: int = 16, **kw):
    emb = clustered(np.random.default_rng(2), n, d, clusters=20)
    tensors = sides(n)
    if stream_emb:
        tensors["emb"] = emb
    out = tmp_path / f"gallery-{kind}"
    save_gallery(out, meta={"model_hash": "x"}, image_ids=[f"img{i}" for i in range(n)],
                 paths=[f"/p/{i}.jpg" for i in range(n)], embeddings=None if stream_emb else emb,
                 side_chunks=chunks_of(tensors, 7), kind=kind, **kw)
    return out, emb, tensors


def close_to_int8(got: np.ndarray, want: np.ndarray) -> None:
    """Within half an int8 step of the row's scale (its largest magnitude / 127), plus the
    float16 rounding of that scale."""
    step = np.abs(want).max(-1, keepdims=True) / 127
    assert np.all(np.abs(got - want) <= step * 0.5 + np.abs(want) * 2e-3 + 1e-6)
    assert not np.array_equal(got, want.astype(np.float32))  # really coded, not stored as given


def check_rows(saved, emb, tensors, rows):
    side = saved.image_side(rows)
    codec = saved.meta.get("codec", "float16")
    for name in ("keys", "values", "ctx_a", "ctx_s"):
        got = getattr(side, name).numpy()
        if codec == "int8":
            close_to_int8(got, tensors[name][rows])
        else:
            assert np.array_equal(got, tensors[name][rows].astype(np.float16).astype(np.float32)), name
    np.testing.assert_array_equal(side.emb.numpy(), emb[rows])  # exact, whatever the index and codec


CODECS = pytest.mark.parametrize("codec", ["int8", "float16"])


@CODECS
def test_saved_gallery_reads_back_the_rows_asked_for_in_their_order(tmp_path, codec):
    out, emb, tensors = save(tmp_path, 50, "flat", codec=codec)
    saved = open_gallery(out)
    assert len(saved) == 50 and saved.image_ids[3] == "img3" and saved.paths[3] == "/p/3.jpg"
    meta = json.loads((out / "meta.json").read_text())
    assert meta["index"] == {"kind": "flat"} and meta["sides"] == ["ctx_a", "ctx_s", "keys", "values"]
    assert meta["codec"] == codec
    assert np.load(out / "keys.npy").dtype == (np.int8 if codec == "int8" else np.float16)
    assert (out / "keys.scale.npy").exists() == (codec == "int8")
    check_rows(saved, emb, tensors, np.array([17, 2, 49, 17, 0, 2, 33]))  # unsorted, repeats
    assert len(saved.image_side(np.array([], dtype=np.int64))) == 0
    _, ids = search(saved.index, emb[[5, 40]], 1)
    assert ids[:, 0].tolist() == [5, 40]


@CODECS
def test_ivf_gallery_keeps_its_embeddings_and_its_nprobe(tmp_path, codec):
    out, emb, tensors = save(tmp_path, 2_000, "ivf", nprobe=7, codec=codec)
    meta = json.loads((out / "meta.json").read_text())
    assert meta["index"]["kind"] == "ivf" and meta["index"]["nprobe"] == 7
    assert "emb" in meta["sides"]  # the 8-bit codes are not the embeddings
    saved = open_gallery(out)
    assert saved.index.nprobe == 7 and saved.index.nlist == meta["index"]["nlist"] == 50
    check_rows(saved, emb, tensors, np.array([1999, 3, 3, 1000, 0]))
    _, ids = search(saved.index, emb[[10, 1500]], 1)
    assert ids[:, 0].tolist() == [10, 1500]
    assert open_gallery(out, nprobe=50).index.nprobe == 50


@CODECS
def test_embeddings_can_stream_with_the_sides(tmp_path, codec):
    out, emb, tensors = save(tmp_path, 300, "flat", stream_emb=True, codec=codec)
    assert not (out / "emb.npy").exists()  # the exact index gives them back
    assert sorted(p.name for p in out.iterdir()) == sorted(
        ["meta.json", "images.parquet", "embeddings.faiss"]
        + [f"{n}{s}.npy" for n in ("ctx_a", "ctx_s", "keys", "values")
           for s in (("", ".scale") if codec == "int8" else ("",))])
    saved = open_gallery(out)
    assert saved.index.ntotal == 300
    check_rows(saved, emb, tensors, np.array([299, 0, 150, 0]))
    out, emb, tensors = save(tmp_path, 2_000, "ivf", stream_emb=True, codec=codec)
    assert np.load(out / "emb.npy").dtype == np.float32
    check_rows(open_gallery(out), emb, tensors, np.array([5, 1, 1999]))


def test_int8_codes_round_to_the_nearest_step_and_keep_zero_rows():
    from smcli.inference.gallery import encode_int8

    rows = np.array([[0.0, 0.0, 0.0], [1.0, -0.5, 0.25], [-3.0, 1.0, 0.01]], dtype=np.float32)
    codes, scale = encode_int8(rows)
    assert codes.dtype == np.int8 and scale.dtype == np.float16
    assert codes[0].tolist() == [0, 0, 0] and scale[0] == 0
    assert codes[1].tolist() == [127, -64, 32] and codes[2].tolist() == [-127, 42, 0]
    close_to_int8(codes.astype(np.float32) * scale.astype(np.float32)[:, None], rows)


def test_an_unknown_codec_is_refused_before_anything_is_written(tmp_path):
    from smcli.errors import UsageError

    with pytest.raises(UsageError, match="--codec int4: unknown gallery codec"):
        save(tmp_path, 10, "flat", codec="int4")
    assert not list(tmp_path.iterdir())


def test_a_short_chunk_stream_is_refused(tmp_path):
    tensors = sides(10)
    with pytest.raises(ValueError, match="gave 7 images, not 10"):
        save_gallery(tmp_path / "g", meta={}, image_ids=[str(i) for i in range(10)],
                     paths=[""] * 10, embeddings=clustered(np.random.default_rng(0), 10, 8, 2),
                     side_chunks=chunks_of({k: v[:7] for k, v in tensors.items()}, 4), kind="flat")
    assert not list(tmp_path.iterdir())  # nothing half-written is left


def test_rows_are_read_with_one_pread_each_or_by_indexing(tmp_path, monkeypatch):
    data = np.arange(5 * 3 * 4, dtype=np.float16).reshape(5, 3, 4)
    np.save(tmp_path / "t.npy", data)
    mapped = np.load(tmp_path / "t.npy", mmap_mode="r")
    rows = np.array([0, 2, 4])
    assert np.array_equal(read_rows(mapped, rows), data[rows])
    assert read_rows(mapped, rows[:0]).shape == (0, 3, 4)
    with pytest.raises(IndexError):
        read_rows(mapped, np.array([1, 5]))
    assert np.array_equal(read_rows(data, rows), data[rows])  # not a memory map
    assert np.array_equal(read_rows(mapped[1:], rows[:2]), data[1:][rows[:2]])  # a slice of one
    assert np.array_equal(read_range(mapped, 1, 4), data[1:4])
    assert np.array_equal(read_range(mapped, 3, 99), data[3:])
    assert np.array_equal(read_range(mapped[2:], 0, 2), data[2:4])
    monkeypatch.delattr("os.preadv")
    assert np.array_equal(read_rows(mapped, rows), data[rows])


def low_rank_sides(n: int, seed: int = 0) -> dict[str, np.ndarray]:
    """Keys and values linear in one 6-d instance vector, as the sm-LSTM's are in a."""
    rng = np.random.default_rng(seed)
    a = rng.standard_normal((n, 3, 6))
    return {"keys": a @ rng.standard_normal((6, 4)), "values": a @ rng.standard_normal((6, 5)),
            "ctx_a": rng.standard_normal((n, 4)), "ctx_s": rng.standard_normal((n, 4))}


@pytest.mark.parametrize("kind", ["flat", "ivf"])
def test_pca_codec_stores_keys_and_values_in_one_code_and_float16_embeddings(tmp_path, kind):
    n = 2_000
    emb = clustered(np.random.default_rng(2), n, 16, clusters=20)
    tensors = low_rank_sides(n)
    out = tmp_path / "g"
    save_gallery(out, meta={}, image_ids=[f"img{i}" for i in range(n)], paths=[""] * n, embeddings=emb,
                 side_chunks=chunks_of(tensors, 512), kind=kind, codec="pca")
    meta = json.loads((out / "meta.json").read_text())
    assert meta["codec"] == "pca" and meta["kv"]["keys_dim"] == 4
    assert meta["sides"] == sorted(["ctx_a", "ctx_s", "kv"] + (["emb"] if kind == "ivf" else []))
    kv = np.load(out / "kv.npy")
    assert kv.dtype == np.uint8 and kv.shape == (n, 3, meta["kv"]["bytes"])
    assert np.load(out / "ctx_a.npy").dtype == np.int8
    if kind == "ivf":
        assert np.load(out / "emb.npy").dtype == np.float16
    else:
        assert meta["index"]["vectors"] == "float16"
    saved = open_gallery(out)
    rows = np.array([1999, 3, 3, 700, 0])
    side = saved.image_side(rows)
    for name in ("keys", "values"):  # rank 6 in 155 bytes: nearly exact
        got, want = getattr(side, name).numpy(), tensors[name][rows]
        assert got.shape == want.shape and np.abs(got - want).max() < 0.01 * np.abs(want).max()
        assert not np.array_equal(got, want.astype(np.float32))
    close_to_int8(side.ctx_a.numpy(), tensors["ctx_a"][rows])
    np.testing.assert_array_equal(side.emb.numpy(), emb[rows].astype(np.float16).astype(np.float32))
    _, ids = search(saved.index, emb[[10, 1500]], 1)
    assert ids[:, 0].tolist() == [10, 1500]


def test_a_damaged_transform_code_is_a_one_line_refusal(tmp_path):
    from smcli.errors import InputError

    out = tmp_path / "g"
    save_gallery(out, meta={}, image_ids=[str(i) for i in range(40)], paths=[""] * 40,
                 embeddings=clustered(np.random.default_rng(0), 40, 8, 4),
                 side_chunks=chunks_of(low_rank_sides(40), 16), kind="flat", codec="pca")
    code = out / "kv.code.npz"
    code.write_bytes(code.read_bytes()[:100])
    with pytest.raises(InputError, match=r"damaged smcli index \(kv.code.npz: .*rebuild it with smcli index"):
        open_gallery(out)
