"""Ensembles (``--model A,B,C``): the mean of the members' scores, everywhere a model scores.

Real inputs: the example photos' features and captions, the shipped Flickr8k models (the
sm-LSTM re-ranker and the one-to-one model, both on Lite0 features) and a small sm-LSTM
trained on the examples.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from conftest import assert_one_line_error, run_main

import smcli

CAPTIONS = ["a dog runs on the grass", "two men talk in a street", "a child in a red shirt jumps"]


@pytest.fixture(scope="module")
def image_ids(example_pipeline) -> list[str]:
    import pyarrow.parquet as pq

    return pq.read_table(example_pipeline["feats"], columns=["image_id"]).column("image_id").to_pylist()[:6]


def test_scores_are_the_mean_of_the_members(example_pipeline, example_model, image_ids):
    feats = example_pipeline["feats"]
    names = ["flickr8k", str(example_model), "flickr8k-vse"]
    members = [smcli.load_model(n).score(image_ids, CAPTIONS, regions=feats) for n in names]
    ensemble = smcli.load_model(",".join(names)).score(image_ids, CAPTIONS, regions=feats)
    assert ensemble.shape == (len(image_ids), len(CAPTIONS))
    np.testing.assert_allclose(ensemble, np.mean(members, axis=0), atol=1e-6)
    # the members disagree, so the mean is none of them
    assert min(np.abs(ensemble - m).max() for m in members) > 1e-3


def test_the_joint_embedding_gives_the_mean_cosine(example_pipeline, example_model, image_ids):
    """A dot product of the ensemble's embeddings is the mean of the members' cosines (the
    shortlist score)."""
    from smcli.inference.tasks import load_features

    names = ["flickr8k", str(example_model)]
    models = [smcli.load_model(n) for n in names] + [smcli.load_model(",".join(names))]
    grids = []
    for m in models:
        gallery = m.encode_image_set(load_features(m, str(example_pipeline["feats"]), image_ids))
        texts = m.encode_texts([str(i) for i in range(len(CAPTIONS))], CAPTIONS, cache=False)
        grids.append(m.embedding_scores(gallery, texts))
        if m.is_ensemble:
            dot = (gallery.side.emb @ texts.side.emb.T).numpy()
            np.testing.assert_allclose(dot, grids[-1], atol=1e-6)
    np.testing.assert_allclose(grids[2], (grids[0] + grids[1]) / 2, atol=1e-6)


def test_eval_of_a_model_with_itself_equals_the_model(example_pipeline, tmp_path):
    """retrieve --eval: the two-stage recalls of flickr8k,flickr8k are flickr8k's, and the
    record names the members."""
    args = ["--regions", example_pipeline["feats"], "--captions", example_pipeline["captions"], "--split", "test",
            "--shortlist", "5"]
    records = []
    for name, model in (("one", "flickr8k"), ("two", "flickr8k,flickr8k")):
        out = tmp_path / f"{name}.json"
        rc, _, err = run_main("retrieve", "--eval", "--model", model, *args, "-o", out)
        assert rc == 0, err
        records.append(json.loads(out.read_text()))
    one, two = records
    for key in ("i2t_r1", "i2t_r5", "i2t_r10", "t2i_r1", "t2i_r5", "t2i_r10", "rsum"):
        assert two[key] == pytest.approx(one[key]), key
    assert two["members"] == [one_dir := two["members"][0], one_dir] and "members" not in one
    assert two["model_hash"] != one["model_hash"]


def test_retrieve_query_ranks_by_the_mean(example_pipeline, example_model, tmp_path):
    """Text -> images with an ensemble, exhaustive: the ranking is by the members' mean score."""
    import pyarrow.parquet as pq

    names = f"flickr8k,{example_model}"
    out = tmp_path / "hits.parquet"
    rc, _, err = run_main("retrieve", "--model", names, "--regions", example_pipeline["feats"],
                          "--query", CAPTIONS[0], "-k", "5", "--exhaustive", "-o", out)
    assert rc == 0, err
    hits = pq.read_table(out).to_pylist()
    ids = [h["id"] for h in hits]
    scores = [h["score"] for h in hits]
    assert scores == sorted(scores, reverse=True) and len(ids) == 5
    by_mean = smcli.load_model(names).score(ids, [CAPTIONS[0]], regions=example_pipeline["feats"])[:, 0]
    np.testing.assert_allclose(scores, by_mean, atol=1e-5)


def test_members_on_other_features_are_refused(example_pipeline):
    rc, _, err = run_main("retrieve", "--model", "flickr8k,flickr8k-pair", "--regions", example_pipeline["feats"],
                          "--query", "a dog")
    assert_one_line_error(rc, err, "ensemble member flickr8k-pair", "backbone")


@pytest.mark.parametrize("command", ["explain", "index"])
def test_one_model_commands_refuse_an_ensemble(command, example_pipeline, tmp_path):
    args = {"explain": ["--image", "509778093_21236bb64d.jpg", "--caption", "a dog", "-o", tmp_path / "x.png"],
            "index": ["-o", tmp_path / "gallery"]}[command]
    rc, _, err = run_main(command, "--model", "flickr8k,flickr8k-vse", "--regions", example_pipeline["feats"],
                          *args)
    assert_one_line_error(rc, err, "ensemble of 2", f"{command} works on one model")
    assert not (tmp_path / "x.png").exists() and not (tmp_path / "gallery").exists()


def test_an_empty_member_name_is_refused(example_pipeline):
    rc, _, err = run_main("retrieve", "--model", "flickr8k,", "--regions", example_pipeline["feats"],
                          "--query", "a dog")
    assert_one_line_error(rc, err, "--model", "empty name")
