"""Training on the real example features: learning, determinism, resume, refusals."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import REPO, SMALL_MODEL_ARGS, assert_one_line_error, child_env, run_main

from smcli.dataset import load_matching_data
from smcli.models import ModelConfig, create_model
from smcli.training.checkpoint import load_state
from smcli.training.trainer import Trainer, TrainOptions

SMALL = dict(inst_dim=64, sim_dim=64, att_dim=32, hidden_dim=64, emb_dim=64, ctx_dim=32)


def metrics(model_dir: Path) -> list[dict]:
    rows = [json.loads(line) for line in (model_dir / "metrics.jsonl").read_text().splitlines()]
    for r in rows:  # timings differ between runs; everything else must not
        for key in ("train_seconds", "eval_seconds", "pairs_per_second"):
            r.pop(key, None)
    return rows


@pytest.mark.parametrize("variant", ["smlstm", "vse"])
def test_training_lowers_the_loss_and_fits_the_train_split(example_pipeline, tmp_path, variant):
    data = load_matching_data(str(example_pipeline["feats"]), str(example_pipeline["captions"]))
    opts = TrainOptions(epochs=12, batch_size=16, lr=1e-3, patience=100, seed=0)
    trainer = Trainer(data, tmp_path, ModelConfig(variant=variant, **SMALL), opts, log=lambda m: None)
    trainer.run()
    rows = metrics(tmp_path)
    assert len(rows) == 12
    assert rows[-1]["loss"] < 0.6 * rows[0]["loss"]
    # the last epoch's weights, evaluated on the 80 training captions of 16 images
    model = create_model(trainer.cfg)
    import torch

    load_state(tmp_path, model, torch.optim.Adam([p for p in model.parameters() if p.requires_grad]))
    store = trainer._text_store()
    m = trainer.validate(model, store, trainer.train_caps, shortlist=0).metrics
    chance = 100 / 16
    assert m.t2i_r1 > 5 * chance and m.i2t_r1 > 5 * chance, m.short()


def test_same_seed_gives_the_same_metrics(example_pipeline, tmp_path):
    args = ["train", "--regions", example_pipeline["feats"], "--captions", example_pipeline["captions"],
            "--epochs", "2", "--batch-size", "16", "--seed", "7", *SMALL_MODEL_ARGS]
    for name in ("a", "b"):
        rc, _, err = run_main(*args, "-o", tmp_path / name, cwd=REPO)
        assert rc == 0, err
    assert metrics(tmp_path / "a") == metrics(tmp_path / "b")
    a = (tmp_path / "a" / "model.safetensors").read_bytes()
    assert a == (tmp_path / "b" / "model.safetensors").read_bytes()


def test_resume_after_kill_continues_to_the_same_result(example_pipeline, tmp_path, capsys):
    args = ["train", "--regions", str(example_pipeline["feats"]), "--captions",
            str(example_pipeline["captions"]), "--epochs", "3", "--batch-size", "8",
            "--checkpoint-every", "2", "--seed", "3", *SMALL_MODEL_ARGS]
    rc, _, err = run_main(*args, "-o", tmp_path / "straight", cwd=REPO)
    assert rc == 0, err

    out = tmp_path / "killed"
    proc = subprocess.Popen([sys.executable, "-m", "smcli", *args, "-o", str(out)], cwd=REPO,
                            env=child_env(None), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    state = out / "train_state.safetensors"
    deadline = time.time() + 240
    # kill -9 once a mid-epoch checkpoint of the second epoch exists
    from smcli.training.checkpoint import read_progress

    while time.time() < deadline and proc.poll() is None:
        if state.exists():
            try:
                p = read_progress(out)
            except Exception:  # noqa: BLE001 - caught between write and rename; try again
                p = None
            if p and p["epoch"] >= 1 and p["step"] > 0:
                os.kill(proc.pid, signal.SIGKILL)
                break
        time.sleep(0.02)
    proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL, "the run finished before it could be interrupted"
    done_before = len(metrics(out))
    assert done_before >= 1
    # the killed run's directory says so, and loading it warns
    assert (out / "INCOMPLETE").is_file() and not (tmp_path / "straight" / "INCOMPLETE").exists()
    from smcli.models.factory import load_model

    load_model(out)
    assert "left by an interrupted smcli train" in capsys.readouterr().err

    rc, _, err = run_main(*args, "-o", out, "--resume", cwd=REPO)
    assert rc == 0, err
    assert "resuming at epoch 2" in err
    assert metrics(out) == metrics(tmp_path / "straight")
    assert (out / "model.safetensors").read_bytes() == (tmp_path / "straight" / "model.safetensors").read_bytes()
    assert not (out / "INCOMPLETE").exists()


def test_resume_with_more_epochs_trains_on_to_what_one_longer_run_gives(example_pipeline, tmp_path):
    """A finished 2-epoch run resumed with --epochs 3 equals a 3-epoch run of the same seed
    (the schedule does not depend on the number of epochs); fewer epochs than done is refused."""
    args = ["train", "--regions", str(example_pipeline["feats"]), "--captions",
            str(example_pipeline["captions"]), "--batch-size", "8", "--seed", "5", "--patience", "9",
            *SMALL_MODEL_ARGS]
    rc, _, err = run_main(*args, "--epochs", "3", "-o", tmp_path / "straight", cwd=REPO)
    assert rc == 0, err
    out = tmp_path / "extended"
    rc, _, err = run_main(*args, "--epochs", "2", "-o", out, cwd=REPO)
    assert rc == 0, err
    assert len(metrics(out)) == 2

    rc, _, err = run_main(*args, "--epochs", "3", "-o", out, "--resume", cwd=REPO)
    assert rc == 0, err
    assert "up to 3 epochs (started with 2)" in err and "resuming at epoch 3" in err
    assert metrics(out) == metrics(tmp_path / "straight")
    assert (out / "model.safetensors").read_bytes() == (tmp_path / "straight" / "model.safetensors").read_bytes()
    assert json.loads((out / "config.json").read_text())["training"]["epochs"] == 3

    assert_one_line_error(*run_main(*args, "--epochs", "3", "-o", out, "--resume", cwd=REPO)[::2],
                          "--epochs 3 with --resume", "trained 3 epoch(s) already")


def test_cca_is_fitted_and_chosen_on_val(example_pipeline, tmp_path):
    """Every setting of the grid is scored on val, and the saved model is the val argmax:
    its config holds that setting, and scoring it on val again gives the same rsum."""
    import re

    from smcli.evaluation.protocol import evaluate
    from smcli.inference.matcher import MatchModel
    from smcli.training.cca_fit import POWERS, REGULARISATIONS

    data = load_matching_data(str(example_pipeline["feats"]), str(example_pipeline["captions"]))
    lines: list[str] = []
    best = Trainer(data, tmp_path, ModelConfig(variant="cca"), TrainOptions(), log=lines.append).run()
    grid = {}
    for line in lines:
        hit = re.match(r"cca reg (\S+) power (\S+): val .* rsum (\S+)$", line)
        if hit:
            grid[float(hit[1]), float(hit[2])] = float(hit[3])
    assert set(grid) == {(r, p) for r in REGULARISATIONS for p in POWERS}
    cfg = json.loads((tmp_path / "config.json").read_text())
    assert cfg["model"]["variant"] == "cca"
    chosen = (cfg["model"]["cca_reg"], cfg["model"]["cca_power"])
    assert grid[chosen] == max(grid.values())
    assert f"{best['rsum']:.1f}" == f"{max(grid.values()):.1f}"
    again = evaluate(MatchModel(tmp_path, device="cpu"), str(example_pipeline["feats"]),
                     str(example_pipeline["captions"]), "val", shortlist=None)
    assert again.metrics.rsum == pytest.approx(best["rsum"])


def test_model_directory_is_not_clobbered(example_model, example_pipeline, tmp_path):
    rc, _, err = run_main("train", "--regions", example_pipeline["feats"], "--captions",
                           example_pipeline["captions"], "-o", example_model, cwd=REPO)
    assert_one_line_error(rc, err, "--overwrite")


def test_model_directory_contents(example_model):
    cfg = json.loads((example_model / "config.json").read_text())
    assert cfg["model"]["variant"] == "smlstm"
    assert cfg["features"]["backbone"] == "efficientnet-lite0"
    assert cfg["features"]["pretrained"] is True
    assert cfg["vocab_hash"]
    assert cfg["training"]["train_captions"] == 80 and cfg["training"]["val_captions"] == 40
    assert (example_model / "vocab.txt").read_text().startswith("<pad>\n<unk>\n")
    rows = [json.loads(line) for line in (example_model / "metrics.jsonl").read_text().splitlines()]
    assert {"epoch", "loss", "val_rsum", "val_i2t_r1", "val_t2i_r10", "train_seconds"} <= set(rows[0])
    assert cfg["best"]["rsum"] == max(r["val_rsum"] for r in rows)


def test_captions_without_splits_are_refused(example_pipeline, tmp_path):
    caps = tmp_path / "nosplit.parquet"
    rc, _, err = run_main("tokenize", REPO / "examples" / "captions.txt", "-o", caps, cwd=REPO)
    assert rc == 0, err
    rc, _, err = run_main("train", "--regions", example_pipeline["feats"], "--captions", caps,
                           "-o", tmp_path / "m", cwd=REPO)
    assert_one_line_error(rc, err, "train split")
    assert not (tmp_path / "m" / "model.safetensors").exists()


def test_nothing_joins_is_one_clear_error(example_pipeline, tmp_path):
    caps = tmp_path / "other.csv"
    caps.write_text("image,caption,split\nnot_there.jpg,a dog runs,train\n")
    parquet = tmp_path / "other.parquet"
    rc, _, err = run_main("tokenize", caps, "-o", parquet, cwd=REPO)
    assert rc == 0, err
    rc, _, err = run_main("train", "--regions", example_pipeline["feats"], "--captions", parquet,
                           "-o", tmp_path / "m", cwd=REPO)
    assert_one_line_error(rc, err, "no caption", "image_id")


def test_wrong_kind_of_file_is_refused_before_work(example_pipeline, tmp_path):
    rc, _, err = run_main("train", "--regions", example_pipeline["captions"], "--captions",
                           example_pipeline["captions"], "-o", tmp_path / "m", cwd=REPO)
    assert_one_line_error(rc, err, "expected a regions file, got captions")


def test_features_from_another_backbone_are_refused(example_model, example_pipeline, tmp_path):
    feats = tmp_path / "random.parquet"
    images = sorted((REPO / "examples" / "images").iterdir())[:2]
    rc, _, err = run_main("extract-regions", *images, "--weights", "none", "-o", feats, cwd=REPO)
    assert rc == 0, err
    rc, _, err = run_main("score", "--model", example_model, "--regions", feats, "--captions",
                           example_pipeline["captions"], "-o", tmp_path / "s.parquet", cwd=REPO)
    assert_one_line_error(rc, err, "features differ", "pretrained")
    assert not (tmp_path / "s.parquet").exists()


def test_bilstm_with_glove_trains(example_pipeline, tmp_path):
    rc, _, err = run_main("train", "--text-encoder", "bilstm", "--word-vectors", "glove-6b-50d",
                           "--regions", example_pipeline["feats"], "--captions", example_pipeline["captions"],
                           "-o", tmp_path / "b", "--epochs", "1", "--batch-size", "16", *SMALL_MODEL_ARGS,
                           cwd=REPO)
    assert rc == 0, err
    assert "GloVe vectors for" in err
    assert np.isfinite(metrics(tmp_path / "b")[0]["loss"])


def test_reranker_on_a_frozen_embedding_head(example_pipeline, tmp_path):
    from safetensors.torch import load_file

    common = ["--regions", example_pipeline["feats"], "--captions", example_pipeline["captions"],
              "--batch-size", "16", *SMALL_MODEL_ARGS]
    rc, _, err = run_main("train", "--variant", "vse", "-o", tmp_path / "vse", "--epochs", "2", *common,
                           cwd=REPO)
    assert rc == 0, err
    rc, _, err = run_main("train", "-o", tmp_path / "rr", "--epochs", "2", "--init", tmp_path / "vse",
                           "--freeze-embedding", "--fuse-global", "--local-skip", *common, cwd=REPO)
    assert rc == 0, err
    assert "embedding head from" in err
    vse = load_file(tmp_path / "vse" / "model.safetensors")
    rr = load_file(tmp_path / "rr" / "model.safetensors")
    head = [k for k in vse if k.startswith("embedding.")]
    assert head and all(np.array_equal(vse[k].numpy(), rr[k].numpy()) for k in head)
    assert any(k.startswith("lstm.") for k in rr)
    # a head of another size is refused in one line
    rc, _, err = run_main("train", "-o", tmp_path / "bad", "--init", tmp_path / "vse", "--epochs", "1",
                           *common, "--emb-dim", "32", cwd=REPO)
    assert_one_line_error(rc, err, "--init")


def test_global_weight_chosen_on_val_is_the_saved_models(example_pipeline, tmp_path):
    """--global-weight val: the matcher trains alone, the cosine's weight comes from val, and
    the saved model scores val exactly as the selection saw it."""
    from safetensors.torch import load_file

    from smcli.training.fusion import WEIGHT_GRID

    common = ["--regions", example_pipeline["feats"], "--captions", example_pipeline["captions"],
              "--batch-size", "16", "--lr", "1e-3", *SMALL_MODEL_ARGS]
    rc, _, err = run_main("train", "--variant", "vse", "-o", tmp_path / "vse", "--epochs", "3", *common,
                           cwd=REPO)
    assert rc == 0, err
    rc, _, err = run_main("train", "-o", tmp_path / "rr", "--epochs", "3", "--init", tmp_path / "vse",
                           "--freeze-embedding", "--global-weight", "val", "--val-shortlist", "5", *common,
                           cwd=REPO)
    assert rc == 0, err
    assert "at global weight" in err
    rows = metrics(tmp_path / "rr")
    assert len(rows) == 3 and all(r["global_weight"] in WEIGHT_GRID for r in rows)
    best = json.loads((tmp_path / "rr" / "config.json").read_text())["best"]
    saved = float(load_file(tmp_path / "rr" / "model.safetensors")["global_weight"])
    assert saved == pytest.approx(best["global_weight"])
    assert best["rsum"] == max(r["val_rsum"] for r in rows)
    rc, _, err = run_main("retrieve", "--eval", "--split", "val", "--shortlist", "5", "-o", tmp_path / "val.json",
                           "--model", tmp_path / "rr", "--regions", example_pipeline["feats"],
                           "--captions", example_pipeline["captions"], cwd=REPO)
    assert rc == 0, err
    assert json.loads((tmp_path / "val.json").read_text())["rsum"] == pytest.approx(best["rsum"])
    rc, _, err = run_main("train", "-o", tmp_path / "bad", "--global-weight", "often", *common, cwd=REPO)
    assert_one_line_error(rc, err, "--global-weight")


def test_attention_that_moves_trains_from_the_cli(example_pipeline, tmp_path):
    """The selection options of issue 13's recipe reach the model from `smcli train`: the config
    records them, each strength is a learned parameter starting at its value, and on the
    example photos consecutive steps attend different regions (region coverage) where the
    same model without it keeps one map; a negative strength is refused in one line."""
    from safetensors.torch import load_file

    from smcli.inference import explain
    from smcli.inference.inputs import resolve_images
    from smcli.inference.matcher import MatchModel
    from smcli.inference.tasks import load_features

    common = ["--regions", example_pipeline["feats"], "--captions", example_pipeline["captions"],
              "--batch-size", "16", "--epochs", "1", "--seed", "0", "--cross-scale", "9", *SMALL_MODEL_ARGS]
    for name, extra in (("plain", []), ("moves", ["--coverage", "10", "--att-scale", "3", "--region-coverage", "1"])):
        rc, _, err = run_main("train", *common, *extra, "-o", tmp_path / name, cwd=REPO)
        assert rc == 0, err
    cfg = json.loads((tmp_path / "moves" / "config.json").read_text())["model"]
    assert (cfg["region_coverage"], cfg["coverage"], cfg["att_scale"]) == (1.0, 10.0, 3.0)
    weights = load_file(tmp_path / "moves" / "model.safetensors")
    assert float(weights["region_coverage_log_scale"].exp()) == pytest.approx(1.0, abs=0.05)
    assert "region_coverage_log_scale" not in load_file(tmp_path / "plain" / "model.safetensors")

    def step_change(name: str) -> float:
        model = MatchModel(str(tmp_path / name), device="cpu", precision="fp32")
        feats = load_features(model, str(example_pipeline["feats"]))
        one = resolve_images([feats.image_ids[0]], feats, model.features)
        maps = explain.explain_pair(model, one, "a dog runs on the grass").region_maps
        maps = maps.reshape(maps.shape[0], -1)
        return float(np.mean([0.5 * np.abs(maps[t + 1] - maps[t]).sum() for t in range(len(maps) - 1)]))

    moves, plain = step_change("moves"), step_change("plain")
    assert moves > 0.05 and moves > 5 * plain
    rc, _, err = run_main("train", *common, "--region-coverage", "-1", "-o", tmp_path / "bad", cwd=REPO)
    assert_one_line_error(rc, err, "region")


def test_minilm_word_layers_below_the_last_carry_less_sentence_context():
    """Layer 0's state of a word piece is its embedding (with its position): the same in two
    sentences, where the last layer's differs; several layers sit side by side; each set of
    layers has its own cache entry and the sentence vector is the last layer's in every one."""
    from smcli.models import minilm

    caps = ["a dog runs on the grass", "a dog sleeps in a red car"]
    last = minilm.encode(caps)
    zero = minilm.encode(caps, layers=(0,))
    both = minilm.encode(caps, layers=(0, 6))
    dog = [last.offsets[i] + 1 for i in range(2)]  # "a", "dog", ...: the same piece at the same place
    assert np.array_equal(zero.states[dog[0]], zero.states[dog[1]])
    assert np.abs(last.states[dog[0]].astype(np.float32) - last.states[dog[1]]).max() > 0.05
    assert both.states.shape[1] == 2 * minilm.DIM
    assert np.array_equal(both.states, np.concatenate([zero.states, last.states], axis=1))
    assert np.array_equal(both.sentence, last.sentence) and np.array_equal(zero.offsets, last.offsets)
    assert len({minilm.captions_key(caps), minilm.captions_key(caps, (0,)), minilm.captions_key(caps, (0, 6))}) == 3


def test_train_with_word_layers_builds_and_scores_the_wider_words(example_pipeline, tmp_path):
    """--word-layers 0+6 is saved in the config, widens the word projection to 2 x 384 inputs,
    and the model then scores and explains captions (its own word states at those layers); a
    layer that MiniLM lacks, or one given twice, is refused in one line, and so is an ensemble
    whose members read different layers."""
    from safetensors.torch import load_file

    from smcli.inference import explain
    from smcli.inference.inputs import resolve_images
    from smcli.inference.matcher import MatchModel
    from smcli.inference.tasks import load_features

    common = ["--regions", example_pipeline["feats"], "--captions", example_pipeline["captions"],
              "--batch-size", "16", "--epochs", "1", "--seed", "0", *SMALL_MODEL_ARGS]
    rc, _, err = run_main("train", *common, "--word-layers", "0+6", "-o", tmp_path / "wide", cwd=REPO)
    assert rc == 0, err
    assert json.loads((tmp_path / "wide" / "config.json").read_text())["model"]["word_layers"] == "0+6"
    assert load_file(tmp_path / "wide" / "model.safetensors")["word_proj.weight"].shape == (64, 768)
    model = MatchModel(str(tmp_path / "wide"), device="cpu", precision="fp32")
    feats = load_features(model, str(example_pipeline["feats"]))
    one = resolve_images([feats.image_ids[0]], feats, model.features)
    ex = explain.explain_pair(model, one, "a dog runs on the grass")
    assert np.isfinite(ex.score) and ex.word_weights.shape[-1] == len(ex.words)
    rc, _, err = run_main("retrieve", "--model", tmp_path / "wide", "--regions", example_pipeline["feats"],
                            "--query", "a dog runs on the grass", "--top-k", "3", "-o", tmp_path / "hits.parquet",
                            cwd=REPO)
    assert rc == 0, err
    import pyarrow.parquet as pq

    assert pq.read_table(tmp_path / "hits.parquet").num_rows == 3
    for bad in ("7", "6+6", "last"):
        rc, _, err = run_main("train", *common, "--word-layers", bad, "-o", tmp_path / "bad", cwd=REPO)
        assert_one_line_error(rc, err, "--word-layers")
    rc, _, err = run_main("train", *common, "-o", tmp_path / "plain", cwd=REPO)
    assert rc == 0, err
    rc, _, err = run_main("retrieve", "--model", f"{tmp_path / 'wide'},{tmp_path / 'plain'}", "--regions",
                          example_pipeline["feats"], "--query", "a dog", cwd=REPO)
    assert_one_line_error(rc, err, "word layers")
