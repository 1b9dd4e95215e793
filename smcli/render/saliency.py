"""Drawing what an sm-LSTM selected: the saliency maps of an explanation as a PNG or an HTML page.

Pictures are drawn with Pillow and numpy only (no matplotlib): one panel per step, the
photo with the bilinearly upsampled map as a heat overlay (low saliency dimmed, high
saliency tinted), and under it the caption with each word's weight as background
intensity and a percentage. The PNG, the HTML page and the JSON that ``smcli serve``'s page
draws (:func:`compose_json`) share one layout: the same panel size, header lines, per-step
notes and legend (:func:`panel_size`, :func:`header_lines`, :func:`step_note`,
:func:`words_legend`, :func:`colour_bar`); only how they are drawn differs.
The maps themselves come from :func:`smcli.inference.explain.explain_pair`.
"""

from __future__ import annotations

import base64
import html
import io
from pathlib import Path

import numpy as np

from smcli.errors import InputError, first_line
from smcli.inference.explain import NO_SELECTION, Explanation

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


def load_photo(path, max_side: int = 1024, *, name: str | None = None):
    """The image file (a path, or a binary file open for reading, called ``name`` in errors)
    as an RGB PIL image, EXIF-oriented (as extract-regions sees it)."""
    from PIL import Image, ImageOps, UnidentifiedImageError

    if hasattr(path, "read"):
        p, path = path, name or "image"
    else:
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
        raise InputError(f"image file {path}: cannot be read ({first_line(exc)})") from None


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
# The layout both pictures share

PANEL_W = 380  # photo width in a panel
MAX_PHOTO_H = 420


def panel_size(photo) -> tuple[int, int]:
    """(width, height) of the photo in a panel: PANEL_W wide, or shorter for tall photos."""
    pw, ph = photo.size
    scale = min(PANEL_W / pw, MAX_PHOTO_H / ph)
    return max(1, round(pw * scale)), max(1, round(ph * scale))


def header_lines(ex: Explanation) -> list[tuple[str, str]]:
    """The lines above the panels as (role, text); roles: title, no-selection, meta, caption,
    truncated (the two warnings)."""
    lines = [("title", ex.title)]
    if not ex.selective:
        lines.append(("no-selection", f"{NO_SELECTION}: every region and every word weighs the same at every step"))
    who = f"image {ex.image_id}"
    if ex.image_path and ex.image_path != ex.image_id:
        who += f" ({ex.image_path})"
    lines.append(("meta", f"{who} \u00b7 model {ex.model}"))
    lines.append(("caption", f"\u201c{ex.caption}\u201d"))
    if ex.truncated:
        lines.append(("truncated", f"the caption was cut to the {len(ex.pieces)} "
                              f"{'word pieces' if ex.text_encoder == 'minilm' else 'words'} the model reads"))
    return lines


def step_note(ex: Explanation, t: int) -> str:
    """The note beside step ``t``'s heading: where its peak is and how peaked it is."""
    if not ex.selective:
        return NO_SELECTION
    r, c, peak = ex.peak(t)
    uniform = 1.0 / (ex.grid[0] * ex.grid[1])
    return f"top region row {r + 1}, col {c + 1}: {peak:.1%} ({peak / uniform:.1f}\u00d7 uniform)"


def step_words(ex: Explanation, t: int) -> list[tuple[str, float, tuple[int, int, int], str, bool]]:
    """Step ``t``'s words as (word, weight, background, percentage, unknown)."""
    weights = ex.word_weights[t]
    top = float(weights.max()) if len(weights) else 1.0
    unknown = ex.unknown or [False] * len(ex.words)
    return [(word, float(wt), word_background(wt / top if top > 0 else 0.0),
             f"{wt:.0%}" if wt >= 0.005 else "", unk)
            for word, wt, unk in zip(ex.words, weights, unknown, strict=True)]


def words_legend(ex: Explanation) -> str:
    return ("background relative to the step's top word, number = share of the step"
            + ("; grey words are unknown to the model" if any(ex.unknown) else ""))


def colour_bar(width: int = 200, height: int = 12):
    """The overlay's colour scale over grey, low to high, as an RGB image."""
    from PIL import Image

    ramp = np.linspace(0, 1, width)[None, :].repeat(height, 0)
    grey = Image.new("RGBA", (width, height), (150, 150, 150, 255))
    return Image.alpha_composite(grey, Image.fromarray(overlay_rgba(ramp), "RGBA")).convert("RGB")


def _photo_for(ex: Explanation, image_path):
    path = image_path if image_path is not None else ex.image_path
    if not path:
        raise InputError(f"image {ex.image_id}: no image file to draw the maps on")
    return load_photo(path)


def _write_atomically(out_path: str | Path, write) -> Path:
    from smcli.stage import AtomicFile

    out = AtomicFile(Path(out_path))
    try:
        write(out.handle)
        out.commit()
    except BaseException:
        out.abort()
        raise
    return Path(out_path)


# ---------------------------------------------------------------------------------------
# The PNG

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
    iw, ih = panel_size(photo)
    shown = photo.resize((iw, ih), Image.Resampling.LANCZOS)

    T = ex.steps
    cols = min(T, COLUMNS)
    rows = -(-T // cols)
    width = 2 * MARGIN + cols * PANEL_W + (cols - 1) * GAP
    inner = width - 2 * MARGIN

    style = {"title": (title_f, INK), "no-selection": (head_f, WARN), "meta": (body_f, MUTED),
             "caption": (word_f, INK), "truncated": (body_f, WARN)}
    header: list[tuple[str, object, tuple]] = []
    for role, text in header_lines(ex):
        font, colour = style[role]
        wrapped = _wrap(scratch, text, font, inner) if role in ("meta", "caption") else [text]
        header += [(line, font, colour) for line in wrapped]
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
    for t in range(T):
        px = MARGIN + (t % cols) * (PANEL_W + GAP)
        py = y + (t // cols) * (panel_h + GAP)
        draw.text((px, py), f"step {t + 1}", font=head_f, fill=INK)
        r, c, _ = ex.peak(t)
        note = step_note(ex, t)
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
        for (bx, row, bw), (word, _, bg, pct, unk) in zip(boxes, step_words(ex, t), strict=True):
            x0, y0 = px + bx, wy + row * word_row_h
            draw.rounded_rectangle([x0, y0, x0 + bw, y0 + 24], radius=4, fill=bg)
            tw = _text_w(draw, word, word_f)
            draw.text((x0 + (bw - tw) / 2, y0 + 2), word, font=word_f, fill=MUTED if unk else INK)
            draw.text((x0 + (bw - _text_w(draw, pct, small_f)) / 2, y0 + 25), pct, font=small_f, fill=MUTED)
    # legend: the colour scale
    ly = height - MARGIN - legend_h + 14
    bar = colour_bar()
    bar_w = bar.size[0]
    draw.text((MARGIN, ly - 2), "region saliency", font=small_f, fill=MUTED)
    lx = MARGIN + _text_w(draw, "region saliency", small_f) + 10
    draw.text((lx, ly - 2), "low", font=small_f, fill=MUTED)
    lx += _text_w(draw, "low", small_f) + 6
    canvas.paste(bar, (lx, ly))
    lx += bar_w + 6
    draw.text((lx, ly - 2), "peak of the step", font=small_f, fill=MUTED)
    lx += _text_w(draw, "peak of the step", small_f) + 24
    words_note = f"word weight: {words_legend(ex)}"
    draw.text((lx, ly - 2), words_note, font=small_f, fill=MUTED)
    if ex.selective:
        draw.text((MARGIN, ly + 16), "white box: the step's most salient region; each map is "
                  f"softmax over the {ex.grid[0]}x{ex.grid[1]} region grid (bilinear upsampling)",
                  font=small_f, fill=MUTED)
    return canvas


def render_png(ex: Explanation, image_path: str | Path | None, out_path: str | Path, *,
               photo=None) -> Path:
    """Write the explanation picture (one panel per step) as a PNG, atomically.
    ``image_path`` None: the explanation's own image path; ``photo``: the image, loaded."""
    picture = compose_png(ex, photo if photo is not None else _photo_for(ex, image_path))
    return _write_atomically(out_path, lambda fh: picture.save(fh, format="PNG", optimize=False))


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


def data_uri(image, fmt: str) -> str:
    """A PIL image as a data: URI (``fmt`` "JPEG" or "PNG")."""
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
    iw, ih = panel_size(photo)  # the PNG's panel size; CSS scales the photo
    shown = photo
    if pw > 2 * iw:  # sharp on high-density screens, no bigger
        shown = photo.resize((2 * iw, max(1, round(ph * 2 * iw / pw))), Image.Resampling.LANCZOS)
    photo_uri = data_uri(shown, "JPEG")
    lines = header_lines(ex)
    parts = [
        "<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
        f"<title>smcli explain: {e(ex.image_id)}</title>",
        f"<style>{_CSS % {'w': iw}}</style></head><body>",
        f"<h1>{e(lines[0][1])}</h1>",
    ]
    tags = {"no-selection": '<p class="warn">', "truncated": '<p class="warn">',
            "meta": '<p class="meta">', "caption": '<p class="caption">'}
    parts += [f"{tags[role]}{e(text)}</p>" for role, text in lines[1:]]
    parts.append('<div class="steps">')
    for t in range(ex.steps):
        note = step_note(ex, t)
        layer = Image.fromarray(overlay_rgba(display_values(ex, t, (iw, ih))), "RGBA")
        parts.append(f'<figure><figcaption><b>step {t + 1}</b><span>{e(note)}</span></figcaption>')
        parts.append(f'<div class="stack" title="hover to see the photo">'
                     f'<img src="{photo_uri}" alt="{e(ex.image_id)}">'
                     f'<img class="map" src="{data_uri(layer, "PNG")}" '
                     f'alt="saliency map, step {t + 1}"></div>')
        parts.append('<div class="words">')
        for word, wt, rgb, pct, unk in step_words(ex, t):
            bg = "#{:02x}{:02x}{:02x}".format(*rgb)
            pct = pct or "\u00a0"
            parts.append(f'<span class="w{" unk" if unk else ""}" title="{e(word)}: weight {wt:.4f}">'
                         f'<span style="background:{bg}">{e(word)}</span><small>{pct}</small></span>')
        parts.append("</div></figure>")
    parts.append("</div>")
    parts.append(f'<p class="legend">region saliency low<img class="bar" src="{data_uri(colour_bar(), "PNG")}" '
                 'alt="colour scale">peak of the step; hover a picture to see the photo. '
                 f"Word weight: {words_legend(ex)}.</p>")
    parts.append("</body></html>")
    return "\n".join(parts)


def render_html(ex: Explanation, image_path: str | Path | None, out_path: str | Path, *,
                photo=None) -> Path:
    """Write the explanation as a self-contained HTML page, atomically."""
    page = compose_html(ex, photo if photo is not None else _photo_for(ex, image_path))
    return _write_atomically(out_path, lambda fh: fh.write(page.encode("utf-8")))


# ---------------------------------------------------------------------------------------
# The same layout as data (smcli serve's page draws it)


def compose_json(ex: Explanation, photo) -> dict:
    """The explanation as JSON-ready data for a web page: the header lines, and per step
    the note, the peak, the raw map and its overlay (a PNG data URI of the PNG's panel size,
    to lay over the photo), and the words with their weights and backgrounds."""
    from PIL import Image

    iw, ih = panel_size(photo)
    steps = []
    for t in range(ex.steps):
        r, c, peak = ex.peak(t)
        layer = Image.fromarray(overlay_rgba(display_values(ex, t, (iw, ih))), "RGBA")
        steps.append({
            "step": t + 1, "note": step_note(ex, t),
            "peak": {"row": r, "col": c, "weight": peak} if ex.selective else None,
            "map": ex.region_maps[t].round(6).tolist(),
            "overlay": data_uri(layer, "PNG"),
            "words": [{"word": w, "weight": round(wt, 6), "background": "#{:02x}{:02x}{:02x}".format(*bg),
                       "percent": pct, "unknown": unk} for w, wt, bg, pct, unk in step_words(ex, t)],
        })
    return {"score": ex.score, "variant": ex.variant, "text_encoder": ex.text_encoder, "model": ex.model,
            "image_id": ex.image_id, "caption": ex.caption, "grid": list(ex.grid), "selective": ex.selective,
            "truncated": ex.truncated, "size": [iw, ih],
            "header": [{"role": role, "text": text} for role, text in header_lines(ex)],
            "steps": steps, "legend": {"words": words_legend(ex), "colour_bar": data_uri(colour_bar(), "PNG")}}
