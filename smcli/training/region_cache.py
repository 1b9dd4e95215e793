"""Region grids memory-mapped for data-parallel training, so no process holds them all.

Loaded into memory, the regions column costs every process a copy (Flickr8k at 7x7: 1 GB;
COCO: 6 GB; at 14x14 four times that), P copies on a machine running P processes. Instead,
local process 0 of each machine streams the grids of the images training uses into one .npy
in the smcli cache (keyed by the file and the images), and every process maps it: the page
cache holds one copy for the machine, and a step reads its images' rows with the gallery's
row reader (:func:`smcli.inference.gallery.read_rows`: one pread per row). The file lives
as long as the run (a killed run's stays for --resume).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import socket
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from smcli.errors import InputError
from smcli.training.distributed import World


def cache_path(regions_path: str, image_ids: list[str]) -> Path:
    """The cache file for these images of this regions file (its path, size and mtime)."""
    from smcli.runtime import cache_root

    st = os.stat(regions_path)
    key = hashlib.sha256(f"{os.path.realpath(regions_path)}\0{st.st_size}\0{st.st_mtime_ns}\0".encode()
                         + "\n".join(image_ids).encode()).hexdigest()[:20]
    return cache_root() / "regions" / f"{key}.npy"


@contextlib.contextmanager
def mapped_regions(regions_path: str, image_ids: list[str], world: World) -> Iterator[np.ndarray]:
    """The grids of ``image_ids`` (in that order, which is the file's) as a read-only memory
    map, for the block. The file goes when the block ends well; after a failure it stays for
    --resume to map again."""
    path = cache_path(regions_path, image_ids)
    with world.main_first(local=True):  # one writer a machine; the others wait, then map it
        if world.local_rank == 0 and not path.is_file():
            _write(regions_path, image_ids, path)
    yield np.load(path, mmap_mode="r")
    world.barrier()  # every process is done with it
    if world.local_rank == 0:
        path.unlink(missing_ok=True)


def _write(regions_path: str, image_ids: list[str], path: Path) -> None:
    from smcli.images.features import iter_region_grids
    from smcli.inference.gallery import NpyWriter

    want = {image_id: i for i, image_id in enumerate(image_ids)}
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.{socket.gethostname()}.{os.getpid()}.tmp.npy")
    writer, done = None, 0
    try:
        for ids, grids in iter_region_grids(regions_path):
            take = [k for k, image_id in enumerate(ids) if image_id in want]
            if writer is None:
                writer = NpyWriter(tmp, grids.dtype, (len(image_ids), *grids.shape[1:]))
            if [want[ids[k]] for k in take] != list(range(done, done + len(take))):
                raise InputError(f"{regions_path}: its rows are not the ones training read (changed meanwhile?)")
            writer.write(grids[take])
            done += len(take)
        if done != len(image_ids) or writer is None:
            raise InputError(f"{regions_path}: {done:,} of the {len(image_ids):,} training images' grids found")
        writer.close()
        os.replace(tmp, path)
    finally:
        if writer is not None and not writer.handle.closed:
            writer.handle.close()
        tmp.unlink(missing_ok=True)
