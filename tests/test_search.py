"""score, retrieve, caption-rank, index and --eval on the example data with a trained model."""

from __future__ import annotations

import json

import numpy as np
import pyarrow.parquet as pq
import pytest
from conftest import EXAMPLES, REPO, assert_one_line_error, run_main, run_smcli


@pytest.fixture(scope="module")
def env(example_pipeline, example_model):
    return {"model": str(example_model), "feats": str(example_pipeline["feats"]),
            "captions": str(example_pipeline["captions"]), "dir": example_pipeline["dir"]}


def common(env):
    return ("--model", env["model"], "--regions", env["feats"], "--captions", env["captions"])


def read(path):
    return pq.read_table(path)


# -- score ------------------------------------------------------------------------------

def test_score_each_caption_with_its_image(env, tmp_path):
    out = tmp_path / "scores.parquet"
    rc, _, err = run_main("score", *common(env), "-o", out, cwd=REPO)
    assert rc == 0, err
    t = read(out)
    caps = read(env["captions"])
    assert t.column("caption_id").to_pylist() == caps.column("caption_id").to_pylist()  # input order
    assert t.column("image_id").to_pylist() == caps.column("image_id").to_pylist()
    assert np.isfinite(t.column("score").to_numpy()).all()
    assert "read 160, written 160, rejected 0" in err
    meta = json.loads(pq.read_schema(out).metadata[b"smcli"])
    assert meta["schema"] == "scores" and meta["producer"]["model_hash"]


def test_score_pairs_file_reports_unknown_ids_and_keeps_order(env, tmp_path):
    pairs = tmp_path / "pairs.csv"
    pairs.write_text(
        "image_id,caption_id\n"
        "509778093_21236bb64d.jpg,509778093_21236bb64d.jpg#0\n"
        "nope.jpg,509778093_21236bb64d.jpg#0\n"
        "315880837_90db309bab.jpg,509778093_21236bb64d.jpg#0\n"
        "315880837_90db309bab.jpg,missing#9\n"
    )
    out = tmp_path / "s.parquet"
    rc, _, err = run_main("score", *common(env), "--pairs", pairs, "-o", out, cwd=REPO)
    assert rc == 0, err
    assert "row 2" in err and "nope.jpg" in err and "row 4" in err and "missing#9" in err
    assert "read 4, written 2, rejected 2" in err
    t = read(out)
    assert t.column("image_id").to_pylist() == ["509778093_21236bb64d.jpg", "315880837_90db309bab.jpg"]
    rc, _, err = run_main("score", *common(env), "--pairs", pairs, "--strict", "-o", out, cwd=REPO)
    assert_one_line_error(rc, err, "nope.jpg")


def test_score_caption_text_pairs_match_caption_id_pairs(env, tmp_path):
    caps = read(env["captions"]).to_pylist()[:3]
    by_id = tmp_path / "ids.csv"
    by_id.write_text("image_id,caption_id\n" + "".join(f"{c['image_id']},{c['caption_id']}\n" for c in caps))
    by_text = tmp_path / "text.csv"
    by_text.write_text("image_id,caption\n" + "".join(f"{c['image_id']},\"{c['caption']}\"\n" for c in caps))
    a, b = tmp_path / "a.parquet", tmp_path / "b.parquet"
    for pairs, out in ((by_id, a), (by_text, b)):
        rc, _, err = run_main("score", *common(env), "--pairs", pairs, "-o", out, cwd=REPO)
        assert rc == 0, err
    np.testing.assert_allclose(read(a).column("score").to_numpy(), read(b).column("score").to_numpy(),
                               rtol=1e-3, atol=1e-3)


# -- retrieve ---------------------------------------------------------------------------

def test_text_query_returns_ranked_images(env, tmp_path):
    out = tmp_path / "r.parquet"
    rc, _, err = run_main("retrieve", *common(env), "--query", "a dog on grass", "--query",
                           "children playing soccer", "-k", "5", "-o", out, cwd=REPO)
    assert rc == 0, err
    t = read(out).to_pylist()
    assert len(t) == 10
    for q in ("a dog on grass", "children playing soccer"):
        rows = [r for r in t if r["query"] == q]
        assert [r["rank"] for r in rows] == [1, 2, 3, 4, 5]
        scores = [r["score"] for r in rows]
        assert scores == sorted(scores, reverse=True)
        assert len({r["id"] for r in rows}) == 5
        assert all((REPO / r["path"]).exists() or (EXAMPLES / "images" / r["id"]).exists() for r in rows)


def test_two_stage_with_a_full_shortlist_equals_exhaustive(env, tmp_path):
    outs = []
    for mode in (("--exhaustive",), ("--shortlist", "32")):
        out = tmp_path / f"{mode[0]}.parquet"
        rc, _, err = run_main("retrieve", *common(env), "-q", "a dog runs in the snow", "-k", "10",
                               *mode, "-o", out, cwd=REPO)
        assert rc == 0, err
        outs.append(read(out))
    assert outs[0].column("id").to_pylist() == outs[1].column("id").to_pylist()


def test_retrieve_at_a_terminal_prints_a_table(env):
    rc, out, err = run_smcli("retrieve", *common(env), "-q", "a dog on grass", "-k", "3",
                             stdout_tty=True, cwd=REPO)
    assert rc == 0, err
    text = out.decode()
    assert "a dog on grass" in text and "examples/images/" in text
    assert not out.startswith(b"PAR1")


@pytest.mark.parametrize("query,fragment", [("   ", "empty"), ("zzqx vvbnm", "vocabulary")])
def test_bad_queries_are_one_line_errors(env, query, fragment):
    rc, _, err = run_main("retrieve", *common(env), "-q", query, "-o", "/dev/null", cwd=REPO)
    assert_one_line_error(rc, err, fragment)


def test_image_query_by_id_and_by_path(env, tmp_path):
    image = "509778093_21236bb64d.jpg"
    by_id, by_path = tmp_path / "id.parquet", tmp_path / "path.parquet"
    rc, _, err = run_main("retrieve", *common(env), "--image", image, "-k", "5", "-o", by_id, cwd=REPO)
    assert rc == 0, err
    rc, _, err = run_main("retrieve", "--model", env["model"], "--captions", env["captions"],
                           "--image", EXAMPLES / "images" / image, "-k", "5", "-o", by_path, cwd=REPO)
    assert rc == 0, err
    a, b = read(by_id), read(by_path)
    assert len(a) == 5 and a.column("id").to_pylist() == b.column("id").to_pylist()
    assert all(c for c in a.column("caption").to_pylist())


def test_unknown_image_is_refused(env):
    rc, _, err = run_main("retrieve", *common(env), "--image", "no_such.jpg", "-o", "/dev/null", cwd=REPO)
    assert_one_line_error(rc, err, "no_such.jpg")


def test_defaults_from_smcli_toml(env, tmp_path):
    (tmp_path / "smcli.toml").write_text(
        f'model = "{env["model"]}"\nregions = "{env["feats"]}"\ncaptions = "{env["captions"]}"\n')
    rc, out, err = run_main("retrieve", "--query", "a dog on grass", cwd=tmp_path)
    assert rc == 0, err
    assert read_bytes_table(out).num_rows == 10
    rc, _, err = run_smcli("retrieve", "--query", "a dog on grass", cwd=tmp_path.parent,
                           env={"SMCLI_MODEL": "", "HOME": str(tmp_path)})
    from smcli.models import pretrained

    if pretrained.available():  # no model given: the default pretrained one, said once; no regions: an error
        assert err.count("using the pretrained") == 1
        assert_one_line_error(rc, err, "--regions")
    else:
        assert_one_line_error(rc, err, "--model")


def read_bytes_table(data: bytes):
    import pyarrow as pa

    return pq.read_table(pa.BufferReader(data))


@pytest.mark.parametrize("codec", ["int8", "pca"])
def test_index_then_retrieve_matches_the_regions_file(env, tmp_path, codec):
    index = tmp_path / "gallery"
    rc, _, err = run_main("index", "--model", env["model"], "--regions", env["feats"], "-o", index,
                          "--codec", codec, cwd=REPO)
    assert rc == 0, err
    assert json.loads((index / "meta.json").read_text())["codec"] == codec
    a, b = tmp_path / "a.parquet", tmp_path / "b.parquet"
    rc, _, err = run_main("retrieve", "--model", env["model"], "--index", index, "-q", "a dog on grass",
                           "-o", a, cwd=REPO)
    assert rc == 0, err
    rc, _, err = run_main("retrieve", *common(env), "-q", "a dog on grass", "-o", b, cwd=REPO)
    assert rc == 0, err
    ta, tb = read(a), read(b)
    # the index stores the matcher's tensors coded: the same ranking up to near-ties. pca leaves
    # ~50x int8's squared error in keys and values (BENCHMARKS.md "Gallery codec: pca")
    np.testing.assert_allclose(ta.column("score").to_numpy(), tb.column("score").to_numpy(),
                               atol={"int8": 5e-3, "pca": 1.5e-2}[codec])
    assert len(set(ta.column("id").to_pylist()[:5]) & set(tb.column("id").to_pylist()[:5])) >= 4


# -- evaluation -------------------------------------------------------------------------

def test_eval_exhaustive_and_full_shortlist_agree(env, tmp_path):
    results = []
    for mode in (("--exhaustive",), ("--shortlist", "40")):
        out = tmp_path / f"m{len(results)}.json"
        rc, stdout, err = run_main("retrieve", "--eval", "--split", "test", *common(env), *mode,
                                    "-o", out, cwd=REPO)
        assert rc == 0, err
        assert b"R@1" in stdout and b"rsum" in stdout
        results.append(json.loads(out.read_text()))
    a, b = results
    assert a["images"] == 8 and a["captions"] == 40
    assert a["mode"] == "exhaustive" and b["mode"] == "two-stage"
    assert a["rsum"] == pytest.approx(b["rsum"])
    assert 0 <= a["i2t_r1"] <= a["i2t_r5"] <= a["i2t_r10"] <= 100


def test_eval_on_a_missing_split_is_refused(env):
    rc, _, err = run_main("retrieve", "--eval", "--split", "nope", *common(env), cwd=REPO)
    assert_one_line_error(rc, err, "nope", "splits found")


# -- caption-rank -----------------------------------------------------------------------

def test_caption_rank_over_all_captions(env, tmp_path):
    out = tmp_path / "ranks.parquet"
    rc, _, err = run_main("caption-rank", *common(env), "--image", "509778093_21236bb64d.jpg",
                           "--image", "315880837_90db309bab.jpg", "-k", "4", "-o", out, cwd=REPO)
    assert rc == 0, err
    t = read(out).to_pylist()
    assert len(t) == 8
    for image in ("509778093_21236bb64d.jpg", "315880837_90db309bab.jpg"):
        rows = [r for r in t if r["image_id"] == image]
        assert [r["rank"] for r in rows] == [1, 2, 3, 4]
        assert [r["score"] for r in rows] == sorted((r["score"] for r in rows), reverse=True)


def test_caption_rank_with_candidate_lists(env, tmp_path):
    cands = tmp_path / "cands.csv"
    cands.write_text(
        "image_id,caption\n"
        "509778093_21236bb64d.jpg,a brown and white dog chasing a ball on some grass\n"
        "509778093_21236bb64d.jpg,two men climb a snowy mountain\n"
        "315880837_90db309bab.jpg,three dogs play in the snow\n"
        "nope.jpg,a cat\n"
    )
    out = tmp_path / "r.parquet"
    rc, _, err = run_main("caption-rank", *common(env), "--candidates", cands, "-o", out, "-k", "0", cwd=REPO)
    assert rc == 0, err
    assert "nope.jpg" in err and "rejected 1" in err
    t = read(out).to_pylist()
    assert len(t) == 3
    assert sorted(r["rank"] for r in t if r["image_id"] == "509778093_21236bb64d.jpg") == [1, 2]
