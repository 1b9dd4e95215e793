"""smcli: image-sentence matching with the selective multimodal LSTM, as Parquet pipeline stages.

The command line (``smcli.cli``) is a thin layer over this library, and the stages are
one call each from Python too::

    import smcli

    smcli.extract_regions("photos/", "feats.parquet")              # smcli extract-regions
    smcli.tokenize("captions.txt", "caps.parquet", splits="splits.csv")  # smcli tokenize
    smcli.train("feats.parquet", "caps.parquet", "model/", epochs=10)    # smcli train
    model = smcli.load_model("model/")
    model.score(["photos/dog.jpg"], ["a dog runs on the grass"])   # [1, 1] scores
    model.search("a dog on grass", "feats.parquet", k=5)           # an Arrow table
    model.rank_captions("photos/dog.jpg", ["a dog runs", "two men talk"])
    model.explain("photos/dog.jpg", "a dog runs on the grass")      # saliency maps

Importing smcli loads neither torch nor the models; each function imports what it needs.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from smcli._version import __version__

__all__ = ["__version__", "extract_regions", "load_model", "tokenize", "train"]

if TYPE_CHECKING:
    from smcli.inference.api import Model


def load_model(name_or_dir: str | os.PathLike, *, device: str = "auto", precision: str = "auto") -> Model:
    """A trained model directory (from ``smcli train``), loaded for scoring, search,
    caption ranking and explanations (:class:`~smcli.inference.api.Model`)."""
    from smcli.inference.api import Model

    return Model(name_or_dir, device=device, precision=precision)


def extract_regions(inputs: str | os.PathLike | Sequence[str | os.PathLike], output: str | os.PathLike,
                    **options: Any) -> dict[str, int]:
    """Images -> a regions Parquet file (``smcli extract-regions``); see
    :func:`smcli.images.extract.extract_regions` for the options. Returns the counts."""
    from smcli.images.extract import extract_regions as run

    return run(inputs, output, **options)


def tokenize(input: str | os.PathLike, output: str | os.PathLike, **options: Any) -> dict[str, int]:
    """A caption file -> a captions Parquet file with its vocabulary (``smcli tokenize``);
    see :func:`smcli.text.captions.tokenize_captions` for the options. Returns the counts."""
    from smcli.text.captions import tokenize_captions

    return tokenize_captions(input, output, **options)


def train(regions: str | os.PathLike, captions: str | os.PathLike, output: str | os.PathLike,
          **options: Any) -> dict[str, Any]:
    """Train a matcher (``smcli train``): ``options`` are the fields of
    :class:`~smcli.models.config.ModelConfig` and :class:`~smcli.training.options.TrainOptions`
    (variant, epochs, init_from, freeze_embedding, ...). Returns the chosen epoch's val metrics."""
    from smcli.training.options import split_options
    from smcli.training.trainer import train as run

    cfg, opts = split_options(**options)
    return run(str(regions), str(captions), output, cfg, opts)
