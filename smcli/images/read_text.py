"""The read-text stage: images -> the words written in them, one row per image, streamed.

Listing, bad images, counts and resume are extract-regions' own (:mod:`smcli.images.sources`,
:func:`smcli.images.decode.load_image_native`, :class:`smcli.report.RunReport`,
:class:`smcli.images.journal.Journal`): every listed image ends up in the output (an image
without text is a row with no words) or in the error report, and ``--resume`` continues a
killed run from its journal without reading the finished images again.

Worker processes (``workers``, default one per core) each load the OCR engine once, on one
thread, decode their batch at the image's own aspect ratio and read it
(:class:`smcli.images.ocr.TextReader`); this process writes the rows in input order. At most
a few batches per worker are in flight, so memory stays flat whatever the number of images.

The output (kind ``image-text``) joins the regions file on image_id: image_id, path,
width, height, ``text`` (the lines read, top to bottom, one a line) and ``words``: a list
of {text, confidence, box [x0, y0, x1, y1] in original pixels, quad (4 corners), line,
cells (row-major cells of the regions grid it overlaps)}.
"""

from __future__ import annotations

import collections
import dataclasses
import os
import signal
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa

from smcli.errors import InputError, UsageError
from smcli.images.decode import DEFAULT_MAX_PIXELS, ImageError, load_image_native
from smcli.images.journal import Journal
from smcli.images.ocr import DEFAULT_DETECTOR_SIDE, DEFAULT_MIN_CONFIDENCE, ENGINE
from smcli.images.sources import ImageItem
from smcli.report import Progress, RunReport, say, warn
from smcli.stage import OutputTarget, StageWriter, new_meta

COMMAND = "read-text"
KIND = "image-text"
DEFAULT_GRID = (7, 7)  # extract-regions' default grid (EfficientNet-Lite0 at 224)
DEFAULT_MAX_SIDE = 1280  # images are decoded with their longer side at most this long
MAX_WORKERS = 8


@dataclass
class ReadTextOptions:
    detector_side: int = DEFAULT_DETECTOR_SIDE
    min_confidence: float = DEFAULT_MIN_CONFIDENCE
    max_side: int = DEFAULT_MAX_SIDE
    grid: tuple[int, int] = DEFAULT_GRID
    batch_size: int = 4
    workers: int | None = None  # None: one per core (at most 8); 0: in this process
    max_pixels: int = DEFAULT_MAX_PIXELS
    resume: bool = False
    progress: bool | None = None  # None: when stderr is a terminal


WORD_TYPE = pa.struct([
    ("text", pa.string()),
    ("confidence", pa.float32()),
    ("box", pa.list_(pa.float32(), 4)),
    ("quad", pa.list_(pa.float32(), 8)),
    ("line", pa.int32()),
    ("cells", pa.list_(pa.int32())),
])


def text_schema() -> pa.Schema:
    return pa.schema([
        ("image_id", pa.string()),
        ("path", pa.string()),
        ("width", pa.int32()),
        ("height", pa.int32()),
        ("text", pa.string()),
        ("words", pa.list_(WORD_TYPE)),
    ])


def parse_grid(value: str | tuple[int, int]) -> tuple[int, int]:
    """``7x7`` (rows x cols), ``7`` (square) or a pair -> (rows, cols)."""
    if isinstance(value, tuple):
        rows, cols = value
    else:
        parts = str(value).lower().replace(" ", "").split("x")
        try:
            nums = [int(p) for p in parts]
        except ValueError:
            nums = []
        if len(nums) not in (1, 2):
            raise UsageError(f"--grid {value}: give ROWSxCOLS, e.g. 7x7 (extract-regions at 224) or 14x14 (at 448)")
        rows, cols = nums[0], nums[-1]
    if not (1 <= rows <= 256 and 1 <= cols <= 256):
        raise UsageError(f"--grid {value}: rows and columns must be 1 to 256")
    return int(rows), int(cols)


def _check_options(opts: ReadTextOptions) -> None:
    opts.grid = parse_grid(opts.grid)
    if not 32 <= opts.detector_side <= 4096:
        raise UsageError(f"--detector-side {opts.detector_side}: must be 32 to 4096 pixels")
    if not 0 <= opts.min_confidence < 1:
        raise UsageError(f"--min-confidence {opts.min_confidence}: must be at least 0 and below 1")
    if opts.max_side < 32:
        raise UsageError(f"--max-side {opts.max_side}: must be at least 32 pixels")
    if opts.batch_size < 1:
        raise UsageError(f"--batch-size {opts.batch_size}: must be at least 1")
    if opts.workers is not None and opts.workers < 0:
        raise UsageError(f"--workers {opts.workers}: must be 0 (read in this process) or more")
    if opts.max_pixels < 1:
        raise UsageError(f"--max-pixels {opts.max_pixels}: must be positive")


def producer(opts: ReadTextOptions, engine_version: str) -> dict[str, Any]:
    """The metadata producer dict of a text file: what decides the words read."""
    return {
        "command": COMMAND,
        "engine": ENGINE,
        "engine_version": engine_version,
        "models": "PP-OCRv4 det + rec (ch, ONNX), ppocr mobile v2.0 angle classifier (shipped in the wheel)",
        "detector_side": int(opts.detector_side),
        "min_confidence": float(opts.min_confidence),
        "max_side": int(opts.max_side),
        "grid": [int(opts.grid[0]), int(opts.grid[1])],
        "coordinates": "box x0, y0, x1, y1 and quad in original (EXIF-oriented) pixels",
        "cells": "row-major over the regions grid of the image resized to a square, as extract-regions does",
    }


def default_workers() -> int:
    from smcli.runtime import cpu_cores

    return max(1, min(MAX_WORKERS, cpu_cores()))


# ---------------------------------------------------------------------------------------
# Reading (in worker processes)

_reader = None  # this process's TextReader
_reader_error: str | None = None


def _start_worker(detector_side: int, min_confidence: float, parent: int) -> None:
    """Pool initializer: ignore Ctrl-C (the parent handles it), die at once on SIGTERM (the
    pool's terminate; not the CLI's handler inherited through fork, which would raise in
    the middle of the pool's own locks and hang), die with the parent, load the engine once.
    A failure is kept and reported by every task, never raised here (a raising initializer
    makes the pool respawn workers forever)."""
    global _reader, _reader_error
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(0.5)
        os._exit(0)  # the parent was killed: no orphan keeps reading

    threading.Thread(target=watch, daemon=True).start()
    try:
        _reader = _make_reader(detector_side, min_confidence, threads=1)
    except Exception as exc:  # noqa: BLE001 - reported by the tasks
        _reader_error = f"{type(exc).__name__}: {exc}"


def _make_reader(detector_side: int, min_confidence: float, threads: int):
    from smcli.images.ocr import TextReader

    return TextReader(detector_side, min_confidence, threads=threads)


def _read_batch(batch: list[tuple[int, str]], max_side: int, max_pixels: int,
                grid: tuple[int, int], reader=None) -> list[tuple[int, int, int, list | None, str | None]]:
    """(position, width, height, word records or None, reason or None) for each image."""
    from smcli.images.ocr import word_records

    reader = reader or _reader
    if reader is None:
        raise RuntimeError(f"the OCR engine did not load in a worker: {_reader_error}")
    out = []
    for pos, path in batch:
        try:
            arr, w, h = load_image_native(path, max_side, max_pixels)
        except ImageError as exc:
            out.append((pos, 0, 0, None, str(exc)))
            continue
        except Exception as exc:  # noqa: BLE001 - one odd file must not end the run
            out.append((pos, 0, 0, None, f"unexpected error while decoding: {type(exc).__name__}: {exc}"))
            continue
        try:
            words = word_records(reader.read(arr, w, h, grid))
        except Exception as exc:  # noqa: BLE001 - the engine failing on one image
            out.append((pos, 0, 0, None, f"the OCR engine failed on it: {type(exc).__name__}: {exc}"))
            continue
        out.append((pos, w, h, words, None))
    return out


def _results(todo: Sequence[ImageItem], opts: ReadTextOptions, workers: int):
    """Yield each batch's results in input order, read by ``workers`` processes."""
    batches = [[(i, todo[i].path) for i in range(s, min(len(todo), s + opts.batch_size))]
               for s in range(0, len(todo), opts.batch_size)]
    args = (opts.max_side, opts.max_pixels, opts.grid)
    if workers == 0:
        from smcli.runtime import cpu_cores

        reader = _make_reader(opts.detector_side, opts.min_confidence, threads=cpu_cores())
        for b in batches:
            yield _read_batch(b, *args, reader=reader)
        return
    import multiprocessing as mp

    ctx = mp.get_context("fork" if sys.platform.startswith("linux") else "spawn")
    pool = ctx.Pool(workers, initializer=_start_worker,
                    initargs=(opts.detector_side, opts.min_confidence, os.getpid()))
    try:
        window: collections.deque = collections.deque()
        pending = iter(batches)
        for b in pending:  # a few batches per worker in flight: memory stays flat
            window.append(pool.apply_async(_read_batch, (b, *args)))
            if len(window) >= 3 * workers:
                break
        while window:
            try:
                got = window.popleft().get()
            except RuntimeError as exc:
                from smcli.images.ocr import MissingEngine

                raise MissingEngine(str(exc)) from None
            nxt = next(pending, None)
            if nxt is not None:
                window.append(pool.apply_async(_read_batch, (nxt, *args)))
            yield got
        pool.close()  # every batch is done: the workers exit on their own
        pool.join()
    except BaseException:
        pool.terminate()
        pool.join()
        raise


def _lines_text(words: list[dict[str, Any]]) -> str:
    lines: dict[int, list[str]] = {}
    for w in words:
        lines.setdefault(w["line"], []).append(w["text"])
    return "\n".join(" ".join(lines[k]) for k in sorted(lines))


def _rows(todo: Sequence[ImageItem], got: list, schema: pa.Schema) -> pa.RecordBatch:
    return pa.record_batch([
        pa.array([todo[g[0]].image_id for g in got], pa.string()),
        pa.array([todo[g[0]].path for g in got], pa.string()),
        pa.array([g[1] for g in got], pa.int32()),
        pa.array([g[2] for g in got], pa.int32()),
        pa.array([_lines_text(g[3]) for g in got], pa.string()),
        pa.array([g[3] for g in got], pa.list_(WORD_TYPE)),
    ], schema=schema)


# ---------------------------------------------------------------------------------------
# The run


def run_read_text(items: Sequence[ImageItem], target: OutputTarget, opts: ReadTextOptions,
                  report: RunReport) -> dict[str, int]:
    """Read the text of ``items`` into ``target``; returns the counts for the last line."""
    from smcli.images.ocr import check_engine

    _check_options(opts)
    if opts.resume and target.path is None:
        raise UsageError("--resume needs an output file (-o FILE); a stream cannot be resumed")
    version = check_engine()
    meta_producer = producer(opts, version)
    schema = text_schema()
    workers = default_workers() if opts.workers is None else opts.workers

    journal: Journal | None = None
    if target.path is not None:
        journal = Journal(target.path)
        journal.lock()
        journal.remove_stale_temporaries()
    done: set[str] = set()
    resumed = 0
    t0 = time.perf_counter()
    try:
        writer = StageWriter(target, schema, new_meta(KIND, meta_producer), row_group_size=4096)
    except BaseException:
        if journal is not None:
            journal.release()
        raise
    counts = {"processed": 0, "failed": 0, "with_text": 0, "words": 0}
    try:
        if journal is not None:
            if journal.exists() and not opts.resume:
                warn(COMMAND, f"discarding the partial results of an interrupted run of {target.path} "
                              "(use --resume to continue it instead)")
                journal.discard()
            if opts.resume:
                if journal.exists():
                    wanted = {it.path for it in items}
                    for batch in journal.read(meta_producer):
                        paths = batch.column(1).to_pylist()
                        keep = [i for i, p in enumerate(paths) if p in wanted and p not in done]
                        if len(keep) != len(paths):
                            batch = batch.take(pa.array(keep, pa.int64()))
                        done.update(paths[i] for i in keep)
                        writer.write(batch)
                    resumed = len(done)
                    say(COMMAND, f"resuming: {resumed:,} image(s) done by the interrupted run, "
                                 f"{len(items) - resumed:,} to go")
                else:
                    say(COMMAND, f"--resume: no interrupted run of {target.path}; starting from the beginning")
            journal.start_segment(schema, meta_producer)
        todo = [it for it in items if it.path not in done] if done else list(items)
        if opts.workers is None and len(todo) < workers * opts.batch_size:
            # a few images: smaller batches, so that every worker (core) gets some
            opts = dataclasses.replace(opts, batch_size=max(1, -(-len(todo) // workers)))
        workers = min(workers, -(-len(todo) // opts.batch_size))
        progress = Progress(COMMAND, len(todo), sys.stderr.isatty() if opts.progress is None else opts.progress)
        try:
            for got in _results(todo, opts, workers):
                good = []
                for result in got:
                    pos, _, _, words, reason = result
                    if words is None:
                        report.reject(todo[pos].path, "", reason)  # raises under --strict
                        counts["failed"] += 1
                    else:
                        good.append(result)
                        counts["with_text"] += bool(words)
                        counts["words"] += len(words)
                if good:
                    batch = _rows(todo, good, schema)
                    writer.write(batch)
                    if journal is not None:
                        journal.append(batch)
                counts["processed"] += len(got)
                progress.advance(len(got))
        finally:
            progress.close()
        writer.close()
    except BaseException as exc:
        writer.abort()
        if journal is not None:
            journal.release()
            if not isinstance(exc, UsageError) and journal.exists() and (journal.appended or resumed):
                say(COMMAND, f"partial results kept in {journal.dir}; rerun with --resume to continue")
        raise
    if journal is not None:
        journal.remove()
    elapsed = time.perf_counter() - t0
    n = counts["processed"]
    say(COMMAND, f"{ENGINE} {version}, detector at {opts.detector_side} px: {n:,} image(s) in {elapsed:.1f} s "
                 f"({n / max(elapsed, 1e-9):.1f} images/s), {workers} worker process(es); "
                 f"text in {counts['with_text']:,} image(s), {counts['words']:,} word(s)")
    return {"resumed": resumed, "processed": n, "failed": counts["failed"], "written": writer.rows_written,
            "with_text": counts["with_text"], "words": counts["words"]}


def read_text(inputs: str | os.PathLike | Sequence[str | os.PathLike], output: str | os.PathLike | None,
              *, root: str | None = None, path_column: str | None = None,
              errors: str | os.PathLike | None = None, strict: bool = False, **options: Any) -> dict[str, int]:
    """Images (directories, files, ``@list.txt``, Parquet/CSV tables with a path column,
    ``-`` for stdin) -> an image-text Parquet file at ``output`` (None or ``-``: stdout).

    ``options`` are the fields of :class:`ReadTextOptions`. Bad images are reported
    (``errors``: a file for them) and counted; ``strict`` makes them fatal. Returns the
    counts of the run (also printed on stderr).
    """
    from smcli.images.sources import list_images
    from smcli.stage import check_not_input, resolve_output

    target = resolve_output(None if output is None else str(output))
    unknown = sorted(set(options) - {f.name for f in dataclasses.fields(ReadTextOptions)})
    if unknown:
        raise UsageError(f"unknown read-text option(s): {', '.join(unknown)}")
    opts = ReadTextOptions(**{k: v for k, v in options.items() if v is not None})
    _check_options(opts)  # before listing: a bad option costs nothing
    inputs = [str(inputs)] if isinstance(inputs, str | os.PathLike) else [str(i) for i in inputs]
    report = RunReport(COMMAND, errors_path=None if errors is None else Path(errors), strict=strict)
    listing = list_images(inputs, report, root=root, path_column=path_column, command=COMMAND)
    if listing.listed == 0:
        raise InputError(f"no images found in {' '.join(inputs)} (looked for image extensions "
                         "in directories; lists and tables were empty)")
    named = [*inputs, *(it.path for it in listing.items)]
    check_not_input(target.path, named)
    if errors is not None:
        check_not_input(errors, named, "--errors")
    counts = run_read_text(listing.items, target, opts, report)
    final = {"listed": listing.listed, "duplicates": listing.duplicates}
    if counts["resumed"]:
        final["resumed"] = counts["resumed"]
    final.update(processed=counts["processed"], written=counts["written"], failed=len(report.rejects))
    report.finish(**final)
    return final


# ---------------------------------------------------------------------------------------
# Reading a text file back


@dataclass
class ImageText:
    """The words of an image-text file, flattened: one entry per word, with its image's row."""

    image_ids: list[str]
    paths: list[str]
    width: list[int]
    height: list[int]
    word_image: list[int]  # row of each word's image
    word_text: list[str]
    word_confidence: list[float]
    word_box: list[list[float]]
    word_line: list[int]
    word_cells: list[list[int]]
    meta: dict[str, Any]
    name: str

    def __len__(self) -> int:
        return len(self.image_ids)


def load_image_text(path: str | os.PathLike) -> ImageText:
    """Read an image-text file (from read-text), refusing any other kind in one line."""
    from smcli.stage import open_stage

    stage = open_stage(path, KIND)
    try:
        t = stage.read(["image_id", "path", "width", "height", "words"])
    finally:
        stage.close()
    if t.column("words").type != pa.list_(WORD_TYPE):
        raise InputError(f"{stage.name}: column words is {t.column('words').type}, not a list of words")
    words = t.column("words").combine_chunks()
    flat = words.flatten()
    counts = words.value_lengths().fill_null(0).to_numpy(zero_copy_only=False)
    import numpy as np

    word_image = np.repeat(np.arange(t.num_rows), counts).tolist()
    return ImageText(
        image_ids=t.column("image_id").to_pylist(), paths=t.column("path").to_pylist(),
        width=t.column("width").to_pylist(), height=t.column("height").to_pylist(),
        word_image=word_image,
        word_text=flat.field("text").to_pylist(),
        word_confidence=flat.field("confidence").to_pylist(),
        word_box=flat.field("box").to_pylist(),
        word_line=flat.field("line").to_pylist(),
        word_cells=flat.field("cells").to_pylist(),
        meta=dict(stage.meta.producer), name=stage.name,
    )
