"""``smcli tokenize``: caption files -> tokens, ids and a vocabulary."""

from __future__ import annotations

from pathlib import Path

import typer

from smcli.cli.app import ERRORS_HELP, OUTPUT_HELP, STRICT_HELP, app


@app.command("tokenize")
def tokenize_cmd(
    input: str = typer.Argument(..., help="Caption file, or '-' for stdin."),
    output: str | None = typer.Option(None, "-o", "--output", help=OUTPUT_HELP),
    fmt: str = typer.Option(
        "auto", "--format",
        help="auto | flickr | coco | karpathy | csv | txt | parquet (auto detects from content).",
    ),
    splits: str | None = typer.Option(
        None, "--splits", help="CSV with columns image,split (overrides splits in the input)."
    ),
    vocab: str | None = typer.Option(None, "--vocab", help="Reuse this vocabulary file."),
    vocab_out: str | None = typer.Option(None, "--vocab-out", help="Also write the vocabulary here."),
    min_count: int = typer.Option(1, "--min-count", min=1, help="Words seen fewer times in train map to <unk>."),
    image_column: str | None = typer.Option(None, "--image-column", help="CSV/Parquet image column name."),
    caption_column: str | None = typer.Option(None, "--caption-column", help="CSV/Parquet caption column name."),
    errors: Path | None = typer.Option(None, "--errors", help=ERRORS_HELP),
    strict: bool = typer.Option(False, "--strict", help=STRICT_HELP),
) -> None:
    """Tokenize captions: writes one row per caption (caption_id, image_id, caption, tokens,
    token_ids, split) with the vocabulary, built from the train split only, in the metadata.

    Reads Flickr token files (<image>#<i><TAB><caption>), COCO caption json, Karpathy's
    dataset json, CSV/TSV with image and caption columns, plain text (one caption a line)
    and Parquet with a caption column.

    Example: smcli tokenize Flickr8k.token.txt --splits splits.csv -o captions.parquet
    """
    from smcli.text.captions import tokenize_captions

    tokenize_captions(input, output, fmt=fmt, splits=splits, vocab=vocab, vocab_out=vocab_out,
                      min_count=min_count, image_column=image_column, caption_column=caption_column,
                      errors=errors, strict=strict)
