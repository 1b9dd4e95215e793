"""The Parquet stage contract (smcli.stage) and the run report (smcli.report), in process."""

from __future__ import annotations

import io
import json
import os
import stat
import sys

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from smcli import __version__
from smcli.errors import InputError, SmcliError, UsageError
from smcli.report import RunReport
from smcli.stage import (
    META_KEY,
    SCHEMAS,
    AtomicFile,
    OutputTarget,
    StageWriter,
    check_output_path,
    new_meta,
    open_any,
    open_stage,
    resolve_output,
    write_table,
)

SCORES = pa.schema([
    ("image_id", pa.string()), ("caption_id", pa.string()), ("score", pa.float32()),
])


def scores_table(n: int, start: int = 0) -> pa.Table:
    return pa.table({
        "image_id": [f"img{i}" for i in range(start, start + n)],
        "caption_id": [f"img{i}#0" for i in range(start, start + n)],
        "score": [i / 10 for i in range(start, start + n)],
    }, schema=SCORES)


def write_scores(path, n=3, producer=None, blobs=None) -> None:
    meta = new_meta("scores", producer or {"command": "score", "model_hash": "abc"}, blobs)
    write_table(OutputTarget(path), scores_table(n), meta)


def write_with_header(path, header: dict | bytes, table: pa.Table | None = None) -> None:
    """A Parquet file whose smcli metadata is exactly ``header`` (to fake other producers)."""
    raw = header if isinstance(header, bytes) else json.dumps(header).encode()
    table = table if table is not None else scores_table(2)
    table = table.replace_schema_metadata({META_KEY: raw})
    pq.write_table(table, path)


def leftovers(directory) -> list[str]:
    return sorted(p.name for p in directory.iterdir())


# --- metadata ------------------------------------------------------------------------


def test_metadata_round_trip_and_readable_by_plain_pyarrow(tmp_path):
    path = tmp_path / "s.parquet"
    write_scores(path, producer={"command": "score", "model_hash": "abc", "grid": [7, 7]},
                 blobs={"vocab": b"<pad>\n<unk>\ndog\n"})
    # Any Parquet reader sees the data and a JSON header under the "smcli" key.
    table = pq.read_table(path)
    assert table.num_rows == 3 and table.column("caption_id").to_pylist()[0] == "img0#0"
    header = json.loads(table.schema.metadata[b"smcli"])
    assert header == {"schema": "scores", "schema_version": SCHEMAS["scores"][0],
                      "smcli_version": __version__,
                      "producer": {"command": "score", "model_hash": "abc", "grid": [7, 7]}}
    assert table.schema.metadata[b"smcli.vocab"] == b"<pad>\n<unk>\ndog\n"

    stage = open_stage(path, "scores")
    try:
        assert stage.meta.kind == "scores"
        assert stage.meta.smcli_version == __version__
        assert stage.meta.producer["grid"] == [7, 7]
        assert stage.meta.blobs == {"vocab": b"<pad>\n<unk>\ndog\n"}
        assert stage.num_rows == 3
        assert stage.read(["score"]).column("score").to_pylist() == pytest.approx([0.0, 0.1, 0.2])
    finally:
        stage.close()


def test_open_stage_accepts_one_of_several_kinds_and_a_subset_of_columns(tmp_path):
    path = tmp_path / "s.parquet"
    write_scores(path)
    open_stage(path, ("captions", "scores")).close()
    # A stage that needs fewer columns names them; a file of the kind lacking others passes.
    partial = tmp_path / "partial.parquet"
    write_with_header(partial, {"schema": "captions", "schema_version": 1, "smcli_version": "0",
                                "producer": {}},
                      pa.table({"caption_id": ["a#0"], "caption": ["a dog"]}))
    open_stage(partial, "captions", required=["caption"]).close()
    with pytest.raises(InputError, match="missing column"):
        open_stage(partial, "captions")


# --- reading: every way a file can be wrong fails in one line naming the file --------


def _one_line(exc: pytest.ExceptionInfo, *fragments: str) -> None:
    text = str(exc.value)
    assert "\n" not in text, text
    for fragment in fragments:
        assert fragment in text, text


def test_open_missing_file(tmp_path):
    with pytest.raises(InputError) as exc:
        open_stage(tmp_path / "nope.parquet", "captions")
    _one_line(exc, "nope.parquet", "no such file")


def test_open_directory(tmp_path):
    with pytest.raises(InputError) as exc:
        open_stage(tmp_path, "captions")
    _one_line(exc, str(tmp_path), "directory")


def test_open_empty_and_non_parquet_files(tmp_path):
    empty = tmp_path / "empty.parquet"
    empty.write_bytes(b"")
    with pytest.raises(InputError) as exc:
        open_stage(empty, "captions")
    _one_line(exc, "empty.parquet", "empty")
    text = tmp_path / "caps.txt"
    text.write_text("img.jpg#0\tA dog .\n")
    with pytest.raises(InputError) as exc:
        open_stage(text, "captions")
    _one_line(exc, "caps.txt", "not a Parquet file")


def test_open_truncated_parquet(tmp_path):
    good = tmp_path / "good.parquet"
    write_scores(good, n=500)
    cut = tmp_path / "cut.parquet"
    data = good.read_bytes()
    cut.write_bytes(data[: len(data) // 2])  # an interrupted copy: magic at the start only
    with pytest.raises(InputError) as exc:
        open_stage(cut, "scores")
    _one_line(exc, "cut.parquet", "truncated")


def test_open_parquet_not_written_by_smcli(tmp_path):
    path = tmp_path / "plain.parquet"
    pq.write_table(pa.table({"caption": ["a dog"]}), path)
    with pytest.raises(InputError) as exc:
        open_stage(path, "captions")
    _one_line(exc, "plain.parquet", "not an smcli file", "captions")
    assert open_any(path).meta.kind == "?"  # inspect can still open it


def test_open_wrong_kind_names_both_kinds_and_the_producer(tmp_path):
    path = tmp_path / "s.parquet"
    write_scores(path)
    with pytest.raises(InputError) as exc:
        open_stage(path, "captions")
    _one_line(exc, "s.parquet", "expected a captions file, got scores", "smcli score")


def test_open_newer_schema_version(tmp_path):
    path = tmp_path / "future.parquet"
    write_with_header(path, {"schema": "scores", "schema_version": SCHEMAS["scores"][0] + 1,
                             "smcli_version": "99.0", "producer": {}})
    with pytest.raises(InputError) as exc:
        open_stage(path, "scores")
    _one_line(exc, "future.parquet", "newer", "upgrade")


def test_open_missing_required_columns_names_them(tmp_path):
    path = tmp_path / "thin.parquet"
    write_with_header(path, {"schema": "scores", "schema_version": 1, "smcli_version": "0",
                             "producer": {}}, pa.table({"image_id": ["a"]}))
    with pytest.raises(InputError) as exc:
        open_stage(path, "scores")
    _one_line(exc, "thin.parquet", "caption_id", "score")


@pytest.mark.parametrize("raw", [b"{not json", b"[1, 2]", b'{"schema": "scores", "producer": 3}',
                                 b'{"schema": "scores", "schema_version": "one"}'])
def test_open_corrupt_smcli_metadata(tmp_path, raw):
    path = tmp_path / "bad.parquet"
    write_with_header(path, raw)
    for opener in (open_any, lambda p: open_stage(p, "scores")):
        with pytest.raises(InputError) as exc:
            opener(path)
        _one_line(exc, "bad.parquet", "metadata")


def test_open_from_stdin(tmp_path, monkeypatch):
    path = tmp_path / "s.parquet"
    write_scores(path, n=4)
    fake_stdin = io.TextIOWrapper(io.BytesIO(path.read_bytes()))
    monkeypatch.setattr(sys, "stdin", fake_stdin)
    stage = open_stage("-", "scores")
    try:
        assert stage.name == "<stdin>"
        assert stage.read().equals(pq.read_table(path))
    finally:
        stage.close()


def test_stdin_errors_name_stdin(monkeypatch):
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(b"")))
    with pytest.raises(InputError, match="<stdin>: empty input"):
        open_stage("-", "scores")
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(b"image,caption\n")))
    with pytest.raises(InputError, match="<stdin>: not a Parquet file"):
        open_stage("-", "scores")


# --- output targets ------------------------------------------------------------------


class _FakeStdout(io.TextIOWrapper):
    def __init__(self, tty: bool):
        super().__init__(io.BytesIO())
        self._tty = tty

    def isatty(self) -> bool:
        return self._tty


@pytest.mark.parametrize("output", [None, "-"])
def test_resolve_output_refuses_a_terminal(monkeypatch, output):
    monkeypatch.setattr(sys, "stdout", _FakeStdout(tty=True))
    with pytest.raises(UsageError) as exc:
        resolve_output(output)
    _one_line(exc, "terminal", "-o")


@pytest.mark.parametrize("output", [None, "-"])
def test_resolve_output_streams_to_a_pipe(monkeypatch, output):
    monkeypatch.setattr(sys, "stdout", _FakeStdout(tty=False))
    assert resolve_output(output) == OutputTarget(None)


def test_resolve_output_file_even_on_a_terminal(tmp_path, monkeypatch):
    monkeypatch.setattr(sys, "stdout", _FakeStdout(tty=True))
    assert resolve_output(tmp_path / "x.parquet").path == tmp_path / "x.parquet"


def test_output_path_checks(tmp_path):
    with pytest.raises(UsageError, match="is a directory"):
        resolve_output(tmp_path)
    with pytest.raises(UsageError, match="does not exist"):
        resolve_output(tmp_path / "no" / "x.parquet")
    with pytest.raises(UsageError, match="^--vocab-out .*does not exist"):
        check_output_path(tmp_path / "no" / "v.txt", "--vocab-out")


def test_write_to_stdout_gives_parquet_bytes(monkeypatch):
    fake = _FakeStdout(tty=False)
    monkeypatch.setattr(sys, "stdout", fake)
    meta = new_meta("scores", {"command": "score"})
    assert write_table(OutputTarget(None), scores_table(5), meta) == 5
    table = pq.read_table(pa.BufferReader(fake.buffer.getvalue()))
    assert table.num_rows == 5
    assert json.loads(table.schema.metadata[b"smcli"])["schema"] == "scores"


# --- atomic, streamed writing --------------------------------------------------------


def test_writer_streams_row_groups_to_a_temporary_file(tmp_path):
    path = tmp_path / "big.parquet"
    meta = new_meta("scores", {"command": "score"})
    with StageWriter(OutputTarget(path), SCORES, meta, row_group_size=100) as writer:
        for start in range(0, 1000, 37):
            writer.write(scores_table(min(37, 1000 - start), start))
            # Rows beyond one row group never wait in memory: they are on disk already.
            assert writer._pending_rows < 100 + 37
        # Before the end: nothing under the final name, a non-empty temporary beside it.
        assert not path.exists()
        (tmp,) = [p for p in tmp_path.iterdir()]
        assert tmp.name.startswith(".big.parquet.") and tmp.stat().st_size > 1000
        assert writer.rows_written >= 900
    assert writer.rows_written == 1000
    assert leftovers(tmp_path) == ["big.parquet"]
    pf = pq.ParquetFile(path)
    assert pf.metadata.num_rows == 1000
    assert pf.metadata.num_row_groups == 10
    assert all(pf.metadata.row_group(i).num_rows == 100 for i in range(10))
    assert pf.read().column("image_id").to_pylist() == [f"img{i}" for i in range(1000)]


def test_writer_accepts_batches_and_mappings(tmp_path):
    path = tmp_path / "s.parquet"
    with StageWriter(OutputTarget(path), SCORES, new_meta("scores", {})) as writer:
        writer.write(scores_table(2).to_batches()[0])
        writer.write({"image_id": ["x"], "caption_id": ["x#0"], "score": [1.5]})
    assert pq.read_table(path).column("image_id").to_pylist() == ["img0", "img1", "x"]


def test_failed_write_leaves_no_file_and_no_temporary(tmp_path):
    path = tmp_path / "out.parquet"
    with pytest.raises(RuntimeError, match="boom"):
        with StageWriter(OutputTarget(path), SCORES, new_meta("scores", {}),
                         row_group_size=10) as writer:
            writer.write(scores_table(55))  # several row groups already on disk
            raise RuntimeError("boom")
    assert leftovers(tmp_path) == []


def test_failed_write_keeps_the_previous_file(tmp_path):
    path = tmp_path / "out.parquet"
    write_scores(path, n=3)
    before = path.read_bytes()
    with pytest.raises(KeyboardInterrupt):
        with StageWriter(OutputTarget(path), SCORES, new_meta("scores", {})) as writer:
            writer.write(scores_table(100))
            raise KeyboardInterrupt
    assert path.read_bytes() == before
    assert leftovers(tmp_path) == ["out.parquet"]
    # A successful run replaces it.
    write_scores(path, n=7)
    assert pq.read_table(path).num_rows == 7 and leftovers(tmp_path) == ["out.parquet"]


def test_bad_rows_abort_the_write(tmp_path):
    path = tmp_path / "out.parquet"
    with pytest.raises((pa.ArrowInvalid, pa.ArrowTypeError, TypeError)):
        with StageWriter(OutputTarget(path), SCORES, new_meta("scores", {})) as writer:
            writer.write({"image_id": ["a"], "caption_id": ["a#0"], "score": ["not a number"]})
    assert leftovers(tmp_path) == []


@pytest.mark.parametrize("umask,mode", [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_written_files_get_the_umask_mode_not_the_temporary_mode(tmp_path, umask, mode):
    old = os.umask(umask)
    try:
        write_scores(tmp_path / "s.parquet")
        out = AtomicFile(tmp_path / "v.txt")
        out.handle.write(b"x\n")
        out.commit()
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "s.parquet").stat().st_mode) == mode
    assert stat.S_IMODE((tmp_path / "v.txt").stat().st_mode) == mode


def test_atomic_file_abort_and_unwritable_place(tmp_path):
    out = AtomicFile(tmp_path / "v.txt")
    out.handle.write(b"partial")
    out.abort()
    assert leftovers(tmp_path) == []
    not_a_dir = tmp_path / "file"
    not_a_dir.write_text("")
    with pytest.raises(SmcliError) as exc:
        AtomicFile(not_a_dir / "v.txt")
    _one_line(exc, "v.txt", "cannot write")


# --- run report ----------------------------------------------------------------------


def test_report_counts_line_and_shown_rejects(capsys):
    report = RunReport("tokenize", show=2)
    for i in range(4):
        report.reject("caps.txt", f"line {i + 1}", "empty caption")
    report.finish(read=1234, written=1230, rejected=4)
    lines = capsys.readouterr().err.splitlines()
    assert lines[:2] == ["smcli tokenize: rejected caps.txt:line 1: empty caption",
                         "smcli tokenize: rejected caps.txt:line 2: empty caption"]
    assert "more rejected rows not shown" in lines[2]
    assert lines[-1] == "smcli tokenize: read 1,234, written 1,230, rejected 4"
    assert len(lines) == 4
    assert len(report.rejects) == 4


def test_report_strict_makes_the_first_reject_fatal():
    report = RunReport("tokenize", strict=True)
    with pytest.raises(InputError, match=r"caps.txt:line 3: empty caption \(--strict\)"):
        report.reject("caps.txt", "line 3", "empty caption")


@pytest.mark.parametrize("name", ["errors.csv", "errors.parquet"])
def test_report_writes_every_reject(tmp_path, capsys, name):
    report = RunReport("tokenize", errors_path=tmp_path / name, show=1)
    for i in range(30):
        report.reject("caps.txt", f"line {i + 1}", "empty caption")
    report.finish(read=30, written=0, rejected=30)
    if name.endswith(".csv"):
        lines = (tmp_path / name).read_text().splitlines()
        assert lines[0] == "source,location,reason" and len(lines) == 31
        assert lines[30] == "caps.txt,line 30,empty caption"
    else:
        stage = open_stage(tmp_path / name, "errors")
        assert stage.read().column("location").to_pylist()[-1] == "line 30"
        assert stage.num_rows == 30
        stage.close()
    assert f"all in {tmp_path / name}" in capsys.readouterr().err


def test_a_failed_stream_is_not_a_valid_file(monkeypatch):
    """Streaming to stdout cannot rename; a failed stream must not end with a footer."""
    fake = _FakeStdout(tty=False)
    monkeypatch.setattr(sys, "stdout", fake)
    with pytest.raises(RuntimeError, match="boom"):
        with StageWriter(OutputTarget(None), SCORES, new_meta("scores", {}),
                         row_group_size=10) as writer:
            writer.write(scores_table(25))  # two row groups already on stdout
            raise RuntimeError("boom")
    data = fake.buffer.getvalue()
    assert data.startswith(b"PAR1") and len(data) > 100
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(data)))
    with pytest.raises(InputError, match="<stdin>: unreadable Parquet .*truncated"):
        open_stage("-", "scores")
