"""``smcli extract-regions``: images -> region grids and global features."""

from __future__ import annotations

import typer

from smcli.cli.app import app, not_implemented

_ANY_ARGS = {"allow_extra_args": True, "ignore_unknown_options": True}


@app.command("extract-regions", context_settings=_ANY_ARGS)
def extract_regions_cmd(ctx: typer.Context) -> None:
    """Images -> one row per image: a grid of region features and a global feature
    (ImageNet-pretrained CNN). Reads directories, image files, @list.txt or '-' (paths on
    stdin); writes a regions Parquet file."""
    not_implemented("extract-regions")
