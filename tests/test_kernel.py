"""The pair-scoring kernel (SmLSTM._fuse) against a straightforward reference implementation.

The reference below is the kernel as it was before the blocked attention, the exp form of
tanh and the fused recurrent matrix products: every [pairs, instances, att_dim] tensor
materialised, nn.LSTMCell, keys and values gathered per pair. Scores, saliency maps and
gradients of the new kernel must equal it within float tolerance, for every attention kind,
score head and skip/fusion option, with padded captions, on both kernel paths (exp form and
tanh itself) and across block boundaries.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from smcli.models import ModelConfig, create_model, fused_attention, matchers
from smcli.models.matchers import Attention, full_precision

SMALL = dict(inst_dim=32, ctx_dim=16, att_dim=16, sim_dim=32, hidden_dim=32, emb_dim=32,
             img_dim=40, dropout=0.0, emb_dropout=0.0, global_weight="learned")
ATT = {"context": "smlstm", "plain": "no-context", "uniform": "mean"}
TOL = dict(atol=2e-5, rtol=1e-4)


# -- the reference kernel ----------------------------------------------------------------
def reference_fuse(model, img, txt, *, grid: bool, keep_maps: bool = False):
    cfg = model.cfg
    if grid:
        shape = (len(img), len(txt))
        word_mask = txt.mask.unsqueeze(0)
    else:
        shape = (len(img),)
        word_mask = txt.mask
    h = img.values.new_zeros(*shape, cfg.hidden_dim)
    c = torch.zeros_like(h)
    ctx_a = ctx_s = None
    if model.attention == "context":
        ctx_a = _ref_pair_add(img.ctx_a, txt.ctx_a, grid)
        ctx_s = _ref_pair_add(img.ctx_s, txt.ctx_s, grid)
    region_maps, word_maps, outputs, cosines = [], [], [], []
    word_maps_all, region_maps_all = [], []
    for _ in range(cfg.steps):
        if model.attention == "uniform":
            p = img.values.new_full((*shape, img.values.shape[-2]), 1.0 / img.values.shape[-2])
            q = word_mask.expand(*shape, -1).to(h.dtype)
            q = q / q.sum(-1, keepdim=True).clamp(min=1.0)
        else:
            qa, qs = model.U_a(h), model.U_s(h)
            if ctx_a is not None:
                qa, qs = qa + ctx_a, qs + ctx_s
            e_a = _ref_logits(model.w_a, img.keys, qa, grid, images=True)
            e = _ref_logits(model.w_s, txt.keys, qs, grid, images=False)
            if cfg.att_scale > 0:
                scale = model.att_log_scale.exp()
                e_a, e = e_a * scale, e * scale
            if cfg.coverage > 0 and word_maps_all:  # earlier steps' word weights held back
                e = e - model.coverage_log_scale.exp() * sum(word_maps_all)
            q = torch.softmax(e.masked_fill(~word_mask, float("-inf")), -1)
            word_maps_all.append(q)
            if cfg.cross_scale > 0:  # word-steered: lambda * cos(region value, selected words)
                s_sel = _ref_weighted(q, txt.values, grid, images=False)
                v = img.values.unsqueeze(1) if grid else img.values  # grid: [I, 1, R, d]
                cos = F.cosine_similarity(v,
                                          s_sel.unsqueeze(-2), dim=-1)
                e_a = e_a + model.cross_log_scale.exp() * cos
            if cfg.region_coverage > 0 and region_maps_all:  # inhibition of return, R-scaled
                e_a = e_a - model.region_coverage_log_scale.exp() * e_a.shape[-1] * sum(region_maps_all)
            p = torch.softmax(e_a, -1)
            region_maps_all.append(p)
        a_sel = _ref_weighted(p, img.values, grid, images=True)
        s_sel = _ref_weighted(q, txt.values, grid, images=False)
        x = F.normalize(a_sel, dim=-1) * F.normalize(s_sel, dim=-1)
        if cfg.local_skip:
            cosines.append(x.float().sum(-1))
        h2, c2 = model.lstm(x.reshape(-1, x.shape[-1]), (h.reshape(-1, h.shape[-1]), c.reshape(-1, c.shape[-1])))
        h, c = h2.reshape(h.shape), c2.reshape(c.shape)
        outputs.append(h)
        if keep_maps:
            region_maps.append(p)
            word_maps.append(q)
    with full_precision(h):
        if cfg.score_head == "sum":
            score = sum(model.head(o.float()).squeeze(-1) for o in outputs)
        else:
            score = model.head(h.float()).squeeze(-1)
        if cfg.local_skip:
            score = score + torch.stack(cosines).mean(0)
        if cfg.fuse_global and not (model.training and cfg.global_weight_on_val):
            glob = img.emb @ txt.emb.T if grid else (img.emb * txt.emb).sum(-1)
            score = score + model.global_weight * glob
    maps = Attention(torch.stack(region_maps, -2), torch.stack(word_maps, -2)) if keep_maps else None
    return score, maps


def _ref_logits(w, keys, query, grid, images):
    if not grid:
        return w(torch.tanh(keys + query.unsqueeze(-2))).squeeze(-1)
    k = keys.unsqueeze(1) if images else keys.unsqueeze(0)
    return w(torch.tanh(k + query.unsqueeze(-2))).squeeze(-1)


def _ref_pair_add(img_part, txt_part, grid):
    return img_part.unsqueeze(1) + txt_part.unsqueeze(0) if grid else img_part + txt_part


def _ref_weighted(weights, values, grid, images):
    if not grid:
        return torch.einsum("pk,pkd->pd", weights, values)
    if images:
        return torch.einsum("ick,ikd->icd", weights, values)
    return torch.einsum("ick,ckd->icd", weights, values)


def ref_pairs(model, img, txt, ii, cc, keep_maps=False):
    return reference_fuse(model, img.select(ii), txt.select(cc), grid=False, keep_maps=keep_maps)


# -- inputs -------------------------------------------------------------------------------
def make(attention="context", seed=0, **kw):
    torch.manual_seed(seed)
    return create_model(ModelConfig(variant=ATT[attention], text_encoder="minilm", **{**SMALL, **kw}))


def sides(model, n_img=5, lengths=(5, 3, 7, 1, 6, 2), pad_to=10, seed=1):
    g = torch.Generator().manual_seed(seed)
    regions = torch.rand(n_img, 9, 40, generator=g)
    mask = torch.arange(pad_to)[None] < torch.tensor(lengths)[:, None]
    states = torch.randn(len(lengths), pad_to, 384, generator=g) * mask[..., None]
    batch = {"states": states, "mask": mask, "sentence": torch.randn(len(lengths), 384, generator=g)}
    return model.encode_images(regions, regions.mean(1)), model.encode_texts(batch)


def some_pairs(n_img, n_txt, n=23, seed=3):
    g = torch.Generator().manual_seed(seed)  # repeats and unused items: uneven groups
    ii = torch.randint(0, n_img - 1, (n,), generator=g)
    cc = torch.randint(0, n_txt, (n,), generator=g)
    ii[:6] = 0
    return ii, cc


OPTIONS = [dict(), dict(score_head="sum"), dict(local_skip=False, fuse_global=False),
           dict(att_scale=3.0), dict(steps=1), dict(steps=4, score_head="sum", local_skip=False),
           dict(cross_scale=5.0), dict(cross_scale=2.0, att_scale=3.0, steps=4), dict(coverage=2.0),
           dict(coverage=1.0, cross_scale=5.0, steps=4), dict(region_coverage=2.0),
           dict(region_coverage=1.0, coverage=1.0, cross_scale=5.0, steps=4)]


@pytest.fixture(params=["exp", "tanh", "tiny-blocks", "fused"])
def kernel_path(request, monkeypatch):
    """The exp form of tanh (the default on CPU), tanh itself, blocks of a few pairs, and the
    exp form's grid logits as one compiled loop (smcli.models.fused_attention)."""
    if request.param == "tanh":
        monkeypatch.setattr(matchers, "_EXP_RANGE", -1.0)
    elif request.param == "tiny-blocks":
        monkeypatch.setattr(matchers, "_BLOCK", 100)
    elif request.param == "fused":
        monkeypatch.setitem(fused_attention._state, "active", True)
    yield request.param
    if request.param == "fused":
        assert fused_attention._state["failed"] is None, fused_attention._state["failed"]


# -- scores and maps ----------------------------------------------------------------------
@pytest.mark.parametrize("attention", ["context", "plain", "uniform"])
@pytest.mark.parametrize("options", OPTIONS, ids=lambda o: ",".join(f"{k}={v}" for k, v in o.items()) or "default")
def test_grid_and_pairs_equal_the_reference(attention, options, kernel_path):
    model = make(attention, **options).eval()
    with torch.no_grad():
        img, txt = sides(model)
        ref = reference_fuse(model, img, txt, grid=True)[0]
        grid = model.score_grid(img, txt)
        ii, cc = some_pairs(len(img), len(txt))
        pairs = model.score_pairs(img, txt, ii, cc)
        ref_p = ref_pairs(model, img, txt, ii, cc)[0]
    assert grid.shape == (5, 6) and pairs.shape == (len(ii),)
    torch.testing.assert_close(grid, ref, **TOL)
    torch.testing.assert_close(pairs, ref_p, **TOL)
    torch.testing.assert_close(pairs, ref[ii, cc], **TOL)
    assert ref.std() > 0


@pytest.mark.parametrize("attention", ["context", "plain", "uniform"])
def test_attention_maps_equal_the_reference(attention, kernel_path):
    model = make(attention, att_scale=2.0 if attention != "uniform" else 0.0).eval()
    with torch.no_grad():
        img, txt = sides(model)
        ii, cc = some_pairs(len(img), len(txt))
        score, maps = model.attention_maps(img, txt, ii, cc)
        ref, ref_maps = ref_pairs(model, img, txt, ii, cc, keep_maps=True)
    torch.testing.assert_close(score, ref, **TOL)
    assert maps.regions.shape == ref_maps.regions.shape == (len(ii), 3, 9)
    assert maps.words.shape == ref_maps.words.shape == (len(ii), 3, 10)  # the padded length, as before
    torch.testing.assert_close(maps.regions, ref_maps.regions, **TOL)
    torch.testing.assert_close(maps.words, ref_maps.words, **TOL)
    assert maps.words[:, :, 7:].abs().max() == 0  # past the longest caption


def test_inference_mode_grid_equals_the_reference_on_a_bigger_grid(kernel_path):
    """Many captions of mixed lengths (the grid sorts them by length and puts them back)."""
    model = make("context", inst_dim=64, att_dim=32, sim_dim=48, hidden_dim=40).eval()
    g = torch.Generator().manual_seed(5)
    lengths = torch.randint(1, 15, (70,), generator=g).tolist()
    with torch.inference_mode():
        img, txt = sides(model, n_img=9, lengths=lengths, pad_to=18, seed=6)
        grid = model.score_grid(img, txt)
        ref = reference_fuse(model, img, txt, grid=True)[0]
    torch.testing.assert_close(grid, ref, **TOL)


def test_large_keys_fall_back_to_tanh_and_still_agree():
    """Keys beyond the exp form's range (here |k| ~ 100) use tanh itself, saturating as tanh does."""
    model = make("context").eval()
    with torch.no_grad():
        model.W_a.weight.mul_(300)
        model.W_s.weight.mul_(300)
        img, txt = sides(model)
        assert img.keys.abs().max() > matchers._EXP_RANGE
        assert matchers._exp_keys(img.keys) is None
        ref = reference_fuse(model, img, txt, grid=True)[0]
        grid = model.score_grid(img, txt)
        ii, cc = some_pairs(len(img), len(txt))
        pairs = model.score_pairs(img, txt, ii, cc)
    assert torch.isfinite(grid).all()
    torch.testing.assert_close(grid, ref, **TOL)
    torch.testing.assert_close(pairs, ref[ii, cc], **TOL)


def test_grid_with_gradients_equals_the_reference():
    model = make("context").eval()
    img, txt = sides(model)
    grid = model.score_grid(img, txt)
    assert grid.requires_grad
    torch.testing.assert_close(grid, reference_fuse(model, img, txt, grid=True)[0], **TOL)


# -- gradients (the training path) --------------------------------------------------------
def _grads(model, loss):
    model.zero_grad(set_to_none=True)
    loss.backward()
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("attention", ["context", "plain", "uniform"])
@pytest.mark.parametrize("options", [dict(), dict(score_head="sum", att_scale=3.0),
                                     dict(local_skip=False, fuse_global=False), dict(global_weight="val"),
                                     dict(cross_scale=5.0, coverage=2.0, region_coverage=1.0)],
                         ids=["default", "sum,scale", "no-skip,no-global", "weight-on-val", "cross,coverages"])
def test_training_gradients_equal_the_reference(attention, options, kernel_path):
    model = make(attention, **options).train()
    ii, cc = some_pairs(5, 6, n=40)
    weights = torch.randn(len(ii), generator=torch.Generator().manual_seed(9))

    def loss_of(score_fn):
        img, txt = sides(model)  # encoded again each time: gradients reach the projections
        return (score_fn(img, txt) * weights).sum()

    new = _grads(model, loss_of(lambda img, txt: model.score_pairs(img, txt, ii, cc)))
    ref = _grads(model, loss_of(lambda img, txt: ref_pairs(model, img, txt, ii, cc)[0]))
    assert new.keys() == ref.keys()
    assert "lstm.weight_hh" in new and "region_proj.weight" in new
    if attention != "uniform":
        assert {"U_a.weight", "w_a.weight", "W_s.weight"} <= new.keys()
        if options.get("cross_scale"):
            assert {"cross_log_scale", "coverage_log_scale", "region_coverage_log_scale"} <= new.keys()
    for name in ref:
        torch.testing.assert_close(new[name], ref[name], atol=5e-5, rtol=1e-3, msg=name)
    assert any(g.abs().max() > 1e-3 for g in ref.values())


def test_fused_weights_follow_the_parameters():
    """Nothing is cached: a parameter changed in place changes the next score."""
    model = make("context").eval()
    with torch.no_grad():
        img, txt = sides(model)
        before = model.score_grid(img, txt)
        model.lstm.weight_hh.mul_(1.5)
        model.U_a.bias.add_(0.5)
        after = model.score_grid(img, txt)
        ref = reference_fuse(model, img, txt, grid=True)[0]
    assert (after - before).abs().max() > 1e-4
    torch.testing.assert_close(after, ref, **TOL)


@pytest.mark.parametrize("index,n", [([2, 0, 2, 2, 1, 0], 4), ([3] * 20 + [0, 1, 1, 2], 5), ([1], 3), ([], 2)])
def test_pair_groups_place_every_pair_in_its_own_slot_of_its_item(index, n):
    index = torch.tensor(index, dtype=torch.long)
    groups = matchers._Groups(index, n)
    slots = groups.slot.tolist()
    assert len(set(slots)) == len(slots) and all(0 <= s < groups.rows * groups.m for s in slots)
    assert groups.row_item[groups.slot // groups.m].tolist() == index.tolist()
    # no row is wider than about twice the mean, however many pairs one item has
    assert 1 <= groups.m <= max(8, 2 * -(-len(index) // n))


def test_hub_items_score_as_the_reference():
    """One image in most pairs (a hub of mined negatives) takes several rows of the table."""
    model = make("context").train()
    ii = torch.tensor([3] * 30 + [0, 1, 2, 4, 0])
    cc = torch.arange(35) % 6
    assert matchers._Groups(ii, 5).rows > 5
    img, txt = sides(model)
    new = model.score_pairs(img, txt, ii, cc)
    grads = _grads(model, new.sum())
    img, txt = sides(model)
    ref = ref_pairs(model, img, txt, ii, cc)[0]
    torch.testing.assert_close(new, ref, **TOL)
    for name, g in _grads(model, ref.sum()).items():
        torch.testing.assert_close(grads[name], g, atol=5e-5, rtol=1e-3, msg=name)


@pytest.mark.parametrize("attention", ["context", "plain", "uniform"])
def test_bf16_autocast_runs_and_stays_close_to_the_reference(attention):
    """Under bf16 autocast (the default on CPUs with AVX512-BF16) matrix products run in bf16
    in both kernels; the attention here stays in fp32. Scores agree to bf16 precision."""
    model = make(attention)
    ii, cc = some_pairs(5, 6, n=40)
    with torch.no_grad():
        img, txt = sides(model.eval())
        exact = reference_fuse(model, img, txt, grid=True)[0]
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        img, txt = sides(model)
        grid = model.score_grid(img, txt)
        pairs = model.score_pairs(img, txt, ii, cc)
    torch.testing.assert_close(grid.float(), exact, atol=2e-2, rtol=0)
    torch.testing.assert_close(pairs.float(), exact[ii, cc], atol=2e-2, rtol=0)
    model.train()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        img, txt = sides(model)
        loss = model.score_pairs(img, txt, ii, cc).float().sum()
    loss.backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
    assert model.lstm.weight_hh.grad.abs().max() > 0


def test_word_steered_attention_follows_the_region_that_the_selected_words_match():
    """--cross-scale: a caption whose words equal region r's value puts the region attention on
    r, at every step; another caption moves it to its own region (the caption steers)."""
    model = make("context", cross_scale=50.0).eval()
    with torch.no_grad():
        img, txt = sides(model, n_img=2, lengths=(4, 6))
        for c, r in ((0, 3), (1, 7)):
            txt.values[c] = img.values[0, r]  # every word of caption c matches region r of image 0
        ii, cc = torch.tensor([0, 0]), torch.tensor([0, 1])
        _, maps = model.attention_maps(img, txt, ii, cc)
        plain = make("context").eval()
        _, plain_maps = plain.attention_maps(*sides(plain, n_img=2, lengths=(4, 6)), ii, cc)
    assert maps.regions.shape == (2, model.cfg.steps, 9)
    assert (maps.regions[0].argmax(-1) == 3).all() and (maps.regions[1].argmax(-1) == 7).all()
    assert maps.regions[:, :, [3, 7]].amax() > 0.9
    assert plain_maps.regions.amax() < 0.5  # without it, nothing this sharp


def step_maps(model) -> Attention:
    """The maps of four pairs of captions of different lengths, every step."""
    with torch.no_grad():
        img, txt = sides(model, n_img=4, lengths=(5, 7, 6, 8))
        ii, cc = torch.arange(4), torch.arange(4)
        return model.attention_maps(img, txt, ii, cc)[1]


def step_change(maps: torch.Tensor) -> float:
    """Mean total variation between consecutive steps of [pairs, T, K] maps."""
    return (0.5 * (maps[:, 1:] - maps[:, :-1]).abs().sum(-1)).mean().item()


def test_word_coverage_makes_consecutive_steps_select_different_words():
    plain = step_change(step_maps(make("context", att_scale=5.0).eval()).words)
    covered = step_change(step_maps(make("context", att_scale=5.0, coverage=20.0).eval()).words)
    assert covered > 0.3 and covered > 5 * plain


def test_region_coverage_makes_consecutive_steps_attend_different_regions():
    plain = step_change(step_maps(make("context", cross_scale=20.0).eval()).regions)
    r = step_maps(make("context", cross_scale=20.0, region_coverage=3.0).eval()).regions  # [pairs, T, R]
    covered = step_change(r)
    assert covered > 0.3 and covered > 5 * plain
    # the top region of step 2 is not step 1's
    assert (r[:, 1].argmax(-1) != r[:, 0].argmax(-1)).all()


# -- the fused attention loop (torch.compile) and its fallback ------------------------------
def test_exhaustive_scoring_uses_the_fused_loop_on_long_jobs_only(monkeypatch):
    monkeypatch.delenv("SMCLI_COMPILE", raising=False)
    assert fused_attention.wanted(fused_attention.MIN_PAIRS)
    assert not fused_attention.wanted(fused_attention.MIN_PAIRS - 1)
    monkeypatch.setenv("SMCLI_COMPILE", "0")
    assert not fused_attention.wanted(10 ** 9)
    monkeypatch.setenv("SMCLI_COMPILE", "1")
    assert fused_attention.wanted(1)

    from smcli.inference.scoring import exhaustive_scores

    calls = []
    real = fused_attention.grid_logits
    monkeypatch.setattr(fused_attention, "grid_logits", lambda *a, **kw: calls.append(a[0].shape) or real(*a, **kw))
    model = make("context").eval()
    with torch.no_grad():
        img, txt = sides(model)
        ref = reference_fuse(model, img, txt, grid=True)[0].numpy()
    fused = exhaustive_scores(model, img, txt)
    assert len(calls) >= 2  # region and word logits of each step went through the loop
    assert not fused_attention.active()  # the scope ended with the job
    monkeypatch.setenv("SMCLI_COMPILE", "0")
    calls.clear()
    eager = exhaustive_scores(model, img, txt)
    assert not calls
    torch.testing.assert_close(torch.from_numpy(fused), torch.from_numpy(ref), **TOL)
    assert abs(fused - eager).max() < 1e-6
    assert (fused.argsort(1) == eager.argsort(1)).all()


@pytest.mark.parametrize("n_img,lengths", [(1, (1,)), (1, (4, 1, 3)), (3, (1,)), (2, (1, 1))])
def test_the_fused_loop_on_grids_with_sizes_of_one(n_img, lengths, monkeypatch):
    """Sizes under 2 are padded for the compiled loop (dynamo would compile again for them)
    and cut back: one image, one caption, captions of one word piece."""
    monkeypatch.setitem(fused_attention._state, "active", True)
    model = make("context").eval()
    with torch.inference_mode():
        img, txt = sides(model, n_img=n_img, lengths=lengths, pad_to=5)
        grid = model.score_grid(img, txt)
        ref = reference_fuse(model, img, txt, grid=True)[0]
    assert grid.shape == (n_img, len(lengths)) and fused_attention._state["failed"] is None
    torch.testing.assert_close(grid, ref, **TOL)


def test_a_loop_that_does_not_compile_falls_back_with_one_note(monkeypatch, capsys):
    from smcli.inference.scoring import exhaustive_scores

    def no_compiler():
        def fail(*args):
            raise RuntimeError("InvalidCxxCompiler: No working C++ compiler found")
        return fail

    monkeypatch.setattr(fused_attention, "_compiled", no_compiler)
    monkeypatch.setitem(fused_attention._state, "failed", None)
    monkeypatch.setenv("SMCLI_COMPILE", "1")
    model = make("context").eval()
    with torch.no_grad():
        img, txt = sides(model)
        ref = reference_fuse(model, img, txt, grid=True)[0].numpy()
    first = exhaustive_scores(model, img, txt)
    second = exhaustive_scores(model, img, txt)
    err = capsys.readouterr().err
    assert err.count("smcli: note: the fused attention loop did not compile") == 1, err
    assert "No working C++ compiler found" in err and len(err.strip().splitlines()) == 1
    torch.testing.assert_close(torch.from_numpy(first), torch.from_numpy(ref), **TOL)
    assert (first == second).all()


# -- exhaustive scoring under bf16 autocast -------------------------------------------------
def test_bf16_weights_cast_once_give_autocasts_own_scores_bit_for_bit(monkeypatch):
    """Without gradients under autocast, the LSTM's weights are cast once per call instead of by
    autocast at every product; the scores are the same floats as autocast's own casts give."""
    model = make("context").eval()
    ii, cc = some_pairs(5, 6, n=40)
    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
        img, txt = sides(model)
        grid, pairs = model.score_grid(img, txt), model.score_pairs(img, txt, ii, cc)
        monkeypatch.setattr(matchers, "_autocast_dtype", lambda t: None)  # autocast casts each product
        grid_ac, pairs_ac = model.score_grid(img, txt), model.score_pairs(img, txt, ii, cc)
    assert torch.equal(grid, grid_ac) and torch.equal(pairs, pairs_ac)


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_exhaustive_scoring_sorts_a_caption_block_once_and_reuses_its_exp_keys(precision, monkeypatch):
    """Caption blocks are sorted by length once and their exp(-2 keys) computed once for all
    image blocks; the matrix is score_grid's, in the captions' own order."""
    from smcli.inference.scoring import exhaustive_scores
    from smcli.runtime import autocast

    monkeypatch.setenv("SMCLI_COMPILE", "0")
    model = make("context").eval()
    with torch.inference_mode(), autocast("cpu", precision):
        img, txt = sides(model)  # captions of lengths 5, 3, 7, 1, 6, 2: not sorted
        # one image a block, as the chunked run below has them (bf16 rounding depends on the batch)
        rows = [model.score_grid(img.select(torch.tensor([i])), txt).float() for i in range(len(img))]
        exp_of_captions = []
        real_exp_keys = matchers._exp_keys

        def exp_keys(keys):
            out = real_exp_keys(keys)
            if keys is not None and keys.shape[0] == len(txt):
                exp_of_captions.append(out)
            return out

        monkeypatch.setattr(matchers, "_exp_keys", exp_keys)
        chunked = exhaustive_scores(model, img, txt, pairs_per_chunk=6)  # 6 captions: 5 blocks of one image
    assert len(exp_of_captions) == 1 + 5 and all(e is exp_of_captions[0] for e in exp_of_captions)
    assert matchers._reused == []  # the scope let go of the block
    assert torch.equal(torch.from_numpy(chunked), torch.cat(rows))
