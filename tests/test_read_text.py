"""read-text end to end: known words read from generated images, boxes in original pixels,
grid cells, bad inputs and counts, resume after kill -9."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from conftest import assert_one_line_error, journal_rows, run_main
from PIL import Image, ImageDraw, ImageFont

pytest.importorskip("rapidocr_onnxruntime", reason="the OCR engine (pip install 'smcli[ocr]') is not installed")

FONT = Path("/usr/share/fonts/truetype/dejavu/DejaVuSans-Bold.ttf")


def font(size: int):
    """DejaVu where Debian's fonts-dejavu-core is installed, else Pillow's own TrueType font."""
    return ImageFont.truetype(str(FONT), size) if FONT.is_file() else ImageFont.load_default(size)


def text_image(path: Path, size: tuple[int, int], words: list[tuple[str, tuple[int, int], int]],
               background=(235, 225, 200)) -> list[tuple[int, int, int, int]]:
    """An image with ``words`` (text, top-left, font size) in dark ink; their drawn boxes."""
    img = Image.new("RGB", size, background)
    d = ImageDraw.Draw(img)
    boxes = []
    for text, xy, px in words:
        f = font(px)
        d.text(xy, text, font=f, fill=(20, 30, 60))
        boxes.append(d.textbbox(xy, text, font=f))
    img.save(path, quality=92)
    return boxes


def counts_line(stderr: str) -> dict[str, int]:
    last = stderr.strip().splitlines()[-1]
    assert last.startswith("smcli read-text: listed"), stderr
    parts = last.split(": ", 1)[1].split(", ")
    return {p.rsplit(" ", 1)[0]: int(p.rsplit(" ", 1)[1].replace(",", "")) for p in parts}


def iou(a, b) -> float:
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)


def by_id(path: Path) -> dict[str, dict]:
    return {r["image_id"]: r for r in pq.read_table(path).to_pylist()}


def test_known_words_are_read_with_boxes_in_original_pixels_and_grid_cells(tmp_path):
    from smcli.images.ocr import grid_cells

    d = tmp_path / "imgs"
    d.mkdir()
    # a wide photo-sized image, decoded at half size (--max-side 400): boxes must come back x2
    drawn = text_image(d / "sign.jpg", (800, 500), [("LONDON", (130, 80), 48), ("bakery", (420, 330), 56)])
    Image.new("RGB", (300, 200), (90, 140, 60)).save(d / "plain.png")  # no text at all
    (d / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    out = tmp_path / "text.parquet"
    rc, _, err = run_main("read-text", d, "-o", out, "--max-side", "400", "--grid", "7x7", "--workers", "1")
    assert rc == 0, err
    assert counts_line(err) == {"listed": 3, "duplicates": 0, "processed": 3, "written": 2, "failed": 1}
    assert "broken.jpg" in err
    rows = by_id(out)
    sign, plain = rows["sign.jpg"], rows["plain.png"]
    assert (sign["width"], sign["height"]) == (800, 500)
    assert plain["words"] == [] and plain["text"] == ""
    words = {w["text"].lower(): w for w in sign["words"]}
    assert set(words) == {"london", "bakery"}, sign["words"]
    assert sign["text"].lower().split() == ["london", "bakery"]  # top line first
    for (text, _, _), box in zip([("london", 0, 0), ("bakery", 0, 0)], drawn):
        w = words[text]
        assert w["confidence"] > 0.8
        assert iou(w["box"], box) > 0.5, (text, w["box"], box)  # original pixels, not the decoded 400 px
        assert w["cells"] == grid_cells(tuple(w["box"]), 800, 500, (7, 7))
    # LONDON spans x 130..~360 of 800 (cells 114 px wide) and y ~89..~126 of 500 (71 px high): row 1, columns 1-3
    assert words["london"]["cells"] == [8, 9, 10]
    meta = pq.read_schema(out).metadata
    assert b"image-text" in meta[b"smcli"] and b"rapidocr-onnxruntime" in meta[b"smcli"]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")], "no journal or temporary left"


def test_grid_cells_match_the_square_regions_grid():
    from smcli.images.ocr import grid_cells

    # 700 x 350 image, 7x7 grid: cells are 100 x 50 pixels of the original
    assert grid_cells((0, 0, 100, 50), 700, 350, (7, 7)) == [0]  # touching an edge does not count
    assert grid_cells((150, 60, 310, 90), 700, 350, (7, 7)) == [8, 9, 10]
    assert grid_cells((690, 340, 700, 350), 700, 350, (7, 7)) == [48]
    assert grid_cells((0, 0, 700, 350), 700, 350, (2, 3)) == [0, 1, 2, 3, 4, 5]


def test_bad_arguments_and_a_missing_engine_are_one_line(tmp_path, monkeypatch):
    d = tmp_path / "imgs"
    d.mkdir()
    text_image(d / "a.png", (200, 100), [("HI", (10, 10), 30)])
    out = tmp_path / "t.parquet"
    assert_one_line_error(*run_main("read-text", d, "-o", out, "--grid", "7by7")[::2], "--grid")
    assert_one_line_error(*run_main("read-text", d, "-o", out, "--min-confidence", "1.5")[::2], "--min-confidence")
    assert_one_line_error(*run_main("read-text", d, "--resume")[::2], "--resume")
    assert_one_line_error(*run_main("read-text", tmp_path / "nothing-here", "-o", out)[::2], "nothing-here")
    assert_one_line_error(*run_main("read-text", d, "-o", d / "a.png")[::2], "is the input")
    assert not out.exists()

    import importlib.metadata

    def missing(name):
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(importlib.metadata, "version", missing)
    rc, _, err = run_main("read-text", d, "-o", out)
    assert_one_line_error(rc, err, "smcli[ocr]")
    assert not out.exists()


def test_resume_after_kill_equals_an_uninterrupted_run(tmp_path):
    d = tmp_path / "imgs"
    d.mkdir()
    signs = ["HOTEL", "TAXI", "PIZZA", "BANK", "PARK", "CAFE", "MUSEUM"]
    for k in range(14):
        text_image(d / f"img{k:02d}.png", (160, 90), [(signs[k // 2], (10, 20), 28)] if k % 2 == 0 else [])
    (d / "zz-bad.jpg").write_text("text")
    args = ["read-text", d, "--workers", "1", "--batch-size", "1"]
    full = tmp_path / "full.parquet"
    rc, _, err = run_main(*args, "-o", full)
    assert rc == 0, err

    out = tmp_path / "text.parquet"
    journal = tmp_path / ".text.parquet.resume"
    proc = subprocess.Popen([sys.executable, "-m", "smcli", *map(str, args), "-o", str(out)],
                            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            env=dict(os.environ, PYTHONUNBUFFERED="1"))
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None and journal_rows(journal) < 4:
        time.sleep(0.01)
    assert proc.poll() is None, "the run finished before it could be interrupted"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not out.exists()
    done = journal_rows(journal)
    assert 4 <= done < 14
    rc, _, err = run_main(*args, "-o", out, "--resume", "--detector-side", "320")
    assert_one_line_error(rc, err, "--resume", "other settings", "detector_side")
    assert journal_rows(journal) == done, "a refused resume keeps the journal"

    rc, _, err = run_main(*args, "-o", out, "--resume")
    assert rc == 0, err
    assert f"resuming: {done} image(s) done by the interrupted run" in err
    c = counts_line(err)
    assert c["resumed"] == done and c["processed"] == 15 - done and c["written"] == 14 and c["failed"] == 1
    assert pq.read_table(out).equals(pq.read_table(full))
    assert not journal.exists()
    words = {r["image_id"]: r["text"] for r in pq.read_table(out).to_pylist()}
    assert words["img00.png"] == "HOTEL" and words["img01.png"] == ""


def _processes_naming(text: str) -> list[int]:
    found = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                if text in (proc / "cmdline").read_bytes().decode("utf-8", "replace"):
                    found.append(int(proc.name))
            except OSError:
                pass
    return found


@pytest.mark.parametrize("how", ["SIGTERM", "SIGKILL"])
def test_a_stopped_run_leaves_no_worker_behind(tmp_path, how):
    d = tmp_path / "imgs"
    d.mkdir()
    for k in range(16):
        text_image(d / f"img{k:02d}.png", (160, 90), [("STOP", (10, 20), 28)])
    out = tmp_path / f"stopped-{how}.parquet"
    proc = subprocess.Popen([sys.executable, "-m", "smcli", "read-text", str(d), "--workers", "2", "--batch-size", "1",
                             "-o", str(out)], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, env=dict(os.environ, PYTHONUNBUFFERED="1"))
    journal = tmp_path / f".{out.name}.resume"
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None and journal_rows(journal) < 2:
        time.sleep(0.01)
    assert proc.poll() is None, "the run finished before it could be stopped"
    proc.send_signal(getattr(signal, how))
    rc = proc.wait(timeout=60)
    err = proc.stderr.read().decode()
    if how == "SIGTERM":
        assert rc == 143 and "smcli: terminated" in err and "--resume" in err, err
    deadline = time.time() + 10  # workers notice a killed parent within a second
    while time.time() < deadline and _processes_naming(str(out)):
        time.sleep(0.2)
    assert _processes_naming(str(out)) == [], "worker processes outlived the run"
    assert not out.exists() and journal_rows(journal) >= 2
