"""``smcli score``, ``retrieve`` and ``caption-rank``: using a trained matcher."""

from __future__ import annotations

import typer

from smcli.cli.app import app, not_implemented

_ANY_ARGS = {"allow_extra_args": True, "ignore_unknown_options": True}


@app.command("score", context_settings=_ANY_ARGS)
def score_cmd(ctx: typer.Context) -> None:
    """Matching scores for image-caption pairs: reads a model, regions and captions; writes
    image_id, caption_id, score."""
    not_implemented("score")


@app.command("retrieve", context_settings=_ANY_ARGS)
def retrieve_cmd(ctx: typer.Context) -> None:
    """Text -> images and image -> texts search, and the recall evaluation (--eval)."""
    not_implemented("retrieve")


@app.command("caption-rank", context_settings=_ANY_ARGS)
def caption_rank_cmd(ctx: typer.Context) -> None:
    """Rank candidate captions for each image: writes image_id, caption_id, rank, score."""
    not_implemented("caption-rank")
