"""A trained matcher ready to use: loaded once, checked against the files it is given.

:class:`MatchModel` is what ``score``, ``retrieve``, ``caption-rank``, ``index`` and
``explain`` share (and :class:`smcli.inference.api.Model`, what :func:`smcli.load_model`
returns, adds the Python API on top): it refuses region features from another backbone and
captions with another vocabulary (one line saying which), turns images and texts into the
model's per-side tensors (:meth:`encode_images`, :meth:`encode_texts`) and scores pairs in
batches (:meth:`score_pairs`, :meth:`exhaustive_scores`). ``--model A,B,C`` is an ensemble:
the same interface, the mean of the members' scores.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from smcli.errors import InputError
from smcli.inference.scoring import encode_images, encode_texts, score_pair_list
from smcli.models.factory import LoadedModel, load_model
from smcli.models.matchers import ImageSide, TextSide
from smcli.models.pretrained import resolve_model
from smcli.models.text_inputs import make_text_store
from smcli.runtime import autocast, resolve_device, resolve_precision
from smcli.text.normalize import tokenize
from smcli.text.vocab import UNK_ID


@dataclass
class Gallery:
    """Images with their per-image model tensors."""

    image_ids: list[str]
    paths: list[str]
    side: ImageSide

    def position(self) -> dict[str, int]:
        return {k: i for i, k in enumerate(self.image_ids)}


@dataclass
class Texts:
    """Captions or queries with their per-caption model tensors."""

    ids: list[str]
    texts: list[str]
    side: TextSide


def ensemble_names(model_dir: str | Path) -> list[str]:
    """``"A,B,C"`` -> the members of an ensemble; one name -> itself."""
    names = [n.strip() for n in str(model_dir).split(",")] if "," in str(model_dir) else [str(model_dir)]
    if any(not n for n in names):
        raise InputError(f"--model {model_dir!r}: an empty name in the list (give A,B,... with no empty entry)")
    return names


class MatchModel:
    """One trained model, or an ensemble of several (``"A,B,C"``: the mean of their scores,
    :mod:`smcli.models.ensemble`)."""

    def __init__(self, model_dir: str | Path, device: str = "auto", precision: str = "auto"):
        self.device = resolve_device(device)
        self.precision = resolve_precision(precision, self.device)
        names = ensemble_names(model_dir)
        self.members: list[LoadedModel] = [load_model(resolve_model(n), self.device) for n in names]
        self.loaded: LoadedModel = self.members[0]
        # a pretrained model goes by its name, a model directory by its path
        self.name = str(model_dir) if self.loaded.directory != Path(model_dir) else str(self.loaded.directory)
        if len(self.members) == 1:
            self.model = self.loaded.model
            self.hash = self.loaded.hash
        else:
            from smcli.models.ensemble import Ensemble

            self._check_members(names)
            self.model = Ensemble([m.model for m in self.members])
            self.hash = hashlib.sha256(",".join(m.hash for m in self.members).encode()).hexdigest()[:16]

    def _check_members(self, names: list[str]) -> None:
        """Members must read the same inputs: one line naming the first that does not."""
        from smcli.images.features import check_signature

        first = self.members[0]
        for name, m in zip(names[1:], self.members[1:]):
            where = f"ensemble member {name} vs {names[0]}"
            check_signature(first.info.features, m.info.features, where)
            if m.config.text_encoder != first.config.text_encoder:
                raise InputError(f"{where}: text encoder {m.config.text_encoder} differs from "
                                 f"{first.config.text_encoder}; an ensemble's members read the same captions")
            if m.config.word_layers != first.config.word_layers:
                raise InputError(f"{where}: word layers {m.config.word_layers} differ from "
                                 f"{first.config.word_layers}; an ensemble's members read the same word states")
            if first.config.text_encoder == "bilstm" and m.info.vocab_hash != first.info.vocab_hash:
                raise InputError(f"{where}: vocabulary {m.info.vocab_hash} differs from {first.info.vocab_hash}; "
                                 f"an ensemble's members read the same token ids")

    @property
    def is_ensemble(self) -> bool:
        return len(self.members) > 1

    def single(self, command: str) -> None:
        """Refuse an ensemble where one model's own tensors are needed (explain, index)."""
        if self.is_ensemble:
            raise InputError(f"{command}: --model {self.name} is an ensemble of {len(self.members)}; "
                             f"{command} works on one model: give one of them")

    @property
    def many_to_many(self) -> bool:
        return any(m.config.many_to_many for m in self.members)

    @property
    def features(self) -> dict:
        """Signature of the region features the model was trained on."""
        return self.loaded.info.features

    def producer(self) -> dict:
        """Metadata for files this model writes."""
        cfg = self.loaded.config
        out = {"model": self.name, "model_hash": self.hash, "variant": cfg.variant,
               "text_encoder": cfg.text_encoder, "features": self.features,
               "vocab_hash": self.loaded.info.vocab_hash}
        if self.is_ensemble:
            out["members"] = [{"model": str(m.directory), "model_hash": m.hash, "variant": m.config.variant}
                              for m in self.members]
        return out

    # -- checks -------------------------------------------------------------------------
    def check_features(self, feats_meta: dict, name: str) -> None:
        from smcli.images.features import check_signature

        check_signature(self.features, feats_meta, f"{name} vs model {self.name}")

    def check_captions(self, stage) -> None:
        """Refuse captions whose token ids mean other words than the model's (bilstm)."""
        got = stage.meta.producer.get("vocab_hash")
        want = self.loaded.info.vocab_hash
        if self.loaded.config.text_encoder == "bilstm" and got != want:
            raise InputError(
                f"{stage.name}: vocabulary {got} differs from model {self.name}'s {want}; "
                f"tokenize with --vocab {self.loaded.directory / 'vocab.txt'}"
            )

    def check_query(self, text: str) -> None:
        """An empty query, or one made only of words the model never saw, is refused."""
        toks = tokenize(text)
        if not toks:
            raise InputError(f"query {text!r}: empty")
        if all(i == UNK_ID for i in self.loaded.vocab.encode(toks)):
            raise InputError(f"query {text!r}: no word of it is in the model's vocabulary")

    # -- sides --------------------------------------------------------------------------
    @torch.inference_mode()
    def encode_images(self, image_ids: Sequence[str], paths: Sequence[str], regions: np.ndarray | None,
                      global_: np.ndarray) -> Gallery:
        with autocast(self.device, self.precision):
            side = encode_images(self.model, regions, global_, device=self.device)
        return Gallery(list(image_ids), list(paths), side)

    @torch.inference_mode()
    def encode_texts(self, ids: Sequence[str], texts: Sequence[str],
                     token_ids: Sequence[Sequence[int]] | None = None, *, cache: bool = True) -> Texts:
        store = make_text_store(self.loaded.config, list(texts), self.loaded.vocab, token_ids,
                                cache=cache, device=self.device)
        with autocast(self.device, self.precision):
            side = encode_texts(self.model, store, device=self.device)
        return Texts(list(ids), list(texts), side)

    def encode_image_set(self, images) -> Gallery:
        """The :class:`Gallery` of an :class:`~smcli.inference.inputs.ImageSet` (or regions file)."""
        return self.encode_images(images.image_ids, images.paths, images.regions, images.global_)

    # -- scores -------------------------------------------------------------------------
    @torch.inference_mode()
    def score_pairs(self, gallery: Gallery, texts: Texts, ii: np.ndarray, cc: np.ndarray,
                    progress=None) -> np.ndarray:
        """Scores of the pairs (gallery[ii[k]], texts[cc[k]]), float64."""
        with autocast(self.device, self.precision):
            s = score_pair_list(self.model, gallery.side, texts.side,
                                torch.as_tensor(ii, device=self.device),
                                torch.as_tensor(cc, device=self.device), progress=progress)
        return s.cpu().numpy().astype(np.float64)

    @torch.inference_mode()
    def exhaustive_scores(self, gallery: Gallery, texts: Texts, progress=None) -> np.ndarray:
        """Scores of every image x every text [I, C] by the full model."""
        from smcli.inference.scoring import exhaustive_scores

        with autocast(self.device, self.precision):
            return exhaustive_scores(self.model, gallery.side, texts.side, progress=progress)

    @torch.inference_mode()
    def embedding_scores(self, gallery: Gallery, texts: Texts) -> np.ndarray:
        """One-to-one scores [images, texts] (the shortlist score)."""
        return self.model.embedding_grid(gallery.side, texts.side).float().cpu().numpy()
