"""The matcher's feature dropout: the bits16 draw keeps each element independently with the
stated probability and scales it by its inverse; bernoulli is nn.Dropout's draw exactly."""

from __future__ import annotations

import pytest
import torch

from smcli.errors import UsageError
from smcli.models import ModelConfig, create_model
from smcli.models.dropout import FeatureDropout, keep_mask_bits16


def test_bits16_keeps_each_element_with_its_stated_probability_and_independently():
    torch.manual_seed(0)
    mask, kept = keep_mask_bits16(torch.Size([1000, 2000]), 0.7, torch.device("cpu"))
    assert kept == round(0.7 * 65536) / 65536
    n = mask.numel()
    sd = (kept * (1 - kept) / n) ** 0.5
    assert abs(mask.float().mean().item() - kept) < 5 * sd
    flat = mask.reshape(-1).float()
    # neighbours share one 64-bit draw (4 elements a word), and the next word: both independent
    for lag in (1, 3, 4):
        both = (flat[:-lag] * flat[lag:]).mean().item()
        assert abs(both - kept * kept) < 5 * (kept * kept * (1 - kept * kept) / n) ** 0.5, lag
    # every one of the 16 bit lanes of a word is used
    lanes = mask.reshape(-1)[: n - n % 4].reshape(-1, 4).float().mean(0)
    assert torch.all((lanes - kept).abs() < 10 * sd)


@pytest.mark.parametrize("p", [0.1, 0.3, 0.5, 0.9])
def test_bits16_dropout_keeps_the_expectation_and_zeroes_the_rest(p):
    torch.manual_seed(1)
    x = torch.rand(400, 1000) + 0.5
    drop = FeatureDropout(p, "bits16").train()
    y = drop(x)
    kept = y != 0
    _, q = keep_mask_bits16(torch.Size([1]), 1 - p, x.device)
    torch.testing.assert_close(y[kept], x[kept] / q, rtol=1e-6, atol=0)
    assert abs(kept.float().mean().item() - (1 - p)) < 0.005
    assert abs(y.mean().item() - x.mean().item()) < 0.01 * x.mean().item()


def test_the_draw_follows_the_seed():
    x = torch.ones(64, 49, 32)
    drop = FeatureDropout(0.3).train()
    torch.manual_seed(5)
    a = drop(x)
    torch.manual_seed(5)
    b = drop(x)
    torch.manual_seed(6)
    c = drop(x)
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_bernoulli_is_nn_dropout_and_eval_or_p0_is_the_identity():
    x = torch.randn(32, 49, 64)
    torch.manual_seed(3)
    ours = FeatureDropout(0.3, "bernoulli").train()(x)
    torch.manual_seed(3)
    assert torch.equal(ours, torch.nn.Dropout(0.3).train()(x))
    assert FeatureDropout(0.3).eval()(x) is x
    assert FeatureDropout(0.0).train()(x) is x
    assert torch.equal(FeatureDropout(1.0).train()(x), torch.zeros_like(x))


def test_the_gradient_is_the_mask_over_the_keep_probability():
    x = torch.randn(50, 300, requires_grad=True)
    torch.manual_seed(7)
    y = FeatureDropout(0.3).train()(x)
    y.sum().backward()
    _, q = keep_mask_bits16(torch.Size([1]), 0.7, x.device)
    torch.testing.assert_close(x.grad, (y != 0).float() / q)


def test_new_models_draw_bits16_and_saved_configs_without_the_field_read_as_bernoulli():
    assert ModelConfig().dropout_draw == "bits16"
    old = ModelConfig().to_dict()
    del old["dropout_draw"]
    assert ModelConfig.from_dict(old).dropout_draw == "bernoulli"
    assert ModelConfig.from_dict(ModelConfig().to_dict()).dropout_draw == "bits16"
    with pytest.raises(UsageError, match="--dropout-draw fast: choose one of bits16, bernoulli"):
        ModelConfig(dropout_draw="fast")
    model = create_model(ModelConfig(variant="smlstm", img_dim=16, inst_dim=8, att_dim=4, sim_dim=8,
                                     hidden_dim=8, ctx_dim=8, text_encoder="bilstm", vocab_size=20,
                                     word_dim=8, lstm_dim=8, dropout_draw="bernoulli"))
    assert model.drop.draw == "bernoulli"
