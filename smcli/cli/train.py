"""``smcli train``: the sm-LSTM matcher, its ablations and one-to-one baselines."""

from __future__ import annotations

import typer

from smcli.cli.app import app, not_implemented

_ANY_ARGS = {"allow_extra_args": True, "ignore_unknown_options": True}


@app.command("train", context_settings=_ANY_ARGS)
def train_cmd(ctx: typer.Context) -> None:
    """Train a matcher: reads regions and captions Parquet files, writes a model directory
    (config.json, safetensors weights, vocabulary, metrics log)."""
    not_implemented("train")
