"""smcli: image-sentence matching with the selective multimodal LSTM, as Parquet pipeline stages.

The command line (``smcli.cli``) is a thin layer over this library; every stage is usable
from Python too, e.g. ``smcli.text.tokenize.tokenize_file``.
"""

__version__ = "0.1.0"
