"""What an sm-LSTM selected: the instance-aware saliency maps of one image-sentence pair.

    model = smcli.load_model("model/")
    ex = model.explain("dog.jpg", "a dog runs on the grass")   # explain_pair underneath
    ex.score, ex.region_maps.shape, ex.words, ex.word_weights.shape   # float, [T, gh, gw], L, [T, L]
    smcli.render.saliency.render_png(ex, None, "why.png")     # or render_html(ex, None, "why.html")

For each step t the model attends to the region grid (p_t, the image saliency map) and to
the words (q_t, the word saliency map); both sum to 1. MiniLM word pieces are merged into
whole words (a word's weight is the sum of its pieces'); bilstm models show their
normalised tokens. The ``mean`` ablation attends uniformly (no selection) and is shown as
such; one-to-one models (vse, cca) have nothing to show and are refused.

The pictures are drawn by :mod:`smcli.render.saliency`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from smcli.errors import InputError

ATTENTION_VARIANTS = ("smlstm", "no-context", "mean")
VARIANT_LABELS = {
    "smlstm": "sm-LSTM (context-modulated attention)",
    "no-context": "attention without context",
    "mean": "mean (uniform attention)",
}
NO_SELECTION = "no selection (mean variant)"


@dataclass
class Explanation:
    """The saliency maps of every step for one image and one caption."""

    score: float
    variant: str
    text_encoder: str
    model: str
    caption: str
    image_id: str
    image_path: str | None
    grid: tuple[int, int]
    region_maps: np.ndarray  # [T, gh, gw] float64, each map sums to 1
    words: list[str]  # the caption's words as the model saw them
    word_weights: np.ndarray  # [T, len(words)], each row sums to 1
    pieces: list[str] = field(default_factory=list)  # the model's word instances
    piece_weights: np.ndarray | None = None  # [T, len(pieces)]
    unknown: list[bool] = field(default_factory=list)  # per word: <unk> to a bilstm model
    truncated: bool = False  # the caption was longer than the model reads

    @property
    def steps(self) -> int:
        return int(self.region_maps.shape[0])

    @property
    def selective(self) -> bool:
        """False for the mean variant: its maps are uniform by construction."""
        return self.variant != "mean"

    @property
    def title(self) -> str:
        label = VARIANT_LABELS.get(self.variant, self.variant)
        return (f"score {self.score:.4f} \u00b7 {self.variant}: {label} \u00b7 "
                f"{self.text_encoder} text encoder")

    def peak(self, t: int) -> tuple[int, int, float]:
        """(row, column, weight) of step ``t``'s most salient region."""
        m = self.region_maps[t]
        r, c = np.unravel_index(int(np.argmax(m)), m.shape)
        return int(r), int(c), float(m[r, c])


def require_attention(model) -> None:
    """One line for a model without saliency maps (vse, cca), or an ensemble (whose members
    each have their own)."""
    model.single("explain")
    variant = model.loaded.config.variant
    if variant not in ATTENTION_VARIANTS:
        raise InputError(f"explain needs an attention model (smlstm, no-context or mean); "
                         f"{model.name} is {variant}")


def _one_image(image, index: int):
    """(regions [R, D], global [Dg], image_id, path) from an ImageSet row or arrays."""
    if hasattr(image, "regions") and hasattr(image, "global_"):
        ids = getattr(image, "image_ids", None)
        paths = getattr(image, "paths", None)
        if ids is not None and not 0 <= index < len(ids):
            raise IndexError(f"image index {index} out of range ({len(ids)} images)")
        return (np.asarray(image.regions[index]), np.asarray(image.global_[index]),
                str(ids[index]) if ids is not None else "image",
                paths[index] if paths is not None else None)
    regions, global_ = image
    regions, global_ = np.asarray(regions), np.asarray(global_)
    if regions.ndim == 3:
        regions, global_ = regions[index], global_[index]
    return regions, global_, "image", None


def _merge_pieces(pieces: list[str]) -> list[list[int]]:
    """Groups of word-piece positions that form one word ('##' continues the previous)."""
    groups: list[list[int]] = []
    for i, p in enumerate(pieces):
        if p.startswith("##") and groups:
            groups[-1].append(i)
        else:
            groups.append([i])
    return groups


def _encode_caption(model, caption: str):
    """The caption's TextSide, the model's word instances and how they form words."""
    import torch

    from smcli.inference.scoring import encode_texts
    from smcli.runtime import autocast
    from smcli.text.normalize import tokenize

    cfg = model.loaded.config
    if not tokenize(caption):
        raise InputError(f"--caption {caption!r}: empty")
    if cfg.text_encoder == "minilm":
        from smcli.models import minilm
        from smcli.models.text_inputs import MiniLMStore

        states = minilm.encode([caption], layers=cfg.minilm_layers, device=model.device, keep_pieces=True)
        pieces = list(states.pieces[0])
        if not pieces:
            raise InputError(f"--caption {caption!r}: no word pieces")
        with torch.inference_mode(), autocast(model.device, model.precision):
            side = encode_texts(model.model, MiniLMStore(states), device=model.device)
        groups = _merge_pieces(pieces)
        words = [pieces[g[0]] + "".join(pieces[j][2:] for j in g[1:]) for g in groups]
        return side, pieces, groups, words, [False] * len(words), len(pieces) >= minilm.MAX_PIECES
    from smcli.models.text_inputs import MAX_WORDS
    from smcli.text.vocab import UNK_ID

    model.check_query(caption)
    tokens = tokenize(caption)
    truncated = len(tokens) > MAX_WORDS
    tokens = tokens[:MAX_WORDS]
    ids = model.loaded.vocab.encode(tokens)
    side = model.encode_texts(["caption"], [caption], [ids], cache=False).side
    groups = [[i] for i in range(len(tokens))]
    return side, tokens, groups, tokens, [i == UNK_ID for i in ids], truncated


def explain_pair(model, image, caption: str, *, index: int = 0) -> Explanation:
    """Score one image against one caption and keep the saliency maps of every step.

    ``image``: an :class:`~smcli.inference.inputs.ImageSet` (row ``index``), or a pair of
    arrays (regions [R, D], global [Dg]) in the model's feature space.
    """
    require_attention(model)
    regions, global_, image_id, path = _one_image(image, index)
    gh, gw = _grid(model)
    if regions.ndim != 2 or regions.shape[0] != gh * gw:
        raise InputError(f"image {image_id}: {regions.shape[0] if regions.ndim == 2 else '?'} regions, "
                         f"but the model's grid is {gh}x{gw}")
    gallery = model.encode_images([image_id], [path or ""], regions[None], global_[None])
    return explain_encoded(model, gallery, caption)


def _grid(model) -> tuple[int, int]:
    grid = model.loaded.info.features.get("grid")
    if not grid or len(grid) != 2:
        raise InputError(f"{model.name}: the model's feature signature has no region grid")
    return int(grid[0]), int(grid[1])


def explain_encoded(model, gallery, caption: str, *, index: int = 0) -> Explanation:
    """:func:`explain_pair` for an image already encoded: row ``index`` of a
    :class:`~smcli.inference.matcher.Gallery` (a gallery encoded once, or the tensors a
    saved gallery stores), so a server explains without the region features."""
    import torch

    from smcli.runtime import autocast

    require_attention(model)
    gh, gw = _grid(model)
    if not 0 <= index < len(gallery.side):
        raise IndexError(f"image index {index} out of range ({len(gallery.side)} images)")
    image_id = str(gallery.image_ids[index]) if gallery.image_ids else "image"
    path = gallery.paths[index] if gallery.paths else None
    keys = gallery.side.values if gallery.side.keys is None else gallery.side.keys
    if keys is None or keys.shape[1] != gh * gw:
        raise InputError(f"image {image_id}: {keys.shape[1] if keys is not None else '?'} regions, "
                         f"but the model's grid is {gh}x{gw}")
    text_side, pieces, groups, words, unknown, truncated = _encode_caption(model, caption)
    row = torch.tensor([index], dtype=torch.long, device=model.device)
    zero = torch.zeros(1, dtype=torch.long, device=model.device)
    with torch.inference_mode(), autocast(model.device, model.precision):
        scores, maps = model.model.attention_maps(gallery.side, text_side, row, zero)
    region = maps.regions[0].float().cpu().numpy().astype(np.float64)  # [T, R]
    piece_w = maps.words[0].float().cpu().numpy().astype(np.float64)[:, : len(pieces)]  # [T, P]
    # bf16 arithmetic leaves sums a hair off 1; the maps are distributions
    region /= region.sum(-1, keepdims=True)
    piece_w /= np.maximum(piece_w.sum(-1, keepdims=True), 1e-12)
    word_w = np.stack([piece_w[:, g].sum(-1) for g in groups], -1)
    return Explanation(
        score=float(scores[0].float()), variant=model.loaded.config.variant,
        text_encoder=model.loaded.config.text_encoder, model=model.name, caption=caption,
        image_id=image_id, image_path=path or None, grid=(gh, gw), region_maps=region.reshape(-1, gh, gw),
        words=words, word_weights=word_w, pieces=pieces, piece_weights=piece_w,
        unknown=unknown, truncated=truncated,
    )
