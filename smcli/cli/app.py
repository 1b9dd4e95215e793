"""The typer application object and options shared by several commands."""

from __future__ import annotations

import typer

from smcli._version import __version__

app = typer.Typer(
    name="smcli",
    help=(
        "Image-sentence matching with the selective multimodal LSTM (sm-LSTM). "
        "Each command reads and writes Parquet, so stages chain in shell pipelines:\n\n"
        "smcli extract-regions imgs/ > feats.parquet; smcli tokenize captions.txt > caps.parquet; "
        "smcli train --regions feats.parquet --captions caps.parquet -o model/; "
        "smcli retrieve --query 'a dog on grass'"
    ),
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode="rich",
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"smcli {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(
        False, "--version", callback=_version, is_eager=True, help="Print the version and exit."
    ),
) -> None:
    """sm-LSTM image-sentence matching as Parquet pipeline stages."""


OUTPUT_HELP = "Output file; '-' or omitted in a pipe means stdout. Parquet is never written to a terminal."
STRICT_HELP = "Make any rejected row or file fatal (exit 1) instead of reporting and going on."
ERRORS_HELP = "Write every rejected row (source, location, reason) here (.parquet or .csv)."
