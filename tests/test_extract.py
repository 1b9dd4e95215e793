"""extract-regions end to end: inputs, outputs, bad images, duplicates, resume, errors.

Most runs use ``--weights none`` (random, seeded) and small image sizes: the point here is
the pipeline, not the features. The pretrained weights are checked in
test_extract_pretrained.py.
"""

from __future__ import annotations

import csv
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import EXAMPLES, assert_one_line_error, journal_rows, run_main, run_smcli
from PIL import Image
from test_extract_decode import make_bad_images

IMAGES = EXAMPLES / "images"
FAST = ["--weights", "none", "--image-size", "64", "--batch-size", "4"]


def counts_line(stderr: str) -> dict[str, int]:
    last = stderr.strip().splitlines()[-1]
    assert last.startswith("smcli extract-regions: listed"), stderr
    parts = last.split(": ", 1)[1].split(", ")
    return {p.rsplit(" ", 1)[0]: int(p.rsplit(" ", 1)[1].replace(",", "")) for p in parts}


def read(path) -> pa.Table:
    return pq.read_table(path)


def regions_by_id(path) -> dict[str, np.ndarray]:
    from smcli.images.features import load_regions

    f = load_regions(path)
    return {k: f.regions[i] for i, k in enumerate(f.image_ids)}


def some_images(d: Path, n: int = 4, start: int = 0) -> list[Path]:
    d.mkdir(parents=True, exist_ok=True)
    out = []
    for src in sorted(IMAGES.glob("*.jpg"))[start:start + n]:
        dst = d / src.name
        shutil.copy(src, dst)
        out.append(dst)
    return out


# ---------------------------------------------------------------------------------------


def test_examples_shapes_metadata_and_counts(tmp_path):
    from smcli.images.features import feature_signature, load_regions
    from smcli.stage import open_stage

    out = tmp_path / "feats.parquet"
    rc, _, err = run_main("extract-regions", IMAGES, "-o", out, *FAST)
    assert rc == 0, err
    assert "warning: --weights none" in err
    assert counts_line(err) == {"listed": 32, "duplicates": 0, "processed": 32, "written": 32, "failed": 0}
    stage = open_stage(out, "regions")
    meta = stage.meta.producer
    stage.close()
    for key in ("command", "backbone", "weights", "pretrained", "image_size", "preprocessing",
                "layer", "grid", "dim", "dtype"):
        assert key in meta, key
    assert meta["backbone"] == "efficientnet-lite0" and meta["weights"] == "none"
    assert meta["pretrained"] is False and meta["image_size"] == 64
    assert meta["grid"] == [2, 2] and meta["dim"] == 1280 and meta["dtype"] == "float16"
    table = read(out)
    assert table.schema.field("width").type == pa.int32()
    assert table.schema.field("regions").type == pa.list_(pa.float16(), 2 * 2 * 1280)
    assert table.schema.field("global").type == pa.list_(pa.float16(), 1280)
    assert table.column("image_id").to_pylist() == sorted(p.name for p in IMAGES.glob("*.jpg"))
    assert set(table.column("width").to_pylist()) == {224}
    f = load_regions(out)
    assert f.regions.shape == (32, 4, 1280) and f.regions.dtype == np.float16
    assert f.global_.shape == (32, 1280)
    # global = the average of the region grid (computed in float32 before rounding)
    assert np.allclose(f.regions.astype(np.float32).mean(1), f.global_.astype(np.float32), atol=2e-2)
    assert feature_signature(f.meta) == {"backbone": "efficientnet-lite0", "weights": "none",
                                         "pretrained": False, "image_size": 64, "grid": [2, 2],
                                         "dim": 1280, "global_dim": 1280}
    assert not list(tmp_path.glob(".*")), "no temporary or resume files left behind"


def test_float32_and_global_only_loading(tmp_path):
    from smcli.images.features import load_regions

    some_images(tmp_path / "imgs", 3)
    out = tmp_path / "f32.parquet"
    rc, _, err = run_main("extract-regions", tmp_path / "imgs", "-o", out, *FAST, "--dtype", "float32")
    assert rc == 0, err
    f = load_regions(out, regions=False)
    assert f.regions is None and f.global_.dtype == np.float32 and f.global_.shape == (3, 1280)


def test_bad_inputs_are_reported_and_the_run_completes(tmp_path):
    d = tmp_path / "imgs"
    good = some_images(d, 3)
    sub = d / "sub dir"
    sub.mkdir()
    shutil.copy(IMAGES / "2331510788_986809bbb4.jpg", sub / "chien été 狗.jpg")
    photo = Image.open(IMAGES / "2345984157_724823b1e4.jpg")
    photo.convert("RGBA").save(d / "rgba.png")
    photo.convert("L").save(d / "gray.jpg")
    photo.convert("CMYK").save(d / "cmyk.jpg")
    photo.convert("P", palette=Image.ADAPTIVE).save(d / "palette.gif")
    Image.fromarray(np.asarray(photo.convert("L"), dtype=np.uint16) * 257).save(d / "deep16.png")
    bad = make_bad_images(d / "bad")
    (d / "README.txt").write_text("not an image, and not an image extension: ignored, said once")
    (d / ".hidden.jpg").write_bytes(b"")
    errors = tmp_path / "errors.csv"
    out = tmp_path / "feats.parquet"
    rc, _, err = run_main("extract-regions", d, "-o", out, "--errors", errors, *FAST)
    assert rc == 0, err
    assert "ignored 1 file(s) without an image extension (e.g. README.txt)" in err
    ids = read(out).column("image_id").to_pylist()
    expected_good = sorted([p.name for p in good] + ["sub dir/chien été 狗.jpg", "rgba.png",
                                                     "gray.jpg", "cmyk.jpg", "palette.gif", "deep16.png"])
    assert ids == expected_good, "each good image exactly once, in sorted order"
    with open(errors, newline="") as fh:
        rows = list(csv.DictReader(fh))
    reasons = {Path(r["source"]).name: r["reason"] for r in rows}
    assert set(reasons) == set(bad)
    for name, fragment in bad.items():
        assert fragment.lower() in reasons[name].lower(), (name, reasons[name])
        assert f"rejected {d / 'bad' / name}" in err
    c = counts_line(err)
    assert c == {"listed": len(ids) + len(bad), "duplicates": 0, "processed": len(ids) + len(bad),
                 "written": len(ids), "failed": len(bad)}


def test_strict_makes_a_bad_image_fatal(tmp_path):
    d = tmp_path / "imgs"
    some_images(d, 2)
    (d / "zz-empty.jpg").write_bytes(b"")
    out = tmp_path / "feats.parquet"
    rc, _, err = run_main("extract-regions", d, "-o", out, "--strict", *FAST)
    assert_one_line_error(rc, err, "zz-empty.jpg", "empty file", "--strict")
    assert not out.exists()
    assert not list(tmp_path.glob(".feats.parquet.*.tmp"))


def test_same_file_twice_is_written_once(tmp_path):
    d = tmp_path / "imgs"
    files = some_images(d, 3)
    out = tmp_path / "feats.parquet"
    rc, _, err = run_main("extract-regions", d, files[1], d, "-o", out, *FAST)
    assert rc == 0, err
    assert read(out).column("image_id").to_pylist() == [p.name for p in files]
    c = counts_line(err)
    assert c["listed"] == 7 and c["duplicates"] == 4 and c["written"] == 3 and c["failed"] == 0


def test_colliding_image_ids_are_rejected(tmp_path):
    a = some_images(tmp_path / "a", 1)[0]
    b = tmp_path / "b" / a.name
    b.parent.mkdir()
    shutil.copy(IMAGES / "2331510788_986809bbb4.jpg", b)  # another picture, same file name
    out = tmp_path / "feats.parquet"
    rc, _, err = run_main("extract-regions", a, b, "-o", out, *FAST)
    assert rc == 0, err
    assert read(out).column("path").to_pylist() == [str(a)]
    assert f"image_id {a.name!r} is already used" in err
    assert counts_line(err)["failed"] == 1


def test_non_utf8_file_name_is_rejected(tmp_path):
    d = tmp_path / "imgs"
    some_images(d, 1)
    raw = os.path.join(os.fsencode(d), b"bad\xffname.jpg")
    shutil.copy(IMAGES / "2331510788_986809bbb4.jpg", raw)
    out = tmp_path / "feats.parquet"
    rc, _, err = run_main("extract-regions", d, "-o", out, *FAST)
    assert rc == 0, err
    assert "not valid UTF-8" in err and read(out).num_rows == 1


def test_same_features_from_file_directory_list_table_and_stdin(tmp_path):
    d = tmp_path / "imgs"
    files = some_images(d, 3, start=5)
    outs = {k: tmp_path / f"{k}.parquet" for k in ("dir", "files", "list", "csv", "stdin")}
    lst = tmp_path / "list.txt"
    lst.write_text("# images\n" + "".join(f"imgs/{p.name}\n" for p in files) + "\n")
    table = tmp_path / "images.csv"
    table.write_text("image,caption\n" + "".join(f"{p.name},a caption\n{p.name},another\n" for p in files))
    runs = {
        "dir": (["imgs"], b""),
        "files": ([f"imgs/{p.name}" for p in files], b""),
        "list": ([f"@{lst}"], b""),
        "csv": ([str(table), "--root", "imgs"], b""),
        "stdin": (["-"], "".join(f"{p}\n" for p in files).encode()),
    }
    for key, (args, stdin) in runs.items():
        rc, _, err = run_main("extract-regions", *args, "-o", outs[key], *FAST, input=stdin, cwd=tmp_path)
        assert rc == 0, (key, err)
    feats = {k: regions_by_id(v) for k, v in outs.items()}
    names = [p.name for p in files]
    assert list(feats["dir"]) == names and list(feats["files"]) == names and list(feats["csv"]) == names
    assert list(feats["list"]) == [f"imgs/{n}" for n in names]  # relative to the current directory
    assert list(feats["stdin"]) == [f"imgs/{n}" for n in names]  # absolute, under the root (cwd)
    for key in ("files", "list", "csv", "stdin"):
        for a, b in zip(feats["dir"].values(), feats[key].values(), strict=True):
            assert np.array_equal(a, b), key
    c = counts_line(run_main("extract-regions", table, "--root", d, "-o", outs["csv"], *FAST)[2])
    assert c["listed"] == 6 and c["duplicates"] == 3 and c["written"] == 3


@pytest.mark.parametrize("size", [64, 640])  # 640: workers run each batch of 4 as 2 chunks of 2
def test_features_do_not_depend_on_workers_or_cores(tmp_path, size):
    """The network runs single-threaded in each worker: 1 or 3 workers, or everything in
    this process on one thread, give the same bytes whatever the machine's core count."""
    files = some_images(tmp_path / "imgs", 9)  # 3 batches of 4 (the last one a single image)
    outs, errs = {}, {}
    for label, extra in {"w1": ["--workers", "1"], "w3": ["--workers", "3"],
                         "inline": ["--workers", "0", "--threads", "1"]}.items():
        outs[label] = tmp_path / f"{label}.parquet"
        rc, _, errs[label] = run_main("extract-regions", *map(str, files), "-o", outs[label], *FAST,
                                      "--image-size", str(size), *extra)
        assert rc == 0, (label, errs[label])
    feats = {k: regions_by_id(v) for k, v in outs.items()}
    assert "3 worker process(es) decoding and running the network" in errs["w3"]
    for key in ("w3", "inline"):
        assert list(feats[key]) == list(feats["w1"])
        for a, b in zip(feats["w1"].values(), feats[key].values(), strict=True):
            assert np.array_equal(a, b), key


def test_few_images_are_spread_over_the_workers(tmp_path):
    """Fewer images than workers x the default batch: smaller batches, every worker busy."""
    files = some_images(tmp_path / "imgs", 5)
    out = tmp_path / "f.parquet"
    rc, _, err = run_main("extract-regions", *map(str, files), "-o", out, "--weights", "none",
                          "--image-size", "64", "--workers", "3")
    assert rc == 0, err
    assert "3 worker process(es) decoding and running the network" in err
    assert read(out).num_rows == 5
    rc, _, err = run_main("extract-regions", *map(str, files), "-o", out, *FAST, "--workers", "3")
    assert rc == 0 and "2 worker process(es)" in err  # --batch-size 4 given: 2 batches, 2 workers


def test_parquet_input_with_path_column(tmp_path):
    files = some_images(tmp_path / "imgs", 2)
    src = tmp_path / "paths.parquet"
    pq.write_table(pa.table({"file_path": [str(p) for p in files] + [None]}), src)
    out = tmp_path / "feats.parquet"
    rc, _, err = run_main("extract-regions", src, "-o", out, *FAST)
    assert_one_line_error(rc, err, "no path column", "--path-column")
    rc, _, err = run_main("extract-regions", src, "--path-column", "file_path", "-o", out, *FAST)
    assert rc == 0, err
    assert read(out).num_rows == 2 and "row 3" in err and "empty path" in err


def test_argument_errors_are_one_line(tmp_path):
    out = tmp_path / "o.parquet"
    assert_one_line_error(*run_main("extract-regions", tmp_path / "nope", "-o", out)[::2], "nope", "no such file")
    (tmp_path / "l.txt").write_text("a.jpg\n")
    assert_one_line_error(*run_main("extract-regions", tmp_path / "l.txt", "-o", out)[::2], "@")
    assert_one_line_error(*run_main("extract-regions", "@missing.txt", "-o", out)[::2], "no such list file")
    assert_one_line_error(*run_main("extract-regions", IMAGES, "-o", out, "--backbone", "alexnet")[::2],
                   "alexnet", "efficientnet-lite0")
    assert_one_line_error(*run_main("extract-regions", IMAGES, "-o", out, "--dtype", "int8")[::2], "float16")
    assert_one_line_error(*run_main("extract-regions", IMAGES, "-o", out, "--image-size", "8")[::2], "--image-size")
    assert_one_line_error(*run_main("extract-regions", IMAGES, "-o", out, "--weights", "nofile.pth")[::2],
                   "nofile.pth")
    assert_one_line_error(*run_main("extract-regions", IMAGES, "--resume", *FAST)[::2], "--resume")
    (tmp_path / "empty").mkdir()
    assert_one_line_error(*run_main("extract-regions", tmp_path / "empty", "-o", out)[::2], "no images found")
    assert not out.exists()


def test_streams_to_stdout_and_never_to_a_terminal(tmp_path):
    files = some_images(tmp_path / "imgs", 2)
    rc, out, err = run_smcli("extract-regions", *files, *FAST)
    assert rc == 0, err
    table = pq.read_table(pa.BufferReader(out))
    assert table.num_rows == 2
    rc, out, err = run_smcli("extract-regions", "-", *FAST, "--no-progress",
                           input="".join(f"{p}\n" for p in files).encode())
    assert rc == 0 and pq.read_table(pa.BufferReader(out)).num_rows == 2


def test_help_does_not_import_torch():
    code = ("import sys; from smcli.cli import app; import smcli.cli.extract, smcli.images.sources, "
            "smcli.images.features, smcli.images.decode; "
            "assert 'torch' not in sys.modules and 'timm' not in sys.modules, 'torch imported'")
    subprocess.run([sys.executable, "-c", code], check=True)


# ---------------------------------------------------------------------------------------
# Resume


def test_resume_after_kill_equals_an_uninterrupted_run(tmp_path):
    d = tmp_path / "imgs"
    some_images(d, 24)
    (d / "zz-bad.jpg").write_text("text")
    args = ["extract-regions", d, "--weights", "none", "--image-size", "128", "--batch-size", "2",
            "--workers", "1"]
    full = tmp_path / "full.parquet"
    rc, _, err = run_main(*args, "-o", full)
    assert rc == 0, err

    out = tmp_path / "feats.parquet"
    journal = tmp_path / ".feats.parquet.resume"
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    proc = subprocess.Popen([sys.executable, "-m", "smcli", *map(str, args), "-o", str(out)],
                            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, env=env)
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None and journal_rows(journal) < 6:
        time.sleep(0.01)
    assert proc.poll() is None, "the run finished before it could be interrupted"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not out.exists()
    done = journal_rows(journal)
    assert 6 <= done < 24

    rc, _, err = run_main(*args, "-o", out, "--resume")
    assert rc == 0, err
    assert f"resuming: {done} image(s) done by the interrupted run" in err
    c = counts_line(err)
    assert c["resumed"] == done and c["processed"] == 25 - done, "finished images not recomputed"
    assert c["written"] == 24 and c["failed"] == 1
    assert read(out).equals(read(full))
    assert pq.read_schema(out).metadata == pq.read_schema(full).metadata
    assert not journal.exists() and not list(tmp_path.glob(".feats.parquet.*"))


def test_resume_refuses_other_settings_and_fresh_run_discards(tmp_path):
    d = tmp_path / "imgs"
    some_images(d, 2)
    out = tmp_path / "feats.parquet"
    from smcli.images.backbones import load_backbone
    from smcli.images.extract import Journal, producer, regions_schema

    bb = load_backbone("efficientnet-lite0", 64, "none", "cpu", warn_random=False)
    j = Journal(out)
    j.lock()
    schema = regions_schema(bb.grid, bb.dim, bb.global_dim, "float16")
    j.start_segment(schema, producer(bb, "float16"))
    n_reg = bb.grid[0] * bb.grid[1] * bb.dim
    j.append(pa.record_batch([
        pa.array(["x.jpg"]), pa.array([str(d / "x.jpg")]),
        pa.array([1], pa.int32()), pa.array([1], pa.int32()),
        pa.FixedSizeListArray.from_arrays(pa.array(np.zeros(n_reg, np.float16)), n_reg),
        pa.FixedSizeListArray.from_arrays(pa.array(np.zeros(bb.global_dim, np.float16)), bb.global_dim),
    ], schema=schema))
    j.release()
    rc, _, err = run_main("extract-regions", d, "-o", out, *FAST[:-2], "--image-size", "96", "--resume")
    assert_one_line_error(rc, err, "--resume", "other settings", "image_size")
    rc, _, err = run_main("extract-regions", d, "-o", out, *FAST)
    assert rc == 0 and "discarding the partial results" in err
    rc, _, err = run_main("extract-regions", d, "-o", out, *FAST, "--resume")
    assert rc == 0 and "no interrupted run" in err


def test_progress_only_when_asked_in_a_pipe(tmp_path):
    files = some_images(tmp_path / "imgs", 2)
    out = tmp_path / "feats.parquet"
    rc, _, err = run_main("extract-regions", *files, "-o", out, *FAST)
    assert rc == 0 and "img/s" not in err  # stderr is not a terminal: quiet
    rc, _, err = run_main("extract-regions", *files, "-o", out, *FAST, "--progress")
    assert rc == 0 and "img/s" in err and "2/2" in err


@pytest.mark.parametrize("workers", ["0", "1"])
def test_extract_from_python_leaves_the_process_torch_threads_alone(tmp_path, workers):
    """extract-regions run in process (the Python API, tests) restores torch's thread count:
    a later training in the same process trains with the process's own setting (thread
    counts change float rounding; CI once saw a training differ from the same command in a
    fresh process after an in-process --threads 1 run)."""
    import torch

    images = sorted((EXAMPLES / "images").glob("*.jpg"))[:3]
    before = torch.get_num_threads()
    other = 1 if before > 1 else 2
    torch.set_num_threads(other)
    try:
        rc, _, err = run_main("extract-regions", *images, "--weights", "none", "--image-size", "64",
                              "--workers", workers, "--threads", str(3 - other), "-o", tmp_path / "f.parquet")
        assert rc == 0, err
        assert torch.get_num_threads() == other
    finally:
        torch.set_num_threads(before)


@pytest.mark.parametrize("existed", [False, True], ids=["new", "left-by-an-earlier-run"])
def test_a_signal_while_the_journal_is_locked_leaves_no_new_folder(tmp_path, monkeypatch, existed):
    """Ctrl-C or SIGTERM inside Journal.lock (after its folder is made, before the lock is
    held: CI saw extract-regions leave an empty .NAME.resume after SIGINT at start-up) removes
    the folder it made, and never one that was there before."""
    from smcli.images import journal as journal_mod

    j = journal_mod.Journal(tmp_path / "feats.parquet")
    if existed:
        j.dir.mkdir()
        (j.dir / "seg-00000.arrows").write_bytes(b"")

    def interrupted(*args):
        raise KeyboardInterrupt

    monkeypatch.setattr(journal_mod.fcntl, "lockf", interrupted)
    with pytest.raises(KeyboardInterrupt):
        j.lock()
    assert j.dir.is_dir() == existed and not j.locked


def test_tune_layout_measures_keeps_the_rows_and_remembers(tmp_path, monkeypatch):
    """--tune-layout runs each candidate worker count on the first whole batches, keeps their
    rows (the file equals an untuned run's, bit for bit), remembers the fastest for this
    machine, and a later run with --workers unset uses it; --workers wins over it."""
    import json

    from smcli.images import layout

    monkeypatch.setenv("SMCLI_CACHE_DIR", str(tmp_path / "cache"))
    files = [str(f) for f in some_images(tmp_path / "imgs", 26)]
    args = ["--weights", "none", "--image-size", "64", "--batch-size", "2"]
    rc, _, err = run_main("extract-regions", *files, "-o", tmp_path / "tuned.parquet", *args, "--tune-layout")
    assert rc == 0, err
    rc, _, err1 = run_main("extract-regions", *files, "-o", tmp_path / "plain.parquet", *args, "--workers", "1")
    assert rc == 0, err1
    tuned, plain = regions_by_id(tmp_path / "tuned.parquet"), regions_by_id(tmp_path / "plain.parquet")
    assert list(tuned) == list(plain) == [Path(f).name for f in files]
    assert all(np.array_equal(tuned[k], plain[k]) for k in plain)

    saved = json.loads((tmp_path / "cache" / layout.LAYOUT_FILE).read_text())
    (key, entry), = saved.items()
    assert "64px | batch 2" in key
    rates = {int(n): r for n, r in entry["images_per_s"].items()}
    # 26 images in batches of 2: one worker measures 8, two 16, and three (24) do not fit in the 2 left
    assert set(rates) == {n for n in layout.candidates(os.cpu_count() or 1, 8) if n <= 2} and all(rates.values())
    assert entry["workers"] == layout.choose(rates)
    assert "layout measured: 1 worker(s)" in err and f"{entry['workers']} from now on" in err

    rc, _, err = run_main("extract-regions", *files, "-o", tmp_path / "again.parquet", *args)
    assert rc == 0 and f"{entry['workers']} worker process(es)" in err
    assert_one_line_error(*run_main("extract-regions", *files, "-o", tmp_path / "x.parquet", *args,
                                    "--tune-layout", "--workers", "2")[::2], "--tune-layout", "drop --workers 2")


def test_layout_choice_and_an_unwritable_cache(tmp_path, monkeypatch):
    from smcli.images import layout

    assert layout.candidates(2, 8) == [1, 2, 3] and layout.candidates(1, 8) == [1, 2]
    assert layout.candidates(16, 8) == [8]
    assert layout.choose({1: 40.0, 2: 80.0, 3: 79.0}) == 2  # within 3%: the fewer processes
    assert layout.choose({1: 40.0, 2: 70.0, 3: 80.0}) == 3
    blocker = tmp_path / "file"
    blocker.write_text("")
    monkeypatch.setenv("SMCLI_CACHE_DIR", str(blocker / "cache"))  # under a file: cannot be made
    assert layout.remember("k", {1: 10.0, 2: 20.0}) == 2  # the choice stands, the memory is lost
    assert layout.remembered("k") is None
    monkeypatch.setenv("SMCLI_CACHE_DIR", str(tmp_path / "c"))
    (tmp_path / "c").mkdir()
    (tmp_path / "c" / layout.LAYOUT_FILE).write_text("{not json")
    assert layout.remembered("k") is None  # unreadable: measured again next time
    layout.remember("k", {1: 10.0, 2: 20.0})
    assert layout.remembered("k") == 2


def test_default_workers_fit_the_available_memory(monkeypatch):
    """A CPU worker holds a pass of 16 images' activations (~2.4 GB at 448 px): the default
    count is one per core only while the available memory holds them."""
    import smcli.images.extract as ex
    import smcli.runtime as rt

    monkeypatch.setattr(ex, "cpu_cores", lambda: 8)
    monkeypatch.setattr(rt, "available_memory", lambda: None)
    assert ex.default_workers("cpu", 448) == 8  # unknown: cores decide
    monkeypatch.setattr(rt, "available_memory", lambda: 64e9)
    assert ex.default_workers("cpu", 224) == ex.default_workers("cpu", 448) == 8
    monkeypatch.setattr(rt, "available_memory", lambda: 7e9)
    assert ex.default_workers("cpu", 224) == 5 and ex.default_workers("cpu", 448) == 2
    monkeypatch.setattr(rt, "available_memory", lambda: 1e9)
    assert ex.default_workers("cpu", 448) == 1  # never none
    assert ex.default_workers("cpu") == 8 and ex.default_workers("cuda", 448) == 4  # no size: cores only
