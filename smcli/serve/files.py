"""Which image files a server may send: only those on the gallery's own list.

A request names a gallery row (``/image/12``), never a path, so ``../``, encoded and
absolute paths have nothing to climb through. The listed file itself is also checked each
time it is served, because the directory may have changed since the gallery was built: it
must be a regular file whose real path (symlinks followed) lies inside the real path of the
gallery's image root (the deepest directory holding every listed file), and it must start
like an image (JPEG, PNG, GIF, WebP, BMP, TIFF); the content type comes from those bytes.
So a photo replaced by a symlink to a file outside the root, or by anything that is not an
image, is not served.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

# leading bytes -> content type
_SIGNATURES = (
    (b"\xff\xd8\xff", "image/jpeg"),
    (b"\x89PNG\r\n\x1a\n", "image/png"),
    (b"GIF87a", "image/gif"),
    (b"GIF89a", "image/gif"),
    (b"BM", "image/bmp"),
    (b"II*\x00", "image/tiff"),
    (b"MM\x00*", "image/tiff"),
)


def sniff_image(head: bytes) -> str | None:
    """The content type of an image file from its first 16 bytes, or None."""
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "image/webp"
    return next((kind for sig, kind in _SIGNATURES if head.startswith(sig)), None)


class ImageFiles:
    """The gallery's image files by row. Relative paths (as extract-regions stored them) are
    read from ``base`` (the current directory by default, as ``smcli explain`` reads them)."""

    def __init__(self, paths: list[str], base: str | os.PathLike | None = None):
        base_dir = Path(base) if base is not None else Path.cwd()
        self.files = [Path(os.path.normpath(base_dir / p)) if p else None for p in paths]
        listed = [str(f) for f in self.files if f is not None]
        self.root = Path(os.path.commonpath([os.path.dirname(f) for f in listed])) if listed else base_dir
        self._real_root = os.path.realpath(self.root)

    def __len__(self) -> int:
        return len(self.files)

    def open(self, row: int):
        """(open binary file, content type, size) of gallery row ``row`` when it may be
        served, else None. The file is checked through the handle that is then read (no
        gap between the check and the read for a rename to slip into)."""
        if not 0 <= row < len(self.files) or self.files[row] is None:
            return None
        real = os.path.realpath(self.files[row])
        if os.path.commonpath([real, self._real_root]) != self._real_root:
            return None  # a symlink out of the image root
        try:
            fd = os.open(real, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0))
        except OSError:
            return None
        try:
            info = os.fstat(fd)
            if not stat.S_ISREG(info.st_mode):  # a directory, a device, a pipe
                os.close(fd)
                return None
        except OSError:
            os.close(fd)
            return None
        fh = os.fdopen(fd, "rb")
        try:
            kind = sniff_image(fh.read(16))
            fh.seek(0)
        except OSError:
            kind = None
        if kind is None:
            fh.close()
            return None
        return fh, kind, info.st_size
