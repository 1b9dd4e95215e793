"""A saved gallery for fast search: a faiss index of the one-to-one image embeddings and
the per-image sm-LSTM tensors, memory-mapped, so a query reads only its shortlist.

Directory layout (written by ``smcli index``)::

    meta.json        model hash, feature signature, image count, sides, index kind and parameters
    images.parquet   image_id, path
    embeddings.faiss faiss index (inner product = cosine on normalised embeddings)
    NAME.npy         one per per-image tensor (keys, values, ctx_a, ctx_s) in the gallery's
                     codec; and emb.npy (the embeddings) where the index is lossy (IVF)
    NAME.scale.npy   codec "int8": the float16 scale of every row (instance) of NAME.npy
    kv.npy, kv.code.npz  codec "pca": keys and values, packed codes of one transform code

Codecs (meta.json "codec"; galleries without one are "float16"): "int8" (the default) keeps
each instance's vector as int8 with one float16 scale (symmetric, the row's largest
magnitude maps to 127), half the bytes of "float16"; on Flickr8k test the two-stage rsum
moves by less than 0.1 (BENCHMARKS.md). The embeddings stay float32 in these two codecs (an
exact index gives them back; beside an IVF index they are kept in emb.npy): int8 embeddings
cost another 0.14 rsum, because the one-to-one cosine is weighted several times in the score.
"pca" (:class:`~smcli.inference.gallery_codec.TransformCode`) stores each instance's keys
and values together in 155 bytes, fitted on the gallery's first images, ctx_a and ctx_s as
int8, and the embeddings as float16 (a flat index over float16 vectors, or emb.npy in
float16 beside an IVF index): about 11 KB an image in all, rsum within 0.2 of float32.

Index kinds: "flat" (exact; "auto" up to FLAT_UP_TO images), "ivf" (inverted lists over
8-bit scalar-quantised vectors, ~1 byte per dimension; "auto" above) and "hnsw" (a graph
over the float32 vectors). nprobe (IVF) and efSearch (HNSW) are stored in the faiss file
and recorded in meta.json.

:func:`build_index` (``smcli index``) encodes every image of a regions file once and
saves the gallery; :func:`open_gallery` opens one for queries.
"""

from __future__ import annotations

import json
import math
import os
import shutil
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np

from smcli.errors import InputError, UsageError, first_line
from smcli.inference.gallery_codec import TransformCode, encode_int8

META_FILE = "meta.json"
IDS_FILE = "images.parquet"
FAISS_FILE = "embeddings.faiss"
EMB_SIDE = "emb"  # float32 copy of the embeddings, kept where the faiss index is lossy
KINDS = ("auto", "flat", "ivf", "hnsw")
FLAT_UP_TO = 200_000  # "auto": exact search up to this many images, IVF above
IVF_NPROBE = 32  # inverted lists visited per query
IVF_TRAIN_PER_LIST = 40  # k-means training points per list (faiss wants at least 39)
ADD_CHUNK = 65_536  # vectors converted and added to faiss at a time
CODECS = ("int8", "float16", "pca")
DEFAULT_CODEC = "int8"
SCALE_SUFFIX = ".scale"  # NAME.scale.npy: per-row scales of an int8 side
KV_SIDE = "kv"  # codec "pca": keys and values of every instance, one transform code
KV_CODE_FILE = "kv.code.npz"  # its basis, bit widths and steps
CODE_FIT_ROWS = 50_000  # instances the transform code is fitted on (the first images')


@dataclass
class IndexSpec:
    """The resolved kind of a faiss index and its parameters (recorded in meta.json)."""

    kind: str  # flat | ivf | hnsw
    params: dict[str, Any]

    @property
    def lossy(self) -> bool:
        """Whether vectors read back from the index differ from those added (IVF keeps
        8-bit codes), so that re-ranking needs the float32 embeddings kept beside it."""
        return self.kind == "ivf"

    def to_json(self) -> dict[str, Any]:
        return {"kind": self.kind, **self.params}


def ivf_nlist(n: int) -> int:
    """About 4 sqrt(n) inverted lists, but no more than the vectors can train."""
    return max(1, min(int(4 * math.sqrt(n)), n // IVF_TRAIN_PER_LIST))


def index_spec(n: int, kind: str = "auto", *, nlist: int | None = None,
               nprobe: int = IVF_NPROBE) -> IndexSpec:
    """Resolve ``kind`` for ``n`` vectors: "auto" is exact (flat) up to FLAT_UP_TO vectors
    and IVF (scalar-quantised to 8 bits, ~1 byte per dimension) above."""
    if kind not in KINDS:
        raise ValueError(f"unknown index kind {kind!r} (one of {', '.join(KINDS)})")
    if kind == "auto":
        kind = "ivf" if n > FLAT_UP_TO else "flat"
    if kind == "ivf":
        lists = nlist or ivf_nlist(n)
        return IndexSpec("ivf", {"nlist": lists, "nprobe": min(nprobe, lists), "codes": "sq8"})
    if kind == "hnsw":
        return IndexSpec("hnsw", {"M": 32, "efConstruction": 80, "efSearch": 256})
    return IndexSpec("flat", {})


def build_faiss(embeddings, kind: str = "auto", *, nlist: int | None = None,
                nprobe: int = IVF_NPROBE, seed: int = 0):
    """An inner-product faiss index over L2-normalised embeddings [N, d].

    ``embeddings`` may be a memory map (it is read ADD_CHUNK rows at a time, and IVF trains
    on a sample of it), or anything ``np.asarray`` turns into an array."""
    index, _ = build_faiss_spec(embeddings, kind, nlist=nlist, nprobe=nprobe, seed=seed)
    return index


def build_faiss_spec(embeddings, kind: str = "auto", *, nlist: int | None = None,
                     nprobe: int = IVF_NPROBE, seed: int = 0, float16: bool = False):
    """:func:`build_faiss`, also returning the :class:`IndexSpec` it built; ``float16``: a
    flat index keeps its vectors in float16 (half the bytes; what codec "pca" asks for)."""
    import faiss

    emb = embeddings if isinstance(embeddings, np.ndarray) else np.asarray(embeddings, dtype=np.float32)
    n, d = emb.shape
    spec = index_spec(n, kind, nlist=nlist, nprobe=nprobe)
    p = spec.params
    if spec.kind == "flat" and float16:  # exact search over float16 vectors
        p["vectors"] = "float16"
        index = faiss.IndexScalarQuantizer(d, faiss.ScalarQuantizer.QT_fp16, faiss.METRIC_INNER_PRODUCT)
    elif spec.kind == "flat":
        index = faiss.IndexFlatIP(d)
    elif spec.kind == "hnsw":
        index = faiss.IndexHNSWFlat(d, p["M"], faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = p["efConstruction"]
        index.hnsw.efSearch = p["efSearch"]
    else:
        index = faiss.index_factory(d, f"IVF{p['nlist']},SQ8", faiss.METRIC_INNER_PRODUCT)
        index.cp.spherical = True  # unit-norm centroids: cosine k-means
        take = min(n, p["nlist"] * IVF_TRAIN_PER_LIST)
        rows = np.sort(np.random.default_rng(seed).choice(n, size=take, replace=False))
        index.train(_f32(read_rows(emb, rows)))
        index.nprobe = p["nprobe"]
        spec.params["trained_on"] = int(take)
    for start in range(0, n, ADD_CHUNK):
        index.add(_f32(read_range(emb, start, start + ADD_CHUNK)))
    return index, spec


def _f32(a) -> np.ndarray:
    return np.ascontiguousarray(a, dtype=np.float32)


def search(index, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """(scores [Q, k], ids [Q, k]); ids are -1 where the gallery has fewer than k items."""
    k = min(k, index.ntotal)
    return index.search(np.ascontiguousarray(queries, dtype=np.float32), k)


@dataclass
class SavedGallery:
    """An opened index directory."""

    directory: Path
    meta: dict[str, Any]
    image_ids: list[str]
    paths: list[str]
    index: Any  # faiss index
    sides: dict[str, np.ndarray]  # name -> memory-mapped [N, ...] in the codec (float16, int8; pca: uint8 kv)
    scales: dict[str, np.ndarray] = field(default_factory=dict)  # int8 sides: name -> [N, ...] float16
    kv_code: TransformCode | None = None  # codec "pca": the code of the "kv" side
    keys_dim: int = 0  # codec "pca": keys are the first keys_dim of a decoded kv row, values the rest

    def __len__(self) -> int:
        return len(self.image_ids)

    def read(self, name: str, rows: np.ndarray) -> np.ndarray:
        """Rows (sorted) of one side, decoded to float32."""
        arr = np.asarray(read_rows(self.sides[name], rows), dtype=np.float32)
        if name in self.scales:
            arr *= np.asarray(read_rows(self.scales[name], rows), dtype=np.float32)[..., None]
        return arr

    def image_side(self, rows: np.ndarray, emb: np.ndarray | None = None, device: str = "cpu"):
        """The per-image tensors of ``rows``, in the order given (repeats allowed). The
        embeddings come from ``emb``, else from the saved float32 copy, else from the
        (exact) faiss index."""
        import torch

        from smcli.models.matchers import ImageSide

        rows = np.asarray(rows, dtype=np.int64).reshape(-1)
        unique, back = np.unique(rows, return_inverse=True)  # each row read once, in file order
        values = {}
        if self.kv_code is not None:  # set only where the kv side is there
            kv = torch.from_numpy(self.kv_code.decode(read_rows(self.sides[KV_SIDE], unique))[back])
            if self.keys_dim:
                values["keys"] = kv[..., :self.keys_dim].contiguous().to(device)
            values["values"] = kv[..., self.keys_dim:].contiguous().to(device)
        for f in fields(ImageSide):
            if f.name in self.sides:
                values[f.name] = torch.from_numpy(self.read(f.name, unique)[back]).to(device)
        if emb is not None:
            values["emb"] = torch.from_numpy(np.asarray(emb, dtype=np.float32)).to(device)
        elif "emb" not in values:
            emb = np.stack([self.index.reconstruct(int(r)) for r in rows]) if len(rows) else \
                np.zeros((0, self.index.d), np.float32)
            values["emb"] = torch.from_numpy(np.asarray(emb, dtype=np.float32)).to(device)
        return ImageSide(**values)


def _mapped_file(arr) -> tuple[str, int] | None:
    """(path, data offset) of a whole memory-mapped .npy as np.load opens it, else None."""
    path, offset = getattr(arr, "filename", None), getattr(arr, "offset", None)
    if (not isinstance(arr, np.memmap) or path is None or offset is None or not hasattr(os, "preadv")
            or not arr.flags.c_contiguous or arr.ndim == 0 or arr._mmap is None):
        return None
    try:
        if offset + arr.nbytes != os.path.getsize(path):  # a slice of the file's array
            return None
    except OSError:
        return None
    return path, offset


def read_range(arr, start: int, stop: int) -> np.ndarray:
    """``arr[start:stop]``; from a memory-mapped .npy by one pread (reading through the
    map would leave every page read counted in the process's RSS)."""
    where = _mapped_file(arr)
    start, stop = max(0, start), min(stop, len(arr))
    if where is None or stop <= start:
        return np.asarray(arr[start:stop])
    out = np.empty((stop - start, *arr.shape[1:]), dtype=arr.dtype)
    row_bytes = out[0].nbytes
    fd = os.open(where[0], os.O_RDONLY)
    try:
        view, done = memoryview(out.reshape(-1).view(np.uint8)), 0
        while done < len(view):  # large reads may come back in parts
            got = os.preadv(fd, [view[done:]], where[1] + start * row_bytes + done)
            if got <= 0:
                raise OSError(f"{where[0]}: short read")
            done += got
    finally:
        os.close(fd)
    return out


def read_rows(arr: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """``arr[rows]`` for sorted ``rows`` of a memory-mapped .npy (as np.load opens it).

    On a gallery larger than the page cache a memory map is the slow way to read scattered
    rows: every page fault also reads the pages around it (for a query's 100 images, tens
    of MB instead of 4 MB). Here each row is one pread of exactly its bytes, with kernel
    read-ahead off for the file; anything else falls back to indexing the array."""
    where = _mapped_file(arr)
    if where is None:
        return np.asarray(arr[rows])
    path, offset = where
    out = np.empty((len(rows), *arr.shape[1:]), dtype=arr.dtype)
    if not len(rows):
        return out
    if rows[0] < 0 or rows[-1] >= len(arr):
        raise IndexError(f"row {rows[0] if rows[0] < 0 else rows[-1]} out of range for {len(arr)} images")
    row_bytes = out[0].nbytes
    flat = out.reshape(len(rows), -1).view(np.uint8)
    fd = os.open(path, os.O_RDONLY)
    try:
        if hasattr(os, "posix_fadvise"):
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_RANDOM)
        for k, r in enumerate(rows.tolist()):
            if os.preadv(fd, [flat[k]], offset + r * row_bytes) != row_bytes:
                raise OSError(f"{path}: short read at row {r}")
    finally:
        os.close(fd)
    return out


def check_codec(codec: str) -> str:
    if codec not in CODECS:
        raise UsageError(f"--codec {codec}: unknown gallery codec (one of {', '.join(CODECS)})")
    return codec


class NpyWriter:
    """A .npy file of known shape written front to back with plain writes (a writable
    memory map would count every page written in the process's RSS)."""

    def __init__(self, path: Path, dtype, shape: tuple[int, ...]):
        self.path, self.dtype, self.shape, self.rows = path, np.dtype(dtype), shape, 0
        self.handle = open(path, "wb")  # noqa: SIM115 - closed in close()
        np.lib.format.write_array_header_1_0(self.handle, {
            "descr": np.lib.format.dtype_to_descr(self.dtype), "fortran_order": False, "shape": shape})

    def write(self, arr) -> None:
        arr = np.ascontiguousarray(arr, dtype=self.dtype)
        if arr.shape[1:] != self.shape[1:] or self.rows + len(arr) > self.shape[0]:
            raise ValueError(f"{self.path.name}: rows of shape {arr.shape[1:]} after {self.rows}, "
                             f"for an array of shape {self.shape}")
        self.handle.write(memoryview(arr).cast("B"))
        self.rows += len(arr)

    def close(self) -> None:
        self.handle.close()
        if self.rows != self.shape[0]:
            raise ValueError(f"side chunks gave {self.rows} images, not {self.shape[0]}")


def _gallery_file(name: str) -> bool:
    return name in (META_FILE, IDS_FILE, FAISS_FILE) or name.endswith(".npy")


def check_gallery_output(directory: str | os.PathLike, *, overwrite: bool = False, option: str = "-o") -> Path:
    """Check, before any work, that a gallery may be written at ``directory``.

    A new name, or an empty directory, is fine. An existing non-empty directory is refused
    unless ``overwrite``; and even then only an smcli gallery (its meta.json and nothing
    but gallery files) is replaced: smcli never deletes a directory it did not write."""
    path = Path(directory)
    where = f"{option} {directory}"
    if path.exists() and not path.is_dir():
        raise UsageError(f"{where}: exists and is not a directory; give a new directory name")
    if not path.parent.is_dir():
        raise UsageError(f"{where}: directory {path.parent} does not exist")
    full = path.resolve()
    if full == Path.cwd().resolve() or full in Path.cwd().resolve().parents or not full.name:
        raise UsageError(f"{where}: is the current directory or above it; give a new directory name")
    if not path.is_dir() or not any(path.iterdir()):
        return path
    if not overwrite:
        raise UsageError(f"{where}: directory exists and is not empty; use --overwrite to replace an smcli index")
    others = sorted(p.name for p in path.iterdir() if not (p.is_file() and _gallery_file(p.name)))
    if not (path / META_FILE).is_file() or others:
        extra = f" (it holds {', '.join(others[:3])}{', ...' if len(others) > 3 else ''})" if others else ""
        raise UsageError(f"{where}: not an smcli index{extra}; refusing to replace it, even with --overwrite")
    return path


def save_gallery(directory: Path, *, meta: dict[str, Any], image_ids: list[str], paths: list[str],
                 embeddings, side_chunks, kind: str = "auto", nlist: int | None = None,
                 nprobe: int = IVF_NPROBE, overwrite: bool = False, codec: str = DEFAULT_CODEC) -> None:
    """Write an index directory; ``side_chunks`` yields dicts of name -> [n, ...] arrays in
    image order (so the per-image tensors never need to fit in memory at once).

    ``embeddings`` [N, d] (an array, a memory map, or anything np.asarray takes) are the
    vectors the faiss index is built over; or None, when the chunks carry them under "emb"
    (then they too are streamed to disk and never held in memory at once). Sides are stored
    in ``codec`` (see the module's docstring); "emb" as float32, and kept only where the
    index is lossy (IVF), so that re-ranking reads exact embeddings.

    An existing directory is replaced only with ``overwrite`` and only when it is a gallery
    (:func:`check_gallery_output`)."""
    import faiss
    import pyarrow as pa
    import pyarrow.parquet as pq

    directory = check_gallery_output(directory, overwrite=overwrite).resolve()
    check_codec(codec)
    n = len(image_ids)
    spec = index_spec(n, kind, nlist=nlist, nprobe=nprobe)
    tmp = directory.with_name(f".{directory.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    writers: dict[str, NpyWriter] = {}
    emb_file = tmp / f"{EMB_SIDE}.npy"
    emb_dtype = np.float16 if codec == "pca" else np.float32
    code: TransformCode | None = None
    kv_split = 0
    try:
        for chunk in side_chunks:
            if codec == "pca" and "values" in chunk:
                chunk = dict(chunk)
                keys = chunk.pop("keys", None)
                kv = chunk.pop("values") if keys is None else np.concatenate([keys, chunk.pop("values")], -1)
                if code is None:  # fitted on the first chunk's instances
                    kv_split = 0 if keys is None else keys.shape[-1]
                    code = TransformCode.fit(kv.reshape(-1, kv.shape[-1])[:CODE_FIT_ROWS])
                    code.save(tmp / KV_CODE_FILE)
                chunk[KV_SIDE] = code.encode(kv)
            for name, arr in chunk.items():
                if name not in writers:
                    shape = (n, *np.shape(arr)[1:])
                    if name == EMB_SIDE:
                        writers[name] = NpyWriter(emb_file, emb_dtype, shape)
                    elif name == KV_SIDE:
                        writers[name] = NpyWriter(tmp / f"{name}.npy", np.uint8, shape)
                    elif codec in ("int8", "pca"):
                        writers[name] = NpyWriter(tmp / f"{name}.npy", np.int8, shape)
                        writers[name + SCALE_SUFFIX] = NpyWriter(tmp / f"{name}{SCALE_SUFFIX}.npy",
                                                                  np.float16, shape[:-1])
                    else:
                        writers[name] = NpyWriter(tmp / f"{name}.npy", np.float16, shape)
                if codec in ("int8", "pca") and name not in (EMB_SIDE, KV_SIDE):
                    codes, scale = encode_int8(arr)
                    writers[name].write(codes)
                    writers[name + SCALE_SUFFIX].write(scale)
                else:
                    writers[name].write(arr)
        for w in writers.values():
            w.close()
        if embeddings is None:
            if EMB_SIDE not in writers:
                raise ValueError("no embeddings: pass embeddings= or an 'emb' entry in the side chunks")
            source = np.load(emb_file, mmap_mode="r")  # read back with pread, chunk by chunk
        else:
            source = (embeddings if isinstance(embeddings, np.ndarray)
                      else np.asarray(embeddings, dtype=np.float32))
            if spec.lossy and EMB_SIDE not in writers:
                w = NpyWriter(emb_file, emb_dtype, source.shape)
                for s in range(0, n, ADD_CHUNK):
                    w.write(read_range(source, s, s + ADD_CHUNK))
                w.close()
        index, spec = build_faiss_spec(source, spec.kind, nlist=spec.params.get("nlist"), nprobe=nprobe,
                                       float16=codec == "pca")
        faiss.write_index(index, str(tmp / FAISS_FILE))
        del index, source
        if not spec.lossy:  # the exact index gives the embeddings back
            emb_file.unlink(missing_ok=True)
        names = sorted(p.stem for p in tmp.glob("*.npy") if not p.stem.endswith(SCALE_SUFFIX))
        pq.write_table(pa.table({"image_id": image_ids, "path": paths}), tmp / IDS_FILE)
        meta = {**meta, "images": n, "sides": names, "codec": codec, "index": spec.to_json()}
        if code is not None:
            meta["kv"] = {"keys_dim": kv_split, "bits": code.bits, "bytes": code.nbytes}
        (tmp / META_FILE).write_text(json.dumps(meta, indent=2, sort_keys=True))
        old = None
        if directory.is_dir() and any(directory.iterdir()):
            check_gallery_output(directory, overwrite=overwrite)  # still a gallery we may replace
            old = directory.with_name(f".{directory.name}.old-{os.getpid()}")
            os.replace(directory, old)  # set aside, so that a failure below loses nothing
        try:
            os.replace(tmp, directory)
        except BaseException:
            if old is not None:
                os.replace(old, directory)
            raise
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        for w in writers.values():
            w.handle.close()
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _load_npy(path: Path) -> np.ndarray:
    """A memory-mapped .npy; a damaged header is a ValueError (numpy's parser of the header's
    dict can also raise SyntaxError or tokenize.TokenError on damaged bytes)."""
    if not path.is_file():
        raise FileNotFoundError(f"no such file: {path.name}")
    try:
        return np.load(path, mmap_mode="r", allow_pickle=False)
    except (OSError, ValueError, EOFError):
        raise
    except Exception as exc:  # noqa: BLE001 - numpy's header parser: SyntaxError, TokenError, ...
        raise ValueError(f"damaged .npy header ({type(exc).__name__})") from None


def open_gallery(directory: str | Path, *, nprobe: int | None = None) -> SavedGallery:
    """Open an index directory (faiss index in memory, per-image tensors memory-mapped).
    ``nprobe`` overrides the IVF lists visited per query recorded at build time."""
    import faiss
    import pyarrow.parquet as pq

    d = Path(directory)
    if not (d / META_FILE).is_file():
        raise InputError(f"{directory}: not an smcli index (no {META_FILE}); build one with smcli index")
    damaged = f"{directory}: damaged smcli index"
    try:
        meta = json.loads((d / META_FILE).read_text())
    except (ValueError, UnicodeDecodeError) as exc:
        raise InputError(f"{damaged} ({META_FILE}: {first_line(exc, 80)}); rebuild it with smcli index") from None
    if (not isinstance(meta, dict) or not isinstance(meta.get("sides", []), list)
            or not all(isinstance(x, str) for x in meta.get("sides", []))
            or not isinstance(meta.get("index") or {}, dict) or not isinstance(meta.get("images", 0), int)):
        raise InputError(f"{damaged} ({META_FILE} is not the meta of a gallery); rebuild it with smcli index")
    on_disk = sorted(p.stem for p in d.glob("*.npy") if not p.stem.endswith(SCALE_SUFFIX))
    if sorted(meta.get("sides", [])) != on_disk:  # the list is the record of what the model needs
        raise InputError(f"{damaged} ({META_FILE} lists sides {sorted(meta.get('sides', []))}, the directory "
                         f"holds {on_disk}); rebuild it with smcli index")
    what = IDS_FILE
    try:
        ids = pq.read_table(d / IDS_FILE)
        image_ids, paths = ids.column("image_id").to_pylist(), ids.column("path").to_pylist()
        codec = meta.get("codec", "float16")
        if codec not in CODECS:
            raise ValueError(f"unknown codec {codec!r}")
        sides, scales = {}, {}
        for name in meta.get("sides", []):
            what = f"{name}.npy"
            sides[name] = _load_npy(d / what)
            if sides[name].dtype == np.int8 and codec not in ("int8", "pca"):
                raise ValueError(f"int8 rows, but {META_FILE} says codec {codec!r}")
            if sides[name].dtype == np.int8:
                what = f"{name}{SCALE_SUFFIX}.npy"
                scales[name] = _load_npy(d / what)
                if scales[name].shape != sides[name].shape[:-1]:
                    raise ValueError(f"shape {scales[name].shape} for rows of shape {sides[name].shape}")
        kv_code, keys_dim = None, 0
        if codec == "pca" and KV_SIDE in sides:
            what = KV_CODE_FILE
            kv_code = TransformCode.load(d / KV_CODE_FILE)
            keys_dim = int((meta.get("kv") or {}).get("keys_dim", -1))
            if not 0 <= keys_dim < len(kv_code.mean):
                raise ValueError(f"{META_FILE} gives keys_dim {keys_dim} for rows of {len(kv_code.mean)}")
            if sides[KV_SIDE].dtype != np.uint8 or sides[KV_SIDE].shape[-1] != kv_code.nbytes:
                raise ValueError(f"{KV_SIDE}.npy holds {sides[KV_SIDE].dtype} rows of {sides[KV_SIDE].shape[-1]} "
                                 f"bytes, the code writes uint8 rows of {kv_code.nbytes}")
        what = FAISS_FILE
        index = _read_faiss(d / FAISS_FILE)
        spec = meta.get("index") or {}
        if spec.get("kind") == "ivf":
            ivf = faiss.extract_index_ivf(index)  # faiss saves nprobe too; meta.json is the record
            ivf.nprobe = int(nprobe or spec.get("nprobe") or ivf.nprobe)
    except (OSError, ValueError, KeyError, TypeError, RuntimeError, EOFError, MemoryError) as exc:
        # pyarrow, numpy and faiss errors on truncated or missing files (faiss: RuntimeError)
        raise InputError(f"{damaged} ({what}: {first_line(exc, 80)}); rebuild it with smcli index") from None
    n = len(image_ids)
    bad = [f"{k}.npy" for k, v in sides.items() if v.ndim == 0 or len(v) != n]
    if index.ntotal != n:
        bad.append(FAISS_FILE)
    if bad or meta.get("images", n) != n or len(paths) != n:
        raise InputError(f"{damaged} ({', '.join(bad) or META_FILE}: image count differs from {IDS_FILE}'s {n}); "
                         "rebuild it with smcli index")
    return SavedGallery(d, meta, image_ids, paths, index, sides, scales, kv_code, keys_dim)


def _read_faiss(path: Path):
    """faiss.read_index, with no vector in it allowed to be larger than the file: a damaged
    length field would otherwise make faiss allocate (and zero) up to its default 1 TB limit."""
    import faiss

    limit = faiss.get_deserialization_vector_byte_limit()
    # faiss compares a vector's length with limit / (4 * item size); 16 x the file size
    # lets a vector be at most 4 x the file's bytes whatever its item size.
    faiss.set_deserialization_vector_byte_limit(min(limit, 16 * max(os.path.getsize(path), 1 << 16)))
    try:
        return faiss.read_index(str(path))
    finally:
        faiss.set_deserialization_vector_byte_limit(limit)


# ---------------------------------------------------------------------------------------
# Building a gallery from a regions file (smcli index)

CHUNK = 512  # images encoded at a time


def check_build(out: str | os.PathLike, kind: str, *, overwrite: bool = False,
                codec: str = DEFAULT_CODEC) -> Path:
    """The checks of ``smcli index`` that need no model: kind, codec and output directory."""
    if kind not in KINDS:
        raise UsageError(f"--kind {kind}: unknown index kind (one of {', '.join(KINDS)})")
    check_codec(codec)
    return check_gallery_output(out, overwrite=overwrite)


def build_index(model, regions_path: str, out: Path, kind: str = "auto", *, overwrite: bool = False,
                codec: str = DEFAULT_CODEC) -> int:
    """Encode every image of ``regions_path`` once and save the gallery; returns its size.
    ``out`` must be new or empty, or (with ``overwrite``) a gallery to replace."""
    import torch

    model.single("index")

    from smcli.images.features import iter_regions
    from smcli.report import say
    from smcli.runtime import autocast
    from smcli.stage import open_stage

    check_build(out, kind, overwrite=overwrite, codec=codec)
    stage = open_stage(regions_path, "regions")  # a file or a finalized directory, read CHUNK rows at a time
    model.check_features(stage.meta.producer, stage.name)
    ids_paths = stage.read(["image_id", "path"])
    image_ids, paths = ids_paths.column(0).to_pylist(), ids_paths.column(1).to_pylist()
    embeddings = []

    def chunks():
        for feats in iter_regions(stage, CHUNK):
            with torch.inference_mode(), autocast(model.device, model.precision):
                r = torch.from_numpy(np.asarray(feats.regions, np.float32))
                g = torch.from_numpy(np.asarray(feats.global_, np.float32))
                side = model.model.encode_images(r.to(model.device), g.to(model.device))
            embeddings.append(side.emb.float().cpu().numpy())
            yield {name: getattr(side, name).float().cpu().numpy()
                   for name in ("keys", "values", "ctx_a", "ctx_s") if getattr(side, name, None) is not None}

    meta = {"model_hash": model.loaded.hash, "model": model.name,
            "features": model.loaded.info.features, "regions_file": stage.name}
    # save_gallery consumes the chunks before it needs the embeddings
    try:
        save_gallery(Path(out), meta=meta, image_ids=image_ids, paths=paths,
                     embeddings=_Deferred(embeddings), side_chunks=chunks(), kind=kind, overwrite=overwrite,
                     codec=codec)
    finally:
        stage.close()
    say("index", f"{len(image_ids):,} images indexed in {out}")
    return len(image_ids)


class _Deferred:
    """Concatenates the embedding chunks when faiss asks for them."""

    def __init__(self, parts: list[np.ndarray]):
        self.parts = parts

    def __array__(self, dtype=None, copy=None):
        arr = np.concatenate(self.parts)
        return arr.astype(dtype) if dtype is not None else arr
