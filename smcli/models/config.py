"""Model configuration: every hyperparameter of a matcher, saved as config.json."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

VARIANTS = ("smlstm", "no-context", "mean", "vse", "cca")
GLOBAL_WEIGHTS = ("learned", "val")
TEXT_ENCODERS = ("minilm", "bilstm")


@dataclass
class ModelConfig:
    variant: str = "smlstm"
    text_encoder: str = "minilm"
    # what the model was built for; set from the data before training
    img_dim: int = 1280
    regions: int = 49
    vocab_size: int = 0
    # sentence side (bilstm)
    word_vectors: str | None = None  # "glove-6b-50d" initialises the word embeddings
    word_dim: int = 300
    lstm_dim: int = 512  # [forward; backward], each half of this
    # sm-LSTM
    inst_dim: int = 256  # regions and words projected to this
    ctx_dim: int = 256  # each modality's context vector
    att_dim: int = 128  # hidden size of the saliency MLPs
    sim_dim: int = 256  # local similarity vector x_t
    hidden_dim: int = 256  # multimodal LSTM state
    steps: int = 3  # T
    att_scale: float = 0.0  # > 0: a learned multiplier of the attention logits, starting here
    score_head: str = "mlp"  # "mlp" on h_T, or "sum": a learned sum over h_1..h_T
    local_skip: bool = True  # add the mean local cosine over steps to the score (a skip path)
    fuse_global: bool = True  # add a multiple of the one-to-one cosine to the score
    global_weight: str = "val"  # that multiple: chosen on val after each epoch, or "learned" with the matcher
    dropout: float = 0.3  # on the region and word features entering the matcher
    # one-to-one embedding head (the vse variant, shortlisting, negative mining)
    emb_dim: int = 1024
    emb_dropout: float = 0.2
    # cca
    cca_dim: int = 256
    cca_reg: float = 1e-3
    cca_power: float = 1.0  # score weights canonical correlations ** power
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def many_to_many(self) -> bool:
        return self.variant in ("smlstm", "no-context", "mean")

    @property
    def global_weight_on_val(self) -> bool:
        """The cosine's weight is set by the trainer on val, not trained with the matcher."""
        return self.many_to_many and self.fuse_global and self.global_weight == "val"

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        data = {"global_weight": "learned", **data}  # models saved before the option learned it
        return cls(**{k: v for k, v in data.items() if k in known})
