"""Matchers: the sm-LSTM, its ablations, and the one-to-one baselines (VSE, CCA).

Public API: :func:`create_model`, :func:`load_model`, :func:`save_model`,
:class:`ModelConfig` and :data:`VARIANTS`. Importing this package does not import torch;
the model modules do.
"""

from smcli.models.config import TEXT_ENCODERS, VARIANTS, ModelConfig
from smcli.models.factory import create_model, load_model, save_model

__all__ = ["ModelConfig", "VARIANTS", "TEXT_ENCODERS", "create_model", "load_model", "save_model"]
