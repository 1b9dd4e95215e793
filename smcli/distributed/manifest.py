"""Finalizing a directory of parts: the checks, the sweep and ``_manifest.json``.

Only a directory with a manifest is read by other stages (:func:`smcli.stage.open_parts`),
so finalize is where a sharded run becomes one file: all N parts present, one input list
(fingerprint) and one producer, the key column (image_id for features, input_row for
scores and pairs) unique across parts; then the temporaries and resume journals that killed
shards left are swept, and the manifest is written atomically. It holds nothing that
depends on the time, so finalizing the same parts twice writes the same bytes.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from smcli.distributed.shards import INPUTS_NAME, ShardSpec, format_counts, part_spec, read_record
from smcli.errors import InputError
from smcli.report import say
from smcli.stage import MANIFEST_NAME, SCHEMAS, AtomicFile, open_any

MANIFEST_FORMAT = "smcli-parts"
MANIFEST_VERSION = 1
KEYS = {"regions": "image_id", "scores": "input_row", "pairs": "input_row"}  # unique across parts
COUNT_ORDER = ("listed", "duplicates", "rejected at listing", "read", "processed", "written", "failed",
               "rejected", "unknown image")


@dataclass
class Manifest:
    directory: Path
    data: dict[str, Any]

    @property
    def counts(self) -> dict[str, int]:
        return self.data["counts"]


def _parts(d: Path) -> dict[int, ShardSpec]:
    specs = [s for s in (part_spec(p.name) for p in d.iterdir()) if s is not None]
    if not specs:
        raise InputError(f"{d}: no part-*-of-*.parquet files to finalize")
    counts = sorted({s.count for s in specs})
    if len(counts) > 1:
        raise InputError(f"{d}: parts of different shard counts ({', '.join(map(str, counts))}); one run per "
                         "directory")
    return {s.index: s for s in specs}


def _check_unique(d: Path, key: str, files: list[Path]) -> None:
    """The key column has no value twice across parts (held as one Arrow column: ~40 bytes
    a row for image_ids)."""
    columns = []
    for f in files:
        stage = open_any(f)
        try:
            columns.extend(stage.read([key]).column(0).chunks)
        finally:
            stage.close()
    values = pa.chunked_array(columns, type=columns[0].type if columns else pa.string())
    if len(pc.unique(values)) == len(values):
        return
    counts = pc.value_counts(values)
    dup = counts.filter(pc.greater(counts.field("counts"), 1))[0]["values"].as_py()
    where = []
    for f in files:
        stage = open_any(f)
        if pc.any(pc.equal(stage.read([key]).column(0), dup)).as_py():
            where.append(f.name)
        stage.close()
    raise InputError(f"{d}: {key} {dup!r} is in more than one row ({', '.join(where)}); the parts do not come "
                     "from one deduplicated input list")


def _locked(journal: Path) -> bool:
    """A live run holds the lock file of this resume journal."""
    lock = journal / "lock"
    if not lock.is_file():
        return False
    with open(lock, "a+") as fh:
        try:
            fcntl.lockf(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            return True
        fcntl.lockf(fh.fileno(), fcntl.LOCK_UN)
    return False


def sweep(d: Path, command: str = "finalize") -> int:
    """Remove the temporaries and resume journals of killed shards (not those of a run that
    is still going: its journal is locked). Returns how many were removed."""
    live = set()
    removed = 0
    for journal in sorted(d.glob(".*.resume")):
        stem = journal.name[1:-len(".resume")].split(".")[0]  # part-00001-of-00004
        if _locked(journal):
            live.add(stem)
            say(command, f"warning: a run of {stem} is still going; its files are left alone")
            continue
        shutil.rmtree(journal, ignore_errors=True)
        removed += 1
    for tmp in sorted(d.glob(".*.tmp")):
        if tmp.name[1:].split(".")[0] in live:
            continue
        tmp.unlink(missing_ok=True)
        removed += 1
    return removed


def finalize(directory: str | Path, *, command: str = "finalize") -> Manifest:
    """Check the parts of ``directory``, sweep, and write ``_manifest.json`` (atomically)."""
    d = Path(directory)
    if not d.is_dir():
        raise InputError(f"{d}: no such directory")
    specs = _parts(d)
    count = next(iter(specs.values())).count
    missing = [ShardSpec(i, count) for i in range(count) if i not in specs]
    parts, kinds, producers, fingerprints = [], set(), set(), set()
    totals: dict[str, int] = {}
    for i in range(count):
        spec = ShardSpec(i, count)
        path = d / spec.part_name
        if i in specs and not (d / spec.errors_name).is_file():
            missing.append(spec)  # an error report is committed before its part: this one was removed
            continue
        if i not in specs:
            continue
        record = read_record(path)
        if record is None or (record.get("index"), record.get("count")) != (i, count):
            raise InputError(f"{path}: not a committed shard part (no shard record of {spec}); delete it and "
                             "rerun that shard")
        stage = open_any(path)
        try:
            kinds.add(stage.meta.kind)
            producers.add(json.dumps(stage.meta.producer, sort_keys=True))
            rows = stage.num_rows
        finally:
            stage.close()
        fingerprints.add(record["list_fingerprint"])
        for k, v in record["counts"].items():
            totals[k] = totals.get(k, 0) + int(v)
        parts.append({"file": spec.part_name, "errors": spec.errors_name, "rows": rows,
                      "bytes": path.stat().st_size, "list_rows": record["rows"], "counts": record["counts"]})
    if missing:
        names = ", ".join(s.part_name for s in sorted(missing, key=lambda s: s.index)[:4])
        more = f" and {len(missing) - 4} more" if len(missing) > 4 else ""
        raise InputError(f"{d}: {len(missing)} of {count} part(s) missing ({names}{more}); run those shards "
                         "(rerun the same command) and finalize again")
    if len(kinds) > 1 or len(producers) > 1:
        what = f"kinds {', '.join(sorted(kinds))}" if len(kinds) > 1 else "settings (producer metadata)"
        raise InputError(f"{d}: parts made with different {what}; one run per directory")
    if len(fingerprints) > 1:
        raise InputError(f"{d}: parts made from {len(fingerprints)} different input lists; one input list per "
                         "directory (rerun the odd shards, or write to a new directory)")
    (kind,) = kinds
    files = [d / p["file"] for p in parts]
    key = KEYS.get(kind)
    if key is not None:
        _check_unique(d, key, files)
    listing = _listing_counts(d)
    counts = {**listing, **totals}
    counts = {k: counts[k] for k in sorted(counts, key=lambda k: (COUNT_ORDER + (k,)).index(k))}
    producer = json.loads(next(iter(producers)))
    data = {
        "format": MANIFEST_FORMAT,
        "version": MANIFEST_VERSION,
        "kind": kind,
        "schema_version": SCHEMAS.get(kind, (0,))[0],
        "producer": producer,
        "list_fingerprint": next(iter(fingerprints)),
        "shards": count,
        "rows": sum(p["rows"] for p in parts),
        "key": key,
        "counts": counts,
        "parts": parts,
    }
    data["fingerprint"] = "sha256:" + hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()
    swept = sweep(d, command)
    with AtomicFile(d / MANIFEST_NAME) as out:
        out.handle.write((json.dumps(data, indent=1) + "\n").encode())  # built in a fixed order
    note = f"; swept {swept} leftover(s) of killed shards" if swept else ""
    say(command, f"{d}: {count} part(s), {data['rows']:,} {kind} rows, one input list{note}")
    return Manifest(d, data)


def _listing_counts(d: Path) -> dict[str, int]:
    """What listing the inputs found (in the frozen list's metadata), when there is one."""
    path = d / INPUTS_NAME
    if not path.is_file():
        return {}
    stage = open_any(path)
    try:
        p = stage.meta.producer
    finally:
        stage.close()
    out = {"listed": int(p.get("listed", stage.num_rows)), "duplicates": int(p.get("duplicates", 0))}
    if p.get("rejected"):
        out["rejected at listing"] = int(p["rejected"])
    return out


def summary_line(manifest: Manifest) -> str:
    """``N parts in DIR: listed .., written .., failed ..`` (every part's counts added up)."""
    return f"{manifest.data['shards']} part(s) in {manifest.directory}: {format_counts(manifest.counts)}"
