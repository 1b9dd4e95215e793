"""Reading the text written in one image: words, their boxes and the grid cells they cover.

The engine is RapidOCR (``rapidocr-onnxruntime``, the optional extra ``smcli[ocr]``): the
PP-OCRv4 text detector, an angle classifier and the PP-OCRv4 recogniser as ONNX models that
ship inside the wheel, so nothing is downloaded at run time. The detector runs on every
image; the classifier and the recogniser only on the text lines it found, so an image with
no text costs the detector alone.

The recogniser reads lines; the words of a line are its runs of non-space characters, each
with the union of its characters' boxes (the engine's per-character boxes, mapped back
through the crop's rotation). Boxes are in the original image's pixel coordinates (the
EXIF-oriented size that extract-regions records as width and height). Each word also lists
the cells of the regions grid it overlaps: extract-regions resizes every image to a square,
so cell (r, c) of a gh x gw grid covers x in [c W/gw, (c+1) W/gw) and y in
[r H/gh, (r+1) H/gh) of the original image; cells are numbered row-major (r * gw + c), the
order of the regions column.

Only numpy and the engine are imported here: this runs in the worker processes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from smcli.errors import SmcliError

ENGINE = "rapidocr-onnxruntime"
INSTALL_HINT = "pip install 'smcli[ocr]' (the rapidocr-onnxruntime package, whose wheel ships its ONNX models)"
DEFAULT_DETECTOR_SIDE = 480  # the detector sees the image's shorter side at this many pixels
DEFAULT_MIN_CONFIDENCE = 0.5  # lines the recogniser is less sure of are dropped (the engine's default)


class MissingEngine(SmcliError):
    """The optional OCR package is not installed."""


@dataclass
class Word:
    """One word read in an image."""

    text: str
    confidence: float  # the mean of its characters' recognition confidences, 0 to 1
    box: tuple[float, float, float, float]  # x0, y0, x1, y1 in original pixels
    quad: tuple[float, ...]  # 4 corners (x, y) clockwise from the top left of its text line's direction
    line: int  # which line of the image it was read in (0-based, top to bottom)
    cells: list[int]  # row-major cells of the regions grid it overlaps


def engine_version() -> str:
    """The installed engine's version (recorded in the output's metadata)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(ENGINE)
    except PackageNotFoundError:
        raise MissingEngine(f"reading text needs the optional OCR engine: {INSTALL_HINT}") from None


def check_engine() -> str:
    """Fail with one line, before any work, when the engine cannot be imported."""
    v = engine_version()
    try:
        import rapidocr_onnxruntime  # noqa: F401
    except ImportError as exc:  # installed but broken (e.g. a missing system library of OpenCV)
        raise MissingEngine(f"the OCR engine {ENGINE} {v} does not load: {exc}") from None
    return v


def grid_cells(box: tuple[float, float, float, float], width: int, height: int,
               grid: tuple[int, int]) -> list[int]:
    """Row-major cells of a ``grid`` (rows, cols) over a width x height image that the box
    (x0, y0, x1, y1) overlaps (touching an edge does not count)."""
    gh, gw = grid
    x0, y0, x1, y1 = box
    cw, ch = width / gw, height / gh
    c0 = int(np.clip(np.floor(x0 / cw), 0, gw - 1))
    c1 = int(np.clip(np.ceil(x1 / cw) - 1, c0, gw - 1))
    r0 = int(np.clip(np.floor(y0 / ch), 0, gh - 1))
    r1 = int(np.clip(np.ceil(y1 / ch) - 1, r0, gh - 1))
    return [r * gw + c for r in range(r0, r1 + 1) for c in range(c0, c1 + 1)]


def words_of_line(pieces: list[str], piece_quads: list, piece_confs: list, line: int, scale: float,
                  width: int, height: int, grid: tuple[int, int]) -> list[Word]:
    """The words of one recognised line from the engine's pieces (characters, or words, each
    with a quad in the decoded array's pixels and a confidence): runs of pieces between
    spaces, each with the union of their quads; ``scale`` maps them to the original image."""
    words: list[Word] = []
    run: list[tuple[str, Any, float]] = []

    def close() -> None:
        if not run:
            return
        quads = np.asarray([q for _, q, _ in run], np.float64).reshape(-1, 4, 2) * scale
        xs, ys = quads[..., 0], quads[..., 1]
        box = (float(xs.min()), float(ys.min()), float(xs.max()), float(ys.max()))
        first, last = quads[0], quads[-1]
        quad = tuple(float(v) for v in np.stack([first[0], last[1], last[2], first[3]]).reshape(-1))
        words.append(Word("".join(t for t, _, _ in run), float(np.mean([c for _, _, c in run])), box, quad,
                          line, grid_cells(box, width, height, grid)))
        run.clear()

    for piece, quad, conf in zip(pieces, piece_quads, piece_confs):
        parts = str(piece).split(" ")
        for k, part in enumerate(parts):
            if k:
                close()  # a space inside or around the piece ends the word
            if part.strip():
                run.append((part.strip(), quad, float(conf)))
    close()
    return words


def _line_words(text: str, quad, conf: float, line: int, scale: float, width: int, height: int,
                grid: tuple[int, int]) -> list[Word]:
    """Words of a line without per-character boxes: the line's box shared by its words."""
    q = np.asarray(quad, np.float64).reshape(4, 2) * scale
    box = (float(q[:, 0].min()), float(q[:, 1].min()), float(q[:, 0].max()), float(q[:, 1].max()))
    cells = grid_cells(box, width, height, grid)
    return [Word(t, float(conf), box, tuple(float(v) for v in q.reshape(-1)), line, list(cells))
            for t in text.split()]


class TextReader:
    """The OCR engine, loaded once per process; :meth:`read` gives the words of an image."""

    def __init__(self, detector_side: int = DEFAULT_DETECTOR_SIDE,
                 min_confidence: float = DEFAULT_MIN_CONFIDENCE, threads: int = 1):
        check_engine()
        import logging

        from rapidocr_onnxruntime import RapidOCR

        logging.getLogger("RapidOCR").setLevel(logging.ERROR)
        self.min_confidence = min_confidence
        self.engine = RapidOCR(intra_op_num_threads=threads, inter_op_num_threads=1,
                               text_score=min_confidence)
        # The detector resizes the image so that its shorter side is this long ("min"),
        # upsampling small photos: text a few pixels high is found only that way.
        self.engine.text_det.limit_side_len = int(detector_side)
        self.engine.text_det.limit_type = "min"

    def read(self, rgb: np.ndarray, width: int, height: int, grid: tuple[int, int]) -> list[Word]:
        """Words in an (h, w, 3) uint8 RGB array decoded from a width x height image."""
        scale = width / rgb.shape[1]
        result, _ = self.engine(np.ascontiguousarray(rgb[:, :, ::-1]), return_word_box=True,
                                text_score=self.min_confidence)
        words: list[Word] = []
        for line, entry in enumerate(result or []):
            quad, text, conf = entry[0], str(entry[1]), float(entry[2])
            found: list[Word] = []
            if len(entry) >= 6 and entry[3] and len(entry[3]) == len(entry[4]) == len(entry[5]):
                found = words_of_line(entry[4], entry[3], entry[5], line, scale, width, height, grid)
            if not found and text.strip():
                found = _line_words(text, quad, conf, line, scale, width, height, grid)
            words.extend(found)
        return words


def word_records(words: list[Word]) -> list[dict[str, Any]]:
    """Words as the Arrow structs of the text file's ``words`` column."""
    return [{"text": w.text, "confidence": w.confidence, "box": list(w.box), "quad": list(w.quad),
             "line": w.line, "cells": w.cells} for w in words]
