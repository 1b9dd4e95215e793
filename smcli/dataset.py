"""The matching data set: captions joined to region features on image_id, and its splits.

Training (train and val) and the evaluation protocol (any split) both start here.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from smcli.errors import InputError
from smcli.report import say
from smcli.text.captions import TRAIN_SPLITS, captions_vocab
from smcli.text.vocab import Vocab

VAL_SPLITS = frozenset({"val", "dev"})


@dataclass
class MatchingData:
    """Images with features and the captions that describe them, joined on image_id."""

    image_ids: list[str]
    regions: np.ndarray | None  # [N, R, D] (float16 or float32); None when not loaded
    global_: np.ndarray  # [N, D]
    features_meta: dict[str, Any]  # producer metadata of the regions file
    caption_ids: list[str]
    captions: list[str]
    token_ids: list[list[int]]
    caption_image: np.ndarray  # [C] index into the images
    split: np.ndarray  # [C] object: the split of each caption (None when unknown)
    vocab: Vocab
    captions_name: str

    def subset(self, splits: frozenset[str]) -> tuple[np.ndarray, np.ndarray]:
        """(caption indices, image indices) of the captions in ``splits``."""
        caps = np.flatnonzero(np.isin(self.split, list(splits)))
        return caps, np.unique(self.caption_image[caps])


def load_matching_data(regions_path: str, captions_path: str, command: str = "train",
                       with_regions: bool = True) -> MatchingData:
    """Join a regions file and a captions file on image_id, reporting what does not join.

    ``with_regions=False`` loads only the global features (one-to-one models need no more).
    """
    from smcli.images.features import load_regions
    from smcli.stage import open_stage

    caps = open_stage(captions_path, "captions")
    try:
        vocab = captions_vocab(caps)
        table = caps.read(["caption_id", "image_id", "caption", "token_ids", "split"])
    finally:
        caps.close()
    feats = load_regions(regions_path, regions=with_regions)
    position = {image_id: i for i, image_id in enumerate(feats.image_ids)}
    image_col = table.column("image_id").to_pylist()
    joined = np.array([position.get(i, -1) if i is not None else -1 for i in image_col], dtype=np.int64)
    keep = np.flatnonzero(joined >= 0)
    lost_captions = len(joined) - len(keep)
    used = np.zeros(len(feats.image_ids), dtype=bool)
    used[joined[keep]] = True
    if len(keep) == 0:
        raise InputError(
            f"no caption in {caps.name} matches an image in {regions_path} on image_id "
            f"(e.g. caption image {image_col[0]!r} vs region image {feats.image_ids[0]!r})"
            if image_col and feats.image_ids else f"{caps.name} or {regions_path} is empty"
        )
    if lost_captions:
        say(command, f"{lost_captions:,} caption(s) have no image in {regions_path} and are not used")
    if (~used).sum():
        say(command, f"{int((~used).sum()):,} image(s) have no caption in {caps.name} and are not used")
    # keep only images that have captions, in their file order
    images = np.flatnonzero(used)
    remap = np.full(len(feats.image_ids), -1, dtype=np.int64)
    remap[images] = np.arange(len(images))
    cols = {name: table.column(name).to_pylist() for name in ("caption_id", "caption", "token_ids", "split")}
    every = len(images) == len(feats.image_ids)  # no copy of the (large) arrays then
    return MatchingData(
        image_ids=[feats.image_ids[i] for i in images],
        regions=None if feats.regions is None else feats.regions if every else feats.regions[images],
        global_=feats.global_ if every else feats.global_[images],
        features_meta=feats.meta,
        caption_ids=[cols["caption_id"][i] for i in keep],
        captions=[cols["caption"][i] for i in keep],
        token_ids=[cols["token_ids"][i] for i in keep],
        caption_image=remap[joined[keep]],
        split=np.array([cols["split"][i] for i in keep], dtype=object),
        vocab=vocab,
        captions_name=caps.name,
    )


def check_splits(data: MatchingData, command: str = "train") -> tuple[np.ndarray, np.ndarray]:
    """Training and validation caption indices; val and test never train."""
    train, _ = data.subset(TRAIN_SPLITS)
    val, _ = data.subset(VAL_SPLITS)
    if len(train) == 0:
        raise InputError(
            f"{data.captions_name}: no caption is in the train split; tokenize with --splits "
            "(a CSV of image,split) or a Karpathy json"
        )
    if len(val) == 0:
        raise InputError(
            f"{data.captions_name}: no caption is in the val split, so no model can be chosen; "
            "give some images split 'val'"
        )
    return train, val
