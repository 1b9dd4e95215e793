"""The extract-regions stage: images -> region grids and global features, streamed.

Reader -> workers -> writer:
- the listing (:mod:`smcli.images.sources`) gives the unique images in order;
- worker processes (a torch DataLoader over :func:`smcli.images.decode.load_image`) decode
  and resize whole batches, a few batches ahead; a bad image comes back as a reason, never
  an exception;
- on the CPU the workers also run the network, one thread each (data parallel over
  processes). On a small machine that beats one process with a thread per core: single-
  threaded processes never wait for each other inside a layer, so decoding and writing fill
  the gaps instead of stalling the network (on 2 cores, 2 x 1 thread gives ~15% more
  images/s than 1 x 2 threads, forward alone). It also makes the features independent of
  the core count. On CUDA, and with ``--workers 0``, the network runs in this process;
- this process writes each batch at once: to the Parquet output (row groups of ~32 MB) and,
  for a file output, to a resume journal. Memory stays flat whatever the number of images.

Resume: next to ``OUT`` a folder ``.OUT.resume/`` holds Arrow IPC stream segments of the
finished rows, flushed after every batch, so they survive ``kill -9``. ``--resume`` reads
them back (a segment cut mid-batch is read up to its last whole batch), copies those rows
to the new output without recomputing them and continues with the rest. The folder is
removed when the output is complete. Images that failed are retried on resume.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import os
import sys
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from smcli.errors import InputError, UsageError
from smcli.images.backbones import DEFAULT_BACKBONE, DEFAULT_IMAGE_SIZE, Backbone
from smcli.images.decode import DEFAULT_MAX_PIXELS, ImageError, load_image
from smcli.images.features import DTYPES, regions_schema
from smcli.images.journal import Journal
from smcli.images.layout import PROBE_BATCHES, candidates, machine_key, remember, remembered
from smcli.images.sources import ImageItem
from smcli.report import Progress, RunReport, say, warn
from smcli.runtime import cpu_cores, one_thread, quiet_lost_peer_threads, torch_threads, tune_malloc
from smcli.stage import OutputTarget, StageWriter, new_meta

COMMAND = "extract-regions"
ROW_GROUP_BYTES = 32 << 20


@dataclass
class ExtractOptions:
    backbone: str = DEFAULT_BACKBONE
    image_size: int = DEFAULT_IMAGE_SIZE
    weights: str = "default"
    batch_size: int | None = None  # None: default_batch_size(image_size)
    workers: int | None = None  # None: the layout remembered for this machine, else default_workers(device)
    tune_layout: bool = False  # measure the worker counts on the first images, remember the fastest
    threads: int | None = None  # torch threads of a network in this process; None: all cores
    dtype: str = "float16"
    device: str = "auto"
    max_pixels: int = DEFAULT_MAX_PIXELS
    resume: bool = False
    progress: bool | None = None  # None: when stderr is a terminal


def producer(backbone: Backbone, dtype: str) -> dict[str, Any]:
    """The metadata producer dict of a regions file (deterministic: no times, no paths)."""
    return {
        "command": COMMAND,
        "backbone": backbone.name,
        "weights": backbone.weights,
        "pretrained": backbone.pretrained,
        "image_size": backbone.image_size,
        "preprocessing": backbone.preprocessing,
        "layer": backbone.spec.layer,
        "global": backbone.spec.global_layer,
        "grid": [backbone.grid[0], backbone.grid[1]],
        "dim": backbone.dim,
        "global_dim": backbone.global_dim,
        "dtype": dtype,
        "layout": "regions: row-major grid_h x grid_w x dim; global: global_dim",
    }


MAX_CPU_WORKERS = 8  # each holds its own activations: ~0.4 GB for a pass of 16 at 224, ~1.6 GB at 448
WORKER_BASE_BYTES = 0.5e9  # a worker's own heap, decode buffers and batches beside its activations


def worker_bytes(image_size: int) -> float:
    """What one CPU network worker may hold at ``image_size``: its base and the activations
    of one pass (0.4 GB for Lite0's pass of 16 at 224, measured; by pixels, with headroom
    for the larger backbones)."""
    from smcli.images.backbones import cpu_pass_size

    return WORKER_BASE_BYTES + 0.6e9 * cpu_pass_size(image_size) / 16 * (image_size / 224) ** 2


def memory_workers(image_size: int) -> int:
    """The most CPU network workers the available memory holds (at least 1)."""
    from smcli.runtime import available_memory

    free = available_memory()
    if free is None:
        return MAX_CPU_WORKERS
    return max(1, int((free - 1e9) // worker_bytes(image_size)))


def default_workers(device: str = "cpu", image_size: int | None = None) -> int:
    """CPU: one network worker per core (at most 8, and with ``image_size`` at most what the
    available memory holds: a 448 px worker holds ~2.4 GB). CUDA: half the cores decode (1 to 4)."""
    if device == "cpu":
        most = MAX_CPU_WORKERS if image_size is None else min(MAX_CPU_WORKERS, memory_workers(image_size))
        return max(1, min(most, cpu_cores()))
    return max(1, min(4, cpu_cores() // 2))


def _check_options(opts: ExtractOptions) -> None:
    from smcli.images.backbones import check_image_size

    opts.image_size = check_image_size(opts.image_size)  # before anything divides by it
    if opts.batch_size is None:
        opts.batch_size = default_batch_size(opts.image_size)
    if opts.dtype not in DTYPES:
        raise UsageError(f"--dtype {opts.dtype}: choose float16 or float32")
    if opts.batch_size < 1:
        raise UsageError(f"--batch-size {opts.batch_size}: must be at least 1")
    if opts.workers is not None and opts.workers < 0:
        raise UsageError(f"--workers {opts.workers}: must be 0 (decode inline) or more")
    if opts.tune_layout and opts.workers is not None:
        raise UsageError(f"--tune-layout measures the number of workers: drop --workers {opts.workers}")
    if opts.max_pixels < 1:
        raise UsageError(f"--max-pixels {opts.max_pixels}: must be positive")


# ---------------------------------------------------------------------------------------
# Decoding (runs in worker processes)


class _Decoded:
    """What a worker returns for one batch: indices, the good images stacked (or, when the
    worker ran the network, their features), the errors."""

    __slots__ = ("indices", "images", "sizes", "errors", "features")

    def __init__(self, indices, images, sizes, errors):
        self.indices = indices  # positions in the item list of the good images, in order
        self.images = images  # uint8 tensor (n_good, S, S, 3) or None
        self.sizes = sizes  # [(width, height)] of the good images
        self.errors = errors  # [(position, reason)]
        self.features = None  # (regions, global) tensors in the output dtype, from a worker


class _DecodeDataset:
    """Map-style dataset of item positions -> (position, array | None, w, h, reason)."""

    def __init__(self, paths: Sequence[str], size: int, max_pixels: int):
        self.paths = paths
        self.size = size
        self.max_pixels = max_pixels

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int):
        try:
            arr, w, h = load_image(self.paths[i], self.size, self.max_pixels)
            return i, arr, w, h, None
        except ImageError as exc:
            return i, None, 0, 0, str(exc)
        except Exception as exc:  # noqa: BLE001 - one odd file must not end the run
            return i, None, 0, 0, f"unexpected error while decoding: {type(exc).__name__}: {exc}"


def _collate(samples) -> _Decoded:
    import torch

    good = [s for s in samples if s[1] is not None]
    images = torch.from_numpy(np.stack([s[1] for s in good])) if good else None
    return _Decoded([s[0] for s in good], images, [(s[2], s[3]) for s in good],
                    [(s[0], s[4]) for s in samples if s[1] is None])


class _CollateAndRun:
    """Collate in a worker process, then run the network there on one thread.

    One thread is also what keeps a forked worker safe: GNU OpenMP hangs in a child that
    asks for a thread pool after the parent used one. Features do not depend on the chunk
    size (every CPU forward pass has the same number of images; see :meth:`Backbone.__call__`).
    """

    def __init__(self, backbone: Backbone, np_dtype):
        self.backbone = backbone
        self.np_dtype = np_dtype

    def __call__(self, samples) -> _Decoded:
        import torch
        from torch.utils.data import get_worker_info

        if get_worker_info() is None:  # --workers 0: this process, one thread for this batch only
            with one_thread():
                return self._run(samples)
        torch.set_num_threads(1)  # a worker process: for good
        return self._run(samples)

    def _run(self, samples) -> _Decoded:
        import torch

        dec = _collate(samples)
        if dec.images is not None:
            regions, glob_ = _run_network(self.backbone, dec.images, self.np_dtype)
            dec.features = (torch.from_numpy(regions), torch.from_numpy(glob_))
            dec.images = None  # not sent back
        return dec


def _run_network(backbone: Backbone, images, np_dtype) -> tuple[np.ndarray, np.ndarray]:
    """(regions, global) of a uint8 batch on the host in the output dtype (on the CPU the
    backbone runs it in passes of :attr:`Backbone.cpu_pass` images). Torch converts to
    float16 with the CPU's F16C instructions: the same bits as numpy's astype, 10x faster."""
    import torch

    regions, glob_ = backbone(images)
    dtype = torch.float16 if np_dtype == np.float16 else torch.float32
    return regions.to("cpu", dtype).numpy(), glob_.to("cpu", dtype).numpy()


_EXPONENT = {np.dtype(np.float16): (np.uint16, 0x7C00), np.dtype(np.float32): (np.uint32, 0x7F800000)}


def _finite_rows(regions: np.ndarray, glob: np.ndarray) -> np.ndarray:
    """Which images have only finite features. A float is NaN or inf exactly when its
    exponent bits are all ones; testing those on the integer view costs a sixth of
    ``np.isfinite`` on float16, and no torch thread pool wakes in this process."""
    n = len(regions)
    bad = np.zeros(n, bool)
    for values in (regions, glob):
        uint, mask = _EXPONENT[values.dtype]
        bad |= ((values.reshape(n, -1).view(uint) & uint(mask)) == uint(mask)).any(1)
    return ~bad


def _batches(paths: Sequence[str], opts: ExtractOptions, workers: int, pin: bool,
             network: _CollateAndRun | None = None):
    """Yield :class:`_Decoded` batches in order, made by ``workers`` processes (which also
    run ``network`` when given)."""
    from torch.utils.data import DataLoader

    dataset = _DecodeDataset(paths, opts.image_size, opts.max_pixels)
    if workers == 0:
        for start in range(0, len(paths), opts.batch_size):
            yield _collate([dataset[i] for i in range(start, min(len(paths), start + opts.batch_size))])
        return
    with warnings.catch_warnings():  # torch's multi-line note when --workers exceeds the cores
        warnings.filterwarnings("ignore", message="This DataLoader will create")
        loader = DataLoader(
            dataset,  # type: ignore[arg-type]
            batch_size=opts.batch_size,
            shuffle=False,
            num_workers=workers,
            collate_fn=network or _collate,
            prefetch_factor=2,
            pin_memory=pin,
            persistent_workers=False,
            worker_init_fn=quiet_lost_peer_threads,
        )
        batches = iter(loader)
    yield from batches


# ---------------------------------------------------------------------------------------
# Turning network output into Arrow rows


def _fixed_list(values: np.ndarray, width: int, value_type: pa.DataType) -> pa.Array:
    flat = pa.array(np.ascontiguousarray(values).reshape(-1), type=value_type)
    return pa.FixedSizeListArray.from_arrays(flat, width)


def _rows(items: Sequence[ImageItem], positions: list[int], sizes, regions: np.ndarray,
          glob: np.ndarray, schema: pa.Schema) -> pa.RecordBatch:
    n = len(positions)
    rtype: pa.FixedSizeListType = schema.field("regions").type
    gtype: pa.FixedSizeListType = schema.field("global").type
    return pa.record_batch([
        pa.array([items[i].image_id for i in positions], pa.string()),
        pa.array([items[i].path for i in positions], pa.string()),
        pa.array([s[0] for s in sizes], pa.int32()),
        pa.array([s[1] for s in sizes], pa.int32()),
        _fixed_list(regions.reshape(n, -1), rtype.list_size, rtype.value_type),
        _fixed_list(glob.reshape(n, -1), gtype.list_size, gtype.value_type),
    ], schema=schema)


# ---------------------------------------------------------------------------------------
# The run


def default_batch_size(image_size: int) -> int:
    """Two CPU forward passes: 32 up to 448 px, fewer for larger images (4 at 640)."""
    from smcli.images.backbones import cpu_pass_size

    return 2 * cpu_pass_size(image_size)


def load_backbone_for(opts: ExtractOptions) -> Backbone:
    from smcli.images.backbones import load_backbone

    return load_backbone(opts.backbone, opts.image_size, opts.weights, opts.device)


def run_extract(items: Sequence[ImageItem], target: OutputTarget, opts: ExtractOptions,
                report: RunReport, backbone: Backbone | None = None, *,
                before_commit: Callable[[StageWriter, dict[str, int]], None] | None = None,
                on_batch: Callable[[], None] | None = None) -> dict[str, int]:
    """Extract features for ``items`` into ``target``; returns the counts for the last line.

    ``before_commit(writer, counts)`` runs once every row is written, before the output is
    committed (a shard writes its error report and its counts there); ``on_batch()`` after
    every batch written."""
    with torch_threads(opts.threads):
        return _run_extract(items, target, opts, report, backbone, before_commit=before_commit, on_batch=on_batch)


def _run_extract(items: Sequence[ImageItem], target: OutputTarget, opts: ExtractOptions,
                report: RunReport, backbone: Backbone | None = None, *,
                before_commit: Callable[[StageWriter, dict[str, int]], None] | None = None,
                on_batch: Callable[[], None] | None = None) -> dict[str, int]:
    """run_extract's work, at the torch threads it set."""
    import torch

    auto_batch = opts.batch_size is None
    _check_options(opts)
    if opts.resume and target.path is None:
        raise UsageError("--resume needs an output file (-o FILE); a stream cannot be resumed")
    tune_malloc()
    if backbone is None:
        backbone = load_backbone_for(opts)
    on_cpu = backbone.device.type == "cpu"
    # CPU workers left unset: the layout measured on this machine, if one was (smcli.images.layout)
    layout_key = machine_key(backbone.name, backbone.image_size, opts.batch_size) \
        if on_cpu and opts.workers is None else None
    workers = opts.workers
    if workers is None:
        workers = (layout_key and remembered(layout_key)) or default_workers(backbone.device.type, backbone.image_size)
    meta_producer = producer(backbone, opts.dtype)
    schema = regions_schema(backbone.grid, backbone.dim, backbone.global_dim, opts.dtype)
    np_dtype = DTYPES[opts.dtype][1]
    n_values = backbone.grid[0] * backbone.grid[1] * backbone.dim + backbone.global_dim
    row_bytes = n_values * np.dtype(np_dtype).itemsize
    row_group = int(min(8192, max(16, ROW_GROUP_BYTES // row_bytes)))

    journal: Journal | None = None
    done: set[str] = set()
    resumed = 0
    t0 = time.perf_counter()
    try:
        if target.path is not None:
            journal = Journal(target.path)
            journal.lock()
            journal.remove_stale_temporaries()  # before our own temporary output exists
        writer = StageWriter(target, schema, new_meta("regions", meta_producer), row_group_size=row_group)
    except BaseException:  # Ctrl-C or SIGTERM while starting included
        if journal is not None and journal.locked:
            journal.remove_stale_temporaries()  # a temporary output whose writer never came to be
            journal.release()
        raise
    try:
        if journal is not None:
            if journal.exists() and not opts.resume:
                warn(COMMAND, f"discarding the partial results of an interrupted run of {target.path} "
                              "(use --resume to continue it instead)")
                journal.discard()
            if opts.resume:
                wanted = {it.path for it in items}
                if journal.exists():
                    for batch in journal.read(meta_producer):
                        paths = batch.column(1).to_pylist()
                        keep = [i for i, p in enumerate(paths) if p in wanted and p not in done]
                        if len(keep) != len(paths):
                            batch = batch.take(pa.array(keep, pa.int64()))
                        done.update(paths[i] for i in keep)
                        writer.write(batch)
                    resumed = len(done)
                    say(COMMAND, f"resuming: {resumed:,} image(s) done by the interrupted run, "
                                 f"{len(items) - resumed:,} to go")
                else:
                    say(COMMAND, f"--resume: no interrupted run of {target.path}; "
                                 "starting from the beginning")
            journal.start_segment(schema, meta_producer)

        todo = [it for it in items if it.path not in done] if done else list(items)
        if auto_batch and on_cpu and workers > 1 and len(items) < workers * opts.batch_size:
            # a few images: smaller batches, so that every worker (core) gets some. Sized on
            # all the images, not those left: a resumed run then forms the batches the
            # interrupted one would have (the journal holds whole batches), so its features
            # are the uninterrupted run's bit for bit (the network's rounding depends on the
            # number of images in a forward pass).
            opts = dataclasses.replace(opts, batch_size=max(2, math.ceil(len(items) / workers)))
        loop = functools.partial(_extract_loop, backbone=backbone, opts=opts, schema=schema, np_dtype=np_dtype,
                                 writer=writer, journal=journal, report=report, on_batch=on_batch)
        if opts.tune_layout and layout_key:
            counts = _tuned_loop(todo, loop, opts.batch_size, layout_key, untuned=workers,
                                     most=min(MAX_CPU_WORKERS, memory_workers(backbone.image_size)))
        else:
            counts = loop(todo, workers=workers)
        if before_commit is not None:
            before_commit(writer, {"resumed": resumed, "processed": counts["processed"],
                                   "failed": counts["failed"], "written": writer.rows_written + writer.rows_pending})
        writer.close()
    except BaseException as exc:
        writer.abort()
        if journal is not None:
            journal.release()
            if not isinstance(exc, UsageError) and journal.exists() and (journal.appended or resumed):
                say(COMMAND, f"partial results kept in {journal.dir}; rerun with --resume to continue")
        raise
    if journal is not None:
        journal.remove()
    elapsed = time.perf_counter() - t0
    processed = counts["processed"]
    say(COMMAND, f"{backbone.name} ({backbone.weights}) at {backbone.image_size}x{backbone.image_size}: "
                 f"{backbone.grid[0]}x{backbone.grid[1]}x{backbone.dim} regions + "
                 f"{backbone.global_dim}-d global, "
                 f"{opts.dtype}; {processed:,} image(s) in {elapsed:.1f} s "
                 f"({processed / max(elapsed, 1e-9):.1f} images/s) on {backbone.device.type}, "
                 + (f"{counts['workers']} worker process(es) decoding and running the network"
                    if on_cpu and counts["workers"] else
                    f"{counts['workers']} decoding worker(s), {torch.get_num_threads()} torch thread(s)"))
    return {"resumed": resumed, "processed": counts["processed"], "failed": counts["failed"],
            "written": writer.rows_written}


def _tuned_loop(todo: Sequence[ImageItem], loop: Callable[..., dict[str, int]], batch_size: int,
                key: str, untuned: int, most: int = MAX_CPU_WORKERS) -> dict[str, int]:
    """--tune-layout: each candidate worker count runs the next images (whole batches, so the
    rows are an untuned run's), the fastest is remembered and runs the rest (``untuned``
    workers when too few images are left to measure any)."""
    rates: dict[int, float] = {}
    start = processed = failed = 0
    for n in candidates(cpu_cores(), most):
        size = PROBE_BATCHES * batch_size * n
        if len(todo) - start < size:  # too few images left to measure this one
            break
        t0 = time.perf_counter()
        c = loop(todo[start:start + size], workers=n)
        rates[n] = size / max(time.perf_counter() - t0, 1e-9)
        start, processed, failed = start + size, processed + c["processed"], failed + c["failed"]
    if rates:
        workers = remember(key, rates)
        say(COMMAND, "layout measured: " + ", ".join(f"{n} worker(s) {r:.1f} images/s" for n, r in rates.items())
                     + f"; {workers} from now on, remembered for this machine")
    else:
        workers = untuned
        say(COMMAND, f"--tune-layout: too few images to measure the layouts; {workers} worker(s)")
    c = loop(todo[start:], workers=workers)
    return {"processed": processed + c["processed"], "failed": failed + c["failed"], "workers": workers}


def _extract_loop(todo: Sequence[ImageItem], backbone: Backbone, opts: ExtractOptions, workers: int,
                  schema: pa.Schema, np_dtype, writer: StageWriter, journal: Journal | None,
                  report: RunReport, on_batch: Callable[[], None] | None = None) -> dict[str, int]:
    paths = [it.path for it in todo]
    workers = min(workers, max(0, (len(paths) + opts.batch_size - 1) // opts.batch_size))
    network = None
    if workers and backbone.device.type == "cpu":
        network = _CollateAndRun(backbone, np_dtype)
    progress = Progress(COMMAND, len(paths), sys.stderr.isatty() if opts.progress is None else opts.progress)
    processed = failed = 0
    try:
        for dec in _batches(paths, opts, workers, pin=backbone.device.type == "cuda", network=network):
            for pos, reason in dec.errors:
                report.reject(todo[pos].path, "", reason)  # raises under --strict
                failed += 1
            if dec.features is not None:
                regions, glob_ = dec.features[0].numpy(), dec.features[1].numpy()
            elif dec.images is not None:
                regions, glob_ = _run_network(backbone, dec.images, np_dtype)
            if dec.indices:
                finite = _finite_rows(regions, glob_)
                if not finite.all():  # NaN/inf from the network (damaged weights): never written
                    for pos in np.flatnonzero(~finite).tolist():
                        report.reject(todo[dec.indices[pos]].path, "",
                                      "non-finite (NaN/inf) features from the backbone; check its weights")
                        failed += 1
                    keep = np.flatnonzero(finite)
                    dec.indices = [dec.indices[k] for k in keep.tolist()]
                    dec.sizes = [dec.sizes[k] for k in keep.tolist()]
                    regions, glob_ = regions[keep], glob_[keep]
            if dec.indices:
                batch = _rows(todo, dec.indices, dec.sizes, regions, glob_, schema)
                writer.write(batch)
                if journal is not None:
                    journal.append(batch)
                if on_batch is not None:
                    on_batch()
            processed += len(dec.indices) + len(dec.errors)
            progress.advance(len(dec.indices) + len(dec.errors))
    finally:
        progress.close()
    return {"processed": processed, "failed": failed, "workers": workers}


# ---------------------------------------------------------------------------------------
# A few images on the fly (retrieve --image)


_BACKBONE_CACHE: dict[tuple, Backbone] = {}


def extract_images(
    paths: Sequence[str],
    backbone: str = DEFAULT_BACKBONE,
    image_size: int = DEFAULT_IMAGE_SIZE,
    weights: str = "default",
    *,
    device: str = "auto",
    dtype: str = "float16",
    max_pixels: int = DEFAULT_MAX_PIXELS,
    batch_size: int = 32,
    signature: dict[str, Any] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Features of a few images, in memory: (regions (N, R, D), global (N, Dg)).

    With ``signature`` (from :func:`smcli.images.features.feature_signature` of the file a
    model was trained on), the backbone, image size and weights come from it, and the
    loaded backbone must have the same identity; ``weights`` may then still name the local
    file the signature's ``file:...`` identity refers to. A bad image raises InputError
    naming the file. The backbone stays cached for the next call. On the CPU the network
    runs on one thread, as in extract-regions' workers, so ``dtype`` float16 (the default)
    gives exactly the values the image has in a default regions file.
    """
    from smcli.images.features import check_signature, weights_arg

    if signature is not None:
        backbone = signature["backbone"]
        image_size = int(signature["image_size"])
        weights = weights_arg(signature["weights"], weights)
    if dtype not in DTYPES:
        raise UsageError(f"dtype {dtype}: choose float16 or float32")
    key = (backbone, int(image_size), str(weights), device)
    net = _BACKBONE_CACHE.get(key)
    if net is None:
        from smcli.images.backbones import load_backbone

        net = load_backbone(backbone, image_size, weights, device)
        _BACKBONE_CACHE[key] = net
    if signature is not None:
        check_signature(signature, producer(net, dtype), "these images")
    import torch

    regions_out, global_out = [], []
    for start in range(0, len(paths), batch_size):
        arrays = []
        for p in paths[start:start + batch_size]:
            try:
                arrays.append(load_image(str(p), net.image_size, max_pixels)[0])
            except ImageError as exc:
                raise InputError(f"{p}: {exc}") from None
        with one_thread(net.device.type == "cpu"):
            regions, glob_ = net(torch.from_numpy(np.stack(arrays)))
        n = regions.shape[0]
        regions_out.append(regions.reshape(n, -1, net.dim).cpu().numpy().astype(DTYPES[dtype][1]))
        global_out.append(glob_.cpu().numpy().astype(DTYPES[dtype][1]))
    if not regions_out:
        gh, gw = net.grid
        return (np.zeros((0, gh * gw, net.dim), DTYPES[dtype][1]),
                np.zeros((0, net.global_dim), DTYPES[dtype][1]))
    return np.concatenate(regions_out), np.concatenate(global_out)


# ---------------------------------------------------------------------------------------
# The stage as one call: what ``smcli extract-regions`` runs, and ``smcli.extract_regions``


def extract_regions(inputs: str | os.PathLike | Sequence[str | os.PathLike], output: str | os.PathLike | None,
                    *, root: str | None = None, path_column: str | None = None,
                    errors: str | os.PathLike | None = None, strict: bool = False, **options: Any) -> dict[str, int]:
    """Images (directories, files, ``@list.txt``, Parquet/CSV tables with a path column,
    ``-`` for stdin) -> a regions Parquet file at ``output`` (None or ``-``: stdout).

    ``options`` are the fields of :class:`ExtractOptions` (backbone, image_size, weights,
    batch_size, workers, tune_layout, threads, dtype, device, max_pixels, resume, progress). Bad images
    are reported (``errors``: a file for them) and counted; ``strict`` makes them fatal.
    Returns the counts of the run (also printed on stderr).
    """
    from smcli.images.sources import list_images
    from smcli.stage import check_not_input, check_output_path, check_second_output, resolve_output

    target = resolve_output(None if output is None else str(output))
    if errors is not None:
        check_output_path(errors, "--errors")  # before the images are listed
    unknown = sorted(set(options) - {f.name for f in dataclasses.fields(ExtractOptions)})
    if unknown:
        raise UsageError(f"unknown extract-regions option(s): {', '.join(unknown)}")
    opts = ExtractOptions(**{k: v for k, v in options.items() if v is not None})
    inputs = [str(inputs)] if isinstance(inputs, str | os.PathLike) else [str(i) for i in inputs]
    report = RunReport(COMMAND, errors_path=None if errors is None else Path(errors), strict=strict)
    listing = list_images(inputs, report, root=root, path_column=path_column)
    if listing.listed == 0:
        raise InputError(f"no images found in {' '.join(inputs)} (looked for image extensions "
                         "in directories; lists and tables were empty)")
    named = [*inputs, *(it.path for it in listing.items)]
    check_not_input(target.path, named)  # before any work: writing would destroy an input
    if errors is not None:
        check_second_output(errors, "--errors", output=target.path, inputs=named)
    counts = run_extract(listing.items, target, opts, report)
    final = {"listed": listing.listed, "duplicates": listing.duplicates}
    if counts["resumed"]:
        final["resumed"] = counts["resumed"]
    final.update(processed=counts["processed"], written=counts["written"], failed=len(report.rejects))
    report.finish(**final)
    return final
