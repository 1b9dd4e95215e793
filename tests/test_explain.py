"""smcli explain: saliency maps of one image-caption pair, drawn as a PNG or an HTML page.

Models are built in Python (create_model + save_model, small dimensions, random weights)
on region features extracted from two example images, so the whole module runs in seconds.
"""

from __future__ import annotations

import html
import re
from pathlib import Path

import numpy as np
import pytest
from conftest import EXAMPLES, REPO, assert_one_line_error, run_main

IMAGES = ["1115565519_d976d4b1f1.jpg", "2207244634_1db1a1890b.jpg"]
CAPTION = "A little girl splashes in a fountain at the seaside."
WORDS = ["a", "little", "girl", "splashes", "in", "a", "fountain", "at", "the", "seaside", "."]
SMALL = dict(inst_dim=32, ctx_dim=16, att_dim=16, sim_dim=32, hidden_dim=32, emb_dim=32,
             word_dim=16, lstm_dim=32, steps=3, cca_dim=8)


@pytest.fixture(scope="session")
def feats(tmp_path_factory) -> Path:
    """Regions of two example images, their paths stored relative to the repository."""
    out = tmp_path_factory.mktemp("explain") / "feats.parquet"
    rc, _, err = run_main("extract-regions", *(f"examples/images/{n}" for n in IMAGES), "-o", out, cwd=REPO)
    assert rc == 0, err
    return out


@pytest.fixture(scope="session")
def models(feats, tmp_path_factory):
    """variant name -> model directory."""
    import torch

    from smcli.images.features import feature_signature, load_regions
    from smcli.models.config import ModelConfig
    from smcli.models.factory import ModelInfo, create_model, save_model
    from smcli.text.vocab import Vocab

    meta = load_regions(feats, regions=False).meta
    vocab = Vocab.build([WORDS, ["dog", "runs"]])
    root = tmp_path_factory.mktemp("models")
    made = {}
    for name, variant, encoder in [("smlstm", "smlstm", "minilm"), ("mean", "mean", "bilstm"),
                                   ("no-context", "no-context", "bilstm"), ("vse", "vse", "minilm"),
                                   ("cca", "cca", "minilm")]:
        torch.manual_seed(0)
        cfg = ModelConfig(variant=variant, text_encoder=encoder, img_dim=int(meta["dim"]),
                          vocab_size=len(vocab), **SMALL)
        model = create_model(cfg)
        if variant == "smlstm":  # sharper than random-init attention, so the maps differ
            with torch.no_grad():
                model.w_a.weight.mul_(40)
                model.w_s.weight.mul_(40)
        save_model(root / name, model, ModelInfo(cfg, feature_signature(meta), vocab.hash), vocab)
        made[name] = root / name
    return made


@pytest.fixture(scope="session")
def smlstm_explanation(models, feats):
    from smcli.images.features import load_regions
    from smcli.inference.explain import explain_pair
    from smcli.inference.inputs import resolve_images
    from smcli.inference.matcher import MatchModel

    session = MatchModel(models["smlstm"], device="cpu", precision="fp32")
    regions = load_regions(feats)
    images = resolve_images([IMAGES[0]], regions, session.features)
    return session, images, explain_pair(session, images, CAPTION)


# --- the library --------------------------------------------------------------------------


def test_maps_are_distributions_over_the_grid_and_the_words(smlstm_explanation):
    _, _, ex = smlstm_explanation
    assert ex.grid == (7, 7) and ex.steps == 3
    assert ex.region_maps.shape == (3, 7, 7)
    assert np.allclose(ex.region_maps.sum((1, 2)), 1.0, atol=1e-6)
    assert (ex.region_maps >= 0).all()
    assert ex.word_weights.shape == (3, len(ex.words))
    assert np.allclose(ex.word_weights.sum(1), 1.0, atol=1e-6)
    assert not np.allclose(ex.region_maps, 1 / 49)  # this model selects


def test_word_pieces_are_merged_into_the_caption_words(smlstm_explanation):
    _, _, ex = smlstm_explanation
    assert ex.words == WORDS
    assert len(ex.pieces) > len(ex.words)  # "splashes" and "seaside" are several pieces
    assert any(p.startswith("##") for p in ex.pieces)
    # a word weighs what its pieces weigh together
    assert np.allclose(ex.word_weights.sum(1), ex.piece_weights.sum(1))
    assert ex.unknown == [False] * len(WORDS) and not ex.truncated


def test_score_is_the_score_the_search_commands_give(smlstm_explanation, tmp_path, monkeypatch):
    monkeypatch.setenv("SMCLI_CACHE_DIR", str(tmp_path))
    session, images, ex = smlstm_explanation
    gallery = session.encode_images(images.image_ids, images.paths, images.regions, images.global_)
    texts = session.encode_texts(["c"], [CAPTION])
    score = session.score_pairs(gallery, texts, np.array([0]), np.array([0]))[0]
    assert ex.score == pytest.approx(score, abs=1e-5)


def test_mean_variant_is_uniform_and_said_so(models, feats):
    from smcli.images.features import load_regions
    from smcli.inference.explain import NO_SELECTION, explain_pair
    from smcli.inference.inputs import resolve_images
    from smcli.inference.matcher import MatchModel
    from smcli.render.saliency import compose_html, load_photo

    session = MatchModel(models["mean"], device="cpu", precision="fp32")
    images = resolve_images([IMAGES[1]], load_regions(feats), session.features)
    ex = explain_pair(session, images, "A dog runs in the zyzzyva")
    assert not ex.selective
    assert np.allclose(ex.region_maps, 1 / 49)
    assert np.allclose(ex.word_weights, 1 / 6)
    assert ex.words == ["a", "dog", "runs", "in", "the", "zyzzyva"]  # bilstm: normalised tokens
    assert ex.unknown == [False, False, False, False, False, True]
    page = compose_html(ex, load_photo(EXAMPLES / "images" / IMAGES[1]))
    assert NO_SELECTION in page


@pytest.mark.parametrize("variant", ["cca", "vse"])
def test_one_to_one_models_are_refused_by_the_library(models, variant):
    from smcli.errors import InputError
    from smcli.inference.explain import require_attention
    from smcli.inference.matcher import MatchModel

    model = MatchModel(models[variant])
    refusal = rf"explain needs an attention model .*; {re.escape(model.name)} is {variant}$"
    with pytest.raises(InputError, match=refusal):
        require_attention(model)
    require_attention(MatchModel(models["mean"]))  # an attention model passes


# --- the command ----------------------------------------------------------------------------


def test_png_has_one_panel_per_step(models, feats, tmp_path):
    from PIL import Image

    from smcli.render.saliency import COLUMNS, GAP, MARGIN, PANEL_W

    out = tmp_path / "why.png"
    rc, _, err = run_main("explain", "--model", models["smlstm"], "--regions", feats, "--image", IMAGES[0],
                          "--caption", CAPTION, "-o", out, "--device", "cpu", cwd=REPO)
    assert rc == 0, err
    assert re.match(r"smcli explain: score -?\d+\.\d{4} \(smlstm, 3 steps\); PNG written to ", err)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["why.png"]  # no temporary left
    with Image.open(out) as im:
        im.load()
        assert im.format == "PNG"
        pixels = np.asarray(im.convert("RGB")).astype(int)
    steps = 3
    assert steps <= COLUMNS
    assert pixels.shape[1] == 2 * MARGIN + steps * PANEL_W + (steps - 1) * GAP
    assert pixels.shape[0] > PANEL_W  # a photo (224 px scaled to the panel) and the words
    non_white = (pixels < 245).any(-1)
    photo_rows = []
    for t in range(steps):  # each panel holds a photo: a tall block of non-white columns
        x0 = MARGIN + t * (PANEL_W + GAP)
        rows = non_white[:, x0 + PANEL_W // 2]
        photo_rows.append(int(rows.sum()))
        gap = non_white[:, x0 + PANEL_W + GAP // 2] if t < steps - 1 else None
        if gap is not None:
            # between panels: white, but for the header lines and the legend
            assert gap[MARGIN + 120: MARGIN + 120 + PANEL_W // 2].sum() == 0
    assert min(photo_rows) >= PANEL_W  # the photo is PANEL_W px tall (square images)


def test_html_is_self_contained_with_every_word(models, feats, tmp_path):
    out = tmp_path / "why.out"  # --html forces HTML whatever the suffix
    rc, _, err = run_main("explain", "--model", models["smlstm"], "--regions", feats, "--image", IMAGES[0],
                          "--caption", CAPTION, "-o", out, "--html", "--device", "cpu", cwd=REPO)
    assert rc == 0, err
    assert "HTML written" in err
    page = out.read_text(encoding="utf-8")
    assert page.startswith("<!DOCTYPE html>")
    assert page.count("data:image/jpeg;base64,") == 3  # the photo under each step's map
    assert page.count('class="map" src="data:image/png;base64,') == 3
    assert not re.search(r'src="(?!data:)', page)  # nothing fetched from elsewhere
    spans = re.findall(r'<span style="background:#[0-9a-f]{6}">([^<]*)</span>', page)
    assert spans == [html.escape(w) for w in WORDS] * 3


def test_an_image_file_is_extracted_on_the_fly(models, tmp_path):
    out = tmp_path / "file.html"
    rc, _, err = run_main("explain", "--model", models["no-context"], "--image",
                          EXAMPLES / "images" / IMAGES[1], "--caption", "a dog runs", "-o", out,
                          "--device", "cpu", cwd=tmp_path)
    assert rc == 0, err
    assert "no-context" in out.read_text(encoding="utf-8")


def test_mean_variant_says_no_selection(models, feats, tmp_path):
    out = tmp_path / "mean.png"
    rc, _, err = run_main("explain", "--model", models["mean"], "--regions", feats, "--image", IMAGES[1],
                          "--caption", "a dog runs", "-o", out, "--device", "cpu", cwd=REPO)
    assert rc == 0, err
    assert "no selection (mean variant)" in err
    assert out.stat().st_size > 0


@pytest.mark.parametrize("variant", ["vse", "cca"])
def test_one_to_one_models_are_refused(models, feats, tmp_path, variant):
    out = tmp_path / "x.png"
    rc, _, err = run_main("explain", "--model", models[variant], "--regions", feats, "--image", IMAGES[0],
                          "--caption", CAPTION, "-o", out, cwd=REPO)
    assert rc == 1
    assert_one_line_error(rc, err, "explain needs an attention model (smlstm, no-context or mean)",
                          f"is {variant}")
    assert not out.exists()


def test_bad_inputs_are_one_line(models, feats, tmp_path):
    base = ["explain", "--model", models["smlstm"], "--regions", feats, "--caption", CAPTION]
    out = tmp_path / "x.png"
    # an id that is neither in the regions file nor a file
    rc, _, err = run_main(*base, "--image", "nope.jpg", "-o", out, cwd=REPO)
    assert rc == 1
    assert_one_line_error(rc, err, "--image nope.jpg", "neither an image id")
    # the regions file's relative path does not resolve from another directory
    rc, _, err = run_main(*base, "--image", IMAGES[0], "-o", out, cwd=tmp_path)
    assert_one_line_error(rc, err, f"image file examples/images/{IMAGES[0]}", "not found")
    # neither .png nor .html
    rc, _, err = run_main(*base, "--image", IMAGES[0], "-o", tmp_path / "x.jpg", cwd=REPO)
    assert rc == 2
    assert_one_line_error(rc, err, ".png or .html")
    # an empty caption
    rc, _, err = run_main("explain", "--model", models["smlstm"], "--regions", feats, "--caption", " ",
                          "--image", IMAGES[0], "-o", out, cwd=REPO)
    assert_one_line_error(rc, err, "empty")
    assert list(tmp_path.iterdir()) == []
