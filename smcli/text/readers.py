"""Readers for the caption file formats people have: one function per format.

Each reader yields :class:`CaptionRecord` rows and reports row-level problems (an empty
caption, a malformed line) to the run report instead of stopping; problems with the file as
a whole (missing, not UTF-8, missing columns) raise :class:`InputError` with one line.
"""

from __future__ import annotations

import csv
import io
import json
import re
import sys
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from smcli.errors import InputError, UsageError, first_line
from smcli.report import RunReport

FORMATS = ("auto", "flickr", "coco", "karpathy", "csv", "txt", "parquet")

IMAGE_COLUMNS = ("image_id", "image", "filename", "file_name", "path")
CAPTION_COLUMNS = ("caption", "sentence", "text", "raw", "query")

_FLICKR_LINE = re.compile(r"^([^\t#]+)#(\d+)\t(.*)$")


@dataclass
class CaptionRecord:
    caption_id: str
    image_id: str | None
    caption: str
    split: str | None
    location: str  # where the row came from, for error messages ("line 12")


@dataclass
class ColumnNames:
    """Column names for CSV and Parquet captions; None means look for the usual names."""

    image: str | None = None
    caption: str | None = None


def load_bytes(path: str) -> bytes:
    if path == "-":
        return sys.stdin.buffer.read()
    p = Path(path)
    if not p.exists():
        raise InputError(f"{path}: no such file")
    if p.is_dir():
        raise InputError(f"{path}: is a directory, expected a caption file")
    return p.read_bytes()


def detect_format(name: str, data: bytes) -> str:
    """Guess the format from the content (the extension only breaks ties)."""
    if data[:4] == b"PAR1":
        return "parquet"
    head = data[:65536].removeprefix(b"\xef\xbb\xbf").lstrip()  # a UTF-8 BOM is not content
    if head[:1] in (b"{", b"["):
        # Karpathy's dataset_*.json has "sentences" per image; COCO has "annotations".
        if b'"sentences"' in data[:1 << 20]:
            return "karpathy"
        if b'"annotations"' in data:
            return "coco"
        raise InputError(f"{name}: JSON that is neither COCO captions nor Karpathy's dataset json")
    first = head.split(b"\n", 1)[0].decode("utf-8", errors="replace").rstrip("\r")
    if _FLICKR_LINE.match(first):
        return "flickr"
    lower = name.lower()
    if lower.endswith((".csv", ".tsv")):
        return "csv"
    cells = {c.strip().lower() for c in re.split(r"[,\t]", first)}
    if len(cells) > 1 and cells & set(CAPTION_COLUMNS):
        return "csv"
    return "txt"


def decode_lines(name: str, data: bytes) -> Iterator[tuple[int, str]]:
    """(line number, text) pairs; invalid UTF-8 is fatal and names the line."""
    if data.startswith(b"\xef\xbb\xbf"):
        data = data[3:]
    lines = data.split(b"\n")
    if lines and lines[-1] == b"":
        lines.pop()
    for number, raw in enumerate(lines, start=1):
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise InputError(
                f"{name}: line {number}: invalid UTF-8 (byte 0x{raw[exc.start]:02x} "
                f"at column {exc.start + 1})"
            ) from None
        yield number, text.rstrip("\r")


def decode_text(name: str, data: bytes) -> str:
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise InputError(f"{name}: line {line}: invalid UTF-8") from None


def read_flickr(name: str, data: bytes, report: RunReport) -> Iterator[CaptionRecord]:
    """``<image>#<i>\\t<caption>`` lines (Flickr8k/Flickr30k token files)."""
    for number, line in decode_lines(name, data):
        if not line.strip():
            continue
        m = _FLICKR_LINE.match(line)
        if not m:
            report.reject(name, f"line {number}", "expected <image>#<n><TAB><caption>")
            continue
        image, idx, caption = m.groups()
        yield CaptionRecord(f"{image}#{idx}", image, caption, None, f"line {number}")


def read_txt(name: str, data: bytes, report: RunReport) -> Iterator[CaptionRecord]:
    """One caption (or query) a line; ids are line numbers, images unknown."""
    for number, line in decode_lines(name, data):
        yield CaptionRecord(str(number), None, line, None, f"line {number}")


def read_karpathy(name: str, data: bytes, report: RunReport) -> Iterator[CaptionRecord]:
    """Karpathy's dataset_{coco,flickr8k,flickr30k}.json, with its splits."""
    doc = _load_json(name, data)
    images = doc.get("images") if isinstance(doc, dict) else None
    if not isinstance(images, list):
        raise InputError(f"{name}: Karpathy json without an 'images' list")
    for i, img in enumerate(images):
        filename = img.get("filename") if isinstance(img, dict) else None
        if not filename or not isinstance(filename, str):
            report.reject(name, f"images[{i}]", "image without a filename")
            continue
        image_id = f"{img['filepath']}/{filename}" if img.get("filepath") else filename
        sentences = img.get("sentences", [])
        if not isinstance(sentences, list):
            report.reject(name, f"images[{i}]", "'sentences' is not a list")
            continue
        for k, sent in enumerate(sentences):
            where = f"images[{i}].sentences[{k}]"
            raw = sent.get("raw") if isinstance(sent, dict) else None
            if raw is None and isinstance(sent, dict) and isinstance(sent.get("tokens"), list):
                raw = " ".join(str(t) for t in sent["tokens"])
            if not isinstance(raw, str):
                report.reject(name, where, "sentence without a 'raw' text or 'tokens' list")
                continue
            split = img.get("split")
            if split is not None and not isinstance(split, str):
                report.reject(name, f"images[{i}]", "'split' is not a string")
                break
            yield CaptionRecord(f"{image_id}#{k}", image_id, raw, split, where)


def read_coco(name: str, data: bytes, report: RunReport) -> Iterator[CaptionRecord]:
    """COCO captions_*.json: ``images`` with file names, ``annotations`` with captions."""
    doc = _load_json(name, data)
    if not isinstance(doc, dict) or not isinstance(doc.get("annotations"), list):
        raise InputError(f"{name}: COCO json without an 'annotations' list")
    images = doc.get("images", [])
    files = {img.get("id"): img.get("file_name")  # ids are JSON scalars; a list or object is no id
             for img in (images if isinstance(images, list) else [])
             if isinstance(img, dict) and not isinstance(img.get("id"), list | dict)
             and isinstance(img.get("file_name"), str)}
    for i, ann in enumerate(doc["annotations"]):
        if not isinstance(ann, dict):
            report.reject(name, f"annotations[{i}]", "annotation is not a JSON object")
            continue
        key = ann.get("image_id")
        image_id = None if isinstance(key, list | dict) else files.get(key)
        if image_id is None:
            report.reject(name, f"annotations[{i}]",
                          f"image id {ann.get('image_id')!r} not in the images list")
            continue
        caption = ann.get("caption")
        if caption is not None and not isinstance(caption, str):
            report.reject(name, f"annotations[{i}]", "caption is not a string")
            continue
        yield CaptionRecord(str(ann.get("id", f"{image_id}#{i}")), image_id,
                            caption or "", None, f"annotations[{i}]")


def read_csv(name: str, data: bytes, report: RunReport, columns: ColumnNames) -> Iterator[CaptionRecord]:
    """CSV or TSV with a header; image and caption columns found by name.

    CSV follows RFC 4180 quoting; TSV is read without quoting (fields are split at tabs).
    """
    text = decode_text(name, data)
    first = text.split("\n", 1)[0]
    delimiter = "\t" if name.lower().endswith(".tsv") or first.count("\t") > first.count(",") else ","
    # TSV fields cannot hold a tab, so TSV files (Conceptual Captions, say) do not quote: a
    # caption that starts with '"' is text, not an opening quote that would swallow lines.
    # In CSV, strict quoting makes an unclosed quote an error instead of a caption that
    # silently swallows the rest of the file.
    quoting = csv.QUOTE_NONE if delimiter == "\t" else csv.QUOTE_MINIMAL
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter, quoting=quoting,
                        strict=delimiter != "\t")

    def malformed(exc: csv.Error) -> InputError:
        return InputError(
            f"{name}: line {reader.line_num}: malformed CSV ({exc}); check the quotes")

    try:
        header = next(reader, None)
    except csv.Error as exc:
        raise malformed(exc) from None
    if header is None:
        raise InputError(f"{name}: empty file, expected a header row")
    header = [h.strip() for h in header]

    def rows() -> Iterator[tuple[str, dict[str, str]]]:
        try:
            for row in reader:
                if not any(cell.strip() for cell in row):
                    continue
                if len(row) > len(header):  # an unquoted delimiter would cut the caption short
                    report.reject(
                        name, f"line {reader.line_num}",
                        f"{len(row)} cells for {len(header)} columns (quote the caption?)")
                    continue
                yield f"line {reader.line_num}", dict(zip(header, row))
        except csv.Error as exc:
            raise malformed(exc) from None

    yield from _records_from_rows(name, header, rows(), report, columns)


def read_parquet(name: str, data: bytes, report: RunReport, columns: ColumnNames) -> Iterator[CaptionRecord]:
    """Any Parquet file with a caption column (an smcli captions file included)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(pa.BufferReader(data))
        table.validate(full=True)  # text columns' UTF-8 (a damaged page would fail in to_pylist)
    except (pa.ArrowException, OSError, UnicodeDecodeError) as exc:  # truncated, damaged pages, bad thrift
        raise InputError(f"{name}: unreadable Parquet ({first_line(exc, 100)})") from None
    header = table.column_names

    def rows() -> Iterator[tuple[str, dict[str, str]]]:
        for i, row in enumerate(table.to_pylist()):
            yield f"row {i + 1}", {k: ("" if v is None else str(v)) for k, v in row.items()}

    yield from _records_from_rows(name, header, rows(), report, columns)


def _pick(name: str, header: list[str], wanted: str | None, candidates: tuple[str, ...],
          what: str, required: bool) -> str | None:
    if wanted is not None:
        if wanted not in header:
            raise InputError(f"{name}: no column {wanted!r}; columns found: {', '.join(header)}")
        return wanted
    lower = {h.lower(): h for h in header}
    for c in candidates:
        if c in lower:
            return lower[c]
    if required:
        raise InputError(
            f"{name}: no {what} column (looked for {', '.join(candidates)}); "
            f"columns found: {', '.join(header)}"
        )
    return None


def _records_from_rows(name: str, header: list[str], rows: Iterable[tuple[str, dict[str, str]]],
                       report: RunReport, columns: ColumnNames) -> Iterator[CaptionRecord]:
    caption_col = _pick(name, header, columns.caption, CAPTION_COLUMNS, "caption", True)
    image_col = _pick(name, header, columns.image, IMAGE_COLUMNS, "image", False)
    id_col = _pick(name, header, None, ("caption_id",), "caption id", False)
    idx_col = _pick(name, header, None, ("caption_idx", "caption_index", "idx"), "index", False)
    split_col = _pick(name, header, None, ("split",), "split", False)
    seen_per_image: Counter[str] = Counter()
    for n, (location, row) in enumerate(rows, start=1):
        image = (row.get(image_col) or "").strip() if image_col else ""
        if id_col and row.get(id_col):
            caption_id = row[id_col]
        elif image and idx_col and row.get(idx_col, "").strip():
            caption_id = f"{image}#{row[idx_col].strip()}"
        elif image:
            caption_id = f"{image}#{seen_per_image[image]}"
        else:
            caption_id = str(n)
        if image:
            seen_per_image[image] += 1
        split = (row.get(split_col) or "").strip() or None if split_col else None
        yield CaptionRecord(caption_id, image or None, row.get(caption_col) or "", split, location)


def _load_json(name: str, data: bytes):
    text = decode_text(name, data)
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise InputError(f"{name}: line {exc.lineno}: invalid JSON ({exc.msg})") from None


def read_captions(path: str, fmt: str, report: RunReport,
                  columns: ColumnNames | None = None) -> tuple[str, Iterator[CaptionRecord]]:
    """Open a caption file of format ``fmt`` (or detect it); returns (format, records)."""
    if fmt not in FORMATS:
        raise UsageError(f"--format {fmt}: unknown format; choose one of {', '.join(FORMATS)}")
    name = "<stdin>" if path == "-" else path
    data = load_bytes(path)
    if not data.strip():
        raise InputError(f"{name}: empty file")
    if fmt == "auto":
        fmt = detect_format(name, data)
    columns = columns or ColumnNames()
    readers: dict[str, Callable[[], Iterator[CaptionRecord]]] = {
        "flickr": lambda: read_flickr(name, data, report),
        "txt": lambda: read_txt(name, data, report),
        "karpathy": lambda: read_karpathy(name, data, report),
        "coco": lambda: read_coco(name, data, report),
        "csv": lambda: read_csv(name, data, report, columns),
        "parquet": lambda: read_parquet(name, data, report, columns),
    }
    return fmt, readers[fmt]()


def read_splits(path: str) -> dict[str, str]:
    """A CSV of image,split rows -> {image: split}."""
    data = load_bytes(path)
    text = decode_text(path, data)
    reader = csv.DictReader(io.StringIO(text, newline=""))
    header = [h.strip() for h in (reader.fieldnames or [])]
    image_col = _pick(path, header, None, IMAGE_COLUMNS, "image", True)
    split_col = _pick(path, header, None, ("split",), "split", True)
    splits: dict[str, str] = {}
    for row in reader:
        image, split = (row.get(image_col) or "").strip(), (row.get(split_col) or "").strip()
        if not image or not split:
            raise InputError(f"{path}: line {reader.line_num}: expected image,split")
        if splits.get(image, split) != split:
            raise InputError(f"{path}: line {reader.line_num}: {image} is in two splits")
        splits[image] = split
    return splits
