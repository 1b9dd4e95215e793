"""Search by written words: tolerant matching, the ranking, the fusion with the matcher,
the protocol with the fusion on, and bad inputs. The words come from image-text files
written here (read-text's schema), so these tests need no OCR engine."""

from __future__ import annotations

import numpy as np
import pyarrow.parquet as pq
import pytest
from conftest import EXAMPLES, assert_one_line_error, run_main


def write_text_file(path, images: dict[str, list[tuple[str, list[float], int]]], *, folder="photos",
                    size=(224, 224)) -> None:
    """An image-text file: image_id -> [(word, box, line)], in the order given."""
    from smcli.images.ocr import grid_cells
    from smcli.images.read_text import ReadTextOptions, producer, text_schema
    from smcli.stage import OutputTarget, StageWriter, new_meta

    rows = {"image_id": [], "path": [], "width": [], "height": [], "text": [], "words": []}
    for image_id, words in images.items():
        rows["image_id"].append(image_id)
        rows["path"].append(f"{folder}/{image_id}")
        rows["width"].append(size[0])
        rows["height"].append(size[1])
        rows["text"].append(" ".join(w for w, _, _ in words))
        rows["words"].append([{"text": w, "confidence": 0.9, "box": box, "quad": [box[0], box[1], box[2], box[1],
                                                                                 box[2], box[3], box[0], box[3]],
                               "line": line, "cells": grid_cells(tuple(box), size[0], size[1], (7, 7))}
                              for w, box, line in words])
    meta = new_meta("image-text", producer(ReadTextOptions(), "test"))
    with StageWriter(OutputTarget(path), text_schema(), meta) as w:
        w.write(rows)


BOX = [10.0, 40.0, 100.0, 60.0]


@pytest.fixture
def spotting_file(tmp_path):
    path = tmp_path / "text.parquet"
    write_text_file(path, {
        "exact.jpg": [("LONDON", BOX, 0), ("BUS", [120.0, 40.0, 160.0, 60.0], 0)],
        "typo.jpg": [("L0ND0N", BOX, 0)],  # two OCR errors in six letters: 0.67, not a match
        "one-off.jpg": [("LONDCN", BOX, 0)],  # one error: 0.83
        "merged.jpg": [("londonbridge", BOX, 0)],  # run together: substring, 0.9
        "split.jpg": [("LON", [10.0, 40.0, 40.0, 60.0], 0), ("DON", [44.0, 40.0, 80.0, 60.0], 0)],
        "short.jpg": [("lond", BOX, 0)],
        "other.jpg": [("PARIS", BOX, 0)],
        "none.jpg": [],
    })
    return path


def test_terms_are_normalised_and_stopwords_dropped():
    from smcli.inference.text_spotting import normalize, query_terms

    assert normalize("Café-2 ÜBER") == "cafe2uber"
    assert query_terms("A man holding a LONDON sign, in London") == ["man", "holding", "london", "sign"]
    assert query_terms("the") == ["the"]  # only stopwords: kept
    assert query_terms("!!!") == []


def test_edit_distances_agree_with_the_textbook_algorithm():
    import random

    from smcli.inference.text_spotting import levenshtein, substring_distance

    def lev(a: str, b: str) -> int:
        d = list(range(len(b) + 1))
        for i, ca in enumerate(a, 1):
            prev, d[0] = d[:], i
            for j, cb in enumerate(b, 1):
                d[j] = min(prev[j] + 1, d[j - 1] + 1, prev[j - 1] + (ca != cb))
        return d[-1]

    rng = random.Random(0)
    strings = ["".join(rng.choice("abc") for _ in range(rng.randint(0, 8))) for _ in range(200)]
    for term in ("ab", "abcab", "c", "bbbac"):
        assert levenshtein(term, strings).tolist() == [lev(term, s) for s in strings]
        best = [min(lev(term, s[i:j]) for i in range(len(s) + 1) for j in range(i, len(s) + 1)) for s in strings]
        assert substring_distance(term, strings)[0].tolist() == best


def test_text_only_ranking_is_case_insensitive_and_tolerant(spotting_file):
    from smcli.images.read_text import load_image_text
    from smcli.inference.text_spotting import spot_images

    words = load_image_text(spotting_file)
    t = spot_images(words, ["London", "bus", "bvs", "zzzz"], top_k=10).to_pylist()
    london = [r for r in t if r["query"] == "London"]
    assert [r["id"] for r in london] == ["exact.jpg", "merged.jpg", "split.jpg", "one-off.jpg"]
    assert [round(r["text_score"], 3) for r in london] == [1.0, 0.9, 0.9, 0.833]
    assert london[0]["matched"].startswith("london=LONDON (1.00) [10,40,100,60] cells")
    assert london[2]["text_matches"][0]["words"] == "LON DON"  # the words the match covers
    assert london[2]["text_matches"][0]["box"] == [10.0, 40.0, 80.0, 60.0]
    assert [r["id"] for r in t if r["query"] == "bus"] == ["exact.jpg"]
    assert not [r for r in t if r["query"] in ("bvs", "zzzz")], "3 letters must be exact; no match, no rows"


def test_a_partial_match_scores_by_the_share_of_terms(spotting_file):
    from smcli.images.read_text import load_image_text
    from smcli.inference.text_spotting import spot_images

    t = spot_images(load_image_text(spotting_file), ["london bus"], top_k=2).to_pylist()
    assert [(r["id"], r["text_score"]) for r in t] == [("exact.jpg", 1.0), ("merged.jpg", 0.45)]


def test_fusion_rule():
    from smcli.inference.text_spotting import fuse

    matcher = np.array([0.9, 0.5, 0.1, 0.3])
    text = np.array([0.0, 0.0, 1.0, 0.5])
    fused = fuse(matcher, text, 1.0)
    # a full match reaches the best non-match even from the bottom (searches break the tie by text score)
    assert fused[2] == pytest.approx(fused[0]) and fused[2] > fused[[1, 3]].max()
    assert fused[3] == pytest.approx(0.3 + 0.5 * 0.8)
    assert np.array_equal(fuse(matcher, text, 0.0), matcher)
    assert fuse(np.ones(3), np.array([0, 1, 0]), 1.0).tolist() == [1.0, 2.0, 1.0]  # constant matcher: spread 1


@pytest.fixture(scope="module")
def pretrained():
    from smcli.inference.matcher import MatchModel

    return MatchModel("flickr8k")


def _gallery_text(tmp_path, feats_path, written: dict[str, str]):
    from smcli.images.features import load_regions

    feats = load_regions(feats_path)
    path = tmp_path / "text.parquet"
    write_text_file(path, {i: [(w, [10.0 + 60 * k, 40.0, 60.0 + 60 * k, 60.0], 0)
                               for k, w in enumerate(written.get(i, "").split())] for i in feats.image_ids})
    return feats, path


@pytest.mark.parametrize("shortlist", [1, None])
def test_fused_search_puts_the_written_word_first_and_weight_zero_is_the_matcher(
        pretrained, example_pipeline, tmp_path, shortlist):
    from smcli.images.read_text import load_image_text
    from smcli.inference.tasks import search_images
    from smcli.inference.text_spotting import search_images_with_text

    feats, path = _gallery_text(tmp_path, example_pipeline["feats"], {})
    plain = search_images(pretrained, feats, ["a dog runs on the grass"], 32, None).column("id").to_pylist()
    target = plain[-1]  # the matcher's last choice: outside a shortlist of 1
    feats, path = _gallery_text(tmp_path, example_pipeline["feats"], {target: "DOG RUNS GRASS"})
    words = load_image_text(path)
    fused = search_images_with_text(pretrained, feats, words, ["a dog runs on the grass"], 5, shortlist, 1.0)
    rows = fused.to_pylist()
    assert rows[0]["id"] == target and rows[0]["text_score"] == 1.0  # all three terms: dog, runs, grass
    assert rows[0]["matched"].startswith("dog=DOG (1.00) [10,40,60,60] cells")
    assert [r["id"] for r in rows[1:]] == [i for i in plain if i != target][:4]  # the rest: the matcher's order
    t = search_images_with_text(pretrained, feats, words, ["GRASS"], 3, shortlist, 1.0).to_pylist()
    assert t[0]["id"] == target and t[0]["text_score"] == 1.0 and t[1]["text_score"] == 0.0
    assert t[0]["score"] >= t[1]["score"]  # lifted to (at least) the best non-match
    if shortlist is None:
        alone = search_images_with_text(pretrained, feats, words, ["a dog runs on the grass"], 32, None, 0.0)
        assert alone.column("id").to_pylist() == plain
        assert np.allclose(alone.column("score").to_numpy(), alone.column("matcher_score").to_numpy())


def test_protocol_with_the_fusion_on(pretrained, example_pipeline, tmp_path):
    from smcli.evaluation.protocol import evaluate
    from smcli.images.read_text import load_image_text

    feats, path = _gallery_text(tmp_path, example_pipeline["feats"], {})
    base = evaluate(pretrained, str(example_pipeline["feats"]), str(example_pipeline["captions"]), "test")
    nothing = evaluate(pretrained, str(example_pipeline["feats"]), str(example_pipeline["captions"]), "test",
                       image_text=load_image_text(path))
    assert nothing.metrics.to_dict() == base.metrics.to_dict()  # no text read: the matcher's figures
    # each test image shows the longest word of the next image's first caption: a heavy fusion (one
    # term of a caption's five lifts an image by the whole spread) must pull the wrong images up for
    # those captions (the model ranks these 8 photos perfectly on its own)
    from smcli.inference.text_spotting import query_terms

    first = {}
    for c in pq.read_table(example_pipeline["captions"]).to_pylist():
        if c["split"] == "test":
            first.setdefault(c["image_id"], max(query_terms(c["caption"]), key=len))
    ids = sorted(first)
    feats, path = _gallery_text(tmp_path, example_pipeline["feats"], {i: first[ids[(k + 1) % len(ids)]]
                                                                     for k, i in enumerate(ids)})
    for shortlist in (100, None):
        kw = dict(shortlist=shortlist)
        b = evaluate(pretrained, str(example_pipeline["feats"]), str(example_pipeline["captions"]), "test", **kw)
        f = evaluate(pretrained, str(example_pipeline["feats"]), str(example_pipeline["captions"]), "test", **kw,
                     image_text=load_image_text(path), text_weight=5.0)
        z = evaluate(pretrained, str(example_pipeline["feats"]), str(example_pipeline["captions"]), "test", **kw,
                     image_text=load_image_text(path), text_weight=0.0)
        assert z.metrics.to_dict() == b.metrics.to_dict()  # weight 0: the matcher alone
        for k in ("i2t_r1", "i2t_r5", "i2t_meanr"):  # image -> text is not fused
            assert getattr(f.metrics, k) == getattr(b.metrics, k)
        assert f.metrics.t2i_r1 < b.metrics.t2i_r1 and f.metrics.t2i_meanr > b.metrics.t2i_meanr


def test_retrieve_cli_shows_the_matches_and_refuses_bad_inputs(spotting_file, example_pipeline, tmp_path):
    rc, out, err = run_main("retrieve", "--query", "london", "--image-text", spotting_file, "--image-text-only",
                            "--table")
    assert rc == 0, err
    text = out.decode()
    assert "exact.jpg" in text and "london=LONDON" in text and "text_score" in text
    o = tmp_path / "hits.parquet"
    rc, _, err = run_main("retrieve", "--query", "london", "--image-text", spotting_file, "--image-text-only",
                          "-o", o)
    assert rc == 0, err
    t = pq.read_table(o)
    assert t.column("id").to_pylist()[0] == "exact.jpg" and "text_matches" in t.column_names
    assert b"retrieval" in pq.read_schema(o).metadata[b"smcli"]

    feats = example_pipeline["feats"]
    assert_one_line_error(*run_main("retrieve", "--query", "x", "--image-text-only")[::2], "--image-text")
    assert_one_line_error(*run_main("retrieve", "--query", "london", "--image-text", feats,
                                    "--image-text-only", "--table")[::2], "expected a image-text file")
    assert_one_line_error(*run_main("retrieve", "--query", "...", "--image-text", spotting_file,
                                    "--image-text-only", "--table")[::2], "no letter or digit")
    assert_one_line_error(*run_main("retrieve", "--image", str(EXAMPLES / "images" / "x.jpg"), "--image-text",
                                    spotting_file)[::2], "--image-text goes with text queries")
    assert_one_line_error(*run_main("retrieve", "--eval", "--image-text", spotting_file,
                                    "--image-text-only")[::2], "--eval needs the model")
    rc, _, err = run_main("retrieve", "--model", "flickr8k", "--regions", feats, "--query", "london",
                          "--image-text", spotting_file, "--table")
    assert_one_line_error(rc, err, "none of its 8 images is in", "image_id")
    assert_one_line_error(*run_main("retrieve", "--query", "london", "--image-text", tmp_path / "missing.parquet",
                                    "--image-text-only", "--table")[::2], "missing.parquet")


def test_text_spotting_alone_loads_no_model_and_no_torch(spotting_file):
    from conftest import HEAVY_MODULES, imported_modules, run_smcli

    rc, out, err = run_smcli("retrieve", "--query", "london", "--image-text", spotting_file, "--image-text-only",
                             "-o", "-", python_flags=("-X", "importtime"))
    assert rc == 0, err
    heavy = sorted(m for m in imported_modules(err) if m.split(".")[0] in HEAVY_MODULES)
    assert heavy == []
    assert pq.read_table(__import__("pyarrow").BufferReader(out)).column("id").to_pylist()[0] == "exact.jpg"
