"""The matchers: attention behaviour, batching equivalences, gradients, save/load, CCA."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from smcli.models import ModelConfig, create_model, load_model, save_model
from smcli.models.factory import ModelInfo
from smcli.text.vocab import Vocab

SMALL = dict(inst_dim=32, ctx_dim=16, att_dim=16, sim_dim=32, hidden_dim=32, emb_dim=32,
             word_dim=24, lstm_dim=32, img_dim=40, vocab_size=50, dropout=0.0)
ATTENTION_VARIANTS = ("smlstm", "no-context", "mean")
LEARNED_VARIANTS = ("smlstm", "no-context", "mean", "vse")


def make(variant: str, text_encoder: str = "minilm", **kw):
    torch.manual_seed(0)
    return create_model(ModelConfig(variant=variant, text_encoder=text_encoder, **{**SMALL, **kw})).eval()


def images(n: int = 4, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    regions = torch.rand(n, 9, 40, generator=g)
    return regions, regions.mean(1)


def texts(text_encoder: str, lengths=(5, 3, 7), pad_to: int | None = None, seed: int = 2):
    g = torch.Generator().manual_seed(seed)
    L = pad_to or max(lengths)
    mask = torch.zeros(len(lengths), L, dtype=torch.bool)
    for i, n in enumerate(lengths):
        mask[i, :n] = True
    if text_encoder == "minilm":
        states = torch.randn(len(lengths), max(lengths), 384, generator=g)
        states = torch.nn.functional.pad(states, (0, 0, 0, L - states.shape[1]))
        states[~mask] = 0
        return {"states": states, "mask": mask, "sentence": torch.randn(len(lengths), 384, generator=g)}
    ids = torch.randint(2, 50, (len(lengths), max(lengths)), generator=g)
    ids = torch.nn.functional.pad(ids, (0, L - ids.shape[1]))
    return {"ids": ids * mask, "mask": mask}


def all_pairs(n_img: int, n_txt: int):
    ii, cc = torch.meshgrid(torch.arange(n_img), torch.arange(n_txt), indexing="ij")
    return ii.reshape(-1), cc.reshape(-1)


@pytest.mark.parametrize("text_encoder", ["minilm", "bilstm"])
@pytest.mark.parametrize("variant", ATTENTION_VARIANTS)
def test_attention_sums_to_one_and_ignores_padding(variant, text_encoder):
    model = make(variant, text_encoder)
    r, g = images()
    with torch.no_grad():
        img = model.encode_images(r, g)
        tight = model.encode_texts(texts(text_encoder))
        padded = model.encode_texts(texts(text_encoder, pad_to=12))
        ii, cc = all_pairs(4, 3)
        s1, maps = model.attention_maps(img, tight, ii, cc)
        s2, maps2 = model.attention_maps(img, padded, ii, cc)
    torch.testing.assert_close(s1, s2, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(maps.regions.sum(-1), torch.ones(12, 3))
    torch.testing.assert_close(maps.words.sum(-1), torch.ones(12, 3))
    # padded positions never receive attention
    lengths = torch.tensor([5, 3, 7])[cc]
    for p in range(12):
        assert maps2.words[p, :, lengths[p]:].abs().max() == 0
    if variant == "mean":
        torch.testing.assert_close(maps.regions, torch.full_like(maps.regions, 1 / 9))
        for p in range(12):
            n = int(lengths[p])
            torch.testing.assert_close(maps.words[p, :, :n], torch.full((3, n), 1 / n))
    else:
        assert maps.regions.std() > 0  # real selection, not uniform


@pytest.mark.parametrize("variant", LEARNED_VARIANTS + ("cca",))
def test_grid_scores_equal_pair_scores(variant):
    model = make(variant)
    r, g = images()
    with torch.no_grad():
        img = model.encode_images(r, g)
        txt = model.encode_texts(texts("minilm"))
        grid = model.score_grid(img, txt)
        ii, cc = all_pairs(4, 3)
        pairs = model.score_pairs(img, txt, ii, cc).reshape(4, 3)
    torch.testing.assert_close(grid, pairs, atol=1e-5, rtol=1e-5)


def test_context_changes_which_regions_are_attended():
    full, plain = make("smlstm"), make("no-context")
    r, g = images()
    ii, cc = all_pairs(4, 3)
    with torch.no_grad():
        _, m_full = full.attention_maps(full.encode_images(r, g), full.encode_texts(texts("minilm")), ii, cc)
        _, m_plain = plain.attention_maps(plain.encode_images(r, g), plain.encode_texts(texts("minilm")), ii, cc)
    # without context, the first step's region map depends on the image only (h_0 = 0)
    first = m_plain.regions[:, 0].reshape(4, 3, 9)
    torch.testing.assert_close(first, first[:, :1].expand(-1, 3, -1))
    # with context the same image is attended differently for different sentences
    first_full = m_full.regions[:, 0].reshape(4, 3, 9)
    assert (first_full - first_full[:, :1]).abs().max() > 1e-4


@pytest.mark.parametrize("text_encoder", ["minilm", "bilstm"])
@pytest.mark.parametrize("variant", LEARNED_VARIANTS)
def test_gradients_reach_every_parameter(variant, text_encoder):
    model = make(variant, text_encoder).train()
    r, g = images()
    img = model.encode_images(r, g)
    txt = model.encode_texts(texts(text_encoder))
    ii, cc = all_pairs(4, 3)
    score = model.score_pairs(img, txt, ii, cc)
    (score.sum() + (img.emb @ txt.emb.T).sum()).backward()
    missing = [name for name, p in model.named_parameters()
               if p.requires_grad and (p.grad is None or p.grad.abs().sum() == 0)]
    assert not missing, missing


@pytest.mark.parametrize("variant", LEARNED_VARIANTS + ("cca",))
def test_save_then_load_gives_identical_scores(tmp_path, variant):
    model = make(variant)
    vocab = Vocab(["<pad>", "<unk>", "dog"])
    info = ModelInfo(model.cfg, {"backbone": "x", "grid": [3, 3], "dim": 40}, vocab.hash)
    save_model(tmp_path, model, info, vocab)
    loaded = load_model(tmp_path)
    r, g = images()
    t = texts("minilm")
    with torch.no_grad():
        a = model.score_grid(model.encode_images(r, g), model.encode_texts(t))
        b = loaded.model.score_grid(loaded.model.encode_images(r, g), loaded.model.encode_texts(t))
    assert torch.equal(a, b)
    assert loaded.info.config == model.cfg
    assert loaded.vocab.tokens == vocab.tokens


def test_cca_finds_the_shared_direction():
    rng = np.random.default_rng(0)
    z = rng.normal(size=(4000, 2))  # shared latent
    x = np.hstack([z, rng.normal(size=(4000, 38))]) @ rng.normal(size=(40, 40))
    y = np.hstack([z, rng.normal(size=(4000, 382))]) @ rng.normal(size=(384, 384))
    model = make("cca", cca_dim=4, cca_reg=1e-6)
    corr = model.fit(x.astype(np.float32), y.astype(np.float32))
    assert corr[0] > 0.99 and corr[1] > 0.99  # the two shared dimensions
    assert corr[2] < 0.9
    # matching pairs score higher than shuffled ones
    with torch.no_grad():
        img = model.encode_images(None, torch.from_numpy(x[:50]).float())
        txt = model.encode_texts({"sentence": torch.from_numpy(y[:50]).float()})
        s = model.score_grid(img, txt).numpy()
    off = s[~np.eye(50, dtype=bool)]
    assert np.diag(s).mean() > off.mean() + 0.5
    assert (s >= np.diag(s)[:, None]).sum(1).mean() < 10  # the true pair ranks high


@pytest.mark.parametrize("n_img,n_txt", [(12, 9), (2, 9), (12, 2)])
def test_pair_lists_score_as_the_grid_whatever_their_grouping(n_img, n_txt):
    from smcli.inference.scoring import score_pair_list

    model = make("smlstm", local_skip=True, fuse_global=True)
    r, g = images(12)
    with torch.no_grad():
        img = model.encode_images(r, g)
        txt = model.encode_texts(texts("minilm", lengths=(5, 3, 7, 2, 6, 4, 5, 1, 7)))
        grid = model.score_grid(img, txt)
        gen = torch.Generator().manual_seed(0)
        ii = torch.randint(0, n_img, (300,), generator=gen)
        cc = torch.randint(0, n_txt, (300,), generator=gen)
        got = score_pair_list(model, img, txt, ii, cc, chunk=50)
    torch.testing.assert_close(got, grid[ii, cc], atol=1e-5, rtol=1e-5)


def test_attention_scale_sharpens_the_saliency_and_is_learned():
    """--att-scale multiplies the attention logits by a learned factor starting at that value:
    a larger start gives a less uniform region attention, and the factor gets gradients."""
    r, g = images()
    batch = texts("minilm")
    ii, cc = all_pairs(4, 3)

    def entropy(scale: float) -> float:
        model = make("smlstm", att_scale=scale)
        with torch.no_grad():
            _, maps = model.attention_maps(model.encode_images(r, g), model.encode_texts(batch), ii, cc)
        p = maps.regions.clamp_min(1e-12)
        return float(-(p * p.log()).sum(-1).mean())

    plain, sharp = entropy(0.0), entropy(20.0)
    assert entropy(1.0) == pytest.approx(plain, abs=1e-6)  # a factor of 1 is the plain model
    assert sharp < plain - 0.05
    model = make("smlstm", att_scale=5.0).train()
    scores = model.score_pairs(model.encode_images(r, g), model.encode_texts(batch), ii, cc)
    scores.sum().backward()
    assert model.att_log_scale.grad is not None and model.att_log_scale.grad.abs() > 0
    assert "att_log_scale" not in dict(make("smlstm").named_parameters())


def test_global_weight_on_val_is_left_out_of_training_and_in_scoring():
    """--global-weight val: in training the matcher's score has no cosine term and the weight
    gets no gradient; in eval the weight the trainer set multiplies the cosine."""
    r, g = images()
    batch = texts("minilm")
    ii, cc = all_pairs(4, 3)
    model = make("smlstm", global_weight="val")
    assert not model.global_weight.requires_grad and float(model.global_weight) == 0.0
    with torch.no_grad():
        img, txt = model.encode_images(r, g), model.encode_texts(batch)
        cosine = (img.emb[ii] * txt.emb[cc]).sum(-1)
        alone = model.score_pairs(img, txt, ii, cc)
        model.global_weight.fill_(2.5)
        torch.testing.assert_close(model.score_pairs(img, txt, ii, cc), alone + 2.5 * cosine)
        model.train()
        model.drop.p = 0.0  # the same forward pass, in training mode
        torch.testing.assert_close(model.score_pairs(img, txt, ii, cc), alone)
    learned = make("smlstm", global_weight="learned")
    assert learned.global_weight.requires_grad and float(learned.global_weight) == 1.0
