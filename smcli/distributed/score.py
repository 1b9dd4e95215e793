"""score in shards, and the pass that makes a billion pairs shardable.

``score --shard i/N --pairs P -o DIR/`` scores rows [floor(i*n/N), floor((i+1)*n/N)) of
the pairs file P (its fingerprint: the sha256 of its bytes), reading only the features of
the images those pairs name. For pairs too many to slice from one file, :func:`partition_pairs`
streams them once into ``PAIRS/part-i-of-N.parquet``, part i holding the pairs whose image
is in feature part i; ``score --shard i/N --pairs PAIRS/ --regions FEATS/`` then reads pairs
part i and feature part i only. Either way each output row keeps ``input_row`` (its row in
the original pairs file): a sharded run cannot keep the global order, a sort restores it.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pyarrow as pa

from smcli.distributed.shards import (
    ShardSpec,
    check_shard_options,
    committed,
    file_fingerprint,
    format_counts,
    parse_shard,
    shard_directory,
    shard_record,
)
from smcli.errors import InputError, UsageError
from smcli.report import RunReport, say

COMMAND = "score"


def _partitioned_pairs(pairs: str, spec: ShardSpec):
    """(part ``spec`` of a partition-pairs directory, its fingerprint, all its rows, the
    original pairs file's name, the opened directory)."""
    from smcli.stage import PartsInput, open_any

    stage = open_any(pairs)
    if not isinstance(stage, PartsInput) or stage.meta.kind != "pairs":
        raise InputError(f"{pairs}: not a directory of partitioned pairs (smcli partition-pairs)")
    if stage.manifest["shards"] != spec.count:
        raise UsageError(f"--shard {spec}: {pairs} holds {stage.manifest['shards']} part(s); score it as "
                         f"--shard I/{stage.manifest['shards']}")
    part = stage.part(spec.index)
    try:
        table = part.read()
    finally:
        part.close()
    return table, stage.manifest["fingerprint"], stage.num_rows, stage.meta.producer.get("pairs", pairs), stage


def score_shard(model: str | None, regions: str | None, captions: str | None, pairs: str, output: str | None,
                shard: str | ShardSpec, *, references: str | None = None, strict: bool = False,
                device: str = "auto", precision: str = "auto") -> dict[str, int]:
    """Shard ``i/N`` of ``pairs`` scored into ``output/part-i-of-N.parquet`` (scores with
    ``input_row``) and its error report; nothing to do when that part is committed."""
    from smcli.defaults import resolve
    from smcli.inference.matcher import MatchModel
    from smcli.inference.tasks import load_captions, read_pairs, read_references, score_pairs
    from smcli.stage import OutputTarget, PartsInput, StageWriter, new_meta, open_any

    spec = parse_shard(shard)
    directory = shard_directory(output)
    if Path(pairs).is_dir():
        table, fingerprint, n_rows, source, pairs_stage = _partitioned_pairs(pairs, spec)
    else:
        from smcli.inference.inputs import read_table_any

        table = read_table_any(pairs, "pairs")
        n_rows = table.num_rows
        lo, hi = spec.rows(n_rows)
        table = table.slice(lo, hi - lo).append_column("input_row", pa.array(range(lo, hi), pa.int64()))
        fingerprint, source, pairs_stage = file_fingerprint(pairs), pairs, None
    record = committed(directory, spec, fingerprint)
    if record is not None:
        say(COMMAND, f"shard {spec}: {directory / spec.part_name} is already committed; nothing to do")
        return dict(record["counts"])
    report = RunReport(COMMAND, errors_path=directory / spec.errors_name, strict=strict)
    matcher = MatchModel(resolve("model", model), device=device, precision=precision)
    caps_path = resolve("captions", captions, required=False)
    caps = load_captions(matcher, caps_path) if caps_path else None
    regions_path = resolve("regions", regions)
    pair_list = read_pairs(caps, None, table, source)
    wanted = {i for i in pair_list.images if i is not None}
    feats_stage = open_any(regions_path)
    own_part = (isinstance(feats_stage, PartsInput) and pairs_stage is not None
                and pairs_stage.meta.producer.get("regions_fingerprint") == feats_stage.manifest["fingerprint"])
    if own_part:  # partitioned by these features: every image of pair part i is in feature part i
        feats_stage = feats_stage.part(spec.index)
    from smcli.images.features import load_regions

    feats = load_regions(feats_stage, image_ids=wanted)
    feats.name = regions_path
    matcher.check_features(feats.meta, regions_path)
    refs = read_references(references) if references else None
    result = score_pairs(matcher, feats, caps, None, report, refs, pairs=pair_list, input_rows=True,
                         allow_empty=True)
    feats_stage.close()
    counts = {"read": table.num_rows, "written": result.num_rows, "rejected": len(report.rejects)}
    meta = new_meta("scores", {"command": COMMAND, **matcher.producer()})
    with StageWriter(OutputTarget(directory / spec.part_name), result.schema, meta) as writer:
        writer.write(result)
        report.write_errors()  # before the part: a part under its name is a finished shard
        writer.add_metadata(shard_record(spec, fingerprint, n_rows, counts))
    say(COMMAND, f"shard {spec}: " + format_counts(counts))
    return counts


def score_sharded(model: str | None, regions: str | None, captions: str | None, pairs: str, output: str | None,
                  shards: int, *, distributor: str = "local", ray_address: str | None = None,
                  max_shard_retry: int = 3, **options: Any) -> dict[str, int]:
    """All ``shards`` shards of ``pairs`` through the built-in driver, then finalize."""
    from smcli.defaults import resolve
    from smcli.distributed.drivers import command_line, drive

    directory = shard_directory(output)
    fingerprint = (open_manifest_fingerprint(pairs) if Path(pairs).is_dir() else file_fingerprint(pairs))
    shard_options = {"model": resolve("model", model), "regions": resolve("regions", regions),
                     "captions": resolve("captions", captions, required=False), "pairs": pairs, **options}
    cuda = str(options.get("device", "auto")).startswith("cuda")

    def argv_for(spec: ShardSpec) -> list[str]:
        return command_line(COMMAND, ["-o", str(directory) + "/", "--shard", str(spec)], shard_options)

    manifest = drive(COMMAND, directory, shards, argv_for, distributor=distributor, ray_address=ray_address,
                     max_shard_retry=max_shard_retry, cpus=1, gpus=1 if cuda else 0, fingerprint=fingerprint)
    return dict(manifest.counts)


def open_manifest_fingerprint(path: str) -> str:
    from smcli.stage import PartsInput, open_any

    stage = open_any(path)
    if not isinstance(stage, PartsInput):
        raise InputError(f"{path}: not a finalized directory of parts")
    return str(stage.manifest["fingerprint"])


def score_in_shards(model: str | None, regions: str | None, captions: str | None, pairs: str | None,
                    output: str | None, *, shard: str | None = None, shards: int | None = None,
                    distributor: str = "local", ray_address: str | None = None, max_shard_retry: int = 3,
                    errors: str | os.PathLike | None = None, fail_under: float | None = None,
                    **options: Any) -> dict[str, int]:
    """``score --shard i/N`` or ``--shards N``, with the checks of what goes with them."""
    check_shard_options(shard, shards, errors=errors, distributor=distributor, ray_address=ray_address)
    if pairs is None:
        raise UsageError("a sharded score splits a pairs file: give --pairs FILE (or a partition-pairs directory)")
    if fail_under is not None:
        raise UsageError("--fail-under gates a whole run; it does not go with sharded scoring")
    if shard is not None:
        return score_shard(model, regions, captions, pairs, output, shard, **options)
    return score_sharded(model, regions, captions, pairs, output, int(shards or 0), distributor=distributor,
                         ray_address=ray_address, max_shard_retry=max_shard_retry, **options)
