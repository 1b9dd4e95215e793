"""Safe image loading: any file in, a (S, S, 3) uint8 RGB array or one clear reason out.

- EXIF orientation is applied; width and height are the displayed (oriented) size.
- Every mode becomes 8-bit RGB: grayscale/palette/CMYK/YCbCr convert, alpha (RGBA, LA,
  palette transparency) is composited over white, 16-bit and 32-bit integer images are
  scaled to 8 bits (not clipped), float images are scaled from [0, 1].
- Decompression bombs (more pixels than ``max_pixels``, checked from the header before any
  pixel is decoded) are refused; truncated or corrupt data is an error, never half an image.
- Large JPEGs are decoded at a reduced DCT scale that still covers the target size (PIL's
  ``draft``), which makes decoding of big photos several times faster.

Only PIL and numpy are imported here: this runs in the decoding worker processes.
"""

from __future__ import annotations

import os
import stat
import warnings

import numpy as np

from smcli.errors import first_line

DEFAULT_MAX_PIXELS = 89_478_485  # PIL's own default limit (~0.25 GB of RGB at 8 bits)
DECODE_DESCRIPTION = (
    "EXIF orientation applied; RGB (alpha over white, 16-bit scaled to 8-bit); "
    "JPEG decoded at the smallest DCT scale >= target (draft)"
)
IMAGE_EXTENSIONS = frozenset({
    ".jpg", ".jpeg", ".jpe", ".jfif", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff",
    ".ppm", ".pgm", ".pbm", ".pnm", ".tga", ".jp2", ".j2k", ".ico", ".avif",
})
# Image formats a directory may hold that Pillow cannot read here: listed (and reported as
# errors) rather than silently ignored.
UNSUPPORTED_EXTENSIONS = frozenset({
    ".heic", ".heif", ".svg", ".svgz", ".psd", ".raw", ".cr2", ".cr3", ".nef", ".arw",
    ".dng", ".orf", ".rw2", ".jxl", ".exr", ".hdr",
})


class ImageError(Exception):
    """An image that cannot be used; ``str(exc)`` is the one-line reason."""


def _sniff(head: bytes) -> str:
    """Why a file Pillow does not recognise is not an image, from its first bytes."""
    if head.startswith(b"%PDF"):
        return "a PDF document, not an image"
    if head[4:8] == b"ftyp":
        brand = head[8:12].decode("ascii", "replace")
        if brand in ("heic", "heix", "hevc", "heim", "heis", "mif1", "msf1"):
            return "HEIC/HEIF image: format not supported (convert to JPEG or PNG)"
        if brand in ("avif", "avis"):
            return "AVIF image: not supported by this Pillow build"
        return f"an ISO media file (brand {brand!r}), not a still image"
    stripped = head.lstrip()
    if stripped[:5].lower() in (b"<svg ", b"<?xml") or stripped[:4].lower() == b"<svg":
        return "SVG (vector) image: not supported (rasterise it first)"
    if head.startswith(b"\xff\xd8"):
        return "corrupt JPEG (header not readable)"
    if head.startswith(b"\x89PNG"):
        return "corrupt PNG (header not readable)"
    try:
        text = head.decode("utf-8")
        if all(c.isprintable() or c in "\r\n\t" for c in text):
            return "not an image: a text file"
    except UnicodeDecodeError:
        pass
    return f"not an image: unrecognised format (starts with {head[:8].hex()})"


def _to_rgb(im):
    from PIL import Image

    mode = im.mode
    if mode == "RGB":
        return im
    if mode == "P":
        im = im.convert("RGBA" if "transparency" in im.info else "RGB")
        mode = im.mode
        if mode == "RGB":
            return im
    if mode in ("RGBA", "LA", "PA", "RGBa", "La") or (mode in ("L", "RGB") and "transparency" in im.info):
        rgba = im.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    if mode.startswith("I;16") or mode in ("I", "F"):
        arr = np.asarray(im)
        if mode == "F":
            arr = np.nan_to_num(arr.astype(np.float64))
            scale = 255.0 if float(arr.max(initial=0.0)) <= 1.0 else 1.0
            arr8 = np.clip(arr * scale, 0, 255).round().astype(np.uint8)
        elif mode.startswith("I;16") or int(arr.max(initial=0)) > 255:
            # 16-bit data (I;16*, or 16-bit PNG/TIFF loaded as I): 0..65535 -> 0..255
            arr8 = np.clip(np.rint(arr.astype(np.float64) / 257.0), 0, 255).astype(np.uint8)
        else:
            arr8 = np.clip(arr, 0, 255).astype(np.uint8)
        return Image.fromarray(arr8, "L").convert("RGB")
    return im.convert("RGB")  # L, 1, CMYK, YCbCr, LAB, HSV, ...


def load_image(path: str, size: int, max_pixels: int = DEFAULT_MAX_PIXELS) -> tuple[np.ndarray, int, int]:
    """Decode ``path`` to a (size, size, 3) uint8 RGB array; returns (array, width, height)
    with the original (EXIF-oriented) size. Raises :class:`ImageError` with a reason."""
    from PIL import Image

    def square(rgb, fmt: str):
        if rgb.size != (size, size):
            rgb = rgb.resize((size, size), Image.BICUBIC)
        arr = np.asarray(rgb, dtype=np.uint8)
        if arr.shape != (size, size, 3):
            raise ImageError(f"{fmt} decoded to an unexpected shape {arr.shape}")
        return arr

    return _decode(path, max_pixels, (size, size), square)


def load_image_native(path: str, max_side: int, max_pixels: int = DEFAULT_MAX_PIXELS) -> tuple[np.ndarray, int, int]:
    """Decode ``path`` at its own aspect ratio: an (h, w, 3) uint8 RGB array whose longer
    side is at most ``max_side`` (larger images are scaled down, smaller ones kept as they
    are); returns (array, width, height) with the original (EXIF-oriented) size, so that
    coordinates in the array scale back by width / array width. Same checks and reasons
    as :func:`load_image` (what reading text in an image needs: no squashing to a square)."""
    from PIL import Image

    def fit(rgb, fmt: str):
        w, h = rgb.size
        scale = max_side / max(w, h)
        if scale < 1:
            rgb = rgb.resize((max(1, round(w * scale)), max(1, round(h * scale))), Image.BICUBIC)
        arr = np.asarray(rgb, dtype=np.uint8)
        if arr.ndim != 3 or arr.shape[2] != 3:
            raise ImageError(f"{fmt} decoded to an unexpected shape {arr.shape}")
        return arr

    return _decode(path, max_pixels, (max_side, max_side), fit)


def _decode(path: str, max_pixels: int, draft: tuple[int, int], finish) -> tuple[np.ndarray, int, int]:
    """The checks and decoding both loaders share; ``finish(rgb_image, format)`` makes the
    array from the oriented RGB image. ``draft``: the size a JPEG may be decoded down to."""
    from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError

    ImageFile.LOAD_TRUNCATED_IMAGES = False
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise ImageError("no such file") from None
    except OSError as exc:
        raise ImageError(f"cannot access: {exc.strerror or first_line(exc, 200)}") from None
    if stat.S_ISDIR(st.st_mode):
        raise ImageError("is a directory")
    if not stat.S_ISREG(st.st_mode):
        raise ImageError("not a regular file (a pipe, socket or device)")
    if st.st_size == 0:
        raise ImageError("empty file (0 bytes)")
    try:
        fh = open(path, "rb")
    except OSError as exc:
        raise ImageError(f"cannot open: {exc.strerror or first_line(exc, 200)}") from None
    with fh:
        head = fh.read(64)
        fh.seek(0)
        # PIL's own check would warn at the limit and fail at twice it; ours below, from
        # the header alone, refuses at the limit with a message naming --max-pixels.
        Image.MAX_IMAGE_PIXELS = None
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", Image.DecompressionBombWarning)
                im = Image.open(fh)
        except Image.DecompressionBombError as exc:
            raise ImageError(f"decompression bomb refused: {first_line(exc, 200)}") from None
        except UnidentifiedImageError:
            raise ImageError(_sniff(head)) from None
        except Exception as exc:  # noqa: BLE001 - Pillow raises many types on bad headers
            raise ImageError(f"unreadable image header: {first_line(exc, 200)}") from None
        with im:
            fmt = im.format or "image"
            w, h = im.size
            if w <= 0 or h <= 0:
                raise ImageError(f"{fmt} with an empty size {w}x{h}")
            if w * h > max_pixels:
                raise ImageError(
                    f"decompression bomb refused: {w}x{h} = {w * h / 1e6:.0f} megapixels exceeds "
                    f"the limit of {max_pixels / 1e6:.0f} (--max-pixels)"
                )
            try:
                orientation = im.getexif().get(0x0112, 1)
            except Exception:  # noqa: BLE001 - a broken EXIF block only loses the orientation
                orientation = 1
            if orientation in (5, 6, 7, 8):
                w, h = h, w
            try:
                if fmt == "JPEG":
                    im.draft(None, draft)
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    im.load()
                    if orientation != 1:
                        try:
                            im = ImageOps.exif_transpose(im)
                        except Exception:  # noqa: BLE001
                            pass
                    arr = finish(_to_rgb(im), fmt)
            except Image.DecompressionBombError as exc:
                raise ImageError(f"decompression bomb refused: {first_line(exc, 200)}") from None
            except ImageError:
                raise
            except MemoryError:
                raise ImageError(f"{fmt} {w}x{h}: out of memory while decoding") from None
            except Exception as exc:  # noqa: BLE001 - truncated/corrupt data, unsupported modes
                raise ImageError(f"corrupt or truncated {fmt} data: {first_line(exc, 200)}") from None
    return arr, int(w), int(h)
