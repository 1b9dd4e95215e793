"""Model configuration: every hyperparameter of a matcher, its default and its check, saved as config.json."""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass
from typing import Any

from smcli import options

VARIANTS = ("smlstm", "no-context", "mean", "vse", "cca")
GLOBAL_WEIGHTS = ("learned", "val")
TEXT_ENCODERS = ("minilm", "bilstm")
SCORE_HEADS = ("mlp", "sum")
WORD_VECTORS = ("glove-6b-50d",)
DROPOUT_DRAWS = ("bits16", "bernoulli")  # see smcli/models/dropout.py


@dataclass
class ModelConfig:
    variant: str = "smlstm"
    text_encoder: str = "minilm"
    # what the model was built for; set from the data before training
    img_dim: int = 1280
    vocab_size: int = 0
    # sentence side (bilstm)
    word_vectors: str | None = None  # "glove-6b-50d" initialises the word embeddings
    word_dim: int = 300
    lstm_dim: int = 512  # [forward; backward], each half of this
    # sentence side (minilm): the MiniLM layers whose token states are the word instances,
    # "0" (the word-piece embeddings, no sentence context) to "6" (the last layer), or several
    # joined by "+" (their states side by side, e.g. "0+6"); the sentence vector is always the
    # last layer's
    word_layers: str = "6"
    # sm-LSTM
    inst_dim: int = 256  # regions and words projected to this
    ctx_dim: int = 256  # each modality's context vector
    att_dim: int = 128  # hidden size of the saliency MLPs
    sim_dim: int = 256  # local similarity vector x_t
    hidden_dim: int = 256  # multimodal LSTM state
    steps: int = 3  # T
    att_scale: float = 0.0  # > 0: a learned multiplier of the attention logits, starting here
    # > 0: the words selected at a step steer that step's region attention: its logits add
    # lambda * cos(region value, selected words) (SCAN's text-to-image attention inside the
    # sm-LSTM step), lambda learned from this start; 0: the paper's attention only
    cross_scale: float = 0.0
    # > 0: word coverage: a step's word logits subtract beta * the weight earlier steps gave each
    # word, so that the steps select different words (beta learned from this start); 0: off
    coverage: float = 0.0
    # > 0: region coverage (inhibition of return): a step's region logits subtract
    # gamma * R * the weight steps 1..t-1 gave each of the R regions (a uniform map shifts every
    # logit alike, so only what earlier steps selected is held back; gamma learned from this
    # start); 0: off
    region_coverage: float = 0.0
    score_head: str = "mlp"  # "mlp" on h_T, or "sum": a learned sum over h_1..h_T
    local_skip: bool = True  # add the mean local cosine over steps to the score (a skip path)
    fuse_global: bool = True  # add a multiple of the one-to-one cosine to the score
    global_weight: str = "val"  # that multiple: chosen on val after each epoch, or "learned" with the matcher
    dropout: float = 0.3  # on the region and word features entering the matcher
    # how its mask is drawn: "bits16" (16 random bits an element, ~7x cheaper on the CPU) or
    # "bernoulli" (nn.Dropout's, the draw of models saved before this option); same distribution
    dropout_draw: str = "bits16"
    # one-to-one embedding head (the vse variant, shortlisting, negative mining)
    emb_dim: int = 1024
    emb_dropout: float = 0.2
    # cca
    cca_dim: int = 256
    cca_reg: float = 1e-3
    cca_power: float = 1.0  # score weights canonical correlations ** power

    def __post_init__(self) -> None:
        options.check_types(self)
        options.choice(self, "variant", VARIANTS)
        options.choice(self, "text_encoder", TEXT_ENCODERS)
        options.choice(self, "score_head", SCORE_HEADS)
        options.choice(self, "global_weight", GLOBAL_WEIGHTS)
        options.choice(self, "dropout_draw", DROPOUT_DRAWS)
        if not re.fullmatch(r"[0-6](\+[0-6])*", self.word_layers) or \
                len(set(self.minilm_layers)) != len(self.minilm_layers):
            options.fail("word_layers", self.word_layers, "give MiniLM layers 0-6, several joined by + (e.g. 0+6)")
        if self.word_layers != "6" and self.text_encoder != "minilm":
            options.fail("word_layers", self.word_layers, "applies to --text-encoder minilm")
        if self.word_vectors is not None:
            options.choice(self, "word_vectors", WORD_VECTORS)
            if self.text_encoder != "bilstm":
                options.fail("word_vectors", self.word_vectors, "applies to --text-encoder bilstm")
        options.at_least(self, 1, "img_dim", "word_dim", "lstm_dim", "inst_dim", "ctx_dim", "att_dim",
                         "sim_dim", "hidden_dim", "steps", "emb_dim", "cca_dim")
        options.at_least(self, 0, "vocab_size", "att_scale", "cross_scale", "coverage", "region_coverage",
                         "cca_reg", "cca_power")
        options.fraction(self, "dropout", "emb_dropout")

    @property
    def minilm_layers(self) -> tuple[int, ...]:
        """``word_layers`` as layer numbers."""
        return tuple(int(x) for x in self.word_layers.split("+"))

    @property
    def many_to_many(self) -> bool:
        return self.variant in ("smlstm", "no-context", "mean")

    @property
    def global_weight_on_val(self) -> bool:
        """The cosine's weight is set by the trainer on val, not trained with the matcher."""
        return self.many_to_many and self.fuse_global and self.global_weight == "val"

    def replace(self, **changes: Any) -> ModelConfig:
        """A copy with ``changes`` (checked like any config)."""
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelConfig:
        """A saved config; keys this version does not know (``regions``, ``extra`` of older
        models) are ignored; models saved before ``global_weight`` learned it, and before
        ``dropout_draw`` drew their masks with bernoulli (so --resume and retraining from an
        old config.json repeat the old run)."""
        if not isinstance(data, dict):
            from smcli.errors import InputError

            raise InputError(f"model config is {type(data).__name__}, not a JSON object")
        known = {f.name for f in dataclasses.fields(cls)}
        data = {"global_weight": "learned", "dropout_draw": "bernoulli", **data}
        return cls(**{k: v for k, v in data.items() if k in known})
