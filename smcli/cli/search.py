"""``smcli score``, ``retrieve``, ``caption-rank`` and ``index``: using a trained matcher.

--model, --regions and --captions default to $SMCLI_MODEL, $SMCLI_REGIONS, $SMCLI_CAPTIONS
or the nearest smcli.toml (see ``smcli.defaults``); ``make demo`` writes one.
"""

from __future__ import annotations

from pathlib import Path

import typer

from smcli.cli.app import (
    DISTRIBUTOR_HELP,
    ERRORS_HELP,
    OUTPUT_HELP,
    RAY_ADDRESS_HELP,
    RETRY_HELP,
    SHARD_HELP,
    SHARDS_HELP,
    STRICT_HELP,
    app,
)

MODEL_HELP = ("Model directory from smcli train, or a pretrained model's name; A,B,C: an ensemble "
              "(the mean of their scores) (default: $SMCLI_MODEL or smcli.toml).")
REGIONS_HELP = "Regions Parquet (default: $SMCLI_REGIONS or smcli.toml)."
CAPTIONS_HELP = "Captions Parquet (default: $SMCLI_CAPTIONS or smcli.toml)."
SINGLE_MODEL_HELP = ("Model directory from smcli train, or a pretrained model's name "
                     "(default: $SMCLI_MODEL or smcli.toml).")
SHORTLIST_HELP = "Candidates the one-to-one embedding shortlists for sm-LSTM to re-rank."
EXHAUSTIVE_HELP = "Score every candidate with the matcher instead of a shortlist."
DEVICE_HELP = "auto | cpu | cuda"
PRECISION_HELP = "auto | fp32 | bf16"
TABLE_HELP = "Print a readable table even when stdout is not a terminal (not with -o)."


def _inputs(regions: str | None, captions: str | None, *others: str | None) -> list[str | None]:
    """The files a command reads, flags or the defaults ($SMCLI_*, smcli.toml) alike: an
    output must be none of them."""
    from smcli.defaults import resolve

    return [resolve("regions", regions, required=False), resolve("captions", captions, required=False), *others]


def _check_outputs(output: str | None, table: bool, inputs: list[str | None], errors: Path | None = None) -> None:
    """-o (and --errors) checked before any work: creatable, none of the inputs."""
    from smcli.output import wants_table
    from smcli.stage import check_second_output, resolve_output

    target = None if wants_table(output, table) else resolve_output(output, inputs=inputs)
    if errors is not None:
        check_second_output(errors, "--errors", output=target.path if target else None, inputs=inputs)


def _load(model: str | None, device: str, precision: str):
    from smcli.defaults import resolve
    from smcli.inference.matcher import MatchModel

    return MatchModel(resolve("model", model), device=device, precision=precision)


@app.command("score")
def score_cmd(
    model: str | None = typer.Option(None, "--model", help=MODEL_HELP),
    regions: str | None = typer.Option(None, "--regions", help=REGIONS_HELP),
    captions: str | None = typer.Option(None, "--captions", help=CAPTIONS_HELP),
    pairs: str | None = typer.Option(
        None, "--pairs", help="Parquet/CSV of image_id with caption_id or caption text; "
                              "default: each caption of --captions with its own image."),
    output: str | None = typer.Option(None, "-o", "--output", help=OUTPUT_HELP),
    table: bool = typer.Option(False, "--table", help=TABLE_HELP),
    errors: Path | None = typer.Option(None, "--errors", help=ERRORS_HELP),
    strict: bool = typer.Option(False, "--strict", help=STRICT_HELP),
    references: str | None = typer.Option(
        None, "--references",
        help="Parquet/CSV of image_id, caption: reference captions per image. Adds image_cosine, "
             "reference_cosine and ref_score (their harmonic mean, 0 to 1, as RefCLIPScore)."),
    fail_under: float | None = typer.Option(
        None, "--fail-under",
        help="Exit 3 (after writing the scores) when the mean score (ref_score with --references) is below this."),
    device: str = typer.Option("auto", "--device", help=DEVICE_HELP),
    precision: str = typer.Option("auto", "--precision", help=PRECISION_HELP),
    shard: str | None = typer.Option(None, "--shard", help=SHARD_HELP + " --pairs: a file or a partition-pairs DIR."),
    shards: int | None = typer.Option(None, "--shards", min=1, help=SHARDS_HELP),
    distributor: str = typer.Option("local", "--distributor", help=DISTRIBUTOR_HELP),
    ray_address: str | None = typer.Option(None, "--ray-address", help=RAY_ADDRESS_HELP),
    max_shard_retry: int = typer.Option(3, "--max-shard-retry", min=1, help=RETRY_HELP),
) -> None:
    """Score how well captions match images: writes image_id, caption_id, caption, score,
    in input order, and prints the mean score. --pairs with caption text needs no --captions.
    Example: smcli score --regions feats.parquet --pairs pairs.csv -o scores.parquet"""
    import numpy as np

    from smcli.defaults import resolve
    from smcli.evaluation.recall import check_gates
    from smcli.inference.tasks import load_captions, read_pairs, read_references, score_file
    from smcli.output import emit
    from smcli.report import RunReport, say

    if shard is not None or shards is not None:
        from smcli.distributed.score import score_in_shards

        score_in_shards(model, regions, captions, pairs, output, shard=shard, shards=shards, distributor=distributor,
                        ray_address=ray_address, max_shard_retry=max_shard_retry, errors=errors,
                        fail_under=fail_under, references=references, strict=strict, device=device,
                        precision=precision)
        return
    _check_outputs(output, table, _inputs(regions, captions, pairs, references), errors)  # before any work
    report = RunReport("score", errors_path=errors, strict=strict)
    matcher = _load(model, device, precision)
    caps_path = resolve("captions", captions, required=pairs is None)
    caps = load_captions(matcher, caps_path) if caps_path else None
    regions = resolve("regions", regions)
    refs = read_references(references) if references else None
    result = score_file(matcher, regions, caps, read_pairs(caps, pairs), report, refs)
    read = result.num_rows + len(report.rejects)
    written = emit(result, "scores", {"command": "score", **matcher.producer()}, output,
                   show=["image_id", "caption", "score", *(["ref_score"] if references else [])],
                   force_table=table)
    mean = float(np.mean(result.column("score").to_numpy()))
    say("score", f"mean score {mean:.4f} over {result.num_rows:,} pairs")
    gated = mean
    if refs is not None:
        ref = result.column("ref_score").drop_null().to_numpy()
        gated = float(np.mean(ref)) if len(ref) else float("nan")
        say("score", f"mean ref_score {gated:.4f} over {len(ref):,} pairs with references")
    report.finish(read=read, written=written, rejected=len(report.rejects))
    if fail_under is not None:
        check_gates({"mean": gated}, {"mean": fail_under}, "score")


@app.command("retrieve")
def retrieve_cmd(
    query: list[str] | None = typer.Option(None, "--query", "-q", help="Text query (repeatable)."),
    queries: str | None = typer.Option(None, "--queries", help="File of queries (any format tokenize reads)."),
    image: list[str] | None = typer.Option(
        None, "--image", help="Image id in --regions, or an image file (repeatable): image -> texts."),
    model: str | None = typer.Option(None, "--model", help=MODEL_HELP),
    regions: str | None = typer.Option(None, "--regions", help=REGIONS_HELP),
    captions: str | None = typer.Option(None, "--captions", help=CAPTIONS_HELP),
    index: str | None = typer.Option(
        None, "--index", help="Saved gallery from smcli index (text queries; instead of --regions)."),
    top_k: int = typer.Option(10, "--top-k", "-k", min=1, help="Results per query."),
    shortlist: int = typer.Option(100, "--shortlist", min=1, help=SHORTLIST_HELP),
    exhaustive: bool = typer.Option(False, "--exhaustive", help=EXHAUSTIVE_HELP),
    evaluate: bool = typer.Option(False, "--eval", help="Evaluate on --split: R@1/5/10 both ways, rsum."),
    split: str = typer.Option("test", "--split", help="Split for --eval."),
    folds: int = typer.Option(1, "--folds", min=1, help="--eval over N equal folds, averaged (COCO 1K: 5)."),
    fail_under: list[str] | None = typer.Option(
        None, "--fail-under", help="With --eval: exit 3 (after writing the metrics) when METRIC=VALUE is not met, "
                                   "e.g. rsum=300 or t2i_r1=20 (repeatable)."),
    output: str | None = typer.Option(None, "-o", "--output", help=OUTPUT_HELP + " With --eval: .json or .parquet."),
    table: bool = typer.Option(False, "--table", help=TABLE_HELP),
    image_text: str | None = typer.Option(
        None, "--image-text",
        help="Words read in the images (smcli read-text): images whose text matches the query's words "
             "(case-insensitive, tolerant of OCR errors) rank first, fused with the matcher's score; "
             "the results show the words matched and where. With --eval: fused text->image scores."),
    image_text_weight: float = typer.Option(
        2.0, "--image-text-weight", min=0.0,
        help="Fusion weight: score = matcher + W x (matcher's max - min over the candidates) x text score "
             "(0 to 1). From 1 a full text match ranks above every image without one; 0: the matcher alone. "
             "Default 2, chosen on val."),
    image_text_only: bool = typer.Option(
        False, "--image-text-only",
        help="Text spotting alone: rank the images whose text matches the query by that (no model, no --regions)."),
    device: str = typer.Option("auto", "--device", help=DEVICE_HELP),
    precision: str = typer.Option("auto", "--precision", help=PRECISION_HELP),
) -> None:
    """Search images with text (--query) or texts with an image (--image); or --eval.

    Examples: smcli retrieve --query "a dog on grass";
    smcli retrieve --image photo.jpg; smcli retrieve --eval --split test --exhaustive;
    smcli retrieve --query "london" --image-text text.parquet
    """
    from smcli.defaults import resolve
    from smcli.errors import UsageError
    from smcli.output import emit

    texts = list(query or [])
    if image_text_only and not image_text:
        raise UsageError("--image-text-only needs --image-text FILE (from smcli read-text)")
    if image_text and image:
        raise UsageError("--image-text goes with text queries (--query, --queries) or --eval, not --image")
    if evaluate:
        if texts or queries or image:
            raise UsageError("--eval evaluates a split; it takes no --query, --queries or --image")
        if image_text_only:
            raise UsageError("--image-text-only ranks by the words read alone; --eval needs the model")
        return _evaluate(model, regions, captions, split, None if exhaustive else shortlist, folds,
                         output, device, precision, fail_under or [], image_text, image_text_weight)
    if fail_under:
        raise UsageError("--fail-under goes with --eval")
    if queries:
        texts += _read_queries(queries)
    if not texts and not image:
        raise UsageError("nothing to search: give --query TEXT, --queries FILE or --image ID_OR_PATH")
    if texts and image:
        raise UsageError("give text queries or --image, not both")
    _check_outputs(output, table, _inputs(regions, captions, queries, image_text, *(image or [])))
    if image_text:
        return _search_with_image_text(texts, image_text, image_text_weight, image_text_only, model, regions,
                                       index, top_k, None if exhaustive else shortlist, output, table,
                                       device, precision)
    matcher = _load(model, device, precision)
    mode = None if exhaustive else shortlist
    from smcli.inference import tasks

    if texts:
        index_dir = index or (None if regions else resolve("index", None, required=False))
        if index_dir:
            result = tasks.search_index(matcher, index_dir, texts, top_k, mode)
        else:
            feats = tasks.load_features(matcher, resolve("regions", regions))
            result = tasks.search_images(matcher, feats, texts, top_k, mode)
        show = ["query", "rank", "score", "path"]
    else:
        from smcli.inference.inputs import resolve_images

        reg_path = resolve("regions", regions, required=False)
        feats = tasks.load_features(matcher, reg_path) if reg_path else None
        images = resolve_images(list(image), feats, matcher.features)
        caps = tasks.load_captions(matcher, resolve("captions", captions))
        result = tasks.search_texts(matcher, images, caps, top_k, mode)
        show = ["query", "rank", "score", "caption"]
    emit(result, "retrieval", {"command": "retrieve", "shortlist": mode, **matcher.producer()}, output,
         show=show, group="query", force_table=table)


def _search_with_image_text(texts, image_text, weight, only, model, regions, index, top_k, mode, output, table,
                            device, precision) -> None:
    """retrieve --image-text: the matcher fused with the words read in the images, or those alone."""
    from smcli.defaults import resolve
    from smcli.errors import UsageError
    from smcli.images.read_text import load_image_text
    from smcli.inference import text_spotting
    from smcli.output import emit

    words = load_image_text(image_text)
    show = ["query", "rank", "score", "text_score", "matched", "path"]
    if only:
        result = text_spotting.spot_images(words, texts, top_k)
        emit(result, "retrieval", {"command": "retrieve --image-text-only", "image_text": words.meta}, output,
             show=show, group="query", force_table=table)
        return
    if index:
        raise UsageError("--image-text needs --regions (the gallery's features), not --index")
    from smcli.inference import tasks

    matcher = _load(model, device, precision)
    feats = tasks.load_features(matcher, resolve("regions", regions))
    result = text_spotting.search_images_with_text(matcher, feats, words, texts, top_k, mode, weight)
    emit(result, "retrieval", {"command": "retrieve", "shortlist": mode, "image_text_weight": weight,
                               "image_text": words.meta, **matcher.producer()}, output,
         show=show, group="query", force_table=table)


def _read_queries(path: str) -> list[str]:
    from smcli.report import RunReport
    from smcli.text.readers import read_captions

    report = RunReport("retrieve")
    _, records = read_captions(path, "auto", report)
    return [r.caption for r in records if r.caption.strip()]


def _evaluate(model, regions, captions, split, shortlist, folds, output, device, precision, fail_under,
              image_text=None, image_text_weight=2.0) -> None:
    import json

    from smcli.defaults import resolve
    from smcli.evaluation.protocol import evaluate
    from smcli.evaluation.recall import GATE_METRICS, check_gates, parse_gates
    from smcli.report import say

    gates = parse_gates(fail_under, GATE_METRICS)
    if output:  # before the evaluation: a file that can be written and is no input
        from smcli.stage import check_not_input, check_output_path

        check_not_input(check_output_path(output), _inputs(regions, captions, image_text))
    matcher = _load(model, device, precision)
    words = None
    if image_text:
        from smcli.images.read_text import load_image_text

        words = load_image_text(image_text)
    result = evaluate(matcher, resolve("regions", regions), resolve("captions", captions), split,
                      shortlist=shortlist, folds=folds, image_text=words, text_weight=image_text_weight)
    m = result.metrics
    from rich.table import Table

    from smcli.output import console as make_console

    title = (f"{matcher.loaded.config.variant} ({matcher.loaded.config.text_encoder}) on {split}: "
             f"{m.images:,} images, {m.captions:,} captions, {result.mode}"
             + (f" (shortlist {result.shortlist})" if result.mode == "two-stage" else "")
             + (f", {folds} folds" if folds > 1 else "")
             + (f", text->image fused with {image_text} (weight {image_text_weight:g})" if image_text else ""))
    view = Table()
    for c in ("direction", "R@1", "R@5", "R@10", "med r", "mean r"):
        view.add_column(c, justify="right")
    view.add_row("image->text", f"{m.i2t_r1:.1f}", f"{m.i2t_r5:.1f}", f"{m.i2t_r10:.1f}",
                 f"{m.i2t_medr:.0f}", f"{m.i2t_meanr:.1f}")
    view.add_row("text->image", f"{m.t2i_r1:.1f}", f"{m.t2i_r5:.1f}", f"{m.t2i_r10:.1f}",
                 f"{m.t2i_medr:.0f}", f"{m.t2i_meanr:.1f}")
    view.caption = f"rsum {m.rsum:.1f}; scoring {result.seconds:.1f} s, {result.pairs_scored:,} pairs"
    console = make_console()
    console.print(title)
    console.print(view)
    record = {**result.to_dict(), "model": matcher.name, "model_hash": matcher.hash,
              "variant": matcher.loaded.config.variant, "text_encoder": matcher.loaded.config.text_encoder}
    if matcher.is_ensemble:
        record["members"] = [str(m.directory) for m in matcher.members]
    if output:
        from smcli.stage import AtomicFile

        if output.endswith(".parquet"):
            import pyarrow as pa

            from smcli.stage import OutputTarget, new_meta, write_table

            rows = [{"split": split, "direction": d, "metric": k, "value": float(v)}
                    for k, v in result.metrics.to_dict().items()
                    for d in [("i2t" if k.startswith("i2t") else "t2i" if k.startswith("t2i") else "both")]]
            write_table(OutputTarget(Path(output)), pa.Table.from_pylist(rows),
                        new_meta("metrics", {"command": "retrieve --eval", **record}))
        else:
            out = AtomicFile(Path(output))
            out.handle.write(json.dumps(record, indent=2).encode())
            out.commit()
        say("retrieve", f"metrics written to {output}")
    check_gates(result.metrics.to_dict(), gates, "retrieve --eval")


@app.command("caption-rank")
def caption_rank_cmd(
    model: str | None = typer.Option(None, "--model", help=MODEL_HELP),
    regions: str | None = typer.Option(None, "--regions", help=REGIONS_HELP),
    captions: str | None = typer.Option(None, "--captions", help=CAPTIONS_HELP + " Candidates for every image."),
    candidates: str | None = typer.Option(
        None, "--candidates", help="Parquet/CSV of image_id, caption: each image's own candidate list."),
    image: list[str] | None = typer.Option(
        None, "--image", help="Rank for these images (id in --regions or a file); default: all of --regions."),
    top_k: int = typer.Option(10, "--top-k", "-k", min=0, help="Captions kept per image (0: all)."),
    shortlist: int = typer.Option(100, "--shortlist", min=1, help=SHORTLIST_HELP),
    exhaustive: bool = typer.Option(False, "--exhaustive", help=EXHAUSTIVE_HELP),
    output: str | None = typer.Option(None, "-o", "--output", help=OUTPUT_HELP),
    table: bool = typer.Option(False, "--table", help=TABLE_HELP),
    errors: Path | None = typer.Option(None, "--errors", help=ERRORS_HELP),
    strict: bool = typer.Option(False, "--strict", help=STRICT_HELP),
    device: str = typer.Option("auto", "--device", help=DEVICE_HELP),
    precision: str = typer.Option("auto", "--precision", help=PRECISION_HELP),
) -> None:
    """Rank candidate captions for each image: writes image_id, caption_id, caption, rank, score.

    Example: smcli caption-rank --image dog.jpg --candidates cands.csv
    """
    from smcli.defaults import resolve
    from smcli.inference import tasks
    from smcli.inference.inputs import ImageSet, resolve_images
    from smcli.output import emit
    from smcli.report import RunReport

    _check_outputs(output, table, _inputs(regions, captions, candidates, *(image or [])), errors)
    report = RunReport("caption-rank", errors_path=errors, strict=strict)
    matcher = _load(model, device, precision)
    reg_path = resolve("regions", regions, required=not image)
    feats = tasks.load_features(matcher, reg_path) if reg_path else None
    if image:
        images = resolve_images(list(image), feats, matcher.features)
    else:
        images = ImageSet(feats.image_ids, feats.paths, feats.regions, feats.global_)
    caps = None
    if candidates is None:
        caps = tasks.load_captions(matcher, resolve("captions", captions))
    result = tasks.rank_captions(matcher, images, caps, candidates, top_k,
                                None if exhaustive else shortlist, report)
    written = emit(result, "caption-ranks", {"command": "caption-rank", **matcher.producer()}, output,
                   show=["image_id", "rank", "score", "caption"], group="image_id", force_table=table)
    report.finish(images=len(images.image_ids), written=written, rejected=len(report.rejects))


@app.command("index")
def index_cmd(
    model: str | None = typer.Option(None, "--model", help=SINGLE_MODEL_HELP),
    regions: str | None = typer.Option(None, "--regions", help=REGIONS_HELP),
    output: Path = typer.Option(..., "-o", "--output", help="Index directory to write."),
    kind: str = typer.Option(
        "auto", "--kind", help="auto (flat up to 200k images, ivf above) | flat (exact) | ivf | hnsw (approximate)."),
    codec: str = typer.Option(
        "int8", "--codec", help="How the per-image tensors are stored: int8 (per-row scales, half the "
                                "bytes of float16) | float16 | pca (keys and values in one transform code, "
                                "float16 embeddings: about 11 KB an image, rsum within 0.2 on Flickr8k)."),
    overwrite: bool = typer.Option(
        False, "--overwrite", help="Replace an existing smcli index in -o (never another directory)."),
    device: str = typer.Option("auto", "--device", help=DEVICE_HELP),
    precision: str = typer.Option("auto", "--precision", help=PRECISION_HELP),
) -> None:
    """Build a reusable search index of a gallery: faiss over the one-to-one embeddings plus
    the per-image matcher tensors, memory-mapped. Use it with smcli retrieve --index."""
    from smcli.defaults import resolve
    from smcli.inference.gallery import build_index, check_build

    check_build(output, kind, overwrite=overwrite, codec=codec)  # before the model loads
    matcher = _load(model, device, precision)
    build_index(matcher, resolve("regions", regions), output, kind, overwrite=overwrite, codec=codec)
