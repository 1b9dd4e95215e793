"""Fault injection (issue 15): damaged inputs, output-path hazards, non-finite numbers, signals.

Every case holds the same promises: an exit code (or a library SmcliError), exactly one
``smcli: error:`` line or a counted rejection, no traceback, nothing under the final output
name unless complete, no temporary left behind, and the inputs unchanged (hashed before and
after). Readers are called in-process where the CLI is not what is tested; the CLI runs
in-process too (conftest.run_main) except where a real process is needed (signals).
"""

from __future__ import annotations

import errno
import hashlib
import json
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
from conftest import EXAMPLES, REPO, SMALL_MODEL_ARGS, assert_one_line_error, child_env, faults_long, run_main

from smcli.errors import SmcliError

# ---------------------------------------------------------------------------------------
# Helpers


def digest(*paths: Path) -> dict[str, str]:
    """sha256 of every file under ``paths`` (files or directories), by path."""
    out = {}
    for p in paths:
        files = sorted(q for q in Path(p).rglob("*") if q.is_file()) if Path(p).is_dir() else [Path(p)]
        for f in files:
            if f.exists():
                out[str(f)] = hashlib.sha256(f.read_bytes()).hexdigest()
    return out


def temporaries(*dirs: Path) -> list[str]:
    """Hidden temporaries smcli writes beside a target (.NAME.*.tmp, .NAME.tmp-PID, .NAME.old-PID)."""
    found = []
    for d in dirs:
        if Path(d).is_dir():
            found += [str(p) for p in Path(d).rglob(".*") if ".tmp" in p.name or ".old-" in p.name]
    return found


def flip(data: bytes, at: float = 0.5, n: int = 8) -> bytes:
    i = int(len(data) * at)
    return data[:i] + bytes(b ^ 0xFF for b in data[i:i + n]) + data[i + n:]


def scribble(data: bytes, seed: int, n: int = 16) -> bytes:
    """``n`` bytes at seeded random places replaced by seeded random values."""
    rng = np.random.default_rng(seed)
    out = bytearray(data)
    for i in rng.integers(0, len(out), n) if out else []:
        out[i] = int(rng.integers(0, 256))
    return bytes(out)


# Generated damage: name -> bytes -> bytes. Truncation at several offsets, flipped bytes, empty.
# The long suite (make test-faults-long) adds more offsets, more flips and seeded scribbles.
DAMAGES = {
    "empty": lambda b: b"",
    "head16": lambda b: b[:16],
    "half": lambda b: b[:len(b) // 2],
    "last7": lambda b: b[:-7],
    "flip-mid": lambda b: flip(b, 0.5),
    "flip-end": lambda b: flip(b, 0.97),
}
TRUNCATIONS = ["empty", "head16", "half", "last7"]  # these must always be noticed
if faults_long():
    for _n in (1, 4, 64, 512):
        DAMAGES[f"head{_n}"] = lambda b, n=_n: b[:n]
    for _q in (1, 3):
        DAMAGES[f"quarter{_q}"] = lambda b, q=_q: b[:len(b) * q // 4]
    for _n in (2, 64, 1024):
        DAMAGES[f"last{_n}"] = lambda b, n=_n: b[:-n]
    TRUNCATIONS += ["head1", "head4", "head64", "head512", "quarter1", "quarter3", "last2", "last64", "last1024"]
    for _at in (0.0, 0.02, 0.1, 0.25, 0.75, 0.9, 0.999):
        DAMAGES[f"flip1-{_at:g}"] = lambda b, at=_at: flip(b, at, 1)
        DAMAGES[f"flip8-{_at:g}"] = lambda b, at=_at: flip(b, at, 8)
    for _seed in range(6):
        DAMAGES[f"scribble-{_seed}"] = lambda b, seed=_seed: scribble(b, seed)


def refused(fn, *fragments: str) -> str:
    """``fn()`` must raise one SmcliError with a one-line message (naming ``fragments``)."""
    with pytest.raises(SmcliError) as info:
        fn()
    msg = str(info.value)
    assert "\n" not in msg.strip(), msg
    for f in fragments:
        assert f in msg, (f, msg)
    return msg


def refused_or_ok(fn) -> str | None:
    """Damage that may go unseen (a flipped byte inside a value): either one clean SmcliError
    line, or success; any other exception (a traceback) fails the test."""
    try:
        fn()
    except SmcliError as exc:
        assert "\n" not in str(exc).strip()
        return str(exc)
    return None


@pytest.fixture(scope="session")
def matcher(example_model):
    from smcli.inference.matcher import MatchModel

    return MatchModel(str(example_model), device="cpu", precision="fp32")


@pytest.fixture(scope="session")
def gallery(example_pipeline, example_model, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("gallery") / "g"
    rc, _, err = run_main("index", "--model", example_model, "--regions", example_pipeline["feats"], "-o", out)
    assert rc == 0, err
    return out


def copy_model(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns("train_state.safetensors", "metrics.jsonl"))
    return dst


# ---------------------------------------------------------------------------------------
# 1. index -o DIR never deletes what smcli did not write


def index_args(example_pipeline, example_model, out, *extra):
    return ("index", "--model", example_model, "--regions", example_pipeline["feats"], "-o", out, *extra)


@pytest.mark.parametrize("overwrite", [False, True])
def test_index_refuses_a_directory_it_did_not_write(example_pipeline, example_model, tmp_path, overwrite):
    out = tmp_path / "photos"
    out.mkdir()
    (out / "holiday.jpg").write_bytes(b"my only copy")
    (out / "meta.json").write_text("{}")  # even looking like a gallery: it holds a foreign file
    before = digest(out)
    rc, _, err = run_main(*index_args(example_pipeline, example_model, out, *(["--overwrite"] if overwrite else [])))
    assert rc == 2
    assert_one_line_error(rc, err, str(out), "not an smcli index" if overwrite else "--overwrite")
    assert digest(out) == before and not temporaries(tmp_path)


def test_index_overwrite_refuses_a_model_directory(example_pipeline, example_model, tmp_path):
    model = copy_model(example_model, tmp_path / "model")
    before = digest(model)
    rc, _, err = run_main(*index_args(example_pipeline, example_model, model, "--overwrite"))
    assert_one_line_error(rc, err, "not an smcli index")
    assert digest(model) == before


def test_index_replaces_a_gallery_only_with_overwrite(example_pipeline, example_model, gallery, tmp_path):
    from smcli.inference.gallery import open_gallery

    g = tmp_path / "g"
    shutil.copytree(gallery, g)
    before = digest(g)
    rc, _, err = run_main(*index_args(example_pipeline, example_model, g))
    assert rc == 2
    assert_one_line_error(rc, err, "--overwrite")
    assert digest(g) == before
    rc, _, err = run_main(*index_args(example_pipeline, example_model, g, "--overwrite"))
    assert rc == 0, err
    assert len(open_gallery(g)) == 32 and not temporaries(tmp_path)


@pytest.mark.parametrize("case", ["cwd", "parent-of-cwd", "missing-parent", "a-file", "unknown-kind"])
def test_index_output_hazards(example_pipeline, example_model, tmp_path, case):
    work = tmp_path / "work"
    work.mkdir()
    (work / "notes.txt").write_text("keep me")
    out, extra, cwd = {"cwd": (".", (), work), "parent-of-cwd": ("..", (), work),
                       "missing-parent": (tmp_path / "no" / "g", (), None),
                       "a-file": (work / "notes.txt", (), None),
                       "unknown-kind": (tmp_path / "g", ("--kind", "annoy"), None)}[case]
    before = digest(tmp_path)
    rc, _, err = run_main(*index_args(example_pipeline, example_model, out, *extra), cwd=cwd)
    assert rc == 2
    assert_one_line_error(rc, err, "--kind" if case == "unknown-kind" else "-o")
    assert digest(tmp_path) == before and not (tmp_path / "g").exists() and not (tmp_path / "no").exists()


# ---------------------------------------------------------------------------------------
# Output hazards for every command that writes: an existing directory, an input's own path,
# a missing parent directory, a read-only directory


def _inputs(example_pipeline, tmp_path) -> dict[str, Path]:
    d = tmp_path / "in"
    d.mkdir()
    img = d / "dog.jpg"
    shutil.copy(EXAMPLES / "images" / sorted(os.listdir(EXAMPLES / "images"))[0], img)
    txt = d / "captions.txt"
    txt.write_text("dog.jpg#0\ta dog runs on the grass\ndog.jpg#1\ta brown dog\n")
    feats, caps = d / "feats.parquet", d / "captions.parquet"
    shutil.copy(example_pipeline["feats"], feats)
    shutil.copy(example_pipeline["captions"], caps)
    return {"dir": d, "image": img, "text": txt, "feats": feats, "captions": caps}


def _command(name: str, inp: dict[str, Path], model: Path, out) -> tuple[str, ...]:
    return {
        "extract-regions": ("extract-regions", inp["image"], "--workers", "0", "-o", out),
        "tokenize": ("tokenize", inp["text"], "-o", out),
        "score": ("score", "--model", model, "--regions", inp["feats"], "--captions", inp["captions"], "-o", out),
        "caption-rank": ("caption-rank", "--model", model, "--regions", inp["feats"], "--captions",
                         inp["captions"], "-o", out),
        "index": ("index", "--model", model, "--regions", inp["feats"], "-o", out),
    }[name]


OWN_INPUT = {"extract-regions": "image", "tokenize": "text", "score": "feats", "caption-rank": "captions",
             "index": "feats"}


@pytest.mark.parametrize("hazard", ["existing-dir", "own-input", "missing-parent", "read-only-dir"])
@pytest.mark.parametrize("command", list(OWN_INPUT))
def test_output_hazards(example_pipeline, example_model, tmp_path, command, hazard):
    inp = _inputs(example_pipeline, tmp_path)
    outdir = tmp_path / "out"
    outdir.mkdir()
    if hazard == "existing-dir":
        out = outdir / "result"
        out.mkdir()
        (out / "mine.txt").write_text("not smcli's")
    elif hazard == "own-input":
        out = inp[OWN_INPUT[command]]
    elif hazard == "missing-parent":
        out = outdir / "missing" / "result.parquet"
    else:
        if os.geteuid() == 0:
            pytest.skip("root writes into read-only directories")
        out = outdir / "result.parquet"
        outdir.chmod(0o555)
    before = digest(tmp_path)
    try:
        rc, _, err = run_main(*_command(command, inp, example_model, out))
    finally:
        outdir.chmod(0o755)
    assert_one_line_error(rc, err)
    assert rc == (1 if hazard == "read-only-dir" else 2), err
    assert digest(tmp_path) == before, "an input or an existing file changed"
    assert not temporaries(tmp_path) and not (outdir / "missing").exists()


def test_train_refuses_its_own_input_as_output(example_pipeline, tmp_path):
    inp = _inputs(example_pipeline, tmp_path)
    before = digest(tmp_path)
    rc, _, err = run_main("train", "--regions", inp["feats"], "--captions", inp["captions"], "-o", inp["feats"],
                          "--epochs", "1", *SMALL_MODEL_ARGS)
    assert rc == 2
    assert_one_line_error(rc, err, "not a directory")
    assert digest(tmp_path) == before


def test_an_input_by_another_name_is_still_refused(example_pipeline, tmp_path):
    inp = _inputs(example_pipeline, tmp_path)
    link = tmp_path / "alias.txt"
    os.link(inp["text"], link)  # the same file under another name
    before = digest(inp["dir"])
    rc, _, err = run_main("tokenize", inp["text"], "-o", link)
    assert rc == 2
    assert_one_line_error(rc, err, "is the input")
    assert digest(inp["dir"]) == before



# Inputs named by $SMCLI_* or smcli.toml (smcli/defaults.py) are inputs too: an output over
# one of them is refused like one over a flag's file, before any work.

DEFAULTED = {  # command -> (the setting that names the input, the args writing over it)
    "score": ("regions", lambda inp, model: ("score", "--model", model, "--captions", inp["captions"],
                                             "-o", inp["feats"])),
    "score-errors": ("captions", lambda inp, model: ("score", "--model", model, "--regions", inp["feats"],
                                                     "-o", inp["dir"] / "s.parquet", "--errors", inp["captions"])),
    "caption-rank": ("captions", lambda inp, model: ("caption-rank", "--model", model, "--regions", inp["feats"],
                                                     "-o", inp["captions"])),
    "retrieve": ("regions", lambda inp, model: ("retrieve", "--model", model, "-q", "a dog", "-o", inp["feats"])),
    "retrieve-image": ("captions", lambda inp, model: ("retrieve", "--model", model, "--image", inp["image"],
                                                       "-o", inp["captions"])),
    "retrieve-eval": ("captions", lambda inp, model: ("retrieve", "--model", model, "--regions", inp["feats"],
                                                      "--eval", "-o", inp["captions"])),
}


@pytest.mark.parametrize("source", ["env", "toml"])
@pytest.mark.parametrize("command", list(DEFAULTED))
def test_an_input_from_the_defaults_is_never_overwritten(example_pipeline, example_model, tmp_path, monkeypatch,
                                                          command, source):
    inp = _inputs(example_pipeline, tmp_path)
    key, args = DEFAULTED[command]
    path = inp["feats" if key == "regions" else "captions"]
    monkeypatch.delenv("SMCLI_REGIONS", raising=False)
    monkeypatch.delenv("SMCLI_CAPTIONS", raising=False)
    if source == "env":
        monkeypatch.setenv(f"SMCLI_{key.upper()}", str(path))
    else:
        (inp["dir"] / "smcli.toml").write_text(f'{key} = "{path.name}"\n')  # relative to the file
    before = digest(tmp_path)
    rc, _, err = run_main(*args(inp, example_model), cwd=inp["dir"])
    assert rc == 2, err
    assert_one_line_error(rc, err, "is the input")
    assert len(err.strip().splitlines()) == 1, err  # refused before any work
    assert digest(tmp_path) == before and not temporaries(tmp_path)


def test_explain_never_writes_over_its_photo(example_model, tmp_path, good_image_bytes):
    from PIL import Image

    photo = tmp_path / "photo.png"
    Image.open(EXAMPLES / "images" / sorted(os.listdir(EXAMPLES / "images"))[0]).save(photo)
    before = digest(tmp_path)
    rc, _, err = run_main("explain", "--model", example_model, "--image", photo, "--caption", "a dog", "-o", photo)
    assert rc == 2
    assert_one_line_error(rc, err, "is the input")
    assert digest(tmp_path) == before


# --errors FILE: checked with -o before any work (can be created, not an input, not -o)

ERRORS_COMMANDS = {
    "extract-regions": lambda inp, model, out: ("extract-regions", inp["image"], "--workers", "0", "-o", out),
    "tokenize": lambda inp, model, out: ("tokenize", inp["text"], "-o", out),
    "score": lambda inp, model, out: ("score", "--model", model, "--regions", inp["feats"], "--captions",
                                      inp["captions"], "-o", out),
    "caption-rank": lambda inp, model, out: ("caption-rank", "--model", model, "--regions", inp["feats"],
                                             "--captions", inp["captions"], "-o", out),
}


@pytest.mark.parametrize("hazard", ["missing-parent", "a-directory", "an-input", "the-output"])
@pytest.mark.parametrize("command", list(ERRORS_COMMANDS))
def test_errors_path_is_checked_before_the_work(example_pipeline, example_model, tmp_path, command, hazard):
    inp = _inputs(example_pipeline, tmp_path)
    out = tmp_path / "result.parquet"
    errors = {"missing-parent": tmp_path / "no" / "errors.csv", "a-directory": inp["dir"],
              "an-input": inp[OWN_INPUT[command]], "the-output": out}[hazard]
    before = digest(tmp_path)
    rc, _, err = run_main(*ERRORS_COMMANDS[command](inp, example_model, out), "--errors", errors)
    assert rc == 2, err
    assert_one_line_error(rc, err, "--errors")
    assert len(err.strip().splitlines()) == 1, err  # nothing ran: no progress, no counts
    assert not out.exists() and digest(tmp_path) == before and not temporaries(tmp_path)
    assert not (tmp_path / "no").exists()

# ---------------------------------------------------------------------------------------
# 2. Non-finite numbers never rank, never count as a hit, never pass unreported


def _with_nan(src: Path, dst: Path, column: str, row: int, value: float = float("nan")) -> Path:
    """A copy of a regions file with one value of ``column`` at ``row`` set to ``value``."""
    pf = pq.ParquetFile(src)
    table = pf.read()
    col = table.column(column).combine_chunks()
    values = col.flatten().to_numpy(zero_copy_only=False).copy()
    width = col.type.list_size
    values[row * width + 3] = value
    arr = pa.FixedSizeListArray.from_arrays(pa.array(values, col.type.value_type), width)
    table = table.set_column(table.schema.get_field_index(column), column, arr)
    pq.write_table(table.replace_schema_metadata(pf.schema_arrow.metadata), dst)
    return dst


@pytest.mark.parametrize("column,value", [("global", float("nan")), ("regions", float("inf")),
                                          ("regions", float("nan"))])
def test_regions_file_with_nonfinite_features_is_refused_at_load(example_pipeline, tmp_path, column, value):
    from smcli.images.features import load_regions

    bad = _with_nan(example_pipeline["feats"], tmp_path / "bad.parquet", column, 5, value)
    image_id = pq.read_table(bad, columns=["image_id"]).column(0)[5].as_py()
    refused(lambda: load_regions(bad), "bad.parquet", "non-finite", "row 5", image_id, column)


def test_score_on_nan_features_exits_1_and_writes_nothing(example_pipeline, example_model, tmp_path):
    bad = _with_nan(example_pipeline["feats"], tmp_path / "bad.parquet", "global", 0)
    out = tmp_path / "scores.parquet"
    rc, _, err = run_main("score", "--model", example_model, "--regions", bad, "--captions",
                          example_pipeline["captions"], "-o", out)
    assert rc == 1
    assert_one_line_error(rc, err, "non-finite")
    assert not out.exists() and not temporaries(tmp_path)


def test_nan_model_weights_are_refused(example_model, tmp_path):
    import torch
    from safetensors.torch import load_file, save_file

    from smcli.models.factory import load_model

    m = copy_model(example_model, tmp_path / "m")
    state = load_file(m / "model.safetensors")
    name = next(k for k, v in state.items() if v.is_floating_point())
    state[name] = state[name].clone().fill_(float("nan"))
    save_file(state, m / "model.safetensors")
    assert torch.isnan(load_file(m / "model.safetensors")[name]).all()
    refused(lambda: load_model(m), "non-finite", name)


def test_nan_backbone_features_are_rejected_and_counted_not_written(tmp_path, monkeypatch):
    import smcli.images.extract as ex

    real = ex._run_network

    def nan_network(*args, **kwargs):
        regions, glob_ = real(*args, **kwargs)
        return np.full_like(regions, np.nan), glob_

    monkeypatch.setattr(ex, "_run_network", nan_network)
    imgs = tmp_path / "imgs"
    imgs.mkdir()
    for name in sorted(os.listdir(EXAMPLES / "images"))[:2]:
        shutil.copy(EXAMPLES / "images" / name, imgs / name)
    out = tmp_path / "feats.parquet"
    counts = ex.extract_regions(str(imgs), str(out), workers=0)
    assert counts["failed"] == 2 and counts["written"] == 0
    assert pq.read_metadata(out).num_rows == 0  # complete, and empty: no NaN row was written
    assert not temporaries(tmp_path)


@pytest.mark.parametrize("where", ["i2t", "t2i"])
def test_nan_scores_never_count_as_hits(where):
    from smcli.evaluation.recall import recall_metrics

    scores = np.random.default_rng(0).standard_normal((4, 8))
    caption_image = np.repeat(np.arange(4), 2)
    bad = scores.copy()
    bad[2, 3] = np.nan
    if where == "i2t":
        refused(lambda: recall_metrics(bad, caption_image), "non-finite", "image row 2", "caption column 3")
    else:
        refused(lambda: recall_metrics(scores, caption_image, bad), "text-to-image", "non-finite")


def test_mean_rank_is_never_below_1():
    from smcli.evaluation.recall import recall_metrics

    rng = np.random.default_rng(1)
    caption_image = np.repeat(np.arange(6), 5)
    for scores in (rng.standard_normal((6, 30)), np.zeros((6, 30)), rng.integers(0, 2, (6, 30)).astype(float)):
        m = recall_metrics(scores, caption_image)
        assert m.i2t_meanr >= 1 and m.t2i_meanr >= 1 and m.i2t_medr >= 1 and m.t2i_medr >= 1


def test_nan_scores_never_rank():
    from smcli.inference.ranking import rank, rerank_shortlists

    grid = np.random.default_rng(2).standard_normal((2, 5))
    grid[1, 4] = np.nan
    refused(lambda: rank(np.ones((2, 3)), top_k=3, many_to_many=True, shortlist=None,
                         exhaustive_fn=lambda: grid), "non-finite", "row 1")
    refused(lambda: rerank_shortlists(np.array([[0, 1, -1]]), lambda q, c: np.array([0.5, np.nan]), 2),
            "non-finite")
    refused(lambda: rank(np.array([[np.nan, 1.0]]), top_k=1, many_to_many=False, shortlist=None,
                         cand_emb=np.eye(2)), "query embeddings")


# ---------------------------------------------------------------------------------------
# Damaged files x every reader


@pytest.fixture(scope="session")
def good_image_bytes() -> bytes:
    return (EXAMPLES / "images" / sorted(os.listdir(EXAMPLES / "images"))[0]).read_bytes()


@pytest.mark.parametrize("damage", list(DAMAGES))
def test_damaged_image_is_rejected_and_counted(good_image_bytes, tmp_path, damage):
    from smcli.images.extract import extract_regions

    imgs = tmp_path / "imgs"
    imgs.mkdir()
    (imgs / "a_good.jpg").write_bytes(good_image_bytes)
    (imgs / "b_bad.jpg").write_bytes(DAMAGES[damage](good_image_bytes))
    before = digest(imgs)
    out = tmp_path / "feats.parquet"
    counts = extract_regions(str(imgs), str(out), workers=0)
    table = pq.read_table(out)
    if damage in TRUNCATIONS:
        assert counts["failed"] == 1 and table.column("image_id").to_pylist() == ["a_good.jpg"]
    else:  # a flipped byte may decode into other pixels; either way, counted or written whole
        assert counts["failed"] + counts["written"] == 2 and table.num_rows == counts["written"]
    assert digest(imgs) == before and not temporaries(tmp_path)


CAPTION_DAMAGES = {
    "empty": b"",
    "binary": bytes(range(256)) * 4,
    "no-tab": b"just a caption without an image\n",
    "bad-utf8": b"dog.jpg#0\ta \xff\xfe dog\n",
    "nul": b"dog.jpg#0\ta dog\x00\x00\n",
}


@pytest.mark.parametrize("damage", list(CAPTION_DAMAGES))
def test_damaged_caption_file_is_one_line_or_counted(tmp_path, damage):
    src = tmp_path / "captions.txt"
    src.write_bytes(CAPTION_DAMAGES[damage])
    out = tmp_path / "caps.parquet"
    rc, _, err = run_main("tokenize", src, "-o", out)
    assert "Traceback" not in err
    if rc == 0:
        assert "rejected" in err.splitlines()[-1] and pq.read_metadata(out).num_rows >= 0
    else:
        assert_one_line_error(rc, err)
        assert not out.exists()
    assert src.read_bytes() == CAPTION_DAMAGES[damage] and not temporaries(tmp_path)


@pytest.mark.parametrize("damage", list(DAMAGES))
@pytest.mark.parametrize("kind", ["regions", "captions"])
def test_damaged_parquet_is_refused(example_pipeline, matcher, tmp_path, kind, damage):
    from smcli.images.features import load_regions
    from smcli.inference.tasks import load_captions

    src = example_pipeline["feats" if kind == "regions" else "captions"]
    bad = tmp_path / f"bad-{kind}.parquet"
    bad.write_bytes(DAMAGES[damage](src.read_bytes()))
    read = (lambda: load_regions(bad)) if kind == "regions" else (lambda: load_captions(matcher, str(bad)))
    if damage in TRUNCATIONS:
        refused(read, bad.name)
    else:
        refused_or_ok(read)


@pytest.mark.parametrize("case", ["wrong-kind", "foreign-parquet", "string-features", "null-row"])
def test_ill_typed_regions_file_is_refused(example_pipeline, tmp_path, case):
    from smcli.images.features import load_regions

    bad = tmp_path / "bad.parquet"
    if case == "wrong-kind":
        shutil.copy(example_pipeline["captions"], bad)
    else:
        pf = pq.ParquetFile(example_pipeline["feats"])
        table = pf.read()
        if case == "foreign-parquet":
            table = table.replace_schema_metadata(None)
        elif case == "string-features":
            i = table.schema.get_field_index("global")
            table = table.set_column(i, "global", pa.array(["x"] * table.num_rows)).replace_schema_metadata(
                pf.schema_arrow.metadata)
        else:
            i = table.schema.get_field_index("global")
            col = table.column("global").combine_chunks()
            masked = pa.FixedSizeListArray.from_arrays(col.flatten(), col.type.list_size,
                                                       mask=pa.array([True] + [False] * (len(col) - 1)))
            table = table.set_column(i, "global", masked).replace_schema_metadata(pf.schema_arrow.metadata)
        pq.write_table(table, bad)
    refused(lambda: load_regions(bad))


PAIRS = {
    "empty": "",
    "header-only": "image_id,caption\n",
    "wrong-columns": "photo,text\na,b\n",
    "unknown-image": "image_id,caption\nnot-an-image,a dog\n",
    "binary": "\x00\x01\x02,\xff\n",
}


@pytest.mark.parametrize("case", list(PAIRS))
def test_damaged_pairs_file_is_one_line_or_counted(example_pipeline, example_model, tmp_path, case):
    pairs = tmp_path / "pairs.csv"
    pairs.write_bytes(PAIRS[case].encode("utf-8", "surrogateescape"))
    out = tmp_path / "scores.parquet"
    rc, _, err = run_main("score", "--model", example_model, "--regions", example_pipeline["feats"],
                          "--pairs", pairs, "-o", out)
    assert "Traceback" not in err
    if rc == 0:
        last = err.strip().splitlines()[-1]
        assert "rejected" in last and "rejected 0" not in last, err
    else:
        assert_one_line_error(rc, err)
        assert not out.exists()
    assert not temporaries(tmp_path)


CONFIG_DAMAGES = {
    **DAMAGES,
    "not-an-object": lambda b: b"[1, 2, 3]",
    "dim-a-string": lambda b: _config_set(b, "emb_dim", "64"),
    "dim-negative": lambda b: _config_set(b, "emb_dim", -5),
    "dim-float": lambda b: _config_set(b, "hidden_dim", 6.5),
    "unknown-variant": lambda b: _config_set(b, "variant", "transformer"),
    "model-missing": lambda b: json.dumps({k: v for k, v in json.loads(b).items() if k != "model"}).encode(),
}


def _config_set(raw: bytes, key: str, value) -> bytes:
    cfg = json.loads(raw)
    cfg["model"][key] = value
    return json.dumps(cfg).encode()


@pytest.mark.parametrize("damage", list(CONFIG_DAMAGES))
def test_damaged_model_config_is_refused(example_model, tmp_path, damage):
    from smcli.models.factory import load_model

    m = copy_model(example_model, tmp_path / "m")
    cfg = m / "config.json"
    cfg.write_bytes(CONFIG_DAMAGES[damage](cfg.read_bytes()))
    if damage.startswith("scribble"):  # random bytes may land in a value nothing checks (a version)
        refused_or_ok(lambda: load_model(m))
    else:
        refused(lambda: load_model(m), str(m))


@pytest.mark.parametrize("damage", list(DAMAGES))
def test_damaged_model_weights_are_refused(example_model, tmp_path, damage):
    from smcli.models.factory import load_model

    m = copy_model(example_model, tmp_path / "m")
    w = m / "model.safetensors"
    w.write_bytes(DAMAGES[damage](w.read_bytes()))
    if damage in TRUNCATIONS:
        refused(lambda: load_model(m), "model.safetensors")
    else:
        refused_or_ok(lambda: load_model(m))


@pytest.fixture(scope="session")
def resume_state(example_pipeline, tmp_path_factory) -> Path:
    """A model directory with a resume state (a short run of 1 epoch)."""
    out = tmp_path_factory.mktemp("resume") / "m"
    rc, _, err = run_main("train", "--regions", example_pipeline["feats"], "--captions",
                          example_pipeline["captions"], "-o", out, "--epochs", "1", "--batch-size", "16",
                          *SMALL_MODEL_ARGS)
    assert rc == 0, err
    assert (out / "train_state.safetensors").is_file()
    return out


RESUME_DAMAGES = ["empty", "head16", "half", "flip-end", "json-garbage"] + (
    [d for d in DAMAGES if d not in ("empty", "head16", "half", "flip-end")] if faults_long() else [])


@pytest.mark.parametrize("damage", RESUME_DAMAGES)
def test_damaged_resume_state_is_refused(example_pipeline, resume_state, tmp_path, damage):
    from smcli.training.checkpoint import STATE_FILE

    m = tmp_path / "m"
    shutil.copytree(resume_state, m)
    state = m / STATE_FILE
    raw = state.read_bytes()
    if damage == "json-garbage":  # a valid safetensors file whose progress is not JSON
        from safetensors.torch import load_file, save_file

        save_file(load_file(state), state, metadata={"progress": "{oops", "param_groups": "[]"})
    else:
        state.write_bytes(DAMAGES[damage](raw))
    damaged = state.read_bytes()
    rc, _, err = run_main("train", "--regions", example_pipeline["feats"], "--captions",
                          example_pipeline["captions"], "-o", m, "--epochs", "2", "--batch-size", "16",
                          "--resume", *SMALL_MODEL_ARGS)
    if damage not in TRUNCATIONS and damage != "json-garbage" and rc == 0:  # a flip may land in a tensor value
        return
    assert rc == 1, err
    assert_one_line_error(rc, err, STATE_FILE)
    assert state.read_bytes() == damaged and not temporaries(m)


@pytest.mark.parametrize("case", ["nan-weight", "negative-second-moment"])
def test_resume_state_with_bad_values_is_refused_before_training(example_pipeline, resume_state, tmp_path, case):
    """A value a flipped bit made NaN, or a negative AdamW second moment (a flipped sign bit),
    is refused naming the state file, instead of surfacing as NaN scores after an epoch."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    from smcli.training.checkpoint import STATE_FILE

    m = tmp_path / "m"
    shutil.copytree(resume_state, m)
    state = m / STATE_FILE
    with safe_open(str(state), framework="pt") as f:
        meta, tensors = f.metadata(), {k: f.get_tensor(k) for k in f.keys()}
    want = "model." if case == "nan-weight" else ".exp_avg_sq"
    key = next(k for k in sorted(tensors) if want in k and tensors[k].is_floating_point())
    tensors[key] = tensors[key].clone()
    tensors[key].view(-1)[0] = float("nan") if case == "nan-weight" else -1.0
    save_file(tensors, state, metadata=meta)
    rc, _, err = run_main("train", "--regions", example_pipeline["feats"], "--captions",
                          example_pipeline["captions"], "-o", m, "--epochs", "2", "--batch-size", "16",
                          "--resume", *SMALL_MODEL_ARGS)
    assert_one_line_error(rc, err, STATE_FILE, key)


def _progress_case(progress: dict, case: str) -> dict:
    """A resume state's progress with one key missing or of the wrong type."""
    kind, key = case.split(":", 1)
    p = json.loads(json.dumps(progress))
    if kind == "missing":
        del p[key]
    elif kind == "string":
        p[key] = "3"
    elif kind == "negative":
        p[key] = -1
    elif kind == "list":
        p[key] = [1, 2]
    elif kind == "nan":
        p[key] = float("nan")
    elif kind == "config":  # a saved setting that does not check out
        p["config"][key] = "transformer" if key == "variant" else -4
    elif kind == "option":
        p["options"][key] = "many" if key == "epochs" else -1.0
    return p


PROGRESS_CASES = ["missing:epoch", "missing:step", "missing:best_rsum", "missing:config", "missing:options",
                  "string:epoch", "negative:step", "list:options", "string:config", "nan:best_rsum",
                  "list:pairs", "config:variant", "config:emb_dim", "option:epochs", "option:lr"]


@pytest.mark.parametrize("case", PROGRESS_CASES)
def test_resume_state_with_missing_or_ill_typed_keys_is_one_line(example_pipeline, resume_state, tmp_path, case):
    """A resume state that is a valid file but whose progress lacks a key, holds the wrong
    type, or saved settings that no longer check out: one line naming the file, exit 1."""
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    from smcli.training.checkpoint import STATE_FILE

    m = tmp_path / "m"
    shutil.copytree(resume_state, m)
    state = m / STATE_FILE
    with safe_open(str(state), framework="pt") as f:
        meta = f.metadata()
    progress = _progress_case(json.loads(meta["progress"]), case)
    save_file(load_file(state), state, metadata={**meta, "progress": json.dumps(progress)})
    before = digest(m)
    rc, _, err = run_main("train", "--regions", example_pipeline["feats"], "--captions",
                          example_pipeline["captions"], "-o", m, "--epochs", "2", "--batch-size", "16",
                          "--resume", *SMALL_MODEL_ARGS)
    assert rc == 1, err
    line = assert_one_line_error(rc, err, STATE_FILE, "damaged resume state")
    assert case.split(":", 1)[1] in line or case.startswith("option") or case.startswith("config"), line
    assert digest(m) == before and not temporaries(m)


GALLERY_FILES = ["meta.json", "images.parquet", "embeddings.faiss", "keys.npy"]


@pytest.mark.parametrize("damage", list(DAMAGES) if faults_long() else ["empty", "head16", "half", "last7", "flip-mid"])
@pytest.mark.parametrize("name", GALLERY_FILES)
def test_damaged_gallery_is_refused(gallery, tmp_path, name, damage):
    from smcli.inference.gallery import open_gallery

    g = tmp_path / "g"
    shutil.copytree(gallery, g)
    f = g / name
    f.write_bytes(DAMAGES[damage](f.read_bytes()))
    if damage in TRUNCATIONS:
        refused(lambda: open_gallery(g), "damaged smcli index" if damage != "empty" or name != "meta.json" else "")
    else:
        refused_or_ok(lambda: open_gallery(g))


@pytest.mark.parametrize("meta", [{"sides": 5}, {"sides": ["nope"]}, {"images": "many"}, [], {"images": 999}])
def test_ill_typed_gallery_meta_is_refused(gallery, tmp_path, meta):
    from smcli.inference.gallery import open_gallery

    g = tmp_path / "g"
    shutil.copytree(gallery, g)
    if isinstance(meta, dict):
        meta = {**json.loads((g / "meta.json").read_text()), **meta}
    (g / "meta.json").write_text(json.dumps(meta))
    refused(lambda: open_gallery(g), "damaged smcli index")


def test_retrieve_on_a_damaged_gallery_is_one_line(example_model, gallery, tmp_path):
    g = tmp_path / "g"
    shutil.copytree(gallery, g)
    (g / "embeddings.faiss").write_bytes(b"")
    rc, _, err = run_main("retrieve", "--model", example_model, "--index", g, "-q", "a dog", "-o",
                          tmp_path / "r.parquet")
    assert rc == 1
    assert_one_line_error(rc, err, "damaged smcli index", "embeddings.faiss")


def test_extract_image_size_zero_is_a_usage_error(tmp_path, good_image_bytes):
    img = tmp_path / "a.jpg"
    img.write_bytes(good_image_bytes)
    rc, _, err = run_main("extract-regions", img, "--image-size", "0", "-o", tmp_path / "f.parquet")
    assert rc == 2
    assert_one_line_error(rc, err, "--image-size 0")
    assert not (tmp_path / "f.parquet").exists()


# ---------------------------------------------------------------------------------------
# Temporaries on a full disk, and SIGTERM


def test_atomic_file_leaves_no_temporary_when_the_disk_is_full(tmp_path, monkeypatch):
    from smcli.stage import AtomicFile

    target = tmp_path / "out.bin"
    with pytest.raises(OSError), AtomicFile(target) as f:
        f.handle.write(b"x")
        raise OSError(errno.ENOSPC, "No space left on device")
    assert not target.exists() and not list(tmp_path.iterdir())

    def full(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", full)
    f = AtomicFile(target)
    f.handle.write(b"data")
    with pytest.raises(OSError):
        f.commit()
    assert not list(tmp_path.iterdir())


def test_train_leaves_no_hidden_model_temporary_on_a_full_disk(example_model, tmp_path, monkeypatch):
    from smcli.models.factory import load_model, save_model

    loaded = load_model(example_model)

    def full(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", full)
    out = tmp_path / "m"
    with pytest.raises(OSError):
        save_model(out, loaded.model, loaded.info, loaded.vocab)
    assert not temporaries(tmp_path) and not (out / "model.safetensors").exists()


def test_sigterm_is_handled_like_ctrl_c(example_pipeline, tmp_path):
    out = tmp_path / "m"
    cmd = [sys.executable, "-m", "smcli", "train", "--regions", str(example_pipeline["feats"]), "--captions",
           str(example_pipeline["captions"]), "-o", str(out), "--epochs", "500", "--patience", "1000",
           "--batch-size", "16", *SMALL_MODEL_ARGS]
    proc = subprocess.Popen(cmd, cwd=REPO, env=child_env(None), stdin=subprocess.DEVNULL,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    lines = []
    for line in proc.stderr:  # wait until training runs (a model has been saved once)
        lines.append(line)
        if "epoch 2:" in line:
            break
    time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    rest = proc.stderr.read()
    proc.wait(timeout=120)
    err = "".join(lines) + rest
    assert proc.returncode == 143, err
    assert "Traceback" not in err and err.strip().splitlines()[-1] == "smcli: terminated"
    assert not temporaries(out)
    from smcli.models.factory import load_model

    load_model(out)  # what is under the final names is complete


# ---------------------------------------------------------------------------------------
# 6. Features vs batching: the guarantee README states


def test_features_do_not_depend_on_the_batch_size_below_16(tmp_path, good_image_bytes):
    from smcli.images.features import load_regions

    imgs = tmp_path / "imgs"
    imgs.mkdir()
    names = sorted(os.listdir(EXAMPLES / "images"))[:4]
    for name in names:
        shutil.copy(EXAMPLES / "images" / name, imgs / name)
    shutil.copy(EXAMPLES / "images" / names[0], imgs / "zz_copy.jpg")  # a duplicate image, another name
    runs = {}
    for bs in (1, 5):
        out = tmp_path / f"b{bs}.parquet"
        rc, _, err = run_main("extract-regions", imgs, "--batch-size", str(bs), "--workers", "0", "-o", out)
        assert rc == 0, err
        runs[bs] = load_regions(out)
    a, b = runs[1], runs[5]
    assert a.image_ids == b.image_ids
    np.testing.assert_array_equal(a.regions, b.regions)
    np.testing.assert_array_equal(a.global_, b.global_)
    dup = a.image_ids.index("zz_copy.jpg")
    np.testing.assert_array_equal(b.regions[dup], b.regions[0])  # two identical images: equal features
