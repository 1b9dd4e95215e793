"""``smcli partition-pairs``: one streaming pass that splits a pairs file by the feature part
holding each pair's image, so that ``score --shard i/N`` reads one pairs part and one
feature part (see :mod:`smcli.distributed.score`).

Memory: the image_id -> part map of every image (a Python dict, ~100 bytes an image: 10 GB
for 100M images) and one pending row group per part; the pairs themselves stream in
batches. Each written row keeps ``input_row``, its row in the pairs file (0-based).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pyarrow as pa

from smcli.distributed.manifest import Manifest, finalize
from smcli.distributed.shards import ShardSpec, file_fingerprint, shard_directory, shard_record
from smcli.errors import InputError, UsageError, first_line
from smcli.report import RunReport, say
from smcli.stage import OutputTarget, PartsInput, StageWriter, new_meta, open_any

COMMAND = "partition-pairs"
BATCH = 1 << 16


def _pair_batches(path: str) -> Iterator[pa.RecordBatch]:
    """The pairs file's rows in batches, every column as text (Parquet or CSV/TSV)."""
    p = Path(path)
    if not p.is_file():
        raise InputError(f"{path}: no such pairs file")
    with open(p, "rb") as fh:
        head = fh.read(4)
    try:
        if head == b"PAR1":
            import pyarrow.parquet as pq

            pf = pq.ParquetFile(p)
            for batch in pf.iter_batches(BATCH):
                yield pa.record_batch([c.cast(pa.string()) for c in batch.columns], names=batch.schema.names)
            return
        import csv

        import pyarrow.csv as pcsv

        delimiter = "\t" if p.suffix.lower() == ".tsv" else ","
        with open(p, newline="", encoding="utf-8-sig") as fh:
            header = next(csv.reader(fh, delimiter=delimiter), None)
        if not header:
            raise InputError(f"{path}: empty pairs file")
        reader = pcsv.open_csv(p, read_options=pcsv.ReadOptions(block_size=8 << 20),
                               parse_options=pcsv.ParseOptions(delimiter=delimiter),
                               convert_options=pcsv.ConvertOptions(column_types={c: pa.string() for c in header},
                                                                   strings_can_be_null=False))
        yield from reader
    except (pa.ArrowInvalid, UnicodeDecodeError) as exc:
        raise InputError(f"{path}: unreadable pairs file ({first_line(exc)})") from None


def _part_of_image(feats: PartsInput) -> dict[str, int]:
    where: dict[str, int] = {}
    for index in range(len(feats.files)):
        part = feats.part(index)
        try:
            for batch in part.iter_batches(BATCH, ["image_id"]):
                where.update(dict.fromkeys(batch.column(0).to_pylist(), index))
        finally:
            part.close()
    return where


def partition_pairs(pairs: str, regions: str, output: str) -> Manifest:
    """Split ``pairs`` into ``output/part-i-of-N.parquet`` by the part of the finalized
    feature directory ``regions`` that holds each pair's image; pairs naming an unknown
    image are rejected (reported in part 0's error report). Finalizes ``output``."""
    feats = open_any(regions)
    if not isinstance(feats, PartsInput) or feats.meta.kind != "regions":
        raise UsageError(f"--regions {regions}: partition-pairs needs a finalized directory of feature parts "
                         "(extract-regions --shard, then smcli finalize)")
    count = int(feats.manifest["shards"])
    directory = shard_directory(output)
    if Path(pairs).resolve() == directory.resolve():
        raise UsageError(f"-o {output}: is the input {pairs}")
    where = _part_of_image(feats)
    specs = [ShardSpec(i, count) for i in range(count)]
    report = RunReport(COMMAND, errors_path=directory / specs[0].errors_name)
    writers: list[StageWriter] = []
    per_part = np.zeros(count, np.int64)
    row = 0
    producer = {"command": COMMAND, "pairs": str(pairs), "regions_fingerprint": feats.manifest["fingerprint"]}
    try:
        for batch in _pair_batches(pairs):
            names = batch.schema.names
            image_col = next((c for c in ("image_id", "image") if c in names), None)
            if image_col is None:
                raise InputError(f"{pairs}: needs a column image_id or image; columns found: {', '.join(names)}")
            if "input_row" in names:
                raise InputError(f"{pairs}: already has an input_row column (give the original pairs file)")
            if not writers:
                schema = pa.schema([*batch.schema, pa.field("input_row", pa.int64())])
                writers = [StageWriter(OutputTarget(directory / s.part_name), schema, new_meta("pairs", producer))
                           for s in specs]
            images = batch.column(image_col).to_pylist()
            part = np.array([where.get(i, -1) if i is not None else -1 for i in images], np.int64)
            for k in np.flatnonzero(part < 0).tolist():
                report.reject(pairs, f"row {row + k + 1}", f"image {images[k]!r} is not in {regions}")
            full = pa.record_batch([*batch.columns, pa.array(np.arange(row, row + len(images)), pa.int64())],
                                   schema=writers[0].schema.remove_metadata())
            order = np.argsort(part, kind="stable")
            bounds = np.searchsorted(part[order], np.arange(count + 1))
            for i in range(count):
                if bounds[i + 1] > bounds[i]:
                    writers[i].write(full.take(pa.array(order[bounds[i]:bounds[i + 1]])))
                    per_part[i] += bounds[i + 1] - bounds[i]
            row += len(images)
        if not writers:
            raise InputError(f"{pairs}: no pairs")
        fingerprint = file_fingerprint(pairs)
        report.write_errors()
        for s in specs[1:]:
            RunReport(COMMAND, errors_path=directory / s.errors_name).write_errors()
        for s, w in zip(specs, writers):
            counts = {"read": int(per_part[s.index]) + (len(report.rejects) if s.index == 0 else 0),
                      "written": int(per_part[s.index])}
            if s.index == 0:
                counts["rejected"] = len(report.rejects)
            w.add_metadata(shard_record(s, fingerprint, row, counts))
            w.close()
    except BaseException:
        for w in writers:
            w.abort()
        raise
    manifest = finalize(directory, command=COMMAND)
    say(COMMAND, f"{row:,} pairs into {count} part(s) by {regions}'s parts: written {int(per_part.sum()):,}, "
                 f"rejected {len(report.rejects):,}")
    return manifest
