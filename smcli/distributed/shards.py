"""Shards of one run: which rows shard i of N takes, the frozen input list they share, and
the record a committed part carries.

A sharded run writes into one directory ``DIR/``:

- ``_inputs.parquet``: the frozen, deduplicated input list (path, image_id), made once by
  whoever comes first (the driver, or the first shard of a Slurm array) and read by every
  shard after, so a folder that changes between shards cannot change the split;
- ``part-{i:05d}-of-{N:05d}.parquet`` and ``part-....errors.parquet``: shard i's rows
  [floor(i*n/N), floor((i+1)*n/N)) of the list and its rejected rows. The error report is
  committed first, the part last, so a part under its final name is a finished shard. The
  part's footer holds its record (``smcli.shard``: i, N, the list's fingerprint, the row
  range and the shard's counts). Nothing in a part depends on the time, the worker or the
  machine's core count, so a retried or duplicated shard writes the same bytes;
- ``_manifest.json``: written by :func:`smcli.distributed.manifest.finalize` once all N
  parts are there; only then do other stages read the directory.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from smcli.errors import InputError, UsageError
from smcli.images.sources import ImageItem, Listing
from smcli.stage import new_meta

INPUTS_NAME = "_inputs.parquet"
INPUTS_ERRORS_NAME = "_inputs.errors.parquet"
RECORD_KEY = b"smcli.shard"
PART_RE = re.compile(r"^part-(\d{5,})-of-(\d{5,})\.parquet$")
LIST_ROW_GROUP = 65536


@dataclass(frozen=True)
class ShardSpec:
    """Shard ``index`` of ``count`` (0-based)."""

    index: int
    count: int

    def rows(self, n: int) -> tuple[int, int]:
        """The half-open row range [floor(i*n/N), floor((i+1)*n/N)) of a list of ``n`` rows."""
        return self.index * n // self.count, (self.index + 1) * n // self.count

    @property
    def stem(self) -> str:
        return f"part-{self.index:05d}-of-{self.count:05d}"

    @property
    def part_name(self) -> str:
        return f"{self.stem}.parquet"

    @property
    def errors_name(self) -> str:
        return f"{self.stem}.errors.parquet"

    def __str__(self) -> str:
        return f"{self.index}/{self.count}"


def parse_shard(text: str | ShardSpec, option: str = "--shard") -> ShardSpec:
    """``"i/N"`` -> ShardSpec; one line naming the option when it is not 0 <= i < N."""
    if isinstance(text, ShardSpec):
        return text
    m = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", str(text))
    if not m:
        raise UsageError(f"{option} {text}: expected INDEX/COUNT, e.g. 0/4 (shards are numbered from 0)")
    index, count = int(m[1]), int(m[2])
    if count < 1 or index >= count:
        raise UsageError(f"{option} {text}: the index must be 0 to {max(count - 1, 0)} of {count} shard(s)")
    return ShardSpec(index, count)


def part_spec(name: str) -> ShardSpec | None:
    """The shard a part file name stands for (None for any other name)."""
    m = PART_RE.match(name)
    return ShardSpec(int(m[1]), int(m[2])) if m and int(m[1]) < int(m[2]) else None


def shard_directory(output: str | os.PathLike | None, option: str = "-o") -> Path:
    """The directory a sharded run writes (created when its parent exists)."""
    if output is None or str(output) == "-":
        raise UsageError(f"a sharded run writes parts into a directory: give {option} DIR/")
    path = Path(output)
    if path.exists() and not path.is_dir():
        raise UsageError(f"{option} {output}: is a file; a sharded run writes parts into a directory (DIR/)")
    if not path.parent.is_dir():
        raise UsageError(f"{option} {output}: directory {path.parent} does not exist")
    path.mkdir(exist_ok=True)
    return path


def check_shard_options(shard: object, shards: int | None, *, errors: object = None, distributor: str = "local",
                        ray_address: str | None = None) -> None:
    """The options that go with --shard i/N (one shard) or --shards N (the driver), not both."""
    if shard is not None and shards is not None:
        raise UsageError("give --shard I/N (run one shard) or --shards N (run them all), not both")
    if distributor not in ("local", "ray"):
        raise UsageError(f"--distributor {distributor}: choose local or ray")
    if errors is not None:
        raise UsageError("--errors does not go with sharded runs: each part has its error report beside it "
                         "(DIR/part-I-of-N.errors.parquet)")
    if shard is not None and (distributor != "local" or ray_address is not None):
        raise UsageError("--distributor and --ray-address go with --shards N (the driver), not --shard I/N")
    if ray_address is not None and distributor != "ray":
        raise UsageError("--ray-address goes with --distributor ray")


# ---------------------------------------------------------------------------------------
# The frozen input list


@dataclass
class InputList:
    """The frozen list of a sharded run, as stored in ``DIR/_inputs.parquet``."""

    path: Path
    fingerprint: str
    rows: int
    producer: dict[str, Any]

    def items(self, spec: ShardSpec) -> list[ImageItem]:
        """The list rows of shard ``spec``, read from the row groups that hold them only."""
        lo, hi = spec.rows(self.rows)
        pf = pq.ParquetFile(self.path)
        try:
            out: list[ImageItem] = []
            start = 0
            for g in range(pf.metadata.num_row_groups):
                n = pf.metadata.row_group(g).num_rows
                if start < hi and start + n > lo:
                    t = pf.read_row_group(g, columns=["path", "image_id"])
                    t = t.slice(max(0, lo - start), min(hi, start + n) - max(lo, start))
                    out.extend(ImageItem(p, i) for p, i in zip(t.column(0).to_pylist(), t.column(1).to_pylist()))
                start += n
            return out
        finally:
            pf.close()


def list_fingerprint(items: Iterable[ImageItem]) -> str:
    """sha256 over the list in order (path and image_id of every row)."""
    h = hashlib.sha256()
    for it in items:
        h.update(it.path.encode())
        h.update(b"\0")
        h.update(it.image_id.encode())
        h.update(b"\n")
    return "sha256:" + h.hexdigest()


def file_fingerprint(path: str | os.PathLike) -> str:
    """sha256 of a file's bytes (a pairs file split into shards by rows)."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return "sha256:" + h.hexdigest()


def _list_how(inputs: list[str], root: str | None, path_column: str | None) -> dict[str, Any]:
    return {"inputs": list(inputs), "root": root, "path_column": path_column}


def _read_list(path: Path) -> InputList:
    from smcli.stage import open_stage

    stage = open_stage(path, "inputs")
    try:
        producer = dict(stage.meta.producer)
        return InputList(path, str(producer.get("fingerprint")), stage.num_rows, producer)
    finally:
        stage.close()


def freeze_inputs(directory: Path, inputs: list[str], *, root: str | None, path_column: str | None,
                  list_images, report, command: str = "extract-regions") -> InputList:
    """The frozen list in ``directory``: read when there is one (made from the same INPUT
    arguments, else a usage error), else listed now and created exclusively, so that shards
    starting together agree on the first one written."""
    how = _list_how(inputs, root, path_column)
    path = directory / INPUTS_NAME
    if not path.exists():
        if "-" in inputs:
            raise UsageError("a sharded run cannot split '-' (paths on stdin) between shards; write the "
                             "paths to a file and give @FILE")
        listing: Listing = list_images(inputs, report, root=root, path_column=path_column, command=command)
        if listing.listed == 0 or not listing.items:
            raise InputError(f"no images found in {' '.join(inputs)} (looked for image extensions "
                             "in directories; lists and tables were empty)")
        producer = {"command": command, **how, "fingerprint": list_fingerprint(listing.items),
                    "listed": listing.listed, "duplicates": listing.duplicates, "ignored": listing.ignored,
                    "rejected": len(report.rejects)}
        table = pa.table({"path": [it.path for it in listing.items],
                          "image_id": [it.image_id for it in listing.items]},
                         schema=pa.schema([("path", pa.string()), ("image_id", pa.string())]))
        if report.rejects:
            from dataclasses import replace

            replace(report, errors_path=directory / INPUTS_ERRORS_NAME).write_errors()
        _create_exclusive(path, table.replace_schema_metadata(new_meta("inputs", producer).to_kv()))
    frozen = _read_list(path)
    made = {k: frozen.producer.get(k) for k in how}
    if made != how:
        raise UsageError(f"{directory}: its input list {INPUTS_NAME} was made from {made['inputs']} "
                         f"(root {made['root']}, path column {made['path_column']}), not {inputs}; give the "
                         "same inputs or another output directory")
    return frozen


def _create_exclusive(path: Path, table: pa.Table) -> None:
    """Write ``table`` at ``path`` unless a file is there already (then keep that one)."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    mask = os.umask(0)
    os.umask(mask)
    os.fchmod(fd, 0o666 & ~mask)  # as a plain open() would (mkstemp makes it 0600)
    try:
        with os.fdopen(fd, "wb") as fh:
            pq.write_table(table, fh, row_group_size=LIST_ROW_GROUP, compression="zstd")
            fh.flush()
            os.fsync(fh.fileno())
        try:
            os.link(tmp, path)  # fails if another shard linked its list first: theirs counts
        except FileExistsError:
            pass
    finally:
        Path(tmp).unlink(missing_ok=True)


# ---------------------------------------------------------------------------------------
# A part's record


def shard_record(spec: ShardSpec, fingerprint: str, list_rows: int, counts: dict[str, int],
                 **extra: Any) -> dict[bytes, bytes]:
    """The footer entry of a committed part: what it is a shard of, and its counts."""
    lo, hi = spec.rows(list_rows)
    record = {"index": spec.index, "count": spec.count, "list_fingerprint": fingerprint,
              "list_rows": list_rows, "rows": [lo, hi], "counts": dict(counts), **extra}
    return {RECORD_KEY: json.dumps(record, sort_keys=True).encode()}


def read_record(path: str | os.PathLike) -> dict[str, Any] | None:
    """A part's record (None when the file has none or cannot be read)."""
    try:
        kv = pq.ParquetFile(path).metadata.metadata or {}
        return json.loads(kv[RECORD_KEY]) if RECORD_KEY in kv else None
    except (OSError, pa.ArrowException, ValueError):
        return None


def committed(directory: Path, spec: ShardSpec, fingerprint: str | None = None) -> dict[str, Any] | None:
    """The record of shard ``spec``'s committed part, or None when it has none yet. A part
    made from another input list is an error: the directory belongs to another run."""
    path = directory / spec.part_name
    if not path.is_file() or not (directory / spec.errors_name).is_file():
        return None
    record = read_record(path)
    if record is None or (record.get("index"), record.get("count")) != (spec.index, spec.count):
        return None
    if fingerprint is not None and record.get("list_fingerprint") != fingerprint:
        raise UsageError(f"{path}: a part made from another input list ({record.get('list_fingerprint')}, "
                         f"not {fingerprint}); write this run into another directory")
    return record


def missing_shards(directory: Path, count: int, fingerprint: str | None = None) -> list[ShardSpec]:
    """The shards of ``count`` that have no committed part in ``directory``."""
    return [s for s in (ShardSpec(i, count) for i in range(count)) if committed(directory, s, fingerprint) is None]


def format_counts(counts: dict[str, int]) -> str:
    return ", ".join(f"{k.replace('_', ' ')} {v:,}" for k, v in counts.items())


KILL_ENV = "SMCLI_TEST_KILL_SHARD"


def kill_hook(spec: ShardSpec):
    """A test hook: ``SMCLI_TEST_KILL_SHARD=INDEX:MARKER[:parent]`` SIGKILLs shard INDEX
    after its first batch (or its parent, a Ray worker, with ``:parent``), once: the first
    to create MARKER. None when the variable is not set for this shard."""
    value = os.environ.get(KILL_ENV, "")
    if not value:
        return None
    index, marker, *who = value.split(":")
    if int(index) != spec.index:
        return None

    def hook() -> None:
        import signal
        import time

        try:
            os.close(os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
        except FileExistsError:
            return
        # "parent": the process the shard runs for (a Ray worker), not the fork server between them
        from smcli.distributed.forkserver import OWNER_ENV

        owner = int(os.environ.get(OWNER_ENV, os.getppid()))
        os.kill(owner if who == ["parent"] else os.getpid(), signal.SIGKILL)
        time.sleep(60)  # the parent's death kills this process too (PR_SET_PDEATHSIG)

    return hook
