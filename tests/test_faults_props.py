"""Fault injection, part 3 (issue 15): property-based readers (hypothesis).

For every reader of a file smcli takes (caption formats, regions Parquet, pair and
candidate files, model config, resume state, saved galleries), arbitrary damage -- bytes
cut, flipped, overwritten, inserted or deleted anywhere, and fields replaced by any JSON
value -- gives either a valid result or the project's one-line error (an ``SmcliError``),
never another exception. Valid results are checked too (finite features, consistent
lengths), so that damage cannot pass as data.

``make test`` runs a few examples per property, derandomized (the same ones every run);
``make test-faults-long`` runs 25 times as many, random.
"""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import faults_long

from smcli.errors import SmcliError

hypothesis = pytest.importorskip("hypothesis", reason="hypothesis is in the dev extra: pip install -e '.[dev]'")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

EXAMPLES_PER_PROPERTY = 200 if faults_long() else 8
settings.register_profile(
    "smcli-faults", max_examples=EXAMPLES_PER_PROPERTY, deadline=None, derandomize=not faults_long(),
    database=None, print_blob=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much])
PROFILE = settings.get_profile("smcli-faults")


# ---------------------------------------------------------------------------------------
# Strategies: damage to bytes, and JSON values anywhere


class Damage:
    """Edits to a file's bytes: ("cut", at), ("flip", at, mask), ("overwrite", at, bytes),
    ("insert", at, bytes), ("delete", at, n). Shown by its edits (a failing example stays
    readable however large the file)."""

    def __init__(self, edits: list[tuple]):
        self.edits = edits

    def __repr__(self) -> str:
        return f"Damage({self.edits!r})"

    def __call__(self, data: bytes) -> bytes:
        out = bytearray(data)
        for op, at, *arg in self.edits:
            at = min(at, len(out))
            if op == "cut":
                del out[at:]
            elif op == "flip" and out:
                out[min(at, len(out) - 1)] ^= arg[0]
            elif op == "overwrite":
                out[at:at + len(arg[0])] = arg[0]
            elif op == "insert":
                out[at:at] = arg[0]
            elif op == "delete":
                del out[at:at + arg[0]]
        return bytes(out)


def damaged(data: bytes) -> st.SearchStrategy[bytes]:
    """``data`` after 1 to 4 edits: cut, flip, overwrite, insert or delete, anywhere."""
    at = st.integers(0, len(data))
    edit = st.one_of(
        st.tuples(st.just("cut"), at),
        st.tuples(st.just("flip"), at, st.integers(1, 255)),
        st.tuples(st.just("overwrite"), at, st.binary(min_size=1, max_size=16)),
        st.tuples(st.just("insert"), at, st.binary(min_size=1, max_size=64)),
        st.tuples(st.just("delete"), at, st.integers(1, 64)),
    )
    return st.lists(edit, min_size=1, max_size=4).map(Damage).map(lambda d: DamagedBytes(d, d(data)))


class DamagedBytes(bytes):
    """Damaged bytes that print as their edits."""

    def __new__(cls, damage: Damage, data: bytes):
        obj = super().__new__(cls, data)
        obj.damage = damage
        return obj

    def __repr__(self) -> str:
        return f"<{len(self)} bytes after {self.damage!r}>"


JSON = st.recursive(
    st.none() | st.booleans() | st.integers(-(2 ** 63), 2 ** 63) | st.floats(allow_nan=True) | st.text(max_size=12),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12)


@st.composite
def mutated(draw, value, depth: int = 0):
    """A JSON value like ``value``: some keys dropped, some values replaced by any JSON
    (recursively into objects), or an unrelated value altogether."""
    if depth > 2 or not isinstance(value, dict) or draw(st.integers(0, 9)) == 0:
        return draw(JSON) if draw(st.booleans()) else value
    out = dict(value)
    keys = sorted(out)
    for key in draw(st.lists(st.sampled_from(keys), max_size=3, unique=True)) if keys else []:
        action = draw(st.sampled_from(["drop", "replace", "recurse"]))
        if action == "drop":
            del out[key]
        elif action == "replace":
            out[key] = draw(JSON)
        else:
            out[key] = draw(mutated(out[key], depth + 1))
    if draw(st.integers(0, 4)) == 0:
        out[draw(st.text(max_size=8))] = draw(JSON)
    return out


def ok_or_refused(fn):
    """``fn()``'s result, or None after one SmcliError with a one-line message. Any other
    exception fails the property (it would be a traceback)."""
    try:
        return fn()
    except SmcliError as exc:
        msg = str(exc)
        assert msg.strip() and "\n" not in msg.strip(), msg
        return None


def write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


# ---------------------------------------------------------------------------------------
# Caption formats (smcli/text/readers.py)

CAPTION_SAMPLES = {
    "flickr": b"dog.jpg#0\ta dog runs on the grass\ndog.jpg#1\ta brown dog\ncat.jpg#0\ta cat sleeps\n",
    "coco": json.dumps({"images": [{"id": 1, "file_name": "dog.jpg"}, {"id": 2, "file_name": "cat.jpg"}],
                        "annotations": [{"id": 10, "image_id": 1, "caption": "a dog runs"},
                                        {"id": 11, "image_id": 2, "caption": "a cat sleeps"}]}).encode(),
    "karpathy": json.dumps({"images": [{"filename": "dog.jpg", "split": "train", "sentences": [
        {"raw": "a dog runs", "tokens": ["a", "dog", "runs"]}]}, {"filename": "cat.jpg", "split": "val",
                                                                   "sentences": [{"tokens": ["a", "cat"]}]}]}).encode(),
    "csv": b'image,caption,split\ndog.jpg,"a dog, running",train\ncat.jpg,a cat,val\n',
    "txt": b"a dog runs on the grass\na cat sleeps\n",
}


def _parquet_captions() -> bytes:
    sink = pa.BufferOutputStream()
    pq.write_table(pa.table({"image_id": ["dog.jpg", "cat.jpg"], "caption": ["a dog", "a cat"]}), sink)
    return sink.getvalue().to_pybytes()


CAPTION_SAMPLES["parquet"] = _parquet_captions()


def _read_all(path: Path, fmt: str):
    from smcli.report import RunReport
    from smcli.text.readers import read_captions

    report = RunReport("tokenize", show=0)
    _, records = read_captions(str(path), fmt, report)
    out = list(records)
    for r in out:  # what the tokenizer relies on
        assert isinstance(r.caption, str) and isinstance(r.caption_id, str), r
        assert r.image_id is None or isinstance(r.image_id, str), r
        assert r.split is None or isinstance(r.split, str), r
    return out


@pytest.mark.parametrize("sample", list(CAPTION_SAMPLES))
@pytest.mark.parametrize("fmt", ["auto", "given"])
def test_caption_readers_on_damaged_files(tmp_path, sample, fmt):
    @PROFILE
    @given(data=damaged(CAPTION_SAMPLES[sample]))
    def prop(data):
        path = write(tmp_path / f"captions.{'csv' if sample == 'csv' else 'txt'}", data)
        ok_or_refused(lambda: _read_all(path, "auto" if fmt == "auto" else sample))

    prop()


@pytest.mark.parametrize("sample", ["coco", "karpathy"])
def test_caption_json_readers_on_any_json(tmp_path, sample):
    base = json.loads(CAPTION_SAMPLES[sample])

    @PROFILE
    @given(doc=mutated(base))
    def prop(doc):
        path = write(tmp_path / "captions.json", json.dumps(doc).encode())
        ok_or_refused(lambda: _read_all(path, sample))

    prop()


def test_tokenize_on_damaged_files_writes_whole_files_or_nothing(tmp_path):
    """The whole stage: a complete captions file, or one error line and no file."""
    from smcli.text.captions import tokenize_captions

    @PROFILE
    @given(sample=st.sampled_from(sorted(CAPTION_SAMPLES)), data=st.data())
    def prop(sample, data):
        src = write(tmp_path / "in.txt", data.draw(damaged(CAPTION_SAMPLES[sample])))
        out = tmp_path / "out.parquet"
        out.unlink(missing_ok=True)
        if ok_or_refused(lambda: tokenize_captions(src, out)) is None:
            assert not out.exists()
        else:
            assert pq.read_metadata(out).num_rows >= 0
        assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []

    prop()


# ---------------------------------------------------------------------------------------
# Regions Parquet (smcli/images/features.py load_regions)


@pytest.fixture(scope="module")
def small_regions(tmp_path_factory) -> Path:
    """A small regions file as extract-regions writes it (2x2 grid, dim 4, 3 images)."""
    from smcli.images.features import regions_schema
    from smcli.stage import OutputTarget, StageWriter, new_meta

    path = tmp_path_factory.mktemp("regions") / "feats.parquet"
    producer = {"command": "extract-regions", "backbone": "efficientnet-lite0", "weights": "none",
                "pretrained": False, "image_size": 64, "grid": [2, 2], "dim": 4, "global_dim": 4,
                "dtype": "float16"}
    rng = np.random.default_rng(0)
    schema = regions_schema((2, 2), 4, 4, "float16")
    with StageWriter(OutputTarget(path), schema, new_meta("regions", producer)) as w:
        w.write({"image_id": ["a.jpg", "b.jpg", "c.jpg"], "path": ["a.jpg", "b.jpg", "c.jpg"],
                 "width": [10, 20, 30], "height": [5, 6, 7],
                 "regions": rng.random((3, 16)).astype(np.float16).tolist(),
                 "global": rng.random((3, 4)).astype(np.float16).tolist()})
    return path


def _load_and_check(path: Path):
    from smcli.images.features import feature_signature, load_regions

    feats = load_regions(path)
    n = len(feats.image_ids)
    assert feats.regions.shape[0] == n == feats.global_.shape[0] == len(feats.paths)
    assert all(isinstance(x, str) for x in feats.image_ids + feats.paths)
    assert np.isfinite(feats.regions).all() and np.isfinite(feats.global_).all()
    feature_signature(feats.meta)  # what a model compares: also valid or one line
    return feats


def test_regions_reader_on_damaged_bytes(small_regions, tmp_path):
    @PROFILE
    @given(data=damaged(small_regions.read_bytes()))
    def prop(data):
        ok_or_refused(lambda: _load_and_check(write(tmp_path / "feats.parquet", data)))

    prop()


def test_regions_reader_on_any_metadata(small_regions, tmp_path):
    """The smcli metadata (kind, versions, the producer: grid, dim, image_size, ...) with
    keys dropped or given any JSON value."""
    pf = pq.ParquetFile(small_regions)
    table = pf.read()
    header = json.loads(pf.schema_arrow.metadata[b"smcli"])

    @PROFILE
    @given(meta=mutated(header))
    def prop(meta):
        path = tmp_path / "feats.parquet"
        pq.write_table(table.replace_schema_metadata({b"smcli": json.dumps(meta).encode()}), path)
        ok_or_refused(lambda: _load_and_check(path))

    prop()


# ---------------------------------------------------------------------------------------
# Pair and candidate files (smcli/inference/inputs.py), read and scored


@pytest.fixture(scope="module")
def scoring(example_pipeline, example_model):
    from smcli.inference.matcher import MatchModel
    from smcli.inference.tasks import load_captions, load_features

    matcher = MatchModel(str(example_model), device="cpu", precision="fp32")
    feats = load_features(matcher, str(example_pipeline["feats"]))
    caps = load_captions(matcher, str(example_pipeline["captions"]))
    return matcher, feats, caps


PAIRS_SAMPLE = "image_id,caption\n{a},a dog runs on the grass\n{b},a man rides a bike\n"
CANDIDATES_SAMPLE = "image_id,caption\n{a},a dog runs\n{a},a red car\n{b},a bike\n"


@pytest.mark.parametrize("kind", ["pairs", "candidates"])
def test_pair_and_candidate_files(scoring, tmp_path, kind):
    from smcli.inference.inputs import ImageSet
    from smcli.inference.tasks import rank_captions, score_pairs
    from smcli.report import RunReport

    matcher, feats, caps = scoring
    a, b = feats.image_ids[:2]
    sample = (PAIRS_SAMPLE if kind == "pairs" else CANDIDATES_SAMPLE).format(a=a, b=b).encode()
    images = ImageSet(feats.image_ids[:2], feats.paths[:2], feats.regions[:2], feats.global_[:2])

    def run(path: Path):
        report = RunReport(kind, show=0)
        if kind == "pairs":
            table = score_pairs(matcher, feats, caps, str(path), report)
        else:
            table = rank_captions(matcher, images, None, str(path), 0, 100, report)
        scores = table.column("score").to_numpy()
        assert len(scores) and np.isfinite(scores).all()
        return table

    @PROFILE
    @given(data=st.one_of(damaged(sample), st.binary(max_size=200),
                          st.text(max_size=200).map(str.encode)))
    def prop(data):
        ok_or_refused(lambda: run(write(tmp_path / f"{kind}.csv", data)))

    prop()


def test_pairs_as_damaged_parquet(scoring, tmp_path):
    from smcli.inference.tasks import score_pairs
    from smcli.report import RunReport

    matcher, feats, caps = scoring
    sink = pa.BufferOutputStream()
    pq.write_table(pa.table({"image_id": feats.image_ids[:3], "caption_id": caps.caption_ids[:3]}), sink)

    @PROFILE
    @given(data=damaged(sink.getvalue().to_pybytes()))
    def prop(data):
        path = write(tmp_path / "pairs.parquet", data)
        ok_or_refused(lambda: score_pairs(matcher, feats, caps, str(path), RunReport("score", show=0)))

    prop()


# ---------------------------------------------------------------------------------------
# Model config (models/config.py ModelConfig.from_dict, factory.load_model)


def test_model_config_from_any_json(example_model):
    from smcli.models.config import ModelConfig

    base = json.loads((example_model / "config.json").read_text())["model"]

    @PROFILE
    @given(data=mutated(base))
    def prop(data):
        cfg = ok_or_refused(lambda: ModelConfig.from_dict(data))
        if cfg is not None:  # every accepted number is a finite one of its type
            for key, value in cfg.to_dict().items():
                assert not isinstance(value, float) or math.isfinite(value), (key, value)

    prop()


def test_model_directory_with_a_damaged_config(example_model, tmp_path):
    from smcli.models.factory import load_model

    m = tmp_path / "m"
    shutil.copytree(example_model, m, ignore=shutil.ignore_patterns("train_state.safetensors"))
    raw = (example_model / "config.json").read_bytes()

    @PROFILE
    @given(data=damaged(raw))
    def prop(data):
        write(m / "config.json", data)
        ok_or_refused(lambda: load_model(m))

    prop()


# ---------------------------------------------------------------------------------------
# Resume state (training/checkpoint.py)


@pytest.fixture(scope="module")
def resume_dir(example_pipeline, tmp_path_factory) -> Path:
    from conftest import SMALL_MODEL_ARGS, run_main

    out = tmp_path_factory.mktemp("resume") / "m"
    rc, _, err = run_main("train", "--regions", example_pipeline["feats"], "--captions",
                          example_pipeline["captions"], "-o", out, "--epochs", "1", "--batch-size", "16",
                          *SMALL_MODEL_ARGS)
    assert rc == 0, err
    return out


def _resume(directory: Path, model):
    """What train --resume reads: the saved settings, then the tensors into ``model`` (built
    from the undamaged settings: settings that differ from them are not loaded, since a
    config of any size would be built)."""
    import torch

    from smcli.training.checkpoint import load_state, resume_settings

    settings_ = resume_settings(directory)
    if settings_ is None or settings_[0] != model.smcli_config:
        return settings_
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad])
    progress = load_state(directory, model, optimizer)
    assert progress is not None and isinstance(progress["epoch"], int)
    return progress


@pytest.fixture(scope="module")
def resume_model(resume_dir):
    from smcli.models.factory import create_model
    from smcli.training.checkpoint import resume_settings

    cfg, _ = resume_settings(resume_dir)
    model = create_model(cfg)
    model.smcli_config = cfg
    return model


def test_resume_state_with_any_progress(resume_dir, resume_model, tmp_path):
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    from smcli.training.checkpoint import STATE_FILE

    with safe_open(str(resume_dir / STATE_FILE), framework="pt") as f:
        meta = f.metadata()
    tensors = load_file(resume_dir / STATE_FILE)
    progress = json.loads(meta["progress"])
    m = tmp_path / "m"
    shutil.copytree(resume_dir, m)

    @PROFILE
    @given(new=mutated(progress), groups=st.one_of(st.just(meta["param_groups"]), JSON.map(json.dumps)))
    def prop(new, groups):
        save_file(tensors, m / STATE_FILE, metadata={"progress": json.dumps(new), "param_groups": groups})
        ok_or_refused(lambda: _resume(m, resume_model))

    prop()


def test_resume_state_with_damaged_bytes(resume_dir, resume_model, tmp_path):
    from smcli.training.checkpoint import STATE_FILE

    raw = (resume_dir / STATE_FILE).read_bytes()
    m = tmp_path / "m"
    shutil.copytree(resume_dir, m)

    @PROFILE
    @given(data=damaged(raw))
    def prop(data):
        write(m / STATE_FILE, data)
        ok_or_refused(lambda: _resume(m, resume_model))

    prop()


# ---------------------------------------------------------------------------------------
# Saved galleries (inference/gallery.py)


@pytest.fixture(scope="module")
def small_gallery(example_pipeline, example_model, tmp_path_factory) -> Path:
    from conftest import run_main

    out = tmp_path_factory.mktemp("gallery") / "g"
    rc, _, err = run_main("index", "--model", example_model, "--regions", example_pipeline["feats"], "-o", out)
    assert rc == 0, err
    return out


def _search(matcher, directory: Path):
    """open_gallery, then a real query over it (damage the opening missed shows in use)."""
    from smcli.inference.tasks import search_index

    table = search_index(matcher, str(directory), ["a dog on the grass"], 3, 10)
    assert np.isfinite(table.column("score").to_numpy()).all()
    return table


@pytest.mark.parametrize("name", ["meta.json", "images.parquet", "embeddings.faiss", "keys.npy", "keys.scale.npy",
                                  "values.npy"])
def test_gallery_with_a_damaged_file(scoring, small_gallery, tmp_path, name):
    if not (small_gallery / name).is_file():
        pytest.skip(f"this model's gallery has no {name}")
    matcher = scoring[0]
    g = tmp_path / "g"
    shutil.copytree(small_gallery, g)
    raw = (small_gallery / name).read_bytes()

    @PROFILE
    @given(data=damaged(raw))
    def prop(data):
        write(g / name, data)
        ok_or_refused(lambda: _search(matcher, g))

    prop()


def test_gallery_with_any_meta(scoring, small_gallery, tmp_path):
    matcher = scoring[0]
    g = tmp_path / "g"
    shutil.copytree(small_gallery, g)
    meta = json.loads((small_gallery / "meta.json").read_text())

    @PROFILE
    @given(new=mutated(meta))
    def prop(new):
        (g / "meta.json").write_text(json.dumps(new))
        ok_or_refused(lambda: _search(matcher, g))

    prop()



# ---------------------------------------------------------------------------------------
# Defects the long version found (2026-12-01), each as a fixed case in the short version


def _text_with_bad_utf8(values: list[bytes]) -> pa.Array:
    """A string column holding these bytes as they are (pyarrow's view does not check them),
    as a damaged Parquet page would give them back."""
    return pa.array(values, pa.binary()).view(pa.string())


def test_regions_with_invalid_utf8_text_are_refused(small_regions, tmp_path):
    from smcli.images.features import load_regions

    table = pq.read_table(small_regions)
    ids = _text_with_bad_utf8([b"a.jpg", b"\xe9.jpg", b"c.jpg"])
    damaged = tmp_path / "feats.parquet"
    pq.write_table(table.set_column(table.schema.get_field_index("image_id"), "image_id", ids), damaged)
    with pytest.raises(SmcliError, match="feats.parquet: unreadable Parquet data"):
        load_regions(damaged)


def test_captions_parquet_with_invalid_utf8_text_is_refused(tmp_path):
    from smcli.report import RunReport
    from smcli.text.readers import ColumnNames, read_parquet

    path = tmp_path / "caps.parquet"
    pq.write_table(pa.table({"image": ["a.jpg", "b.jpg"], "caption": _text_with_bad_utf8([b"a dog", b"\x80 cat"])}),
                   path)
    with pytest.raises(SmcliError, match="caps.parquet: unreadable Parquet"):
        list(read_parquet("caps.parquet", path.read_bytes(), RunReport("tokenize"), ColumnNames()))


@pytest.mark.parametrize("change", ["no sides", "a side missing", "int8 rows called float16"])
def test_gallery_meta_that_does_not_match_its_files_is_refused(scoring, small_gallery, tmp_path, change):
    """A meta.json without its "sides" once passed the checks and failed in the matcher with
    an AttributeError; int8 rows with the codec said to be float16 were read unscaled."""
    g = tmp_path / "g"
    shutil.copytree(small_gallery, g)
    meta = json.loads((g / "meta.json").read_text())
    if change == "no sides":
        del meta["sides"]
    elif change == "a side missing":
        meta["sides"] = meta["sides"][1:]
    else:
        meta["codec"] = "float16"
    (g / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(SmcliError, match="damaged smcli index"):
        _search(scoring[0], g)
