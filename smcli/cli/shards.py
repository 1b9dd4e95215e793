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


@app.command("partition-pairs")
def partition_pairs_cmd(
    pairs: str = typer.Argument(..., metavar="PAIRS", help="Parquet/CSV of image_id with caption_id or caption text."),
    regions: str = typer.Option(..., "--regions", help="A finalized directory of feature parts."),
    output: str = typer.Option(..., "-o", "--output", help="Directory for the pairs parts (DIR/)."),
) -> None:
    """Split a pairs file, in one streaming pass, by the feature part that holds each pair's
    image, so that score --shard I/N reads one pairs part and one feature part. Rows keep
    input_row (their row in PAIRS); then: smcli score --shard I/N --pairs DIR/ --regions FEATS/ -o SCORES/

    Example: smcli partition-pairs pairs.parquet --regions feats/ -o pairs/
    """
    from smcli.distributed.partition import partition_pairs

    partition_pairs(pairs, regions, output)
