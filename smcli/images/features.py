"""The regions file: its schema, reading it into numpy, and the feature signature later stages compare.

    feats = load_regions("feats.parquet")
    feats.regions      # (N, grid_h * grid_w, dim), float16 or float32 as written
    feats.global_      # (N, global_dim)
    feats.image_ids    # list[str], joinable with captions' image_id
    sig = feature_signature(feats.meta)   # store with a model; compare at use time

The arrays are built column-wise (Arrow flatten + reshape per row group), never with a
Python loop over rows.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa

from smcli.errors import InputError, UsageError
from smcli.stage import StageInput, open_stage

DTYPES = {"float16": (pa.float16(), np.float16), "float32": (pa.float32(), np.float32)}
SIGNATURE_KEYS = ("backbone", "weights", "pretrained", "image_size", "grid", "dim", "global_dim")


def regions_schema(grid: tuple[int, int], dim: int, global_dim: int, dtype: str) -> pa.Schema:
    value = DTYPES[dtype][0]
    return pa.schema([
        ("image_id", pa.string()),
        ("path", pa.string()),
        ("width", pa.int32()),
        ("height", pa.int32()),
        ("regions", pa.list_(value, grid[0] * grid[1] * dim)),
        ("global", pa.list_(value, global_dim)),
    ])


@dataclass
class RegionFeatures:
    image_ids: list[str]
    paths: list[str]
    width: np.ndarray  # (N,) int32
    height: np.ndarray  # (N,) int32
    regions: np.ndarray | None  # (N, R, D); None when loaded with regions=False
    global_: np.ndarray  # (N, Dg)
    meta: dict[str, Any]  # the producer dict of the file
    name: str = ""

    def __len__(self) -> int:
        return len(self.image_ids)

    @property
    def grid(self) -> tuple[int, int]:
        g = self.meta["grid"]
        return int(g[0]), int(g[1])

    @property
    def dim(self) -> int:
        return int(self.meta["dim"])

    @property
    def signature(self) -> dict[str, Any]:
        return feature_signature(self.meta)

    def index(self) -> dict[str, int]:
        """image_id -> row."""
        return {k: i for i, k in enumerate(self.image_ids)}


def _fixed_list_numpy(column: pa.ChunkedArray, width: int) -> np.ndarray:
    parts = []
    for chunk in column.chunks:
        if chunk.null_count:
            raise InputError("regions file has null feature rows")
        values = chunk.flatten()  # respects slicing offsets
        parts.append(values.to_numpy(zero_copy_only=False).reshape(len(chunk), width))
    if not parts:
        return np.zeros((0, width), dtype=np.float32)
    return parts[0] if len(parts) == 1 else np.concatenate(parts)


FINITE_CHUNK = 4096  # rows checked for NaN/inf at a time (bounds the temporary mask)


def _check_finite(name: str, column: str, values: np.ndarray, table: pa.Table, offset: int = 0) -> None:
    """Refuse a file with NaN/inf features, naming the rows: a NaN must never rank."""
    bad: list[int] = []
    for start in range(0, len(values), FINITE_CHUNK):
        part = values[start:start + FINITE_CHUNK]
        bad.extend((start + np.flatnonzero(~np.isfinite(part).all(1))).tolist())
    if bad:
        first = table.column("image_id")[bad[0]].as_py()
        raise InputError(f"{name}: non-finite (NaN/inf) {column} features in {len(bad):,} row(s) "
                         f"(first: row {offset + bad[0]}, image_id {first!r}); re-extract them")


def _positive_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


def _layout(name: str, meta: dict[str, Any]) -> tuple[int, int, int]:
    """(grid_h, grid_w, dim) from a regions file's metadata, checked."""
    for key in ("grid", "dim"):
        if key not in meta:
            raise InputError(f"{name}: regions metadata lacks {key!r}")
    grid, dim = meta["grid"], meta["dim"]
    if not (isinstance(grid, list) and len(grid) == 2 and all(map(_positive_int, grid)) and _positive_int(dim)
            and _positive_int(meta.get("global_dim", dim))):
        raise InputError(f"{name}: regions metadata has a malformed grid, dim or global_dim "
                         f"({json.dumps(grid)[:40]}, {json.dumps(dim)[:20]}); damaged file?")
    return grid[0], grid[1], dim


def load_regions(source: str | os.PathLike | StageInput, *, regions: bool = True,
                 image_ids: Iterable[str] | None = None) -> RegionFeatures:
    """Load a regions file or a finalized directory of parts (path or an opened stage).
    ``regions=False`` skips the grids (only the global vectors: much less memory);
    ``image_ids`` keeps only those images' rows (streamed: the others are never held)."""
    stage = source if isinstance(source, StageInput) else open_stage(source, "regions")
    owned = not isinstance(source, StageInput)
    try:
        meta = _checked_meta(stage)
        cols = _columns(regions)
        table = stage.read(cols) if image_ids is None else stage.read_where(cols, "image_id", image_ids)
        return _features(stage.name, meta, table, regions)
    finally:
        if owned:
            stage.close()


def iter_regions(stage: StageInput, batch_size: int = 512) -> Iterator[RegionFeatures]:
    """The regions file's rows ``batch_size`` at a time, in order, as RegionFeatures (a
    stage that needs every row, but never all at once: ``smcli index``)."""
    meta = _checked_meta(stage)
    start = 0
    for batch in stage.iter_batches(batch_size, _columns(True)):
        yield _features(stage.name, meta, pa.Table.from_batches([batch]), True, offset=start)
        start += batch.num_rows


def _checked_meta(stage: StageInput) -> dict[str, Any]:
    meta = dict(stage.meta.producer)
    _layout(stage.name, meta)
    return meta


def _columns(regions: bool) -> list[str]:
    return ["image_id", "path", "width", "height", "global"] + (["regions"] if regions else [])


def _features(name: str, meta: dict[str, Any], table: pa.Table, regions: bool, offset: int = 0) -> RegionFeatures:
    """RegionFeatures of a table of regions rows (``offset``: its first row's number)."""
    gh, gw, dim = _layout(name, meta)
    for col, ok, what in (("image_id", pa.types.is_string, "text"), ("path", pa.types.is_string, "text"),
                          ("width", pa.types.is_integer, "integers"), ("height", pa.types.is_integer, "integers")):
        t = table.schema.field(col).type
        if not ok(t):
            raise InputError(f"{name}: column {col} is {t}, not {what}")
        if table.column(col).null_count:
            raise InputError(f"{name}: column {col} has empty (null) values")
    for col in _columns(regions)[4:]:  # the feature columns: fixed-size lists of floats
        t = table.schema.field(col).type
        if not (pa.types.is_fixed_size_list(t) and pa.types.is_floating(t.value_type)):
            raise InputError(f"{name}: column {col} is {t}, not a fixed-size list of floats")
    gfield = table.schema.field("global").type
    gdim = int(getattr(gfield, "list_size", 0) or meta.get("global_dim", dim))
    glob = _fixed_list_numpy(table.column("global"), gdim)
    _check_finite(name, "global", glob, table, offset)
    reg = None
    if regions:
        rtype = table.schema.field("regions").type
        width = gh * gw * dim
        if getattr(rtype, "list_size", width) != width:
            raise InputError(f"{name}: regions column width {rtype.list_size} does not "
                             f"match grid {gh}x{gw} x dim {dim}")
        reg = _fixed_list_numpy(table.column("regions"), width)
        _check_finite(name, "regions", reg, table, offset)
        reg = reg.reshape(-1, gh * gw, dim)
    return RegionFeatures(
        image_ids=table.column("image_id").to_pylist(),
        paths=table.column("path").to_pylist(),
        width=table.column("width").to_numpy(),
        height=table.column("height").to_numpy(),
        regions=reg,
        global_=glob,
        meta=meta,
        name=name,
    )


def iter_region_grids(source: str | os.PathLike, batch_rows: int = 256) -> Iterator[tuple[list[str], np.ndarray]]:
    """The region grids of a regions file (or finalized directory) a few rows at a time, in
    file order: (image ids, grids [n, R, D]), checked as :func:`load_regions` checks them; the
    whole column is never in memory at once (for files larger than memory)."""
    stage = open_stage(source, "regions")
    try:
        for part in iter_regions(stage, batch_rows):
            yield part.image_ids, part.regions
    finally:
        stage.close()


def feature_signature(meta: dict[str, Any] | Any) -> dict[str, Any]:
    """What decides feature values: backbone, weights identity, pretrained, image_size,
    grid, dim, global_dim. Accepts a producer dict, a StageMeta, a StageInput or
    RegionFeatures. Store it with a model and compare with :func:`check_signature`."""
    if isinstance(meta, RegionFeatures):
        meta = meta.meta
    elif isinstance(meta, StageInput):
        meta = meta.meta.producer
    elif hasattr(meta, "producer"):
        meta = meta.producer
    missing = [k for k in SIGNATURE_KEYS[:-1] if k not in meta]
    if missing:
        raise InputError(f"regions metadata lacks {', '.join(missing)}")
    gh, gw, dim = _layout("regions metadata", meta)
    if not _positive_int(meta["image_size"]):
        raise InputError(f"regions metadata: image_size {json.dumps(meta['image_size'])[:20]} is not a "
                         "positive integer; damaged file?")
    return {
        "backbone": str(meta["backbone"]),
        "weights": str(meta["weights"]),
        "pretrained": bool(meta["pretrained"]),
        "image_size": meta["image_size"],
        "grid": [gh, gw],
        "dim": dim,
        "global_dim": meta.get("global_dim", dim),
    }


def check_signature(expected: dict[str, Any], meta: Any, what: str) -> None:
    """Raise one InputError line when ``meta``'s features differ from ``expected``."""
    got = feature_signature(meta)
    want = feature_signature(expected)
    diff = [k for k in SIGNATURE_KEYS if want.get(k) != got.get(k)]
    if diff:
        parts = ", ".join(f"{k} {got.get(k)!r} (expected {want.get(k)!r})" for k in diff)
        raise InputError(f"{what}: features differ from the model's: {parts}")


def weights_arg(identity: str, local: str | None = None) -> str:
    """The ``weights=`` argument that reproduces a recorded weights identity.

    ``none`` -> "none"; a package or ``torchvision:Enum.NAME`` identity -> the default or the
    enum name (the loaded identity is checked afterwards); ``file:NAME sha256:...`` -> the
    local path the caller gives (``local``), which must exist.
    """
    if identity == "none":
        return "none"
    if identity.startswith("torchvision:"):
        return identity.rsplit(".", 1)[-1]
    if identity.startswith("file:"):
        if not local or local in ("default", "none") or not os.path.isfile(local):
            raise UsageError(
                f"the features were made with a local weights file ({identity}); give its path "
                "with --weights PATH"
            )
        return local
    return "default"
