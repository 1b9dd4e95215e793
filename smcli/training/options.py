"""Training options: every setting of the loop, its default and its check (one source for the CLI too)."""

from __future__ import annotations

from dataclasses import dataclass

from smcli import options
from smcli.errors import UsageError
from smcli.models.config import ModelConfig
from smcli.runtime import PRECISIONS


def parse_negatives(value: str | int) -> str | int:
    """``hardest``, ``sum`` or a positive K (from the command line: its text)."""
    if value in ("hardest", "sum"):
        return value
    if isinstance(value, int) and not isinstance(value, bool) and value > 0:
        return value
    if isinstance(value, str) and value.isdigit() and int(value) > 0:
        return int(value)
    raise UsageError(f"--negatives {value}: use hardest, sum or a positive integer K")


@dataclass
class TrainOptions:
    epochs: int = 30
    batch_size: int = 128
    lr: float = 2e-4
    lr_decay_epochs: int = 8  # lr x 0.1 from this epoch on (VSE++); 0 = never
    margin: float = 0.2
    negatives: str | int = "hardest"  # hardest (VSE++) | sum (all) | K (sum of the K hardest)
    mine: int = 4  # negatives per positive mined by the embedding; 0 = score the whole batch
    emb_weight: float = 1.0  # weight of the embedding head's loss beside the matcher's
    grad_clip: float = 2.0
    weight_decay: float = 0.0  # AdamW's decoupled weight decay
    patience: int = 4  # stop after this many epochs without a better val rsum
    val_shortlist: int = 20  # per-epoch val: re-rank this many candidates (0 = exhaustive)
    checkpoint_every: int = 100  # steps between resumable checkpoints
    seed: int = 0
    device: str = "auto"
    precision: str = "auto"  # bf16 autocast where the hardware has it (see smcli.runtime)
    resume: bool = False
    resume_epochs: int = 0  # with resume: train up to this many epochs in all (0: as the run was started)
    overwrite: bool = False
    max_steps_per_epoch: int = 0  # 0 = all; for smoke runs
    init_from: str | None = None  # model dir whose embedding head (and text encoder) start this one
    freeze_embedding: bool = False  # keep that one-to-one head fixed: train a re-ranker on top

    def __post_init__(self) -> None:
        self.negatives = parse_negatives(self.negatives)
        options.check_types(self)
        options.at_least(self, 1, "epochs", "patience", "checkpoint_every")
        options.at_least(self, 2, "batch_size")
        options.at_least(self, 0, "resume_epochs", "lr", "lr_decay_epochs", "margin", "mine", "emb_weight", "grad_clip",
                         "weight_decay", "val_shortlist", "max_steps_per_epoch")
        options.choice(self, "precision", PRECISIONS)
        if self.freeze_embedding and not self.init_from:
            raise UsageError("--freeze-embedding needs --init MODEL_DIR (a trained one-to-one head)")


def split_options(**values) -> tuple[ModelConfig, TrainOptions]:
    """The model config and the training options from one set of keyword options (what
    ``smcli.train`` and ``smcli train`` take); options left as None keep their defaults."""
    import dataclasses

    model_fields = {f.name for f in dataclasses.fields(ModelConfig)}
    train_fields = {f.name for f in dataclasses.fields(TrainOptions)}
    unknown = sorted(set(values) - model_fields - train_fields)
    if unknown:
        raise UsageError(f"unknown training option(s): {', '.join(unknown)}")
    values = options.given(**values)
    if values.get("resume") and "epochs" in values:
        # a resumed run keeps its saved settings; --epochs alone may change, to train on
        values["resume_epochs"] = values["epochs"]
    return (ModelConfig(**{k: v for k, v in values.items() if k in model_fields}),
            TrainOptions(**{k: v for k, v in values.items() if k in train_fields}))
