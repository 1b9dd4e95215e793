"""What an sm-LSTM selected: the instance-aware saliency maps of one image-sentence pair.

    session = MatchSession("model/")
    images = resolve_images(["dog.jpg"], None, session.loaded.info.features)
    ex = explain_pair(session, images, "a dog runs on the grass")
    ex.score, ex.region_maps.shape, ex.words, ex.word_weights.shape   # float, [T, gh, gw], L, [T, L]
    render_png(ex, None, Path("why.png"))     # or render_html(ex, None, Path("why.html"))

For each step t the model attends to the region grid (p_t, the image saliency map) and to
the words (q_t, the word saliency map); both sum to 1. MiniLM word pieces are merged into
whole words (a word's weight is the sum of its pieces'); bilstm models show their
normalised tokens. The ``mean`` ablation attends uniformly (no selection) and is shown as
such; one-to-one models (vse, cca) have nothing to show and are refused.

Pictures are drawn with Pillow and numpy only (no matplotlib): one panel per step, the
photo with the bilinearly upsampled map as a heat overlay (low saliency dimmed, high
saliency tinted), and under it the caption with each word's weight as background
intensity and a percentage.
"""

from __future__ import annotations

import base64
import html
import io
from dataclasses import dataclass, field
from pathlib import Path

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


# ---------------------------------------------------------------------------------------
# Computing the maps


def require_attention(session) -> None:
    """One line for a model without saliency maps (vse, cca)."""
    variant = session.loaded.config.variant
    if variant not in ATTENTION_VARIANTS:
        raise InputError(f"explain needs an attention model (smlstm, no-context or mean); "
                         f"{session.name} is {variant}")


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


def _encode_caption(session, caption: str):
    """The caption's TextSide, the model's word instances and how they form words."""
    import torch

    from smcli.evaluation.scoring import encode_texts
    from smcli.runtime import autocast
    from smcli.text.normalize import tokenize

    cfg = session.loaded.config
    if not tokenize(caption):
        raise InputError(f"--caption {caption!r}: empty")
    if cfg.text_encoder == "minilm":
        from smcli.models import minilm
        from smcli.models.text_inputs import MiniLMStore

        states = minilm.encode([caption], device=session.device, keep_pieces=True)
        pieces = list(states.pieces[0])
        if not pieces:
            raise InputError(f"--caption {caption!r}: no word pieces")
        with torch.inference_mode(), autocast(session.device, session.precision):
            side = encode_texts(session.model, MiniLMStore(states), device=session.device)
        groups = _merge_pieces(pieces)
        words = [pieces[g[0]] + "".join(pieces[j][2:] for j in g[1:]) for g in groups]
        return side, pieces, groups, words, [False] * len(words), len(pieces) >= minilm.MAX_PIECES
    from smcli.models.text_inputs import MAX_WORDS
    from smcli.text.vocab import UNK_ID

    session.check_query(caption)
    tokens = tokenize(caption)
    truncated = len(tokens) > MAX_WORDS
    tokens = tokens[:MAX_WORDS]
    ids = session.loaded.vocab.encode(tokens)
    side = session.texts(["caption"], [caption], [ids], cache=False).side
    groups = [[i] for i in range(len(tokens))]
    return side, tokens, groups, tokens, [i == UNK_ID for i in ids], truncated


def explain_pair(session, image, caption: str, *, index: int = 0) -> Explanation:
    """Score one image against one caption and keep the saliency maps of every step.

    ``image``: an :class:`~smcli.search.inputs.ImageSet` (row ``index``), or a pair of
    arrays (regions [R, D], global [Dg]) in the model's feature space.
    """
    import torch

    from smcli.runtime import autocast

    require_attention(session)
    regions, global_, image_id, path = _one_image(image, index)
    grid = session.loaded.info.features.get("grid")
    if not grid or len(grid) != 2:
        raise InputError(f"{session.name}: the model's feature signature has no region grid")
    gh, gw = int(grid[0]), int(grid[1])
    if regions.ndim != 2 or regions.shape[0] != gh * gw:
        raise InputError(f"image {image_id}: {regions.shape[0] if regions.ndim == 2 else '?'} regions, "
                         f"but the model's grid is {gh}x{gw}")
    text_side, pieces, groups, words, unknown, truncated = _encode_caption(session, caption)
    gallery = session.gallery([image_id], [path or ""], regions[None], global_[None])
    zero = torch.zeros(1, dtype=torch.long, device=session.device)
    with torch.inference_mode(), autocast(session.device, session.precision):
        scores, maps = session.model.attention_maps(gallery.side, text_side, zero, zero)
    region = maps.regions[0].float().cpu().numpy().astype(np.float64)  # [T, R]
    piece_w = maps.words[0].float().cpu().numpy().astype(np.float64)[:, : len(pieces)]  # [T, P]
    # bf16 arithmetic leaves sums a hair off 1; the maps are distributions
    region /= region.sum(-1, keepdims=True)
    piece_w /= np.maximum(piece_w.sum(-1, keepdims=True), 1e-12)
    word_w = np.stack([piece_w[:, g].sum(-1) for g in groups], -1)
    return Explanation(
        score=float(scores[0].float()), variant=session.loaded.config.variant,
        text_encoder=session.loaded.config.text_encoder, model=session.name, caption=caption,
        image_id=image_id, image_path=path, grid=(gh, gw), region_maps=region.reshape(-1, gh, gw),
        words=words, word_weights=word_w, pieces=pieces, piece_weights=piece_w,
        unknown=unknown, truncated=truncated,
    )


# ---------------------------------------------------------------------------------------
# Colours and the overlay

# matplotlib's "inferno", sampled at 9 points (interpolated linearly in between)
_INFERNO = np.array([
    (0, 0, 4), (33, 12, 74), (87, 16, 110), (138, 34, 106), (188, 55, 84), (228, 90, 49),
    (249, 142, 9), (249, 203, 53), (252, 255, 164)], dtype=np.float64)
WORD_RGB = (249, 142, 9)  # word backgrounds: the overlay's hot orange
HEAT_ALPHA = 0.55  # tint at the peak of a map
DIM_FLOOR = 0.30  # brightness of the photo where the map is zero


def colormap(v: np.ndarray) -> np.ndarray:
    """Values in [0, 1] -> RGB floats in [0, 255] (inferno)."""
    x = np.clip(v, 0.0, 1.0) * (len(_INFERNO) - 1)
    lo = np.floor(x).astype(int).clip(0, len(_INFERNO) - 2)
    f = (x - lo)[..., None]
    return _INFERNO[lo] * (1 - f) + _INFERNO[lo + 1] * f


def upsample(grid_map: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """A [gh, gw] map bilinearly upsampled to ``size`` (width, height), cell centres aligned."""
    from PIL import Image

    im = Image.fromarray(np.ascontiguousarray(grid_map, dtype=np.float32), mode="F")
    return np.asarray(im.resize(size, Image.Resampling.BILINEAR), dtype=np.float64)


def display_values(ex: Explanation, t: int, size: tuple[int, int]) -> np.ndarray:
    """Step ``t``'s map over the picture, scaled to its peak: [h, w] in [0, 1].

    The mean variant's uniform map is shown as it is: the same value everywhere.
    """
    m = ex.region_maps[t]
    v = upsample(m / m.max(), size)
    return np.clip(v, 0.0, 1.0)


def overlay_rgba(v: np.ndarray) -> np.ndarray:
    """An RGBA layer that, composited over the photo, dims low saliency and tints high.

    Wanted: out = photo * d * (1 - a) + heat * a with d = DIM_FLOOR + (1 - DIM_FLOOR) v
    and a = HEAT_ALPHA * v; as one layer (colour C, alpha A): A = 1 - d (1 - a), C = heat a / A.
    """
    d = DIM_FLOOR + (1 - DIM_FLOOR) * v
    a = HEAT_ALPHA * v ** 1.5
    alpha = 1 - d * (1 - a)
    heat = colormap(0.3 + 0.55 * v)
    rgb = heat * (a / np.maximum(alpha, 1e-6))[..., None]
    out = np.concatenate([rgb, (alpha * 255)[..., None]], -1)
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def word_background(v: float) -> tuple[int, int, int]:
    """White to the hot orange with the word's weight relative to the step's top word."""
    k = 0.9 * float(np.clip(v, 0, 1))
    return tuple(int(round(255 * (1 - k) + c * k)) for c in WORD_RGB)


# ---------------------------------------------------------------------------------------
# Photos and fonts


def load_photo(path: str | Path, max_side: int = 1024):
    """The image file as an RGB PIL image, EXIF-oriented (as extract-regions sees it)."""
    from PIL import Image, ImageOps, UnidentifiedImageError

    p = Path(path)
    if not p.is_file():
        raise InputError(f"image file {path}: not found")
    try:
        with Image.open(p) as im:
            if im.format == "JPEG":
                im.draft("RGB", (max_side, max_side))
            im = ImageOps.exif_transpose(im)
            if im.mode in ("RGBA", "LA", "PA") or "transparency" in im.info:
                rgba = im.convert("RGBA")
                white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
                im = Image.alpha_composite(white, rgba)
            im = im.convert("RGB")
            im.thumbnail((max_side, max_side), Image.Resampling.LANCZOS)
            return im
    except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError) as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise InputError(f"image file {path}: cannot be read ({reason})") from None


def _font_file(bold: bool) -> str | None:
    """DejaVu Sans from matplotlib's data when matplotlib is installed (not imported)."""
    import importlib.util

    spec = importlib.util.find_spec("matplotlib")
    if spec is None or not spec.submodule_search_locations:
        return None
    name = "DejaVuSans-Bold.ttf" if bold else "DejaVuSans.ttf"
    for root in spec.submodule_search_locations:
        f = Path(root) / "mpl-data" / "fonts" / "ttf" / name
        if f.is_file():
            return str(f)
    return None


def _font(size: int, bold: bool = False):
    from PIL import ImageFont

    path = _font_file(bold)
    if path:
        return ImageFont.truetype(path, size)
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1
        return ImageFont.load_default()


# ---------------------------------------------------------------------------------------
# The PNG

PANEL_W = 380  # photo width in a panel
MAX_PHOTO_H = 420
MARGIN = 24
GAP = 28
COLUMNS = 4  # panels per row
INK = (25, 25, 30)
MUTED = (105, 105, 115)
WARN = (180, 40, 30)


def _text_w(draw, text: str, font) -> int:
    return int(np.ceil(draw.textlength(text, font=font)))


def _wrap(draw, text: str, font, width: int) -> list[str]:
    lines, line = [], ""
    for word in text.split():
        trial = f"{line} {word}" if line else word
        if line and _text_w(draw, trial, font) > width:
            lines.append(line)
            line = word
        else:
            line = trial
    return lines + ([line] if line else [])


def _layout_words(draw, words: list[str], font, small, width: int):
    """Word boxes flowed into lines: [(x, row, box_w)] and the number of rows."""
    pad, space = 4, 5
    out, x, row = [], 0, 0
    for w in words:
        bw = max(_text_w(draw, w, font), _text_w(draw, "00%", small)) + 2 * pad
        if x and x + bw > width:
            x, row = 0, row + 1
        out.append((x, row, bw))
        x += bw + space
    return out, row + 1


def compose_png(ex: Explanation, photo):
    """The explanation picture as a PIL image (see :func:`render_png`)."""
    from PIL import Image, ImageDraw

    title_f, head_f, body_f, word_f, small_f = (_font(21, True), _font(15, True), _font(14),
                                                _font(16), _font(11))
    scratch = ImageDraw.Draw(Image.new("RGB", (8, 8)))
    # photo size in a panel: PANEL_W wide, or shorter for tall photos
    pw, ph = photo.size
    scale = min(PANEL_W / pw, MAX_PHOTO_H / ph)
    iw, ih = max(1, round(pw * scale)), max(1, round(ph * scale))
    shown = photo.resize((iw, ih), Image.Resampling.LANCZOS)

    T = ex.steps
    cols = min(T, COLUMNS)
    rows = -(-T // cols)
    width = 2 * MARGIN + cols * PANEL_W + (cols - 1) * GAP
    inner = width - 2 * MARGIN

    header: list[tuple[str, object, tuple]] = [(ex.title, title_f, INK)]
    if not ex.selective:
        header.append((f"{NO_SELECTION}: every region and every word weighs the same at every step",
                       head_f, WARN))
    who = f"image {ex.image_id}"
    if ex.image_path and ex.image_path != ex.image_id:
        who += f" ({ex.image_path})"
    header += [(line, body_f, MUTED)
               for line in _wrap(scratch, f"{who} \u00b7 model {ex.model}", body_f, inner)]
    header += [(line, word_f, INK) for line in _wrap(scratch, f"\u201c{ex.caption}\u201d", word_f, inner)]
    if ex.truncated:
        header.append((f"the caption was cut to the {len(ex.pieces)} "
                       f"{'word pieces' if ex.text_encoder == 'minilm' else 'words'} the model reads",
                       body_f, WARN))
    line_h = {id(title_f): 30, id(head_f): 22, id(body_f): 20, id(word_f): 23}
    header_h = sum(line_h[id(f)] for _, f, _ in header) + 14

    boxes, word_rows = _layout_words(scratch, ex.words, word_f, small_f, PANEL_W)
    word_row_h = 40
    panel_h = 26 + ih + 12 + word_rows * word_row_h
    legend_h = 46
    height = MARGIN + header_h + rows * panel_h + (rows - 1) * GAP + legend_h + MARGIN

    canvas = Image.new("RGB", (width, height), (255, 255, 255))
    draw = ImageDraw.Draw(canvas)
    y = MARGIN
    for text, font, colour in header:
        draw.text((MARGIN, y), text, font=font, fill=colour)
        y += line_h[id(font)]
    y += 14
    uniform = 1.0 / (ex.grid[0] * ex.grid[1])
    for t in range(T):
        px = MARGIN + (t % cols) * (PANEL_W + GAP)
        py = y + (t // cols) * (panel_h + GAP)
        draw.text((px, py), f"step {t + 1}", font=head_f, fill=INK)
        r, c, peak = ex.peak(t)
        note = (NO_SELECTION if not ex.selective
                else f"top region row {r + 1}, col {c + 1}: {peak:.1%} ({peak / uniform:.1f}\u00d7 uniform)")
        draw.text((px + PANEL_W - _text_w(draw, note, small_f), py + 4), note, font=small_f, fill=MUTED)
        ox = px + (PANEL_W - iw) // 2
        oy = py + 26
        layer = Image.fromarray(overlay_rgba(display_values(ex, t, (iw, ih))), "RGBA")
        canvas.paste(Image.alpha_composite(shown.convert("RGBA"), layer).convert("RGB"), (ox, oy))
        if ex.selective:  # outline the most salient grid cell
            gh, gw = ex.grid
            x0, x1 = ox + c * iw / gw, ox + (c + 1) * iw / gw
            y0, y1 = oy + r * ih / gh, oy + (r + 1) * ih / gh
            draw.rectangle([x0 - 1, y0 - 1, x1 + 1, y1 + 1], outline=(0, 0, 0), width=4)
            draw.rectangle([x0, y0, x1, y1], outline=(255, 255, 255), width=2)
        wy = oy + ih + 12
        weights = ex.word_weights[t]
        top = float(weights.max()) if len(weights) else 1.0
        unknown = ex.unknown or [False] * len(ex.words)
        for (bx, row, bw), word, wt, unk in zip(boxes, ex.words, weights, unknown, strict=True):
            x0, y0 = px + bx, wy + row * word_row_h
            draw.rounded_rectangle([x0, y0, x0 + bw, y0 + 24], radius=4,
                                   fill=word_background(wt / top if top > 0 else 0.0))
            tw = _text_w(draw, word, word_f)
            draw.text((x0 + (bw - tw) / 2, y0 + 2), word, font=word_f, fill=MUTED if unk else INK)
            pct = f"{wt:.0%}" if wt >= 0.005 else ""
            draw.text((x0 + (bw - _text_w(draw, pct, small_f)) / 2, y0 + 25), pct, font=small_f, fill=MUTED)
    # legend: the colour scale
    ly = height - MARGIN - legend_h + 14
    bar_w, bar_h = 200, 12
    ramp = np.linspace(0, 1, bar_w)[None, :].repeat(bar_h, 0)
    grey = Image.new("RGBA", (bar_w, bar_h), (150, 150, 150, 255))
    bar = Image.alpha_composite(grey, Image.fromarray(overlay_rgba(ramp), "RGBA")).convert("RGB")
    draw.text((MARGIN, ly - 2), "region saliency", font=small_f, fill=MUTED)
    lx = MARGIN + _text_w(draw, "region saliency", small_f) + 10
    draw.text((lx, ly - 2), "low", font=small_f, fill=MUTED)
    lx += _text_w(draw, "low", small_f) + 6
    canvas.paste(bar, (lx, ly))
    lx += bar_w + 6
    draw.text((lx, ly - 2), "peak of the step", font=small_f, fill=MUTED)
    lx += _text_w(draw, "peak of the step", small_f) + 24
    words_note = ("word weight: background relative to the step's top word, number = share of the step"
                  + ("; grey words are unknown to the model" if any(ex.unknown) else ""))
    draw.text((lx, ly - 2), words_note, font=small_f, fill=MUTED)
    if ex.selective:
        draw.text((MARGIN, ly + 16), "white box: the step's most salient region; each map is "
                  f"softmax over the {ex.grid[0]}x{ex.grid[1]} region grid (bilinear upsampling)",
                  font=small_f, fill=MUTED)
    return canvas


def _photo_for(ex: Explanation, image_path):
    path = image_path if image_path is not None else ex.image_path
    if not path:
        raise InputError(f"image {ex.image_id}: no image file to draw the maps on")
    return load_photo(path)


def render_png(ex: Explanation, image_path: str | Path | None, out_path: str | Path, *,
               photo=None) -> Path:
    """Write the explanation picture (one panel per step) as a PNG, atomically.
    ``image_path`` None: the explanation's own image path; ``photo``: the image, loaded."""
    from smcli.stage import AtomicFile

    picture = compose_png(ex, photo if photo is not None else _photo_for(ex, image_path))
    out = AtomicFile(Path(out_path))
    try:
        picture.save(out.handle, format="PNG", optimize=False)
        out.commit()
    except BaseException:
        out.abort()
        raise
    return Path(out_path)


# ---------------------------------------------------------------------------------------
# The HTML page

_CSS = """
body{font-family:system-ui,-apple-system,"DejaVu Sans",sans-serif;color:#19191e;margin:24px;max-width:1600px}
h1{font-size:21px;margin:0 0 6px}
.warn{color:#b4281e;font-weight:600;margin:4px 0}
.meta{color:#696973;font-size:14px;margin:2px 0}
.caption{font-size:17px;margin:8px 0 16px}
.steps{display:flex;flex-wrap:wrap;gap:28px}
figure{margin:0;width:%(w)dpx}
figcaption{display:flex;justify-content:space-between;align-items:baseline;margin-bottom:6px}
figcaption b{font-size:15px} figcaption span{font-size:12px;color:#696973}
.stack{position:relative;line-height:0}
.stack img{width:100%%;height:auto;display:block}
.stack img.map{position:absolute;left:0;top:0;transition:opacity .15s}
.stack:hover img.map{opacity:.12}
.words{margin-top:10px;line-height:1.25}
.w{display:inline-block;text-align:center;margin:0 5px 6px 0}
.w span{display:block;padding:1px 4px;border-radius:4px;font-size:16px}
.w small{display:block;font-size:11px;color:#696973}
.w.unk span{color:#9a9aa5;font-style:italic}
.legend{margin-top:18px;font-size:12px;color:#696973}
.bar{display:inline-block;width:200px;height:12px;vertical-align:middle;margin:0 6px}
"""


def _data_uri(image, fmt: str) -> str:
    buf = io.BytesIO()
    if fmt == "JPEG":
        image.save(buf, format="JPEG", quality=90)
    else:
        image.save(buf, format="PNG", optimize=True)
    mime = "image/jpeg" if fmt == "JPEG" else "image/png"
    return f"data:{mime};base64,{base64.b64encode(buf.getvalue()).decode('ascii')}"


def compose_html(ex: Explanation, photo) -> str:
    """The explanation as one self-contained HTML page (images embedded as base64)."""
    from PIL import Image

    e = html.escape
    pw, ph = photo.size
    scale = min(PANEL_W / pw, MAX_PHOTO_H / ph)  # the PNG's panel size; CSS scales the photo
    iw, ih = max(1, round(pw * scale)), max(1, round(ph * scale))
    shown = photo
    if pw > 2 * iw:  # sharp on high-density screens, no bigger
        shown = photo.resize((2 * iw, max(1, round(ph * 2 * iw / pw))), Image.Resampling.LANCZOS)
    photo_uri = _data_uri(shown, "JPEG")
    uniform = 1.0 / (ex.grid[0] * ex.grid[1])
    parts = [
        "<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
        f"<title>smcli explain: {e(ex.image_id)}</title>",
        f"<style>{_CSS % {'w': iw}}</style></head><body>",
        f"<h1>{e(ex.title)}</h1>",
    ]
    if not ex.selective:
        parts.append(f'<p class="warn">{e(NO_SELECTION)}: every region and every word weighs '
                     "the same at every step</p>")
    where = f" ({e(ex.image_path)})" if ex.image_path and ex.image_path != ex.image_id else ""
    parts.append(f'<p class="meta">image {e(ex.image_id)}{where} \u00b7 model {e(ex.model)}</p>')
    parts.append(f'<p class="caption">\u201c{e(ex.caption)}\u201d</p>')
    if ex.truncated:
        parts.append(f'<p class="warn">the caption was cut to the {len(ex.pieces)} '
                     f"{'word pieces' if ex.text_encoder == 'minilm' else 'words'} the model reads</p>")
    parts.append('<div class="steps">')
    for t in range(ex.steps):
        r, c, peak = ex.peak(t)
        note = (NO_SELECTION if not ex.selective
                else f"top region row {r + 1}, col {c + 1}: {peak:.1%} ({peak / uniform:.1f}\u00d7 uniform)")
        layer = Image.fromarray(overlay_rgba(display_values(ex, t, (iw, ih))), "RGBA")
        parts.append(f'<figure><figcaption><b>step {t + 1}</b><span>{e(note)}</span></figcaption>')
        parts.append(f'<div class="stack" title="hover to see the photo">'
                     f'<img src="{photo_uri}" alt="{e(ex.image_id)}">'
                     f'<img class="map" src="{_data_uri(layer, "PNG")}" '
                     f'alt="saliency map, step {t + 1}"></div>')
        parts.append('<div class="words">')
        weights = ex.word_weights[t]
        top = float(weights.max()) if len(weights) else 1.0
        unknown = ex.unknown or [False] * len(ex.words)
        for word, wt, unk in zip(ex.words, weights, unknown, strict=True):
            bg = "#{:02x}{:02x}{:02x}".format(*word_background(wt / top if top > 0 else 0.0))
            pct = f"{wt:.0%}" if wt >= 0.005 else "\u00a0"
            parts.append(f'<span class="w{" unk" if unk else ""}" title="{e(word)}: weight {wt:.4f}">'
                         f'<span style="background:{bg}">{e(word)}</span><small>{pct}</small></span>')
        parts.append("</div></figure>")
    parts.append("</div>")
    ramp = np.linspace(0, 1, 200)[None, :].repeat(12, 0)
    grey = Image.new("RGBA", (200, 12), (150, 150, 150, 255))
    bar = Image.alpha_composite(grey, Image.fromarray(overlay_rgba(ramp), "RGBA")).convert("RGB")
    parts.append(f'<p class="legend">region saliency low<img class="bar" src="{_data_uri(bar, "PNG")}" '
                 'alt="colour scale">peak of the step; hover a picture to see the photo. '
                 "Word weight: background relative to the step's top word, number = share of the step"
                 + ("; grey words are unknown to the model" if any(ex.unknown) else "") + ".</p>")
    parts.append("</body></html>")
    return "\n".join(parts)


def render_html(ex: Explanation, image_path: str | Path | None, out_path: str | Path, *,
                photo=None) -> Path:
    """Write the explanation as a self-contained HTML page, atomically."""
    from smcli.stage import AtomicFile

    page = compose_html(ex, photo if photo is not None else _photo_for(ex, image_path))
    out = AtomicFile(Path(out_path))
    try:
        out.handle.write(page.encode("utf-8"))
        out.commit()
    except BaseException:
        out.abort()
        raise
    return Path(out_path)
