"""Fitting the CCA baseline: closed form on the train split, its regularisation chosen on val.

No gradient steps: the train captions' sentence vectors and their images' global features
are fitted once per setting of the grid (regularisation x correlation power), each fit is
scored on val, and the best is saved. The word vectors of a bilstm sentence encoder are
read once, not once per grid point.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from smcli.evaluation.recall import RecallMetrics
from smcli.models.config import ModelConfig
from smcli.models.factory import create_model

REGULARISATIONS = (1e-4, 1e-3, 1e-2, 1e-1)
POWERS = (0.0, 1.0, 4.0)


def fit_cca_grid(cfg: ModelConfig, data, store, store_rows: np.ndarray, train_caps: np.ndarray,
                 validate: Callable[[Any], RecallMetrics], log: Callable[[str], None]):
    """(val metrics, model, config) of the best setting of the grid."""
    word_vectors = None
    if cfg.text_encoder == "bilstm":
        from smcli.models.glove import glove_matrix

        word_vectors = torch.from_numpy(glove_matrix(data.vocab.tokens)[0])
    x = np.asarray(data.global_[data.caption_image[train_caps]], np.float32)
    rows = store_rows[train_caps]
    best = None
    for reg in REGULARISATIONS:
        for power in POWERS:
            setting = cfg.replace(cca_reg=reg, cca_power=power)
            model = create_model(setting)
            if word_vectors is not None:
                model.word_vectors.copy_(word_vectors)
            with torch.inference_mode():
                y = torch.cat([model.sentence_vectors(store.batch(rows[s:s + 4096]))
                               for s in range(0, len(rows), 4096)]).numpy()
            model.fit(x, y)
            m = validate(model)
            log(f"cca reg {reg:g} power {power:g}: val {m.short()}")
            if best is None or m.rsum > best[0].rsum:
                best = (m, model, setting)
    return best
