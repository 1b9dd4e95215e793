"""The Python API of a loaded model: images as files or ids, captions as strings.

    model = smcli.load_model("model/")
    model.score(["dog.jpg"], ["a dog runs on the grass", "two men talk"])   # [1, 2] scores
    model.search("a dog on grass", "feats.parquet", k=5)                   # Arrow table
    model.rank_captions("dog.jpg", ["a dog runs", "two men talk"])          # Arrow table
    model.explain("dog.jpg", "a dog runs on the grass")                    # saliency maps

Images are image files (extracted now with the backbone the model was trained on) or
image ids of a regions file. Each method is the library function a command runs
(:mod:`smcli.inference.tasks`, :mod:`smcli.inference.explain`), so Python and the CLI
give the same numbers.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from smcli.inference import tasks
from smcli.inference.matcher import MatchModel


class Model(MatchModel):
    """A trained model directory loaded for use from Python (see the module's example)."""

    def images(self, images: str | os.PathLike | Sequence[str | os.PathLike], regions=None):
        """An :class:`~smcli.inference.inputs.ImageSet` of image files or ids of ``regions``
        (a regions file path or loaded :class:`~smcli.images.features.RegionFeatures`)."""
        from smcli.inference.inputs import resolve_images

        specs = [str(images)] if isinstance(images, str | os.PathLike) else [str(i) for i in images]
        if isinstance(regions, str | os.PathLike):
            feats = tasks.load_features(self, str(regions))  # checks them against the model
        else:
            feats = regions
            if feats is not None:
                self.check_features(feats.meta, feats.name)
        return resolve_images(specs, feats, self.features)

    def score(self, images, captions: str | Sequence[str], *, regions=None) -> np.ndarray:
        """Scores of every image against every caption, [len(images), len(captions)]."""
        captions = [captions] if isinstance(captions, str) else list(captions)
        for c in captions:
            self.check_query(c)
        gallery = self.encode_image_set(self.images(images, regions))
        texts = self.encode_texts([str(i) for i in range(len(captions))], captions, cache=False)
        ii = np.repeat(np.arange(len(gallery.image_ids)), len(captions))
        cc = np.tile(np.arange(len(captions)), len(gallery.image_ids))
        return self.score_pairs(gallery, texts, ii, cc).reshape(len(gallery.image_ids), len(captions))

    def search(self, query: str | Sequence[str], gallery, k: int = 10, *, shortlist: int | None = 100):
        """Text -> images: the ``k`` best images of ``gallery`` (a regions file, loaded
        features, or a saved gallery directory from ``smcli index``) for each query, as a
        table of query, rank, id, score, path. ``shortlist=None`` scores every image."""
        queries = [query] if isinstance(query, str) else list(query)
        if isinstance(gallery, str | os.PathLike) and Path(gallery).is_dir():
            return tasks.search_index(self, str(gallery), queries, k, shortlist)
        feats = tasks.load_features(self, gallery) if isinstance(gallery, str | os.PathLike) else gallery
        return tasks.search_images(self, feats, queries, k, shortlist)

    def rank_captions(self, image, captions: Sequence[str], k: int = 0, *, regions=None):
        """The ``captions`` ranked for each image (0: all of them), as a table of image_id,
        caption_id, caption, rank, score."""
        from smcli.report import RunReport

        captions = list(captions)
        for c in captions:
            self.check_query(c)
        caps = tasks.CaptionSet([str(i) for i in range(len(captions))], [None] * len(captions), captions,
                          None, "captions")
        return tasks.rank_captions(self, self.images(image, regions), caps, None, k, None, RunReport("caption-rank"),
                             cache=False)

    def explain(self, image, caption: str, *, regions=None):
        """The saliency maps of every step for one image and one caption
        (:class:`~smcli.inference.explain.Explanation`)."""
        from smcli.inference.explain import explain_pair

        return explain_pair(self, self.images(image, regions), caption)
