"""What ``smcli serve`` answers, without HTTP: a model and a gallery loaded once, queried by
many threads.

:class:`SearchEngine` holds one loaded model, one gallery (a saved gallery directory from
``smcli index``, or a regions file encoded once at start) and optionally a captions file
(encoded once too), and answers with plain dicts ready for JSON:

    engine = SearchEngine.open(model="flickr8k", index="gallery/", captions="caps.parquet")
    engine.search("a dog on grass", k=10)          # text -> images
    engine.captions_for("dog.jpg", k=5)             # image -> captions of the captions file
    engine.score([{"image": "dog.jpg", "caption": "a dog runs"}])
    engine.explain("dog.jpg", "a dog runs")         # Explanation (+ the photo, for drawing)

Every answer runs the library function the CLI runs (:func:`~smcli.inference.tasks.query_index`,
:func:`~smcli.inference.tasks.search_gallery`, :func:`~smcli.inference.tasks.texts_for_images`,
:func:`~smcli.inference.explain.explain_encoded`), so the numbers are ``smcli retrieve``'s and
``smcli explain``'s. Model work runs under one lock (torch already uses every core for one
query; the lock keeps concurrent requests from sharing its state). Requests name images by
their gallery image_id; the bounds on query length, k, shortlist and pairs are in
:class:`Limits`, and a request outside them gets one line, as the CLI gives.
"""

from __future__ import annotations

import threading
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from smcli.errors import InputError, UsageError
from smcli.serve.files import ImageFiles


class NotFound(InputError):
    """A request for an image (or a service) this server does not have: HTTP 404."""


@dataclass(frozen=True)
class Limits:
    """Bounds on what one request may ask for."""

    max_text_chars: int = 500  # a query or a caption
    max_k: int = 100  # results per query
    max_shortlist: int = 1000  # candidates re-ranked per query
    max_pairs: int = 100  # pairs scored per request
    max_body_bytes: int = 64 * 1024  # a POST body
    max_url_bytes: int = 8 * 1024  # the request target
    max_connections: int = 64  # open at once (one thread each); more are answered 503


def check_int(name: str, value: int, lowest: int, highest: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise UsageError(f"{name} {value!r}: must be a whole number")
    if not lowest <= value <= highest:
        raise UsageError(f"{name} {value}: must be between {lowest} and {highest}")
    return value


def check_text(name: str, value: Any, limits: Limits) -> str:
    if not isinstance(value, str):
        raise UsageError(f"{name}: must be a string")
    if len(value) > limits.max_text_chars:
        raise UsageError(f"{name}: {len(value):,} characters, at most {limits.max_text_chars:,}")
    if not value.strip():
        raise UsageError(f"{name}: empty")
    return value


class SearchEngine:
    """A model, a gallery and optional captions, loaded once (see the module's docstring)."""

    def __init__(self, model, *, saved=None, gallery=None, captions=None, image_base=None,
                 limits: Limits | None = None, source: str = ""):
        if (saved is None) == (gallery is None):
            raise ValueError("give exactly one of saved= (a SavedGallery) and gallery= (an encoded Gallery)")
        self.model = model
        self.saved = saved  # SavedGallery (smcli index) or None
        self.gallery = gallery  # Gallery encoded in memory (a regions file) or None
        self.limits = limits or Limits()
        self.source = source
        self.image_ids: list[str] = list(saved.image_ids if saved is not None else gallery.image_ids)
        paths = list(saved.paths if saved is not None else gallery.paths)
        self.row = {k: i for i, k in enumerate(self.image_ids)}
        self.files = ImageFiles(paths, image_base)
        self.captions = captions  # CaptionSet or None
        self.caption_texts = None  # their Texts, encoded once
        self._lock = threading.Lock()
        if captions is not None:
            self.caption_texts = model.encode_texts(captions.caption_ids, captions.captions, captions.token_ids)
        # the text encoder (MiniLM) loads now, not on the first query
        model.encode_texts(["warm-up"], ["a photo"], cache=False)

    @classmethod
    def open(cls, *, model: str, index: str | None = None, regions: str | None = None,
             captions: str | None = None, image_base: str | None = None, device: str = "auto",
             precision: str = "auto", limits: Limits | None = None) -> SearchEngine:
        """Load the model (once) and the gallery: ``index`` (a directory from smcli index)
        or ``regions`` (a regions file, encoded now); ``captions`` for image -> captions."""
        from smcli.inference import tasks
        from smcli.inference.matcher import MatchModel

        if (index is None) == (regions is None):
            raise UsageError("give --index GALLERY_DIR or --regions FILE (one of them)")
        matcher = MatchModel(model, device=device, precision=precision)
        caps = tasks.load_captions(matcher, captions) if captions else None
        if index is not None:
            saved = tasks.open_index(matcher, index)
            return cls(matcher, saved=saved, captions=caps, image_base=image_base, limits=limits,
                       source=f"index {index}")
        feats = tasks.load_features(matcher, regions)
        gallery = matcher.encode_image_set(feats)
        return cls(matcher, gallery=gallery, captions=caps, image_base=image_base, limits=limits,
                   source=f"regions {regions}")

    def __len__(self) -> int:
        return len(self.image_ids)

    # -- what the server is -----------------------------------------------------------
    def info(self) -> dict[str, Any]:
        cfg = self.model.loaded.config
        from smcli.inference.explain import ATTENTION_VARIANTS

        return {"model": self.model.name, "variant": cfg.variant, "text_encoder": cfg.text_encoder,
                "images": len(self), "gallery": self.source,
                "captions": len(self.captions.caption_ids) if self.captions is not None else None,
                "explain": cfg.variant in ATTENTION_VARIANTS and not self.model.is_ensemble,
                "two_stage": self.model.many_to_many,
                "limits": asdict(self.limits)}

    # -- text -> images ---------------------------------------------------------------
    def search(self, q: str, k: int = 10, shortlist: int = 100) -> dict[str, Any]:
        """The ``k`` best gallery images for the text ``q`` (shortlist, then re-rank)."""
        from smcli.inference import tasks

        lim = self.limits
        q = check_text("q", q, lim)
        check_int("k", k, 1, lim.max_k)
        check_int("shortlist", shortlist, 1, lim.max_shortlist)
        with self._lock:
            if self.saved is not None:
                table = tasks.query_index(self.model, self.saved, [q], k, shortlist)
            else:
                table = tasks.search_gallery(self.model, self.gallery, [q], k, shortlist)
        results = [{"rank": r["rank"], "id": r["id"], "row": self.row[r["id"]], "score": r["score"]}
                   for r in table.select(["rank", "id", "score"]).to_pylist()]
        return {"query": q, "k": k, "shortlist": shortlist, "results": results}

    # -- image -> captions ------------------------------------------------------------
    def captions_for(self, image: str, k: int = 10, shortlist: int = 100) -> dict[str, Any]:
        """The ``k`` best captions of the captions file for the gallery image ``image``."""
        from smcli.inference.tasks import texts_for_images

        if self.captions is None:
            raise NotFound("image -> captions needs a captions file: start smcli serve with --captions FILE")
        lim = self.limits
        check_int("k", k, 1, lim.max_k)
        check_int("shortlist", shortlist, 1, lim.max_shortlist)
        row = self._row(image)
        caps = self.captions
        with self._lock:
            one = self._encoded([row])
            ranking = texts_for_images(self.model, one, self.caption_texts, k, shortlist)
        items, scores = ranking.items[0], ranking.scores[0]
        results = [{"rank": r + 1, "caption_id": caps.caption_ids[c], "caption": caps.captions[c],
                    "image_id": caps.image_ids[c], "score": float(s)}
                   for r, (c, s) in enumerate(zip(items.tolist(), scores.tolist()))]
        return {"image": image, "k": k, "shortlist": shortlist, "results": results}

    # -- pair scores ------------------------------------------------------------------
    def score(self, pairs: Any) -> dict[str, Any]:
        """The model's score of each (gallery image, caption text) pair, in order."""
        lim = self.limits
        if not isinstance(pairs, list) or not pairs:
            raise UsageError("pairs: must be a non-empty list of {\"image\": ID, \"caption\": TEXT}")
        if len(pairs) > lim.max_pairs:
            raise UsageError(f"pairs: {len(pairs):,} pairs, at most {lim.max_pairs:,} per request")
        rows, texts = [], []
        for i, pair in enumerate(pairs):
            if not isinstance(pair, dict) or set(pair) != {"image", "caption"}:
                raise UsageError(f"pairs[{i}]: must be {{\"image\": ID, \"caption\": TEXT}}")
            rows.append(self._row(pair["image"], f"pairs[{i}].image"))
            texts.append(check_text(f"pairs[{i}].caption", pair["caption"], lim))
            try:
                self.model.check_query(texts[-1])
            except InputError as exc:
                raise UsageError(f"pairs[{i}].caption: {exc}") from None
        unique, ii = np.unique(rows, return_inverse=True)
        with self._lock:
            gallery = self._encoded(unique.tolist())
            encoded = self.model.encode_texts([str(i) for i in range(len(texts))], texts, cache=False)
            scores = self.model.score_pairs(gallery, encoded, ii, np.arange(len(texts)))
        return {"scores": [{"image": p["image"], "caption": p["caption"], "score": float(s)}
                           for p, s in zip(pairs, scores.tolist())]}

    # -- explain ----------------------------------------------------------------------
    def explain(self, image: str, caption: str):
        """(Explanation, photo) for one gallery image and one caption: the saliency maps of
        every step, and the photo (a PIL image) to draw them on."""
        from smcli.inference.explain import explain_encoded, require_attention
        from smcli.render.saliency import load_photo

        caption = check_text("caption", caption, self.limits)
        try:
            require_attention(self.model)
        except InputError as exc:
            raise NotFound(str(exc)) from None
        row = self._row(image)
        opened = self.files.open(row)
        if opened is None:
            raise NotFound(f"image {image!r}: its photo is not available on this server")
        fh, _, _ = opened
        with fh:
            photo = load_photo(fh, name=image)
        with self._lock:
            ex = explain_encoded(self.model, self._encoded([row]), caption)
        ex.image_path = None  # the server's own paths stay on the server
        return ex, photo

    # -- helpers ----------------------------------------------------------------------
    def _row(self, image: Any, name: str = "image") -> int:
        if not isinstance(image, str) or not image:
            raise UsageError(f"{name}: must be the image id of a gallery image")
        if len(image) > self.limits.max_text_chars or image not in self.row:
            shown = image if len(image) <= 80 else image[:77] + "..."
            raise NotFound(f"{name} {shown!r}: not in the gallery")
        return self.row[image]

    def _encoded(self, rows: list[int]):
        """A Gallery of the given rows' model tensors (call under the lock)."""
        import torch

        from smcli.inference.matcher import Gallery

        ids = [self.image_ids[r] for r in rows]
        if self.saved is not None:
            side = self.saved.image_side(np.asarray(rows), device=self.model.device)
        else:
            side = self.gallery.side.select(torch.as_tensor(rows, device=self.model.device))
        return Gallery(ids, [""] * len(rows), side)

