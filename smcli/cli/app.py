"""The typer application object and options shared by several commands."""

from __future__ import annotations

import errno

import typer
from typer.core import TyperGroup

from smcli._version import __version__


class StdoutClosed(Exception):
    """The reader of stdout went away (``smcli ... | head``); not an OSError, so that typer
    does not turn it into exit 1, the code of bad input."""


def _pipe_closed(exc: OSError) -> bool:
    return isinstance(exc, BrokenPipeError) or exc.errno == errno.EPIPE


class _Group(TyperGroup):
    def parse_args(self, ctx, args):  # smcli --help / --version print here
        try:
            return super().parse_args(ctx, args)
        except OSError as exc:
            if _pipe_closed(exc):
                raise StdoutClosed() from None
            raise

    def invoke(self, ctx):  # the commands (and their --help)
        try:
            return super().invoke(ctx)
        except OSError as exc:
            if _pipe_closed(exc):
                raise StdoutClosed() from None
            raise


app = typer.Typer(
    cls=_Group,
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
SHARD_HELP = ("Run shard I/N only (0-based): rows [floor(I*n/N), floor((I+1)*n/N)) of the frozen input list, "
              "into -o DIR/part-I-of-N.parquet; then smcli finalize DIR. See docs/scale-out.md.")
SHARDS_HELP = "Run all N shards with the built-in driver (--distributor), only those without a part, then finalize."
DISTRIBUTOR_HELP = "With --shards: local (subprocesses on this machine) or ray (one Ray task per shard; smcli[ray])."
RAY_ADDRESS_HELP = "With --distributor ray: the cluster to join (auto: this machine's); default: start a local one."
RETRY_HELP = "With --shards: tries per shard before the run fails (rerun the same command to continue)."
