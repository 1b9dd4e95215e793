"""The Parquet stage contract shared by every subcommand.

Every smcli file is Parquet with one key-value metadata entry, ``smcli``, holding JSON:
``{"schema": kind, "schema_version": n, "smcli_version": v, "producer": {...}}``. Large
blobs a stage needs (a vocabulary, say) go in their own ``smcli.<name>`` entries.

Reading validates the kind, version and required columns before any work is done. Writing
goes to a temporary name beside the target and is renamed into place on success, so an
interrupted run never leaves a truncated file under the final name. ``-`` means stdin or
stdout; Parquet is never written to a terminal.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import pyarrow as pa
import pyarrow.parquet as pq

from smcli._version import __version__
from smcli.errors import InputError, SmcliError, UsageError, first_line

META_KEY = b"smcli"
PARQUET_MAGIC = b"PAR1"

# kind -> (current schema version, required columns). Readers accept versions <= current.
SCHEMAS: dict[str, tuple[int, tuple[str, ...]]] = {
    "captions": (1, ("caption_id", "image_id", "caption", "tokens", "token_ids", "split")),
    "regions": (1, ("image_id", "path", "width", "height", "regions", "global")),
    "image-text": (1, ("image_id", "path", "width", "height", "text", "words")),
    "errors": (1, ("source", "location", "reason")),
    "scores": (1, ("image_id", "caption_id", "score")),
    "retrieval": (1, ("query", "rank", "id", "score")),
    "caption-ranks": (1, ("image_id", "caption_id", "rank", "score")),
    "metrics": (1, ("split", "direction", "metric", "value")),
    "inputs": (1, ("path", "image_id")),  # the frozen input list of a sharded run
    "pairs": (1, ("image_id", "input_row")),  # pairs partitioned by the feature part of their image
}
MANIFEST_NAME = "_manifest.json"  # a finalized directory of parts (smcli.distributed.manifest)


@dataclass
class StageMeta:
    """What a file says about itself: its kind and what produced it."""

    kind: str
    schema_version: int
    smcli_version: str
    producer: dict[str, Any] = field(default_factory=dict)
    blobs: dict[str, bytes] = field(default_factory=dict)

    def to_kv(self) -> dict[bytes, bytes]:
        header = {
            "schema": self.kind,
            "schema_version": self.schema_version,
            "smcli_version": self.smcli_version,
            "producer": self.producer,
        }
        kv = {META_KEY: json.dumps(header, sort_keys=True).encode()}
        for name, blob in self.blobs.items():
            kv[META_KEY + b"." + name.encode()] = blob
        return kv

    @classmethod
    def from_kv(cls, kv: Mapping[bytes, bytes] | None) -> StageMeta | None:
        if not kv or META_KEY not in kv:
            return None
        header = json.loads(kv[META_KEY])  # ValueError when it is not JSON
        if not isinstance(header, dict) or not isinstance(header.get("producer", {}), dict):
            raise ValueError("smcli metadata is not a JSON object with a producer object")
        version = header.get("schema_version", 0)
        if (not isinstance(header.get("schema", "?"), str) or not isinstance(header.get("smcli_version", "?"), str)
                or not isinstance(version, int) or isinstance(version, bool)):
            raise ValueError("smcli metadata has a schema, schema_version or smcli_version of the wrong type")
        prefix = META_KEY + b"."
        blobs = {k[len(prefix):].decode(): v for k, v in kv.items() if k.startswith(prefix)}
        return cls(
            kind=header.get("schema", "?"),
            schema_version=version,
            smcli_version=header.get("smcli_version", "?"),
            producer=header.get("producer", {}),
            blobs=blobs,
        )


def new_meta(kind: str, producer: dict[str, Any], blobs: dict[str, bytes] | None = None) -> StageMeta:
    """Metadata for a file of ``kind`` written now by this smcli."""
    return StageMeta(kind, SCHEMAS[kind][0], __version__, producer, dict(blobs or {}))


def display_name(path: str | os.PathLike) -> str:
    return "<stdin>" if str(path) == "-" else str(path)


# ---------------------------------------------------------------------------------------
# Reading


@dataclass
class StageInput:
    """A validated smcli Parquet file, opened for reading."""

    name: str
    parquet: pq.ParquetFile
    meta: StageMeta
    _spool: IO[bytes] | None = None

    @property
    def num_rows(self) -> int:
        return self.parquet.metadata.num_rows

    @property
    def schema(self) -> pa.Schema:
        return self.parquet.schema_arrow

    @property
    def columns(self) -> list[str]:
        return self.schema.names

    def read_where(self, columns: Iterable[str], key: str, values: Iterable[str]) -> pa.Table:
        """The rows whose ``key`` is one of ``values``, streamed: only they stay in memory."""
        import pyarrow.compute as pc

        wanted = pa.array(sorted(set(values)), pa.string())
        cols = list(columns)
        read = cols if key in cols else [*cols, key]
        kept = [b.filter(pc.is_in(b.column(key), value_set=wanted)) for b in self.iter_batches(1024, read)]
        table = pa.Table.from_batches(kept, schema=self._read_schema(read)) if kept else self.read(read).slice(0, 0)
        return table.select(cols)

    def _read_schema(self, columns: list[str]) -> pa.Schema:
        return pa.schema([self.schema.field(c) for c in columns])

    def read(self, columns: Iterable[str] | None = None) -> pa.Table:
        try:
            return _valid_text(self.parquet.read(columns=list(columns) if columns is not None else None))
        except (pa.ArrowException, OSError) as exc:  # damaged pages: bad compression, bad encoding
            raise self._damaged(exc) from None

    def iter_batches(
        self, batch_size: int = 4096, columns: Iterable[str] | None = None
    ) -> Iterator[pa.RecordBatch]:
        cols = list(columns) if columns is not None else None
        try:
            for batch in self.parquet.iter_batches(batch_size=batch_size, columns=cols):
                yield _valid_text(batch)
        except (pa.ArrowException, OSError) as exc:
            raise self._damaged(exc) from None

    def _damaged(self, exc: BaseException) -> InputError:
        return InputError(f"{self.name}: unreadable Parquet data ({first_line(exc, 100)}); damaged or truncated?")

    def close(self) -> None:
        self.parquet.close()
        if self._spool is not None:
            self._spool.close()


def _valid_text(data: pa.Table | pa.RecordBatch) -> pa.Table | pa.RecordBatch:
    """``data``, its text columns checked for valid UTF-8 (pyarrow reads Parquet strings as
    bytes; a damaged page would fail later, in Python, with a UnicodeDecodeError)."""
    for i, col in enumerate(data.schema):
        if pa.types.is_string(col.type) or pa.types.is_large_string(col.type):
            data.column(i).validate(full=True)  # pa.ArrowInvalid, reported as damaged data
    return data


def _open_parquet(path: str | os.PathLike) -> tuple[pq.ParquetFile, IO[bytes] | None]:
    name = display_name(path)
    spool: IO[bytes] | None = None
    if str(path) == "-":
        # Parquet needs a seekable file: spool stdin to a temporary file (disk, not memory).
        spool = tempfile.TemporaryFile(prefix="smcli-stdin-")
        shutil.copyfileobj(sys.stdin.buffer, spool, length=1 << 20)
        spool.seek(0)
        source: Any = spool
        head = spool.read(4)
        spool.seek(0)
    else:
        p = Path(path)
        if not p.exists():
            raise InputError(f"{name}: no such file")
        with open(p, "rb") as fh:
            head = fh.read(4)
        source = str(p)
    if head != PARQUET_MAGIC:
        what = "empty input" if not head else "not a Parquet file"
        raise InputError(f"{name}: {what}")
    try:
        return pq.ParquetFile(source), spool
    except (pa.ArrowInvalid, OSError, UnicodeDecodeError) as exc:  # the footer's names: UTF-8 too
        raise InputError(f"{name}: unreadable Parquet ({first_line(exc)}); truncated?") from None


def open_any(path: str | os.PathLike) -> StageInput:
    """Open any Parquet file, or a finalized directory of parts (:class:`PartsInput`);
    ``meta.kind`` is ``"?"`` when smcli did not write it."""
    if str(path) != "-" and Path(path).is_dir():
        return open_parts(path)
    pf, spool = _open_parquet(path)
    try:
        meta = StageMeta.from_kv(pf.schema_arrow.metadata) or StageMeta("?", 0, "?")
    except ValueError as exc:  # includes json.JSONDecodeError
        pf.close()
        if spool is not None:
            spool.close()
        raise InputError(f"{display_name(path)}: unreadable smcli metadata ({exc})") from None
    return StageInput(display_name(path), pf, meta, spool)


class PartsInput(StageInput):
    """A finalized directory of parts (``DIR/part-*-of-*.parquet`` and ``_manifest.json``),
    read as one file through a pyarrow dataset: rows in part order, batches streamed."""

    def __init__(self, name: str, manifest: dict[str, Any], files: list[Path], meta: StageMeta):
        import pyarrow.dataset as ds

        first = pq.ParquetFile(files[0])
        self._schema = first.schema_arrow
        first.close()
        super().__init__(name, None, meta)  # type: ignore[arg-type]
        self.manifest = manifest
        self.files = files
        self.dataset = ds.dataset([str(f) for f in files], schema=self._schema, format="parquet")

    @property
    def num_rows(self) -> int:
        return int(self.manifest["rows"])

    @property
    def schema(self) -> pa.Schema:
        return self._schema

    def read(self, columns: Iterable[str] | None = None) -> pa.Table:
        try:
            return _valid_text(self.dataset.to_table(columns=list(columns) if columns is not None else None))
        except (pa.ArrowException, OSError) as exc:
            raise self._damaged(exc) from None

    def iter_batches(self, batch_size: int = 4096, columns: Iterable[str] | None = None) -> Iterator[pa.RecordBatch]:
        cols = list(columns) if columns is not None else None
        try:
            for batch in self.dataset.to_batches(columns=cols, batch_size=batch_size):
                if batch.num_rows:
                    yield _valid_text(batch)
        except (pa.ArrowException, OSError) as exc:
            raise self._damaged(exc) from None

    def read_where(self, columns: Iterable[str], key: str, values: Iterable[str]) -> pa.Table:
        import pyarrow.compute as pc

        cols = list(columns)
        wanted = pa.array(sorted(set(values)), pa.string())
        try:
            return _valid_text(self.dataset.to_table(columns=cols, filter=pc.field(key).isin(wanted)))
        except (pa.ArrowException, OSError) as exc:
            raise self._damaged(exc) from None

    def part(self, index: int) -> StageInput:
        """Part ``index`` alone, as an ordinary file (a shard reading its own features)."""
        return open_any(self.files[index])

    def close(self) -> None:
        pass


def open_parts(path: str | os.PathLike) -> PartsInput:
    """A directory of parts, only once finalized: its manifest lists every part with its
    size, so a missing, changed or unfinished part is refused in one line before any work."""
    d = Path(path)
    manifest_path = d / MANIFEST_NAME
    if not manifest_path.is_file():
        raise InputError(f"{d}: a directory without {MANIFEST_NAME}, so not a finished set of parts; "
                         f"run smcli finalize {d} once every shard is done (or give a Parquet file)")
    try:
        manifest = json.loads(manifest_path.read_text())
        parts = manifest["parts"]
        files = [d / p["file"] for p in parts]
        sizes = [int(p["bytes"]) for p in parts]
        int(manifest["rows"])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise InputError(f"{manifest_path}: unreadable manifest ({first_line(exc, 80)}); run smcli finalize {d} "
                         "again") from None
    if not files:
        raise InputError(f"{manifest_path}: lists no part")
    for f, size in zip(files, sizes):
        if not f.is_file() or f.stat().st_size != size:
            what = "is missing" if not f.is_file() else "changed"
            raise InputError(f"{d}: {f.name} {what} since it was finalized; run smcli finalize {d} again")
    stage = open_any(files[0])
    stage.close()
    return PartsInput(str(d), manifest, files, stage.meta)


def open_stage(
    path: str | os.PathLike,
    kind: str | tuple[str, ...],
    required: Iterable[str] | None = None,
) -> StageInput:
    """Open an smcli file and check it is of ``kind`` with the columns a stage needs.

    Fails with one line naming the file and the problem, before any work is done.
    """
    kinds = (kind,) if isinstance(kind, str) else tuple(kind)
    stage = open_any(path)
    name, meta = stage.name, stage.meta
    try:
        if meta.kind == "?":
            raise InputError(
                f"{name}: not an smcli file (no smcli metadata); expected a "
                f"{' or '.join(kinds)} file"
            )
        if meta.kind not in kinds:
            made_by = meta.producer.get("command")
            by = f" (made by smcli {made_by})" if made_by else ""
            raise InputError(f"{name}: expected a {' or '.join(kinds)} file, got {meta.kind}{by}")
        current = SCHEMAS[meta.kind][0]
        if meta.schema_version > current:
            raise InputError(
                f"{name}: {meta.kind} schema version {meta.schema_version} is newer than this "
                f"smcli ({__version__}) reads (<= {current}); upgrade smcli"
            )
        needed = list(required) if required is not None else list(SCHEMAS[meta.kind][1])
        missing = [c for c in needed if c not in stage.columns]
        if missing:
            raise InputError(f"{name}: missing column(s) {', '.join(missing)}")
    except InputError:
        stage.close()
        raise
    return stage


# ---------------------------------------------------------------------------------------
# Writing


@dataclass(frozen=True)
class OutputTarget:
    """Where a stage writes: a file path, or stdout (``path is None``)."""

    path: Path | None

    @property
    def name(self) -> str:
        return "<stdout>" if self.path is None else str(self.path)


def resolve_output(output: str | os.PathLike | None, *, what: str = "Parquet",
                   inputs: Iterable[str | os.PathLike | None] = ()) -> OutputTarget:
    """Decide where output goes, refusing a terminal and any of ``inputs``. Call before
    doing any work."""
    if output is not None and str(output) != "-":
        path = check_output_path(output)
        check_not_input(path, inputs)
        return OutputTarget(path)
    if sys.stdout.isatty():
        raise UsageError(
            f"refusing to write {what} to a terminal; use -o FILE or pipe the output "
            "(e.g. > out.parquet)"
        )
    return OutputTarget(None)


def check_output_path(output: str | os.PathLike, option: str = "-o") -> Path:
    """Check that a file can be created at ``output`` (before doing any work)."""
    path = Path(output)
    if path.is_dir():
        raise UsageError(f"{option} {output}: is a directory; give a file name")
    if not path.parent.exists():
        raise UsageError(f"{option} {output}: directory {path.parent} does not exist")
    return path


def check_not_input(output: str | os.PathLike | None, inputs: Iterable[str | os.PathLike | None],
                    option: str = "-o") -> None:
    """Refuse an output that is one of the inputs (the same file by any name: a link, a
    relative path), before any work: writing it would destroy the input."""
    if output is None or str(output) == "-" or not os.path.exists(output):
        return
    for given in inputs:
        if given is None or str(given) in ("", "-"):
            continue
        try:
            same = os.path.samefile(output, given)
        except OSError:  # an input that does not exist: its reader says so
            continue
        if same:
            raise UsageError(f"{option} {output}: is the input {given}; write the output to another file")


def check_second_output(path: str | os.PathLike, option: str, *, output: str | os.PathLike | None,
                        inputs: Iterable[str | os.PathLike | None]) -> Path:
    """Check a second file a command writes (``--errors``, ``--vocab-out``) before any work:
    it can be created, it is none of the inputs, and it is not the ``-o`` file."""
    p = check_output_path(path, option)
    check_not_input(p, inputs, option)
    if output is not None and str(output) != "-" and (
            os.path.abspath(p) == os.path.abspath(output) or _same_existing(p, output)):
        raise UsageError(f"{option} {path}: is also the -o file; write it to another file")
    return p


def _same_existing(a: str | os.PathLike, b: str | os.PathLike) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


class AtomicFile:
    """A binary file written under a temporary name and renamed into place on commit."""

    def __init__(self, path: Path):
        self.path = path
        try:
            fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        except OSError as exc:
            raise SmcliError(f"{path}: cannot write ({exc.strerror})") from None
        self.tmp_path = Path(tmp)
        try:
            # mkstemp creates the file 0600; give the result the mode a plain open() would.
            os.fchmod(fd, 0o666 & ~_umask())
            self.handle: IO[bytes] = os.fdopen(fd, "wb")
        except BaseException:  # Ctrl-C / SIGTERM here too: the temporary never stays
            os.close(fd)
            self.tmp_path.unlink(missing_ok=True)
            raise

    def commit(self) -> None:
        try:
            self.handle.flush()
            os.fsync(self.handle.fileno())
            self.handle.close()
            os.replace(self.tmp_path, self.path)
        except BaseException:  # a full disk fails the flush or close: the temporary goes too
            self.abort()
            raise

    def abort(self) -> None:
        """Delete the temporary, whatever closing it says (on a full disk close() raises)."""
        try:
            self.tmp_path.unlink(missing_ok=True)
        finally:
            if not self.handle.closed:
                try:
                    self.handle.close()
                except OSError:
                    pass

    def __enter__(self) -> AtomicFile:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        """Commit when the block succeeds, else abort (the temporary never stays)."""
        if exc_type is None:
            self.commit()
        else:
            self.abort()


class _StdoutSink:
    """stdout as the sink of a Parquet stream that can be cut off.

    A failed stream must not end with a valid footer (the reader would take the rows so far
    for the whole file): after :meth:`cut` nothing more reaches stdout, so the reader sees
    a truncated file and says so.
    """

    def __init__(self, raw: IO[bytes]):
        self._raw = raw
        self._cut = False
        self._pos = 0
        self.closed = False

    def write(self, data: bytes) -> int:
        if not self._cut:
            self._raw.write(data)
        self._pos += len(data)
        return len(data)

    def tell(self) -> int:
        return self._pos

    def flush(self) -> None:
        if not self._cut:
            self._raw.flush()

    def cut(self) -> None:
        self._cut = True

    def close(self) -> None:  # stdout itself stays open
        self.flush()
        self.closed = True

    def writable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return False


class StageWriter:
    """Streams record batches into one smcli Parquet file, atomically.

    Use as a context manager: the file appears under its final name only if the block
    finishes without an exception.
    """

    def __init__(
        self,
        target: OutputTarget,
        schema: pa.Schema,
        meta: StageMeta,
        *,
        row_group_size: int = 8192,
    ):
        self.target = target
        self.meta = meta
        self.schema = schema.with_metadata(meta.to_kv())
        self.row_group_size = row_group_size
        self.rows_written = 0
        self._pending: list[pa.RecordBatch] = []
        self._pending_rows = 0
        self._atomic: AtomicFile | None = None
        self._stdout: _StdoutSink | None = None
        if target.path is not None:
            self._atomic = AtomicFile(target.path)
            sink: Any = self._atomic.handle
        else:
            sink = self._stdout = _StdoutSink(sys.stdout.buffer)
        # Dictionary encoding and min/max statistics only for scalar columns: on float vector
        # columns (region grids, embeddings) they cost half the write time and grow the file.
        scalar = [f.name for f in self.schema if not pa.types.is_nested(f.type)]
        try:
            self._writer = pq.ParquetWriter(sink, self.schema, compression="zstd", use_dictionary=scalar,
                                            write_statistics=scalar)
        except BaseException:  # Ctrl-C / SIGTERM while starting: no temporary left behind
            if self._atomic is not None:
                self._atomic.abort()
            raise

    def add_metadata(self, kv: Mapping[bytes, bytes]) -> None:
        """Footer key-value entries known only at the end (a shard's counts). They are read
        from the file's metadata (``ParquetFile.metadata.metadata``), not its schema."""
        self._writer.add_key_value_metadata({k.decode(): v.decode() for k, v in kv.items()})

    @property
    def rows_pending(self) -> int:
        return self._pending_rows

    def write(self, data: pa.RecordBatch | pa.Table | Mapping[str, Any]) -> None:
        """Add rows: a record batch, a table or a mapping of column name to values."""
        if isinstance(data, Mapping):
            data = pa.Table.from_pydict(dict(data), schema=self.schema)
        if isinstance(data, pa.RecordBatch):
            data = pa.Table.from_batches([data])
        for batch in data.cast(self.schema).to_batches():
            if batch.num_rows:
                self._pending.append(batch)
                self._pending_rows += batch.num_rows
        if self._pending_rows >= self.row_group_size:
            self._flush()

    def _flush(self, final: bool = False) -> None:
        """Write the pending rows as full row groups; the rest waits (unless ``final``)."""
        if not self._pending:
            return
        table = pa.Table.from_batches(self._pending, schema=self.schema)
        n = table.num_rows if final else table.num_rows - table.num_rows % self.row_group_size
        if n == 0:
            return
        self._writer.write_table(table.slice(0, n), row_group_size=self.row_group_size)
        self.rows_written += n
        rest = table.slice(n)
        self._pending, self._pending_rows = rest.to_batches(), rest.num_rows

    def close(self) -> None:
        self._flush(final=True)
        self._writer.close()
        if self._atomic is not None:
            self._atomic.commit()
        else:
            sys.stdout.buffer.flush()

    def abort(self) -> None:
        if self._stdout is not None:
            self._stdout.cut()  # no footer: the reader must see a truncated stream
        try:
            self._writer.close()
        except Exception:  # noqa: BLE001 - the writer may already be broken; we discard it
            pass
        if self._atomic is not None:
            self._atomic.abort()

    def __enter__(self) -> StageWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()


def write_table(target: OutputTarget, table: pa.Table, meta: StageMeta) -> int:
    """Write a whole table as one smcli file; returns the row count."""
    with StageWriter(target, table.schema, meta) as writer:
        writer.write(table)
    return writer.rows_written
