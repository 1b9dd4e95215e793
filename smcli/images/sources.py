"""Listing the images of an extract-regions run from its INPUT arguments.

INPUT may be
- a directory: searched recursively for files with an image extension (hidden files and
  folders skipped), in sorted order; image_id = the path relative to that directory;
- an image file: image_id = its file name;
- ``@list.txt``: one path a line (blank lines and ``#`` comments skipped);
- a Parquet or CSV/TSV file with a path column (``--path-column``, else the first of
  path, image_path, filepath, file, filename, image);
- ``-``: paths on stdin, one a line.
Relative paths from lists, tables and stdin are taken relative to ``root`` (``--root``,
default the current directory); their image_id is the path relative to root (posix
separators), or the absolute path when it is outside root.

Every entry is accounted for: an image is listed once (the same file given twice counts as
a duplicate), an entry that cannot be an image is rejected with its reason.
"""

from __future__ import annotations

import os
import posixpath
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from smcli.errors import InputError, UsageError, first_line
from smcli.images.decode import IMAGE_EXTENSIONS, UNSUPPORTED_EXTENSIONS
from smcli.report import RunReport, say

PATH_COLUMNS = ("path", "image_path", "filepath", "file", "filename", "image")
TABLE_SUFFIXES = {".parquet": "parquet", ".pq": "parquet", ".csv": "csv", ".tsv": "tsv"}
LIST_SUFFIXES = (".txt", ".lst", ".list")


@dataclass(frozen=True)
class ImageItem:
    path: str  # as given (directory inputs: the directory as given joined with the relative path)
    image_id: str


@dataclass
class Listing:
    items: list[ImageItem] = field(default_factory=list)
    listed: int = 0  # entries seen, including duplicates and rejected ones
    duplicates: int = 0
    ignored: int = 0  # files in directories without an image extension


def _printable(path: str) -> str:
    """A path for messages; undecodable bytes shown as escapes."""
    return os.fsencode(path).decode("utf-8", "backslashreplace")


def _utf8_ok(text: str) -> bool:
    try:
        text.encode("utf-8")
        return True
    except UnicodeEncodeError:
        return False


class _Collector:
    def __init__(self, report: RunReport, command: str):
        self.report = report
        self.command = command
        self.listing = Listing()
        self._by_real: dict[str, str] = {}
        self._by_id: dict[str, str] = {}

    def add(self, path: str, image_id: str, source: str, location: str = "") -> None:
        self.listing.listed += 1
        shown = source if location else _printable(path)
        if not (_utf8_ok(path) and _utf8_ok(image_id)):
            self.report.reject(shown, location, f"file name is not valid UTF-8: {_printable(path)}")
            return
        real = os.path.realpath(path)
        if real in self._by_real:
            self.listing.duplicates += 1
            return
        if image_id in self._by_id:
            self.report.reject(shown, location,
                               f"image_id {image_id!r} is already used by {self._by_id[image_id]}; "
                               "give the files distinct relative paths")
            return
        self._by_real[real] = path
        self._by_id[image_id] = path
        self.listing.items.append(ImageItem(path, image_id))


def _walk(directory: str) -> tuple[list[str], list[str]]:
    """(image files, other files) under directory, relative posix paths, sorted."""
    images, others = [], []

    def unreadable(exc: OSError) -> None:
        raise InputError(f"{exc.filename}: cannot list directory ({exc.strerror})")

    for dirpath, dirnames, filenames in os.walk(directory, onerror=unreadable):
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]
        rel_dir = os.path.relpath(dirpath, directory)
        for name in filenames:
            if name.startswith("."):
                continue
            rel = name if rel_dir == "." else os.path.join(rel_dir, name)
            ext = os.path.splitext(name)[1].lower()
            if ext in IMAGE_EXTENSIONS or ext in UNSUPPORTED_EXTENSIONS:
                images.append(rel.replace(os.sep, "/"))
            else:
                others.append(rel.replace(os.sep, "/"))
    images.sort()
    return images, others


def _entry(raw: str, root: Path) -> tuple[str, str]:
    """(path, image_id) for a path from a list, table or stdin."""
    p = raw
    if os.path.isabs(p):
        try:
            rel = os.path.relpath(p, root)
        except ValueError:
            rel = os.pardir
        if rel.split(os.sep)[0] == os.pardir:
            return p, posixpath.normpath(p.replace(os.sep, "/"))
        return p, posixpath.normpath(rel.replace(os.sep, "/"))
    image_id = posixpath.normpath(p.replace(os.sep, "/"))
    path = p if str(root) in ("", ".") else os.path.join(root, p)
    return path, image_id


def _list_lines(lines: Iterator[str], source: str, root: Path, col: _Collector) -> None:
    for n, line in enumerate(lines, 1):
        entry = line.rstrip("\r\n")
        if not entry.strip() or entry.lstrip().startswith("#"):
            continue
        path, image_id = _entry(entry, root)
        col.add(path, image_id, source, f"line {n}")


def _choose_column(names: list[str], wanted: str | None, source: str) -> str:
    if wanted:
        if wanted not in names:
            raise InputError(f"{source}: no column {wanted!r} (columns: {', '.join(names)})")
        return wanted
    lower = {n.lower(): n for n in names}
    for c in PATH_COLUMNS:
        if c in lower:
            return lower[c]
    raise InputError(
        f"{source}: no path column (looked for {', '.join(PATH_COLUMNS)}; columns: "
        f"{', '.join(names)}); name it with --path-column"
    )


def _table_values(path: str, kind: str, column: str | None) -> Iterator[str | None]:
    import pyarrow as pa

    if kind == "parquet":
        from smcli.stage import open_any

        stage = open_any(path)
        try:
            col = _choose_column(stage.columns, column, path)
            for batch in stage.iter_batches(8192, [col]):
                yield from batch.column(0).cast(pa.string()).to_pylist()
        finally:
            stage.close()
        return
    import csv

    import pyarrow.csv as pacsv

    delim = "\t" if kind == "tsv" else ","
    with open(path, newline="", encoding="utf-8-sig") as fh:
        header = next(csv.reader(fh, delimiter=delim), None)
    if not header:
        raise InputError(f"{path}: empty {kind.upper()} file")
    col = _choose_column(header, column, path)
    try:
        reader = pacsv.open_csv(
            path,
            parse_options=pacsv.ParseOptions(delimiter=delim),
            convert_options=pacsv.ConvertOptions(include_columns=[col], column_types={col: pa.string()},
                                                 strings_can_be_null=True),
        )
        for batch in reader:
            yield from batch.column(0).to_pylist()
    except pa.ArrowInvalid as exc:
        raise InputError(f"{path}: unreadable {kind.upper()} ({first_line(exc)})") from None


def _table(path: str, kind: str, column: str | None, root: Path, col: _Collector) -> None:
    for n, value in enumerate(_table_values(path, kind, column), 1):
        location = f"row {n}"
        if value is None or not value.strip():
            col.listing.listed += 1
            col.report.reject(path, location, "empty path")
            continue
        p, image_id = _entry(value, root)
        col.add(p, image_id, path, location)


def _sniff_table(path: str) -> str | None:
    suffix = Path(path).suffix.lower()
    if suffix in TABLE_SUFFIXES:
        return TABLE_SUFFIXES[suffix]
    try:
        with open(path, "rb") as fh:
            if fh.read(4) == b"PAR1":
                return "parquet"
    except OSError:
        pass
    return None


def list_images(
    inputs: list[str],
    report: RunReport,
    *,
    root: str | None = None,
    path_column: str | None = None,
    command: str = "extract-regions",
) -> Listing:
    """Resolve INPUT arguments to unique images. Fails (one line) on an INPUT argument that
    does not exist; entries of lists and tables that are bad are rejected into ``report``."""
    if not inputs:
        raise UsageError("give at least one INPUT: a directory, image files, @list.txt, a table or -")
    if sum(1 for i in inputs if i == "-") > 1:
        raise UsageError("'-' (paths on stdin) can be given only once")
    base = Path(root) if root else Path(".")
    if root and not base.is_dir():
        raise UsageError(f"--root {root}: not a directory")
    col = _Collector(report, command)
    for arg in inputs:
        if arg == "-":
            _list_lines(iter(sys.stdin), "<stdin>", base, col)
            continue
        if arg.startswith("@") and not os.path.exists(arg):
            list_path = arg[1:]
            if not os.path.isfile(list_path):
                raise InputError(f"{arg}: no such list file {list_path}")
            try:
                with open(list_path, encoding="utf-8", errors="strict") as fh:
                    _list_lines(fh, list_path, base, col)
            except UnicodeDecodeError as exc:
                raise InputError(f"{list_path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
            continue
        if not os.path.exists(arg):
            raise InputError(f"{arg}: no such file or directory")
        if os.path.isdir(arg):
            images, others = _walk(arg)
            for rel in images:
                col.add(os.path.join(arg, rel), rel, arg)
            if others:
                col.listing.ignored += len(others)
                say(command, f"{arg}: ignored {len(others):,} file(s) without an image extension "
                             f"(e.g. {others[0]})")
            continue
        kind = _sniff_table(arg)
        if kind is not None:
            _table(arg, kind, path_column, base, col)
            continue
        if Path(arg).suffix.lower() in LIST_SUFFIXES:
            raise UsageError(f"{arg}: a text file, not an image; to read image paths from it, "
                             f"write @{arg}")
        col.add(arg, Path(arg).name, arg)
    return col.listing
