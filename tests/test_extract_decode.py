"""Safe image decoding for extract-regions: every kind of bad or unusual image, generated here."""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from smcli.images.decode import ImageError, load_image

REPO = Path(__file__).resolve().parent.parent
PHOTO = REPO / "examples" / "images" / "1287920676_d21a0b289b.jpg"  # a real Flickr8k JPEG


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def bomb_png(path: Path, width: int = 30000, height: int = 30000) -> Path:
    """A 100-byte PNG whose header claims a huge 8-bit grayscale image."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    idat = zlib.compress(b"\x00" * 1024)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr) + _png_chunk(b"IDAT", idat)
                     + _png_chunk(b"IEND", b""))
    return path


def make_bad_images(d: Path) -> dict[str, str]:
    """Write bad images into ``d``; returns file name -> a fragment of the expected reason."""
    d.mkdir(parents=True, exist_ok=True)
    data = PHOTO.read_bytes()
    (d / "truncated.jpg").write_bytes(data[: len(data) // 2])
    corrupt = bytearray(data)
    corrupt[200:] = bytes(np.random.default_rng(0).integers(0, 256, len(data) - 200, dtype=np.uint8))
    (d / "corrupt.jpg").write_bytes(bytes(corrupt))
    (d / "empty.jpg").write_bytes(b"")
    (d / "notes.jpg").write_text("this is not a picture\nbut a text file\n")
    (d / "photo.heic").write_bytes(b"\x00\x00\x00\x18ftypheic\x00\x00\x00\x00mif1heic" + b"\x00" * 64)
    (d / "drawing.svg").write_text('<svg xmlns="http://www.w3.org/2000/svg" width="10" height="10"/>')
    (d / "doc.png").write_bytes(b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n1 0 obj\n" + b"0" * 100)
    bomb_png(d / "bomb.png")
    return {
        "truncated.jpg": "truncated",
        "corrupt.jpg": "corrupt",
        "empty.jpg": "empty file",
        "notes.jpg": "text file",
        "photo.heic": "HEIC",
        "drawing.svg": "SVG",
        "doc.png": "PDF",
        "bomb.png": "decompression bomb",
    }


@pytest.fixture(scope="module")
def bad_dir(tmp_path_factory) -> tuple[Path, dict[str, str]]:
    d = tmp_path_factory.mktemp("bad")
    return d, make_bad_images(d)


def test_every_bad_image_has_a_clear_reason(bad_dir):
    d, expected = bad_dir
    for name, fragment in expected.items():
        with pytest.raises(ImageError) as info:
            load_image(str(d / name), 64)
        assert fragment.lower() in str(info.value).lower(), (name, str(info.value))
        assert "\n" not in str(info.value)


def test_missing_file_and_directory(tmp_path):
    with pytest.raises(ImageError, match="no such file"):
        load_image(str(tmp_path / "nope.jpg"), 32)
    with pytest.raises(ImageError, match="not a regular file|directory"):
        load_image(str(tmp_path), 32)


def test_bomb_refused_from_header_only_and_limit_is_configurable(tmp_path):
    small = bomb_png(tmp_path / "wide.png", 4000, 4000)  # 16 MP: fine by default
    with pytest.raises(ImageError, match="decompression bomb.*--max-pixels"):
        load_image(str(small), 32, max_pixels=1_000_000)


def test_real_photo_decodes_to_target_size():
    arr, w, h = load_image(str(PHOTO), 96)
    assert arr.shape == (96, 96, 3) and arr.dtype == np.uint8
    assert (w, h) == Image.open(PHOTO).size
    assert 40 < arr.mean() < 220  # a photo, not a blank


def _save(im: Image.Image, path: Path, **kw) -> Path:
    im.save(path, **kw)
    return path


def test_modes_convert_to_rgb(tmp_path):
    rgb = Image.open(PHOTO).convert("RGB")
    ref, _, _ = load_image(str(_save(rgb, tmp_path / "rgb.png")), 64)
    # grayscale: three equal channels, equal to the luminance of the colour image
    gray, _, _ = load_image(str(_save(rgb.convert("L"), tmp_path / "gray.png")), 64)
    assert (gray[..., 0] == gray[..., 1]).all() and (gray[..., 1] == gray[..., 2]).all()
    # CMYK JPEG: close to the RGB original
    cmyk, _, _ = load_image(str(_save(rgb.convert("CMYK"), tmp_path / "cmyk.jpg", quality=95)), 64)
    assert np.abs(cmyk.astype(int) - ref.astype(int)).mean() < 8
    # palette: close to the original
    pal, _, _ = load_image(str(_save(rgb.convert("P", palette=Image.ADAPTIVE), tmp_path / "p.png")), 64)
    assert np.abs(pal.astype(int) - ref.astype(int)).mean() < 12
    # 1-bit
    bw, _, _ = load_image(str(_save(rgb.convert("1"), tmp_path / "bw.png")), 64)
    assert set(np.unique(bw)) <= set(range(256)) and bw.shape == (64, 64, 3)


def test_alpha_is_composited_over_white(tmp_path):
    im = Image.new("RGBA", (32, 32), (255, 0, 0, 255))
    im.paste((0, 0, 0, 0), (0, 0, 16, 32))  # left half fully transparent (black underneath)
    arr, _, _ = load_image(str(_save(im, tmp_path / "rgba.png")), 32)
    assert (arr[:, :14] == 255).all(), "transparent pixels must become white, not black"
    assert (arr[:, 18:] == [255, 0, 0]).all()
    la = Image.new("LA", (32, 32), (0, 0))
    arr, _, _ = load_image(str(_save(la, tmp_path / "la.png")), 32)
    assert (arr == 255).all()
    p = Image.new("P", (32, 32), 0)
    p.putpalette([0, 0, 0, 0, 255, 0] + [0] * 762)
    p.paste(1, (16, 0, 32, 32))
    p.info["transparency"] = 0
    arr, _, _ = load_image(str(_save(p, tmp_path / "ptrans.png", transparency=0)), 32)
    assert (arr[:, :14] == 255).all() and (arr[:, 18:] == [0, 255, 0]).all()


def test_16_bit_images_are_scaled_not_clipped(tmp_path):
    ramp = (np.linspace(0, 65535, 64)[None, :].repeat(8, 0)).astype(np.uint16)
    im = Image.fromarray(ramp)  # mode I;16
    path = _save(im, tmp_path / "deep.png")
    assert Image.open(path).mode in ("I;16", "I")
    arr, w, h = load_image(str(path), 64)
    row = arr[4, :, 0].astype(int)
    assert row[0] <= 2 and row[-1] >= 253, row
    assert (np.diff(row) >= 0).all() and len(np.unique(row)) > 30, "a ramp, not a clipped step"
    # 16-bit TIFF too
    arr2, _, _ = load_image(str(_save(im, tmp_path / "deep.tif")), 64)
    assert np.abs(arr2.astype(int) - arr.astype(int)).max() <= 1


def test_exif_orientation_is_applied(tmp_path):
    base = Image.open(PHOTO).convert("RGB").resize((80, 40))
    upright = base.transpose(Image.Transpose.ROTATE_270)  # what a viewer shows for orientation 6
    exif = Image.Exif()
    exif[0x0112] = 6
    tagged = _save(base, tmp_path / "tagged.png", exif=exif.tobytes())
    plain = _save(upright, tmp_path / "upright.png")
    a, w, h = load_image(str(tagged), 48)
    b, w2, h2 = load_image(str(plain), 48)
    assert (w, h) == (40, 80) == (w2, h2)
    assert np.array_equal(a, b)


def test_large_jpeg_draft_decoding_is_close_to_full_decode(tmp_path):
    big = Image.open(PHOTO).convert("RGB").resize((1600, 1200), Image.BICUBIC)
    path = _save(big, tmp_path / "big.jpg", quality=95)
    arr, w, h = load_image(str(path), 224)
    full = np.asarray(big.resize((224, 224), Image.BICUBIC))
    assert (w, h) == (1600, 1200)
    assert np.abs(arr.astype(int) - full.astype(int)).mean() < 6


def test_unicode_and_spaces_in_names(tmp_path):
    path = tmp_path / "été chien 狗 photo.jpg"
    path.write_bytes(PHOTO.read_bytes())
    arr, _, _ = load_image(str(path), 32)
    assert arr.shape == (32, 32, 3)


def test_fifo_is_refused_without_blocking(tmp_path):
    import os

    fifo = tmp_path / "pipe.jpg"
    os.mkfifo(fifo)
    with pytest.raises(ImageError, match="not a regular file"):
        load_image(str(fifo), 32)


def test_animated_gif_uses_first_frame(tmp_path):
    frames = [Image.new("RGB", (16, 16), c) for c in ((255, 0, 0), (0, 0, 255))]
    path = tmp_path / "anim.gif"
    frames[0].save(path, save_all=True, append_images=frames[1:], duration=100, loop=0)
    arr, _, _ = load_image(str(path), 16)
    assert arr[8, 8, 0] > 200 and arr[8, 8, 2] < 50

