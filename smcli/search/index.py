"""A saved gallery for fast search: a faiss index of the one-to-one image embeddings and
the per-image sm-LSTM tensors, memory-mapped, so a query reads only its shortlist.

Directory layout (written by ``smcli index``)::

    meta.json        model hash, feature signature, image count, tensor shapes
    images.parquet   image_id, path
    embeddings.faiss faiss index (inner product = cosine on normalised embeddings)
    sides.npz-less   one .npy per per-image tensor (keys, values, ctx_a, ctx_s), float16
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np

from smcli.errors import InputError

META_FILE = "meta.json"
IDS_FILE = "images.parquet"
FAISS_FILE = "embeddings.faiss"
HNSW_ABOVE = 200_000  # exact search below this many images, HNSW above


def build_faiss(embeddings: np.ndarray, kind: str = "auto"):
    """An inner-product faiss index over L2-normalised embeddings."""
    import faiss

    emb = np.ascontiguousarray(embeddings, dtype=np.float32)
    d = emb.shape[1]
    if kind == "auto":
        kind = "hnsw" if len(emb) > HNSW_ABOVE else "flat"
    if kind == "flat":
        index = faiss.IndexFlatIP(d)
    elif kind == "hnsw":
        index = faiss.IndexHNSWFlat(d, 32, faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = 80
        index.hnsw.efSearch = 256
    else:
        raise ValueError(f"unknown index kind {kind}")
    index.add(emb)
    return index


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
    sides: dict[str, np.ndarray]  # name -> memory-mapped [N, ...] float16

    def __len__(self) -> int:
        return len(self.image_ids)

    def image_side(self, rows: np.ndarray, emb: np.ndarray | None = None, device: str = "cpu"):
        """The per-image tensors of ``rows`` (read from the memory maps)."""
        import torch

        from smcli.models.matchers import ImageSide

        rows = np.asarray(rows)
        order = np.argsort(rows)  # read the memory maps in file order
        back = np.empty_like(order)
        back[order] = np.arange(len(order))
        values = {}
        for f in fields(ImageSide):
            if f.name in self.sides:
                arr = self.sides[f.name][rows[order]][back]
                values[f.name] = torch.from_numpy(np.asarray(arr, dtype=np.float32)).to(device)
        if emb is None:
            emb = np.stack([self.index.reconstruct(int(r)) for r in rows])
        values["emb"] = torch.from_numpy(np.asarray(emb, dtype=np.float32)).to(device)
        return ImageSide(**values)


def save_gallery(directory: Path, *, meta: dict[str, Any], image_ids: list[str], paths: list[str],
                 embeddings: np.ndarray, side_chunks, kind: str = "auto") -> None:
    """Write an index directory; ``side_chunks`` yields dicts of name -> [n, ...] arrays in
    image order (so the per-image tensors never need to fit in memory at once)."""
    import faiss
    import pyarrow as pa
    import pyarrow.parquet as pq

    tmp = directory.with_name(f".{directory.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        n = len(image_ids)
        maps: dict[str, np.ndarray] = {}
        done = 0
        for chunk in side_chunks:
            size = None
            for name, arr in chunk.items():
                if name not in maps:
                    maps[name] = np.lib.format.open_memmap(tmp / f"{name}.npy", mode="w+",
                                                           dtype=np.float16, shape=(n, *arr.shape[1:]))
                maps[name][done:done + len(arr)] = arr
                size = len(arr)
            done += size or 0
        for m in maps.values():
            m.flush()
        faiss.write_index(build_faiss(embeddings, kind), str(tmp / FAISS_FILE))
        pq.write_table(pa.table({"image_id": image_ids, "path": paths}), tmp / IDS_FILE)
        meta = {**meta, "images": n, "sides": sorted(maps)}
        (tmp / META_FILE).write_text(json.dumps(meta, indent=2, sort_keys=True))
        if directory.exists():
            shutil.rmtree(directory)
        os.replace(tmp, directory)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def open_gallery(directory: str | Path) -> SavedGallery:
    import faiss
    import pyarrow.parquet as pq

    d = Path(directory)
    if not (d / META_FILE).is_file():
        raise InputError(f"{directory}: not an smcli index (no {META_FILE}); build one with smcli index")
    meta = json.loads((d / META_FILE).read_text())
    ids = pq.read_table(d / IDS_FILE)
    sides = {name: np.load(d / f"{name}.npy", mmap_mode="r") for name in meta.get("sides", [])}
    return SavedGallery(d, meta, ids.column("image_id").to_pylist(), ids.column("path").to_pylist(),
                        faiss.read_index(str(d / FAISS_FILE)), sides)
