"""``smcli read-text``: images -> the words written in them (OCR), joinable by image_id."""

from __future__ import annotations

from pathlib import Path

import typer

from smcli.cli.app import ERRORS_HELP, OUTPUT_HELP, STRICT_HELP, app


@app.command("read-text")
def read_text_cmd(
    inputs: list[str] = typer.Argument(
        ..., metavar="INPUT...",
        help="Directories (searched recursively), image files, @list.txt (one path a line), "
             "a Parquet/CSV/TSV with a path column, or '-' for paths on stdin.",
    ),
    output: str | None = typer.Option(None, "-o", "--output", help=OUTPUT_HELP),
    grid: str = typer.Option(
        "7x7", "--grid",
        help="Regions grid whose cells each word lists: ROWSxCOLS as in the regions file "
             "(7x7: extract-regions' default at 224; 14x14 at 448)."),
    detector_side: int = typer.Option(
        480, "--detector-side", min=32,
        help="The text detector sees the image's shorter side at least this long (small photos "
             "are upsampled: small text is found only that way; larger costs more)."),
    min_confidence: float = typer.Option(
        0.5, "--min-confidence", help="Drop text lines the recogniser reads with less confidence (0 to 1)."),
    max_side: int = typer.Option(
        1280, "--max-side", min=32, help="Larger images are decoded with their longer side this long."),
    batch_size: int = typer.Option(4, "--batch-size", min=1, help="Images a worker reads per task."),
    workers: int | None = typer.Option(
        None, "--workers", min=0,
        help="Worker processes, each running the OCR engine on one thread (default: one per core, "
             "at most 8). 0: everything in this process, on all cores."),
    root: str | None = typer.Option(
        None, "--root", help="Relative paths from lists, tables and stdin are relative to this "
                             "directory (default: the current one); image_id is relative to it."),
    path_column: str | None = typer.Option(None, "--path-column", help="Path column of a Parquet/CSV input."),
    max_pixels: int = typer.Option(
        89_478_485, "--max-pixels", min=1, help="Refuse images with more pixels than this (decompression bombs)."),
    resume: bool = typer.Option(
        False, "--resume",
        help="Continue an interrupted run of the same -o FILE without reading finished images again."),
    progress: bool | None = typer.Option(
        None, "--progress/--no-progress", help="Progress bar on stderr (default: only when stderr is a terminal)."),
    errors: Path | None = typer.Option(None, "--errors", help=ERRORS_HELP),
    strict: bool = typer.Option(False, "--strict", help=STRICT_HELP),
) -> None:
    """Images -> one row per image with the words written in it (signs, jerseys, banners):
    text, and per word its confidence, box in original pixels, line and the regions-grid
    cells it covers. Writes an image-text Parquet file (image_id, path, width, height, text,
    words) for retrieve --image-text. Needs the optional OCR engine: pip install 'smcli[ocr]'.

    Bad images are reported with their reason and counted; the run goes on unless --strict.

    Example: smcli read-text photos/ -o text.parquet
    """
    from smcli.images.read_text import read_text

    read_text(inputs, output, root=root, path_column=path_column, errors=errors, strict=strict,
              grid=grid, detector_side=detector_side, min_confidence=min_confidence, max_side=max_side,
              batch_size=batch_size, workers=workers, max_pixels=max_pixels, resume=resume, progress=progress)
