"""The pretrained models shipped with smcli: their files match their cards, they rank the
example photos sensibly with no training, and they are what commands use by default."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from conftest import EXAMPLES, REPO, assert_one_line_error, run_smcli

import smcli
from smcli.images.backbones import DEFAULT_BACKBONE
from smcli.models import pretrained

SHIPPED = pretrained.available()
pytestmark = pytest.mark.skipif(not SHIPPED, reason="no pretrained models in this checkout")


def dog_photos() -> set[str]:
    """Example photos that at least four of their five captions call a dog or a puppy."""
    counts: dict[str, int] = {}
    for line in (EXAMPLES / "captions.txt").read_text().splitlines():
        image, _, caption = line.partition("\t")
        if re.search(r"\b(dogs?|pupp(y|ies))\b", caption.lower()):
            counts[image.split("#")[0]] = counts.get(image.split("#")[0], 0) + 1
    return {k for k, v in counts.items() if v >= 4}


def test_both_named_models_ship_and_the_default_is_one():
    assert {"flickr8k", "flickr8k-vse"} <= set(SHIPPED)
    assert pretrained.DEFAULT in SHIPPED


@pytest.mark.parametrize("name", sorted(SHIPPED))
def test_weights_match_the_card(name):
    model = SHIPPED[name]
    card = model.card
    assert model.weights_sha256() == card["weights_sha256"]
    for key in ("commands", "val", "test", "test_float32", "features", "terms", "limits", "data"):
        assert card[key], key
    check = card.get("rounding_check")  # the float16 weights kept within 0.2 test rsum of float32
    if check and "bf16" in check:  # packaged on a bf16 CPU: the check scored both copies in fp32
        assert check["precision"] == "fp32" and abs(check["float16"] - check["float32"]) <= 0.2
    else:
        assert abs(card["test"]["rsum"] - card["test_float32"]["rsum"]) <= 0.2
    assert "Hodosh" in card["terms"] and "research" in card["terms"]
    assert (model.directory / "MODEL_CARD.md").read_text().startswith(f"# {name}")


def example_features(backbone: str, example_pipeline) -> Path:
    """The example photos' regions from ``backbone`` (the pipeline's file for the default one)."""
    if backbone == DEFAULT_BACKBONE:
        return example_pipeline["feats"]
    out = example_pipeline["dir"] / f"feats-{backbone}.parquet"
    if not out.exists():
        rc, _, err = run_smcli("extract-regions", EXAMPLES / "images", "--backbone", backbone, "-o", out, cwd=REPO)
        assert rc == 0, err
    return out


def test_a_model_refuses_features_of_another_backbone(example_pipeline):
    """flickr8k-pair on the default (Lite0) features: one line naming both backbones."""
    if "flickr8k-pair" not in SHIPPED:
        pytest.skip("flickr8k-pair not shipped in this checkout")
    rc, _, err = run_smcli("retrieve", "--model", "flickr8k-pair", "--regions", example_pipeline["feats"],
                           "--query", "a dog", cwd=REPO)
    assert_one_line_error(rc, err, "efficientnet-lite0+lite2")


@pytest.mark.parametrize("name", sorted(SHIPPED))
def test_dog_queries_put_dog_photos_first(name, example_pipeline):
    """With no training on these photos: "a dog" puts dog photos in its top 3, and over a few
    dog queries at least 70% of the top 5 are dog photos (11 of the 32 are: chance is 34%)."""
    model = smcli.load_model(name, device="cpu")
    dogs = dog_photos()
    feats = str(example_features(SHIPPED[name].card["features"]["backbone"], example_pipeline))
    top3 = model.search("a dog", feats, k=3).column("id").to_pylist()
    assert set(top3) <= dogs, top3
    queries = ["a dog", "two dogs play", "a dog in the water", "a dog runs on the grass"]
    hits = [i in dogs for q in queries for i in model.search(q, feats, k=5).column("id").to_pylist()]
    assert len(hits) == 20 and sum(hits) >= 14, hits


def test_models_lists_and_shows_cards():
    rc, out, err = run_smcli("models", "--json", cwd=REPO)
    assert rc == 0, err
    rows = {r["name"].split()[0]: r for r in json.loads(out)}
    assert set(rows) == set(SHIPPED)
    assert rows["flickr8k"]["variant"] == "smlstm" and rows["flickr8k-vse"]["variant"] == "vse"
    rc, out, err = run_smcli("models", "--info", "flickr8k", cwd=REPO)
    assert rc == 0 and out.decode().startswith("# flickr8k"), err
    rc, _, err = run_smcli("models", "--info", "no-such-model", cwd=REPO)
    assert_one_line_error(rc, err, "no-such-model", "flickr8k")


def test_no_model_given_uses_the_default_and_says_so(example_pipeline, tmp_path):
    """With no --model, $SMCLI_MODEL or smcli.toml, retrieve runs on the default pretrained
    model and says so once on stderr."""
    import pyarrow.parquet as pq

    out = tmp_path / "r.parquet"
    rc, _, err = run_smcli("retrieve", "--regions", example_pipeline["feats"], "--query", "a dog on grass",
                           "-k", "3", "-o", out, cwd=tmp_path, env={"SMCLI_MODEL": "", "HOME": str(tmp_path)})
    assert rc == 0, err
    assert err.count(f"using the pretrained {pretrained.DEFAULT} model") == 1
    table = pq.read_table(out)
    assert table.num_rows == 3
    assert json.loads(table.schema.metadata[b"smcli"])["producer"]["model"] == pretrained.DEFAULT


def test_the_ci_quality_gate_script_passes_and_fails_with_exit_3(tmp_path):
    """examples/ci/quality-gate.sh as CI runs it: passes on the pretrained model, and with a
    gate above what it can reach exits 3 after writing the metrics."""
    import os
    import subprocess
    import sys

    env = {**os.environ, "PATH": f"{os.path.dirname(sys.executable)}:{os.environ['PATH']}", "OUT": str(tmp_path / "a")}
    script = REPO / "examples" / "ci" / "quality-gate.sh"
    done = subprocess.run(["bash", str(script)], env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    metrics = json.loads((tmp_path / "a" / "metrics.json").read_text())
    assert metrics["rsum"] >= 500 and metrics["model"] == "flickr8k"
    assert "mean score" in done.stderr
    env.update(OUT=str(tmp_path / "b"), MIN_RSUM="601")
    done = subprocess.run(["bash", str(script)], env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 3, done.stderr
    assert done.stderr.strip().splitlines()[-1].startswith("smcli: error: retrieve --eval: below --fail-under: rsum")
    assert (tmp_path / "b" / "metrics.json").is_file()


def test_score_with_references_is_a_bounded_reference_augmented_metric(example_pipeline, tmp_path):
    """score --references adds the harmonic mean of the image-caption cosine and the best
    caption-reference cosine (0 to 1); a matching caption beats an unrelated one; a pair whose
    image has no reference gets nulls, said on stderr; nothing needs a captions file."""
    import numpy as np
    import pyarrow.parquet as pq
    from conftest import run_main

    dog = "509778093_21236bb64d.jpg"
    (tmp_path / "pairs.csv").write_text(f"image_id,caption\n{dog},a dog chasing a ball on the grass\n"
                                        f"{dog},a man riding a bike down a street\n459814265_d48ba48978.jpg,a dog\n")
    (tmp_path / "refs.csv").write_text(f"image_id,caption\n{dog},a brown and white dog runs after a ball\n"
                                       f"{dog},a dog plays with a ball on the grass\n")
    out = tmp_path / "scores.parquet"
    rc, _, err = run_main("score", "--model", "flickr8k", "--regions", example_pipeline["feats"],
                          "--pairs", tmp_path / "pairs.csv", "--references", tmp_path / "refs.csv", "-o", out)
    assert rc == 0, err
    t = pq.read_table(out).to_pydict()
    ref, a, b = (np.array(t[k][:2], dtype=float) for k in ("ref_score", "image_cosine", "reference_cosine"))
    assert np.allclose(ref, 2 * a * b / (a + b)) and ((0 <= ref) & (ref <= 1)).all()
    assert ref[0] > ref[1]
    assert t["ref_score"][2] is None and t["reference_cosine"][2] is None and t["image_cosine"][2] is not None
    assert "1 pair(s) have no reference caption" in err and "mean ref_score" in err
    rc, _, err = run_main("score", "--model", "flickr8k", "--regions", example_pipeline["feats"],
                          "--pairs", tmp_path / "pairs.csv", "--references", tmp_path / "refs.csv",
                          "-o", tmp_path / "gated.parquet", "--fail-under", "0.99")
    assert rc == 3 and "ref_score" not in err.splitlines()[-1] and "below --fail-under" in err.splitlines()[-1]
    assert (tmp_path / "gated.parquet").is_file()
