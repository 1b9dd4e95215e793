"""Reading what search commands are given: pair lists, candidate lists, images by id or path."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa

from smcli.errors import InputError, first_line


def read_table_any(path: str, what: str) -> pa.Table:
    """A Parquet or CSV/TSV file as a table of its columns."""
    p = Path(path)
    if not p.is_file():
        raise InputError(f"{path}: no such {what} file")
    with open(p, "rb") as fh:
        head = fh.read(4)
    try:
        if head == b"PAR1":
            import pyarrow.parquet as pq

            table = pq.read_table(p)
        else:
            import pyarrow.csv as pcsv

            delimiter = "\t" if p.suffix.lower() == ".tsv" else ","
            table = pcsv.read_csv(p, parse_options=pcsv.ParseOptions(delimiter=delimiter),
                                  convert_options=pcsv.ConvertOptions(strings_can_be_null=False,
                                                                      column_types=None))
        table.validate(full=True)  # text that is not UTF-8 (the header's too) fails here, not later
        table.column_names  # noqa: B018 - decoded lazily: invalid UTF-8 in the header fails here
        return table
    except (pa.ArrowException, OSError, UnicodeDecodeError) as exc:  # damaged Parquet, bad CSV, bad UTF-8
        raise InputError(f"{path}: unreadable {what} file ({first_line(exc)})") from None


def require_columns(table: pa.Table, name: str, *groups: tuple[str, ...]) -> list[str]:
    """For each group of alternatives, the first column present; one line if none is."""
    chosen = []
    for group in groups:
        hit = next((c for c in group if c in table.column_names), None)
        if hit is None:
            raise InputError(f"{name}: needs a column {' or '.join(group)}; "
                             f"columns found: {', '.join(table.column_names)}")
        chosen.append(hit)
    return chosen


def as_strings(table: pa.Table, column: str) -> list[str | None]:
    return [None if v is None else str(v) for v in table.column(column).to_pylist()]


@dataclass
class ImageSet:
    """Images to search with or rank for: ids, paths and features."""

    image_ids: list[str]
    paths: list[str]
    regions: np.ndarray
    global_: np.ndarray


def resolve_images(specs: list[str], feats, signature: dict, weights: str | None = None) -> ImageSet:
    """Each spec is an image_id of ``feats`` or a path to an image file (extracted now with
    the backbone the model was trained on)."""
    from smcli.images.extract import extract_images

    position = feats.index() if feats is not None else {}
    ids, paths, rows, files = [], [], [], []
    for spec in specs:
        if spec in position:
            ids.append(spec)
            paths.append(feats.paths[position[spec]])
            rows.append(("feats", position[spec]))
        elif os.path.isfile(spec):
            ids.append(spec)
            paths.append(spec)
            rows.append(("file", len(files)))
            files.append(spec)
        else:
            where = f"an image id in {feats.name} nor " if feats is not None else ""
            raise InputError(f"--image {spec}: neither {where}an image file")
    extracted = None
    if files:
        extracted = extract_images(files, signature=signature, weights=weights or "default")
    dim_r = (feats.regions.shape[1:] if feats is not None and feats.regions is not None
             else extracted[0].shape[1:])
    regions = np.zeros((len(ids), *dim_r), dtype=np.float32)
    global_ = np.zeros((len(ids), (feats.global_ if feats is not None else extracted[1]).shape[1]),
                       dtype=np.float32)
    for k, (src, r) in enumerate(rows):
        if src == "feats":
            regions[k], global_[k] = feats.regions[r], feats.global_[r]
        else:
            regions[k], global_[k] = extracted[0][r], extracted[1][r]
    return ImageSet(ids, paths, regions, global_)
