"""The command line: start-up imports, the stage contract end to end, error contract.

Process-level behaviour (pipes, a terminal, imports, exit statuses) runs the real CLI in a
subprocess (``run_smcli``); the many error paths run the same entry point in process
(``run_main``), which is much faster.
"""

from __future__ import annotations

import random
import re
import subprocess
import sys

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import (
    DATA,
    EXAMPLES,
    HEAVY_MODULES,
    assert_one_line_error,
    child_env,
    imported_modules,
    run_main,
    run_smcli,
)

from smcli import __version__

FLICKR = DATA / "flickr_tokens.txt"
SPLITS = DATA / "splits.csv"
COUNTS = re.compile(r"^smcli tokenize: read [\d,]+, written [\d,]+, rejected [\d,]+$")
COMMANDS = ("extract-regions", "read-text", "tokenize", "train", "score", "retrieve", "caption-rank", "inspect",
            "serve")


def parquet(data: bytes) -> pa.Table:
    return pq.read_table(pa.BufferReader(data))


def listing(directory) -> list[str]:
    return sorted(p.name for p in directory.iterdir())


# --- start-up ------------------------------------------------------------------------


def test_version():
    rc, out, err = run_smcli("--version")
    assert (rc, out.decode().strip(), err) == (0, f"smcli {__version__}", "")


def test_help_lists_every_command():
    rc, out, err = run_smcli("--help")
    assert rc == 0 and err == ""
    text = out.decode()
    for command in COMMANDS:
        assert re.search(rf"^\W*{re.escape(command)}\s", text, re.MULTILINE), command


@pytest.mark.parametrize("args", [
    ("--help",),
    ("tokenize", "--help"),
    ("serve", "--help"),
    ("tokenize", str(FLICKR), "--splits", str(SPLITS), "-o", "{tmp}/c.parquet"),
    ("inspect", str(EXAMPLES / "captions.txt")),  # fails (not Parquet); must still be light
])
def test_light_commands_do_not_import_torch(tmp_path, args):
    """`smcli --help` and `smcli tokenize` must start without torch and friends.

    As commands are added, keep their heavy imports inside the command functions.
    """
    args = [a.replace("{tmp}", str(tmp_path)) for a in args]
    rc, _, err = run_smcli(*args, python_flags=("-X", "importtime"))
    modules = imported_modules(err)
    assert "smcli.cli" in modules and "smcli.cli.app" in modules  # the probe works
    heavy = sorted(m for m in modules if m.split(".")[0] in HEAVY_MODULES)
    assert heavy == [], f"smcli {' '.join(args[:1])} imported {heavy[:5]}"
    rest = "\n".join(ln for ln in err.splitlines() if not ln.startswith("import time:"))
    if args[0] == "inspect":
        assert_one_line_error(rc, rest, "not a Parquet file")
    else:
        assert rc == 0, rest
    if args[0] == "tokenize" and "--help" not in args:
        assert pq.read_table(tmp_path / "c.parquet").num_rows == 9


# --- the stage contract through a process --------------------------------------------


def test_tokenize_streams_to_a_pipe_and_reads_stdin(tmp_path):
    rc, out, err = run_smcli("tokenize", FLICKR, "--splits", SPLITS)  # stdout is a pipe
    assert rc == 0, err
    piped = parquet(out)
    assert piped.num_rows == 9
    assert COUNTS.match(err.splitlines()[-1])
    assert err.splitlines()[-1] == "smcli tokenize: read 9, written 9, rejected 0"
    # The same through a file, and from stdin ('-') with an explicit '-o -'.
    rc, _, _ = run_smcli("tokenize", FLICKR, "--splits", SPLITS, "-o", tmp_path / "f.parquet")
    assert rc == 0
    from_file = pq.read_table(tmp_path / "f.parquet")
    rc, out, err = run_smcli("tokenize", "-", "--splits", SPLITS, "-o", "-",
                             input=FLICKR.read_bytes())
    assert rc == 0, err
    from_stdin = parquet(out)
    assert from_file.to_pylist() == piped.to_pylist() == from_stdin.to_pylist()
    file_meta, stdin_meta = from_file.schema.metadata, from_stdin.schema.metadata
    assert b'"input": "<stdin>"' in stdin_meta[b"smcli"]
    assert file_meta[b"smcli.vocab"] == stdin_meta[b"smcli.vocab"]


def test_a_pipeline_of_stages(tmp_path):
    """tokenize | tokenize - | inspect - : stages chain through stdin and stdout."""
    _, first, _ = run_smcli("tokenize", FLICKR, "--splits", SPLITS)
    rc, second, err = run_smcli("tokenize", "-", input=first)
    assert rc == 0, err
    assert parquet(second).column("split").to_pylist() == parquet(first).column("split").to_pylist()
    rc, out, err = run_smcli("inspect", "-", "--json", input=second)
    assert rc == 0, err
    import json

    info = json.loads(out)
    assert info["file"] == "<stdin>" and info["kind"] == "captions" and info["rows"] == 9
    assert info["producer"]["format"] == "parquet" and info["producer"]["vocab_from"] == "train"


@pytest.mark.parametrize("output", [(), ("-o", "-")])
def test_parquet_is_never_written_to_a_terminal(tmp_path, output):
    rc, out, err = run_smcli("tokenize", FLICKR, *output, stdout_tty=True, cwd=tmp_path)
    line = assert_one_line_error(rc, err, "refusing to write Parquet to a terminal", "-o", "pipe")
    assert rc == 2 and line.startswith("smcli: error:")
    assert out == b""
    assert listing(tmp_path) == []


def test_a_terminal_gets_files_and_readable_tables(tmp_path):
    rc, out, err = run_smcli("tokenize", FLICKR, "-o", "c.parquet", stdout_tty=True,
                             cwd=tmp_path)
    assert rc == 0 and out == b"" and COUNTS.match(err.splitlines()[-1])
    rc, out, err = run_smcli("inspect", "c.parquet", stdout_tty=True, cwd=tmp_path)
    assert rc == 0, err
    text = out.decode()
    assert "PAR1" not in text
    for fragment in ("kind", "captions", "rows", "9", "vocab_hash", "token_ids"):
        assert fragment in text, text


def _closed_reader(args, read_first: int = 0) -> tuple[int, str]:
    """Run smcli with a stdout pipe that its reader closes (like `| head -c N`)."""
    proc = subprocess.Popen([sys.executable, "-m", "smcli", *map(str, args)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            stdin=subprocess.DEVNULL, env=child_env(None))
    if read_first:
        proc.stdout.read(read_first)
    proc.stdout.close()
    err = proc.stderr.read().decode()
    return proc.wait(timeout=60), err


@pytest.mark.parametrize("args", [
    ("--help",),
    ("tokenize", FLICKR),
    ("inspect", EXAMPLES / "captions.txt"),  # an error after the pipe closed: still one line
])
def test_closed_pipe_exits_quietly(args):
    rc, err = _closed_reader(args)
    assert "Traceback" not in err and "Exception ignored" not in err, err
    assert "BrokenPipe" not in err and "Errno 32" not in err, err
    if args[0] == "inspect":
        assert_one_line_error(rc, err, "not a Parquet file")


def test_head_of_a_large_output(tmp_path):
    """`smcli tokenize big.txt | head -c 100`: the reader goes away mid-stream."""
    rng = random.Random(0)
    words = [f"w{i}" for i in range(5000)]
    big = tmp_path / "big.txt"
    big.write_text("".join(f"{' '.join(rng.choices(words, k=12))}\n" for _ in range(15000)))
    rc, err = _closed_reader(("tokenize", big), read_first=100)
    assert rc != 0  # it did not finish
    assert "Traceback" not in err and "Exception ignored" not in err, err
    assert all(line.startswith("smcli tokenize:") for line in err.splitlines()), err


def test_errors_through_a_process_are_one_line(tmp_path):
    rc, out, err = run_smcli("tokenize", "nope.txt", "-o", "out.parquet", cwd=tmp_path)
    assert_one_line_error(rc, err, "nope.txt: no such file")
    assert rc == 1 and out == b"" and listing(tmp_path) == []
    rc, out, err = run_smcli("tokenize", cwd=tmp_path)
    assert_one_line_error(rc, err, "Missing argument", "smcli tokenize --help")
    assert rc == 2


# --- every bad input: one line, non-zero, no file under the -o name ------------------


def _write(tmp_path, name: str, data: bytes) -> str:
    (tmp_path / name).write_bytes(data)
    return name


BAD_INPUTS = {
    # id: (files to create, arguments after "tokenize", exit status, fragments of the line)
    "missing file": ({}, ["nope.txt"], 1, ["nope.txt: no such file"]),
    "directory": ({"d/x": b""}, ["d"], 1, ["d: is a directory"]),
    "unknown format": ({"c.txt": b"a.jpg#0\ta dog\n"}, ["c.txt", "--format", "xml"], 2,
                       ["--format xml: unknown format", "karpathy"]),
    "unrecognised json": ({"c.json": b'{"x": 1}'}, ["c.json"], 1,
                          ["c.json: JSON that is neither COCO captions nor Karpathy"]),
    "invalid utf-8": ({"c.txt": b"a.jpg#0\ta dog\na.jpg#1\ta \xff cat\n"}, ["c.txt"], 1,
                      ["c.txt: line 2: invalid UTF-8"]),
    "csv without caption column": ({"c.csv": b"img,desc\na.jpg,a dog\n"}, ["c.csv"], 1,
                                   ["c.csv: no caption column", "columns found: img, desc"]),
    "csv, named column absent": ({"c.csv": b"image,caption\na.jpg,a dog\n"},
                                 ["c.csv", "--caption-column", "text"], 1,
                                 ["no column 'text'", "columns found: image, caption"]),
    "empty file": ({"c.txt": b""}, ["c.txt"], 1, ["c.txt: empty file"]),
    "missing splits": ({"c.txt": b"a.jpg#0\ta dog\n"}, ["c.txt", "--splits", "s.csv"], 1,
                       ["s.csv: no such file"]),
    "bad splits": ({"c.txt": b"a.jpg#0\ta dog\n", "s.csv": b"name,set\n"},
                   ["c.txt", "--splits", "s.csv"], 1, ["s.csv: no image column"]),
    "missing vocab": ({"c.txt": b"a.jpg#0\ta dog\n"}, ["c.txt", "--vocab", "v.txt"], 1,
                      ["v.txt: no such vocabulary file"]),
    "bad vocab": ({"c.txt": b"a.jpg#0\ta dog\n", "v.txt": b"dog\n"},
                  ["c.txt", "--vocab", "v.txt"], 1, ["v.txt: not an smcli vocabulary"]),
    "vocab-out dir missing": ({"c.txt": b"a.jpg#0\ta dog\n"},
                              ["c.txt", "--vocab-out", "no/v.txt"], 2, ["--vocab-out no/v.txt"]),
    "errors dir missing": ({"c.txt": b"a.jpg#0\ta dog\n"}, ["c.txt", "--errors", "no/e.csv"],
                           2, ["--errors no/e.csv"]),
    "strict": ({"c.txt": b"a.jpg#0\ta dog\na.jpg#1\t\n"}, ["c.txt", "--strict"], 1,
               ["c.txt:line 2: empty caption (--strict)"]),
    "malformed csv": ({"c.csv": b'image,caption\na.jpg,"a dog\nb.jpg,a cat\n'}, ["c.csv"], 1,
                      ["malformed CSV"]),
    "min-count 0": ({"c.txt": b"a.jpg#0\ta dog\n"}, ["c.txt", "--min-count", "0"], 2,
                    ["--min-count"]),
    "unknown option": ({"c.txt": b"a.jpg#0\ta dog\n"}, ["c.txt", "--bogus"], 2,
                       ["No such option: --bogus"]),
}


@pytest.mark.parametrize("case", list(BAD_INPUTS), ids=list(BAD_INPUTS))
def test_bad_input_is_one_error_line_and_no_output_file(tmp_path, case):
    files, args, status, fragments = BAD_INPUTS[case]
    for name, data in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        _write(tmp_path, name, data)
    before = listing(tmp_path)
    rc, out, err = run_main("tokenize", *args, "-o", "out.parquet", cwd=tmp_path)
    assert_one_line_error(rc, err, *fragments)
    assert rc == status
    assert out == b""
    assert listing(tmp_path) == before  # no out.parquet, no temporary, no vocab or errors file


def test_bad_output_targets(tmp_path):
    (tmp_path / "sub").mkdir()
    rc, _, err = run_main("tokenize", FLICKR, "-o", "sub", cwd=tmp_path)
    assert_one_line_error(rc, err, "-o sub: is a directory")
    rc, _, err = run_main("tokenize", FLICKR, "-o", "no/out.parquet", cwd=tmp_path)
    assert_one_line_error(rc, err, "-o no/out.parquet: directory no does not exist")
    (tmp_path / "file").write_text("")
    rc, _, err = run_main("tokenize", FLICKR, "-o", "file/out.parquet", cwd=tmp_path)
    assert_one_line_error(rc, err, "cannot write")
    assert listing(tmp_path) == ["file", "sub"] and listing(tmp_path / "sub") == []


def test_a_failed_run_keeps_the_previous_output(tmp_path):
    rc, _, _ = run_main("tokenize", FLICKR, "-o", "out.parquet", cwd=tmp_path)
    assert rc == 0
    before = (tmp_path / "out.parquet").read_bytes()
    (tmp_path / "bad.txt").write_bytes(b"a.jpg#0\t\xff\n")
    rc, _, err = run_main("tokenize", "bad.txt", "-o", "out.parquet", cwd=tmp_path)
    assert_one_line_error(rc, err, "invalid UTF-8")
    assert (tmp_path / "out.parquet").read_bytes() == before
    assert listing(tmp_path) == ["bad.txt", "out.parquet"]


def test_unknown_command_and_no_arguments():
    rc, _, err = run_main("frobnicate")
    assert_one_line_error(rc, err, "frobnicate")
    assert rc == 2
    rc, out, err = run_main()
    assert rc == 2 and "Traceback" not in err
    assert "tokenize" in (out.decode() + err)  # the help, not an error box


def test_row_problems_are_reported_counted_and_the_run_succeeds(tmp_path):
    (tmp_path / "c.txt").write_text(
        "a.jpg#0\tA dog .\na.jpg#1\t \na.jpg#0\tdup\nb.jpg#0\tA cat .\n")
    rc, out, err = run_main("tokenize", "c.txt", "-o", "out.parquet", "--errors", "e.csv",
                            cwd=tmp_path)
    assert rc == 0 and out == b"" and "Traceback" not in err
    lines = err.splitlines()
    assert "smcli tokenize: rejected c.txt:line 2: empty caption" in lines
    assert ("smcli tokenize: rejected c.txt:line 3: duplicate caption id 'a.jpg#0' "
            "(first at line 1)") in lines
    assert lines[-1] == "smcli tokenize: read 4, written 2, rejected 2"
    assert pq.read_table(tmp_path / "out.parquet").column("caption_id").to_pylist() == [
        "a.jpg#0", "b.jpg#0"]
    assert len((tmp_path / "e.csv").read_text().splitlines()) == 3


# --- inspect -------------------------------------------------------------------------


def test_inspect_json_and_table(tmp_path):
    import json

    rc, _, _ = run_main("tokenize", FLICKR, "--splits", SPLITS, "-o", "c.parquet", cwd=tmp_path)
    assert rc == 0
    rc, out, err = run_main("inspect", "c.parquet", "--json", cwd=tmp_path)
    assert rc == 0 and err == ""
    info = json.loads(out)
    assert info["kind"] == "captions" and info["schema_version"] == 1
    assert info["smcli_version"] == __version__ and info["rows"] == 9
    assert info["columns"] == {"caption_id": "string", "image_id": "string", "caption": "string",
                               "tokens": "list<element: string>",
                               "token_ids": "list<element: int32>", "split": "string"}
    header = json.loads(pq.read_schema(tmp_path / "c.parquet").metadata[b"smcli"])
    assert info["producer"] == header["producer"]
    assert info["producer"]["command"] == "tokenize"
    assert set(info["blobs"]) == {"vocab"}
    rc, out, err = run_main("inspect", "c.parquet", cwd=tmp_path)
    assert rc == 0
    assert re.search(r"kind\s+captions", out.decode()) and re.search(r"rows\s+9\b", out.decode())


def test_inspect_any_parquet_and_bad_files(tmp_path):
    import json

    pq.write_table(pa.table({"x": [1, 2]}), tmp_path / "plain.parquet")
    rc, out, _ = run_main("inspect", "plain.parquet", "--json", cwd=tmp_path)
    assert rc == 0 and json.loads(out)["kind"] == "not an smcli file"
    assert json.loads(out)["rows"] == 2
    bad_meta = pa.table({"x": [1]}).replace_schema_metadata({b"smcli": b"{oops"})
    pq.write_table(bad_meta, tmp_path / "bad.parquet")
    (tmp_path / "c.txt").write_text("a.jpg#0\ta dog\n")
    for name, fragment in (("missing.parquet", "no such file"), ("c.txt", "not a Parquet file"),
                           ("bad.parquet", "unreadable smcli metadata")):
        rc, out, err = run_main("inspect", name, cwd=tmp_path)
        assert_one_line_error(rc, err, name, fragment)
        assert out == b""


def test_ctrl_c_is_one_line_exit_130_and_no_file(tmp_path, monkeypatch):
    """Ctrl-C while reading stdin (in process: stdin raises KeyboardInterrupt)."""
    import io

    class Interrupting(io.BytesIO):
        def read(self, *args):
            raise KeyboardInterrupt

    from smcli.cli import main

    monkeypatch.setattr(sys, "stdin", type("Stdin", (), {"buffer": Interrupting()})())

    monkeypatch.setattr(sys, "argv", ["smcli", "tokenize", "-", "-o", str(tmp_path / "o.parquet")])
    err = io.StringIO()
    monkeypatch.setattr(sys, "stderr", err)
    with pytest.raises(SystemExit) as exc:
        main()
    assert exc.value.code == 130
    assert err.getvalue() == "smcli: interrupted\n"
    assert listing(tmp_path) == []
