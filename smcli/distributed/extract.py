"""extract-regions in shards: ``--shard i/N`` (one shard, any scheduler) and ``--shards N``
(the built-in driver), both writing ``-o DIR/`` (see :mod:`smcli.distributed.shards`)."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from smcli.distributed.shards import (
    ShardSpec,
    check_shard_options,
    committed,
    format_counts,
    freeze_inputs,
    kill_hook,
    parse_shard,
    shard_directory,
    shard_record,
)
from smcli.errors import UsageError
from smcli.report import RunReport, say


def _options(options: dict[str, Any]):
    from smcli.images.extract import ExtractOptions

    unknown = sorted(set(options) - {f.name for f in dataclasses.fields(ExtractOptions)})
    if unknown:
        raise UsageError(f"unknown extract-regions option(s): {', '.join(unknown)}")
    return ExtractOptions(**{k: v for k, v in options.items() if v is not None})


def _inputs(inputs: str | os.PathLike | Sequence[str | os.PathLike]) -> list[str]:
    return [str(inputs)] if isinstance(inputs, str | os.PathLike) else [str(i) for i in inputs]


def extract_shard(inputs: str | os.PathLike | Sequence[str | os.PathLike], output: str | os.PathLike,
                  shard: str | ShardSpec, *, root: str | None = None, path_column: str | None = None,
                  strict: bool = False, **options: Any) -> dict[str, int]:
    """Shard ``i/N`` of the frozen input list into ``output/part-i-of-N.parquet`` (and its
    ``.errors.parquet``); nothing to do when that part is already committed. ``options`` as
    for :func:`smcli.images.extract.extract_regions`. Returns the shard's counts."""
    from smcli.images.extract import COMMAND, run_extract
    from smcli.images.sources import list_images
    from smcli.stage import OutputTarget

    spec = parse_shard(shard)
    opts = _options(options)
    directory = shard_directory(output)
    frozen = freeze_inputs(directory, _inputs(inputs), root=root, path_column=path_column,
                           list_images=list_images, report=RunReport(COMMAND), command=COMMAND)
    record = committed(directory, spec, frozen.fingerprint)
    if record is not None:
        say(COMMAND, f"shard {spec}: {directory / spec.part_name} is already committed; nothing to do")
        return dict(record["counts"])
    items = frozen.items(spec)
    report = RunReport(COMMAND, errors_path=directory / spec.errors_name, strict=strict)
    counts: dict[str, int] = {}

    def before_commit(writer, done: dict[str, int]) -> None:
        counts.update(processed=done["resumed"] + done["processed"], written=done["written"],
                      failed=len(report.rejects))
        report.write_errors()  # committed before the part: a part under its name is a finished shard
        writer.add_metadata(shard_record(spec, frozen.fingerprint, frozen.rows, counts))

    run_extract(items, OutputTarget(directory / spec.part_name), opts, report,
                before_commit=before_commit, on_batch=kill_hook(spec))
    say(COMMAND, f"shard {spec}: " + format_counts(counts))
    return counts


def extract_sharded(inputs: str | os.PathLike | Sequence[str | os.PathLike], output: str | os.PathLike,
                    shards: int, *, distributor: str = "local", ray_address: str | None = None,
                    max_shard_retry: int = 3, root: str | None = None, path_column: str | None = None,
                    strict: bool = False, **options: Any) -> dict[str, int]:
    """All ``shards`` shards through the built-in driver (``local`` or ``ray``): the inputs
    are listed once here, only shards without a committed part run, then finalize. Returns
    the counts of every part added up."""
    from smcli.distributed.drivers import command_line, drive
    from smcli.images.extract import COMMAND, default_workers
    from smcli.images.sources import list_images

    if shards < 1:
        raise UsageError(f"--shards {shards}: must be at least 1")
    opts = _options(options)
    if opts.resume:
        raise UsageError("--resume goes with --shard i/N; the driver reruns only the shards without a part")
    directory = shard_directory(output)
    names = _inputs(inputs)
    frozen = freeze_inputs(directory, names, root=root, path_column=path_column,
                           list_images=list_images, report=RunReport(COMMAND), command=COMMAND)
    cuda = opts.device.startswith("cuda")
    cpus = opts.workers or default_workers("cuda" if cuda else "cpu", opts.image_size)
    # the CPUs a shard is given are the workers it runs (not the cores of whichever node it lands on)
    shard_options = {**{k: v for k, v in options.items() if k != "resume"}, "workers": opts.workers or
                     (None if cuda else cpus), "root": root, "path_column": path_column, "strict": strict}

    def argv_for(spec: ShardSpec) -> list[str]:
        return command_line(COMMAND, [*names, "-o", str(Path(directory)) + "/", "--shard", str(spec)],
                            shard_options)

    manifest = drive(COMMAND, directory, shards, argv_for, distributor=distributor, ray_address=ray_address,
                     max_shard_retry=max_shard_retry, cpus=max(1, cpus), gpus=1 if cuda else 0,
                     fingerprint=frozen.fingerprint)
    return dict(manifest.counts)


def extract_in_shards(inputs: str | os.PathLike | Sequence[str | os.PathLike], output: str | os.PathLike | None, *,
                      shard: str | ShardSpec | None = None, shards: int | None = None, distributor: str = "local",
                      ray_address: str | None = None, max_shard_retry: int = 3, errors: str | os.PathLike | None = None,
                      resume: bool = False, **options: Any) -> dict[str, int]:
    """``--shard i/N`` (:func:`extract_shard`) or ``--shards N`` (:func:`extract_sharded`),
    with the checks of the options that go with each."""
    check_shard_options(shard, shards, errors=errors, distributor=distributor, ray_address=ray_address)
    if options.get("tune_layout"):
        raise UsageError("--tune-layout is for one extract-regions process; a shard runs the workers it "
                         "is given (--workers, default one per core)")
    if shard is not None:
        return extract_shard(inputs, output, shard, resume=resume, **options)
    if resume:
        raise UsageError("--resume goes with --shard i/N; the driver reruns only the shards without a part")
    return extract_sharded(inputs, output, int(shards or 0), distributor=distributor, ray_address=ray_address,
                           max_shard_retry=max_shard_retry, **options)
