"""``smcli finalize`` and ``smcli partition-pairs``: the steps around sharded runs."""

from __future__ import annotations

import typer

from smcli.cli.app import app


@app.command("finalize")
def finalize_cmd(
    directory: str = typer.Argument(..., metavar="DIR", help="The -o DIR/ of a sharded run."),
) -> None:
    """Check a directory of shard parts and write its _manifest.json: all N parts present,
    one input list and one producer, image_id (or input_row) unique across parts; leftovers
    of killed shards are swept. Other commands read DIR only once it is finalized.

    Example: smcli finalize feats/
    """
    from smcli.distributed.manifest import finalize, summary_line
    from smcli.report import say

    say("finalize", summary_line(finalize(directory)))
