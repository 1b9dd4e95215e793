"""The tokenize stage: caption records -> a captions Parquet file with a vocabulary."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa

from smcli.report import RunReport, warn
from smcli.stage import OutputTarget, StageInput, StageWriter, new_meta
from smcli.text.normalize import tokenize
from smcli.text.readers import CaptionRecord, ColumnNames, read_captions, read_splits
from smcli.text.vocab import Vocab

NORMALIZATION = "nfkc-lower-ptb-v1"
TRAIN_SPLITS = frozenset({"train", "restval"})  # Karpathy's "restval" is training data

CAPTIONS_SCHEMA = pa.schema([
    ("caption_id", pa.string()),
    ("image_id", pa.string()),
    ("caption", pa.string()),
    ("tokens", pa.list_(pa.string())),
    ("token_ids", pa.list_(pa.int32())),
    ("split", pa.string()),
])


@dataclass
class TokenizeOptions:
    fmt: str = "auto"
    splits: str | None = None
    vocab: str | None = None
    vocab_out: str | None = None
    min_count: int = 1
    columns: ColumnNames | None = None


def clean_records(records: Iterable[CaptionRecord], source: str,
                  report: RunReport) -> tuple[list[CaptionRecord], list[list[str]], int]:
    """Drop (and report) empty captions and repeated caption ids; returns rows, tokens, count read.

    The count read includes the rows the reader itself rejected while it was being iterated
    (malformed lines, say), so that read = kept + rejected.
    """
    kept: list[CaptionRecord] = []
    tokens: list[list[str]] = []
    seen: dict[str, str] = {}
    read = 0
    rejects_before = len(report.rejects)
    for rec in records:
        read += 1
        toks = tokenize(rec.caption)
        if not toks:
            report.reject(source, rec.location, "empty caption")
            continue
        if rec.caption_id in seen:
            report.reject(source, rec.location,
                          f"duplicate caption id {rec.caption_id!r} (first at {seen[rec.caption_id]})")
            continue
        seen[rec.caption_id] = rec.location
        kept.append(rec)
        tokens.append(toks)
    rejected_here = read - len(kept)
    read += len(report.rejects) - rejects_before - rejected_here  # the reader's own rejects
    return kept, tokens, read


def choose_vocab(rows: list[CaptionRecord], tokens: list[list[str]], opts: TokenizeOptions,
                 command: str = "tokenize", loaded: Vocab | None = None) -> tuple[Vocab, str]:
    """The vocabulary to encode with, and where it came from ("train", "all", "file").

    ``loaded`` is the vocabulary of ``opts.vocab`` when the caller has already read it.
    """
    if opts.vocab:
        return loaded or Vocab.load(opts.vocab), f"file:{Path(opts.vocab).name}"
    train = [t for r, t in zip(rows, tokens) if r.split in TRAIN_SPLITS]
    if any(r.split is not None for r in rows):
        if not train:
            warn(command, "no caption is in the train split; vocabulary has only <pad> and <unk>")
        return Vocab.build(train, opts.min_count), "train"
    warn(command, "no split known (use --splits); vocabulary built from all captions")
    return Vocab.build(tokens, opts.min_count), "all"


def tokenize_file(path: str, target: OutputTarget, opts: TokenizeOptions,
                  report: RunReport) -> dict[str, int]:
    """Read a caption file, tokenize it and write a captions Parquet file; returns counts."""
    source = "<stdin>" if path == "-" else path
    splits = read_splits(opts.splits) if opts.splits else None
    loaded = Vocab.load(opts.vocab) if opts.vocab else None  # fail before reading the input
    fmt, records = read_captions(path, opts.fmt, report, opts.columns)
    rows, tokens, read = clean_records(records, source, report)
    if splits is not None:
        for r in rows:
            r.split = splits.get(r.image_id) if r.image_id is not None else None
        unsplit = sum(r.split is None for r in rows)
        if unsplit:
            warn("tokenize", f"{unsplit:,} caption(s) whose image is not in {opts.splits} get no split")
    vocab, vocab_from = choose_vocab(rows, tokens, opts, loaded=loaded)
    if opts.vocab_out:
        vocab.save(opts.vocab_out)
    table = pa.table({
        "caption_id": [r.caption_id for r in rows],
        "image_id": [r.image_id for r in rows],
        "caption": [r.caption for r in rows],
        "tokens": tokens,
        "token_ids": [vocab.encode(t) for t in tokens],
        "split": [r.split for r in rows],
    }, schema=CAPTIONS_SCHEMA)
    meta = new_meta("captions", {
        "command": "tokenize",
        "input": source,
        "format": fmt,
        "normalization": NORMALIZATION,
        "vocab_hash": vocab.hash,
        "vocab_size": len(vocab),
        "vocab_from": vocab_from,
        "min_count": opts.min_count,
    }, blobs={"vocab": vocab.to_text().encode()})
    with StageWriter(target, CAPTIONS_SCHEMA, meta) as writer:
        writer.write(table)
    counts = {"read": read, "written": writer.rows_written, "rejected": len(report.rejects)}
    split_counts = table.group_by("split").aggregate([("caption_id", "count")]).to_pylist()
    by_split = ", ".join(f"{d['split'] or 'none'} {d['caption_id_count']:,}"
                         for d in sorted(split_counts, key=lambda d: str(d["split"])))
    report_line = (f"vocabulary {len(vocab):,} tokens from {vocab_from} (hash {vocab.hash}); "
                   f"splits: {by_split or 'no rows'}")
    from smcli.report import say

    say("tokenize", report_line)
    return counts


def captions_vocab(stage: StageInput) -> Vocab:
    """The vocabulary embedded in a captions file."""
    blob = stage.meta.blobs.get("vocab")
    if blob is None:
        from smcli.errors import InputError

        raise InputError(f"{stage.name}: captions file without an embedded vocabulary")
    return Vocab.from_text(blob.decode(), stage.name)


def tokenize_captions(input: str | Path, output: str | Path | None, *, fmt: str = "auto",
                      splits: str | None = None, vocab: str | None = None, vocab_out: str | None = None,
                      min_count: int = 1, image_column: str | None = None, caption_column: str | None = None,
                      errors: str | Path | None = None, strict: bool = False) -> dict[str, int]:
    """A caption file (``-``: stdin) -> a captions Parquet file at ``output`` (None or
    ``-``: stdout): what ``smcli tokenize`` runs, and ``smcli.tokenize``. Returns the counts."""
    from smcli.stage import check_second_output, resolve_output

    inputs = (str(input), splits, vocab)
    target = resolve_output(None if output is None else str(output), inputs=inputs)
    for option, path in (("--vocab-out", vocab_out), ("--errors", errors)):
        if path is not None:
            check_second_output(path, option, output=target.path, inputs=inputs)
    report = RunReport("tokenize", errors_path=None if errors is None else Path(errors), strict=strict)
    opts = TokenizeOptions(fmt=fmt, splits=splits, vocab=vocab,
                           vocab_out=None if vocab_out is None else str(vocab_out), min_count=min_count,
                           columns=ColumnNames(image=image_column, caption=caption_column))
    counts = tokenize_file(str(input), target, opts, report)
    report.finish(**counts)
    return counts
