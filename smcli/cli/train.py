"""``smcli train``: the sm-LSTM matcher, its ablations and one-to-one baselines.

Every option defaults to None and only the options a user sets are passed on: the
defaults and their checks live in :class:`~smcli.models.config.ModelConfig` and
:class:`~smcli.training.options.TrainOptions`, and ``--help`` shows them from there.
"""

from __future__ import annotations

from pathlib import Path

import typer

from smcli.cli.app import app
from smcli.models.config import ModelConfig
from smcli.options import defaults
from smcli.training.options import TrainOptions

_MODEL, _TRAIN = defaults(ModelConfig), defaults(TrainOptions)


def _opt(field: str, *names: str, help: str, model: bool = True):  # noqa: A002 - typer's word
    """An option whose default (shown in --help) is the config dataclass's."""
    value = (_MODEL if model else _TRAIN)[field]
    shown = {True: "on", False: "off"}.get(value, value) if isinstance(value, bool) else value
    return typer.Option(None, *names, help=help, show_default=False if value is None else str(shown))


@app.command("train")
def train_cmd(
    regions: str = typer.Option(..., "--regions", help="Regions Parquet from extract-regions."),
    captions: str = typer.Option(..., "--captions", help="Captions Parquet from tokenize (with splits)."),
    output: Path = typer.Option(..., "-o", "--output", help="Model directory to write."),
    variant: str | None = _opt(
        "variant", "--variant",
        help="smlstm (full) | no-context (attention without context) | mean (no selection) | "
             "vse (one-to-one embedding) | cca (closed-form canonical correlation)."),
    text_encoder: str | None = _opt(
        "text_encoder", "--text-encoder",
        help="minilm (frozen all-MiniLM-L6-v2 token states) | bilstm (the paper's word-vector BiLSTM)."),
    word_vectors: str | None = _opt(
        "word_vectors", "--word-vectors", help="Initialise bilstm word embeddings from glove-6b-50d."),
    word_layers: str | None = _opt(
        "word_layers", "--word-layers",
        help="minilm: the layers whose token states are the word instances, 0 (word-piece "
             "embeddings, no sentence context) to 6 (the last), several joined by + (side by "
             "side, e.g. 0+6). The sentence vector is always the last layer's."),
    epochs: int | None = _opt("epochs", "--epochs", help="Most epochs to train.", model=False),
    batch_size: int | None = _opt("batch_size", "--batch-size", help="Captions per step.", model=False),
    lr: float | None = _opt("lr", "--lr", help="Adam learning rate.", model=False),
    lr_decay_epochs: int | None = _opt(
        "lr_decay_epochs", "--lr-decay-epochs", help="lr x 0.1 from this epoch on (0: never).", model=False),
    steps: int | None = _opt("steps", "--steps", help="T: attention + LSTM steps per pair."),
    margin: float | None = _opt("margin", "--margin", help="Hinge ranking margin alpha.", model=False),
    negatives: str | None = _opt(
        "negatives", "--negatives", help="hardest (VSE++) | sum (all negatives) | K (sum of the K hardest).",
        model=False),
    mine: int | None = _opt(
        "mine", "--mine", help="Negatives per positive that the embedding mines for the matcher (0: whole batch).",
        model=False),
    inst_dim: int | None = _opt("inst_dim", "--inst-dim", help="Regions and words are projected to this."),
    sim_dim: int | None = _opt("sim_dim", "--sim-dim", help="Size of the local similarity vector x_t."),
    att_dim: int | None = _opt("att_dim", "--att-dim", help="Hidden size of the saliency MLPs."),
    hidden_dim: int | None = _opt("hidden_dim", "--hidden-dim", help="Multimodal LSTM state size."),
    att_scale: float | None = _opt(
        "att_scale", "--att-scale",
        help="Learned multiplier of the attention logits, starting at this value (0: none)."),
    cross_scale: float | None = _opt(
        "cross_scale", "--cross-scale",
        help="Word-steered region attention: each step's region logits add lambda * cosine of the "
             "region and that step's selected words, lambda learned from this value (0: off)."),
    coverage: float | None = _opt(
        "coverage", "--coverage",
        help="Word coverage: each step's word logits subtract beta * the weight earlier steps gave "
             "each word, so steps select different words; beta learned from this value (0: off)."),
    region_coverage: float | None = _opt(
        "region_coverage", "--region-coverage",
        help="Region coverage: each step's region logits subtract gamma * R * the weight earlier "
             "steps gave each of the R regions, so steps attend different regions; gamma learned "
             "from this value (0: off)."),
    emb_dim: int | None = _opt("emb_dim", "--emb-dim", help="One-to-one embedding size."),
    score_head: str | None = _opt("score_head", "--score-head", help="mlp (on h_T) | sum (learned sum over h_1..h_T)."),
    local_skip: bool | None = _opt(
        "local_skip", "--local-skip/--no-local-skip",
        help="Add the mean cosine of the selected pairs over the steps to the score (a skip path)."),
    fuse_global: bool | None = _opt(
        "fuse_global", "--fuse-global/--no-fuse-global",
        help="Add a multiple of the one-to-one cosine to the sm-LSTM score."),
    global_weight: str | None = _opt(
        "global_weight", "--global-weight",
        help="That multiple: val (the matcher trains on its own score; the multiple is chosen "
             "on val after every epoch) | learned (trained with the matcher)."),
    emb_weight: float | None = _opt(
        "emb_weight", "--emb-weight", help="Weight of the one-to-one embedding loss beside the matcher's.",
        model=False),
    dropout: float | None = _opt("dropout", "--dropout", help="Dropout on region and word projections."),
    dropout_draw: str | None = _opt(
        "dropout_draw", "--dropout-draw",
        help="How dropout masks are drawn: bits16 (cheap on the CPU) | bernoulli (nn.Dropout's; "
             "models saved before this option). Same distribution, different masks for a seed."),
    emb_dropout: float | None = _opt("emb_dropout", "--emb-dropout", help="Dropout in the one-to-one embedding head."),
    weight_decay: float | None = _opt("weight_decay", "--weight-decay", help="AdamW weight decay.", model=False),
    init: str | None = typer.Option(
        None, "--init", help="Start the one-to-one head (and a bilstm text encoder) from this trained model."),
    freeze_embedding: bool | None = _opt(
        "freeze_embedding", "--freeze-embedding/--no-freeze-embedding",
        help="Keep the --init head fixed: train the matcher as a re-ranker on top.", model=False),
    patience: int | None = _opt(
        "patience", "--patience", help="Stop after this many epochs without better val rsum.", model=False),
    val_shortlist: int | None = _opt(
        "val_shortlist", "--val-shortlist", help="Per-epoch val re-ranks this many candidates (0: exhaustive).",
        model=False),
    seed: int | None = _opt("seed", "--seed", help="Seed of initialisation, batch order and dropout.", model=False),
    device: str | None = _opt("device", "--device", help="auto | cpu | cuda | cuda:N", model=False),
    precision: str | None = _opt(
        "precision", "--precision", help="auto (bf16 autocast where the hardware has it) | fp32 | bf16.", model=False),
    resume: bool = typer.Option(
        False, "--resume", help="Continue an interrupted run in the same directory, with its saved settings; "
        "with --epochs N, train a finished or interrupted run on to N epochs in all."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace a model already in the directory."),
    checkpoint_every: int | None = _opt(
        "checkpoint_every", "--checkpoint-every", help="Steps between resumable checkpoints (and every epoch end).",
        model=False),
    max_steps: int | None = _opt(
        "max_steps_per_epoch", "--max-steps", help="Cap steps per epoch (0: all), for smoke runs.", model=False),
) -> None:
    """Train a matcher on the train split, choosing the epoch by val rsum (test is never used).

    Writes MODEL_DIR/config.json, model.safetensors, vocab.txt and metrics.jsonl (one row per
    epoch). Example: smcli train --regions feats.parquet --captions caps.parquet -o model/
    """
    from smcli.training.options import split_options
    from smcli.training.trainer import train

    cfg, opts = split_options(
        variant=variant, text_encoder=text_encoder, word_vectors=word_vectors, word_layers=word_layers,
        steps=steps, inst_dim=inst_dim,
        sim_dim=sim_dim, att_dim=att_dim, hidden_dim=hidden_dim, emb_dim=emb_dim, score_head=score_head,
        fuse_global=fuse_global, dropout=dropout, dropout_draw=dropout_draw, emb_dropout=emb_dropout,
        att_scale=att_scale, cross_scale=cross_scale, coverage=coverage, region_coverage=region_coverage,
        local_skip=local_skip,
        global_weight=global_weight,
        epochs=epochs, batch_size=batch_size, lr=lr, lr_decay_epochs=lr_decay_epochs, margin=margin,
        negatives=negatives, mine=mine, patience=patience, val_shortlist=val_shortlist, seed=seed, device=device,
        precision=precision, resume=resume, overwrite=overwrite, max_steps_per_epoch=max_steps,
        checkpoint_every=checkpoint_every, emb_weight=emb_weight, weight_decay=weight_decay, init_from=init,
        freeze_embedding=freeze_embedding)
    train(regions, captions, output, cfg, opts)
