"""The resume journal of extract-regions: finished rows kept beside a file output.

Next to ``OUT`` a folder ``.OUT.resume/`` holds Arrow IPC stream segments of the finished
rows, flushed after every batch, so they survive ``kill -9``. ``--resume`` reads them back
(a segment cut mid-batch is read up to its last whole batch); the folder is removed when
the output is complete. A lock file keeps two runs from writing one journal.
"""

from __future__ import annotations

import fcntl
import glob
import json
import shutil
from pathlib import Path
from typing import Any

import pyarrow as pa

from smcli.errors import UsageError


class Journal:
    """Finished rows of a file output, kept beside it until the output is complete."""

    def __init__(self, out: Path):
        self.out = out
        self.dir = out.parent / f".{out.name}.resume"
        self._lock_fh = None
        self._sink = None
        self._writer = None
        self._segment: Path | None = None
        self.appended = 0  # rows written to the journal by this run
        self.locked = False  # this run holds the journal's lock (and so owns its temporaries)

    def lock(self) -> None:
        """Create the journal's folder if need be and take its lock. Interrupted on the way
        (a signal at start-up), a folder this call created is removed again: the caller,
        which never saw the lock taken, could not tell it from another run's."""
        created = not self.dir.is_dir()
        try:
            self.dir.mkdir(exist_ok=True)
            self._lock_fh = open(self.dir / "lock", "a+")
            try:
                # A POSIX record lock: held by this process only (not by the forked decoding
                # workers, which may outlive a killed run by a few seconds), freed when it dies.
                fcntl.lockf(self._lock_fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                self._lock_fh.close()
                self._lock_fh = None
                raise UsageError(f"{self.out}: another run is writing it") from None
            self.locked = True
        except BaseException as exc:
            if created and not isinstance(exc, UsageError) and not self.locked:
                if self._lock_fh is not None:
                    self._lock_fh.close()
                    self._lock_fh = None
                shutil.rmtree(self.dir, ignore_errors=True)
            raise

    def segments(self) -> list[Path]:
        return sorted(self.dir.glob("seg-*.arrows"))

    def exists(self) -> bool:
        return self.dir.is_dir() and bool(self.segments())

    def read(self, producer_meta: dict[str, Any]):
        """Yield the journal's record batches (checking they were made the same way)."""
        for seg in self.segments():
            try:
                reader = pa.ipc.open_stream(pa.OSFile(str(seg), "r"))
            except (pa.ArrowInvalid, OSError):
                continue  # killed before the schema was written
            meta = json.loads((reader.schema.metadata or {}).get(b"smcli.producer", b"{}"))
            if meta != producer_meta:
                keys = set(meta) | set(producer_meta)
                diff = sorted(k for k in keys if meta.get(k) != producer_meta.get(k))
                raise UsageError(
                    f"--resume: the interrupted run of {self.out} used other settings "
                    f"({', '.join(f'{k}={meta.get(k)!r}' for k in diff[:3])}); "
                    "rerun without --resume to start over"
                )
            while True:
                try:
                    batch = reader.read_next_batch()
                except StopIteration:
                    break
                except (pa.ArrowInvalid, OSError):
                    break  # the batch being written when the run was killed
                yield batch

    def start_segment(self, schema: pa.Schema, producer_meta: dict[str, Any]) -> None:
        n = len(self.segments())
        path = self.dir / f"seg-{n:05d}.arrows"
        self._segment = path
        schema = schema.with_metadata({b"smcli.producer": json.dumps(producer_meta, sort_keys=True).encode()})
        self._sink = pa.OSFile(str(path), "w")
        options = pa.ipc.IpcWriteOptions(compression="lz4")
        self._writer = pa.ipc.new_stream(self._sink, schema, options=options)

    def append(self, batch: pa.RecordBatch) -> None:
        self._writer.write_batch(batch)
        self._sink.flush()
        self.appended += batch.num_rows

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None
        if self._sink is not None:
            self._sink.close()
            self._sink = None

    def discard(self) -> None:
        self.close()
        for seg in self.segments():
            seg.unlink()

    def remove(self) -> None:
        self.close()
        shutil.rmtree(self.dir, ignore_errors=True)
        if self._lock_fh is not None:
            self._lock_fh.close()
            self._lock_fh = None
        self.locked = False

    def release(self) -> None:
        """Stop writing, keep the finished rows for --resume (nothing kept if there are none)."""
        self.close()
        if self._lock_fh is not None:
            if self.appended == 0 and self._segment is not None:
                self._segment.unlink(missing_ok=True)  # ours, and empty
            if not self.segments():
                shutil.rmtree(self.dir, ignore_errors=True)
            self._lock_fh.close()
            self._lock_fh = None
        self.locked = False

    def remove_stale_temporaries(self) -> None:
        """Temporary outputs of killed runs (we hold the lock, so no live run owns them)."""
        for tmp in glob.glob(str(self.out.parent / f".{glob.escape(self.out.name)}.*.tmp")):
            Path(tmp).unlink(missing_ok=True)


# ---------------------------------------------------------------------------------------
# Progress
