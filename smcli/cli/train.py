"""``smcli train``: the sm-LSTM matcher, its ablations and one-to-one baselines."""

from __future__ import annotations

from pathlib import Path

import typer

from smcli.cli.app import app


@app.command("train")
def train_cmd(
    regions: str = typer.Option(..., "--regions", help="Regions Parquet from extract-regions."),
    captions: str = typer.Option(..., "--captions", help="Captions Parquet from tokenize (with splits)."),
    output: Path = typer.Option(..., "-o", "--output", help="Model directory to write."),
    variant: str = typer.Option(
        "smlstm", "--variant",
        help="smlstm (full) | no-context (attention without context) | mean (no selection) | "
             "vse (one-to-one embedding) | cca (closed-form canonical correlation).",
    ),
    text_encoder: str = typer.Option(
        "minilm", "--text-encoder",
        help="minilm (frozen all-MiniLM-L6-v2 token states) | bilstm (the paper's word-vector BiLSTM).",
    ),
    word_vectors: str | None = typer.Option(
        None, "--word-vectors", help="Initialise bilstm word embeddings from glove-6b-50d."
    ),
    epochs: int = typer.Option(30, "--epochs", min=1, help="Most epochs to train."),
    batch_size: int = typer.Option(128, "--batch-size", min=2),
    lr: float = typer.Option(2e-4, "--lr", min=0.0, help="Adam learning rate."),
    lr_decay_epochs: int = typer.Option(8, "--lr-decay-epochs", min=0, help="lr x 0.1 from this epoch on (0: never)."),
    steps: int = typer.Option(3, "--steps", min=1, help="T: attention + LSTM steps per pair."),
    margin: float = typer.Option(0.2, "--margin", min=0.0, help="Hinge ranking margin alpha."),
    negatives: str = typer.Option(
        "hardest", "--negatives", help="hardest (VSE++) | sum (all negatives) | K (sum of the K hardest)."
    ),
    mine: int = typer.Option(
        4, "--mine", min=0,
        help="Negatives per positive that the embedding mines for the matcher (0: whole batch).",
    ),
    inst_dim: int = typer.Option(256, "--inst-dim", min=1, help="Regions and words are projected to this."),
    att_dim: int = typer.Option(128, "--att-dim", min=1, help="Hidden size of the saliency MLPs."),
    hidden_dim: int = typer.Option(256, "--hidden-dim", min=1, help="Multimodal LSTM state size."),
    att_scale: float = typer.Option(
        0.0, "--att-scale", min=0.0,
        help="Learned multiplier of the attention logits, starting at this value (0: none)."),
    emb_dim: int = typer.Option(1024, "--emb-dim", min=1, help="One-to-one embedding size."),
    score_head: str = typer.Option("mlp", "--score-head", help="mlp (on h_T) | sum (learned sum over h_1..h_T)."),
    local_skip: bool = typer.Option(
        True, "--local-skip/--no-local-skip",
        help="Add the mean cosine of the selected pairs over the steps to the score (a skip path)."),
    fuse_global: bool = typer.Option(
        True, "--fuse-global/--no-fuse-global",
        help="Add a multiple of the one-to-one cosine to the sm-LSTM score."),
    global_weight: str = typer.Option(
        "val", "--global-weight",
        help="That multiple: val (the matcher trains on its own score; the multiple is chosen "
             "on val after every epoch) | learned (trained with the matcher)."),
    emb_weight: float = typer.Option(
        1.0, "--emb-weight", min=0.0, help="Weight of the one-to-one embedding loss beside the matcher's."),
    dropout: float = typer.Option(0.3, "--dropout", min=0.0, max=0.9, help="Dropout on region and word projections."),
    emb_dropout: float = typer.Option(
        0.2, "--emb-dropout", min=0.0, max=0.9, help="Dropout in the one-to-one embedding head."),
    weight_decay: float = typer.Option(0.0, "--weight-decay", min=0.0, help="AdamW weight decay."),
    init: str | None = typer.Option(
        None, "--init", help="Start the one-to-one head (and a bilstm text encoder) from this trained model."),
    freeze_embedding: bool = typer.Option(
        False, "--freeze-embedding", help="Keep the --init head fixed: train the matcher as a re-ranker on top."),
    patience: int = typer.Option(4, "--patience", min=1, help="Stop after this many epochs without better val rsum."),
    val_shortlist: int = typer.Option(
        20, "--val-shortlist", min=0, help="Per-epoch val re-ranks this many candidates (0: exhaustive)."
    ),
    seed: int = typer.Option(0, "--seed"),
    device: str = typer.Option("auto", "--device", help="auto | cpu | cuda"),
    precision: str = typer.Option(
        "auto", "--precision", help="auto (bf16 autocast where the hardware has it) | fp32 | bf16."
    ),
    resume: bool = typer.Option(False, "--resume", help="Continue an interrupted run in the same directory."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace a model already in the directory."),
    checkpoint_every: int = typer.Option(
        100, "--checkpoint-every", min=1, help="Steps between resumable checkpoints (and every epoch end)."),
    max_steps: int = typer.Option(0, "--max-steps", min=0, help="Cap steps per epoch (0: all), for smoke runs."),
) -> None:
    """Train a matcher on the train split, choosing the epoch by val rsum (test is never used).

    Writes MODEL_DIR/config.json, model.safetensors, vocab.txt and metrics.jsonl (one row per
    epoch). Example: smcli train --regions feats.parquet --captions caps.parquet -o model/
    """
    from smcli.errors import UsageError
    from smcli.models.config import GLOBAL_WEIGHTS, TEXT_ENCODERS, VARIANTS, ModelConfig
    from smcli.training.trainer import TrainOptions, parse_negatives, train

    if variant not in VARIANTS:
        raise UsageError(f"--variant {variant}: choose one of {', '.join(VARIANTS)}")
    if text_encoder not in TEXT_ENCODERS:
        raise UsageError(f"--text-encoder {text_encoder}: choose one of {', '.join(TEXT_ENCODERS)}")
    if word_vectors is not None and text_encoder != "bilstm":
        raise UsageError("--word-vectors applies to --text-encoder bilstm")
    if freeze_embedding and not init:
        raise UsageError("--freeze-embedding needs --init MODEL_DIR (a trained one-to-one head)")
    if global_weight not in GLOBAL_WEIGHTS:
        raise UsageError(f"--global-weight {global_weight}: choose {' or '.join(GLOBAL_WEIGHTS)}")
    if score_head not in ("mlp", "sum"):
        raise UsageError(f"--score-head {score_head}: choose mlp or sum")
    cfg = ModelConfig(variant=variant, text_encoder=text_encoder, word_vectors=word_vectors, steps=steps,
                      inst_dim=inst_dim, sim_dim=inst_dim, att_dim=att_dim, hidden_dim=hidden_dim,
                      emb_dim=emb_dim, score_head=score_head, fuse_global=fuse_global, dropout=dropout,
                      emb_dropout=emb_dropout, att_scale=att_scale,
                      local_skip=local_skip, global_weight=global_weight)
    opts = TrainOptions(epochs=epochs, batch_size=batch_size, lr=lr, lr_decay_epochs=lr_decay_epochs,
                        margin=margin, negatives=parse_negatives(negatives), mine=mine,
                        patience=patience, val_shortlist=val_shortlist, seed=seed, device=device, precision=precision,
                        resume=resume, overwrite=overwrite, max_steps_per_epoch=max_steps,
                        checkpoint_every=checkpoint_every, emb_weight=emb_weight,
                        weight_decay=weight_decay, init_from=init, freeze_embedding=freeze_embedding)
    train(regions, captions, output, cfg, opts)
