"""Default model, gallery and captions, so ``smcli retrieve --query TEXT`` needs no flags.

Each setting comes from, in order: the command-line flag; an environment variable
(``SMCLI_MODEL``, ``SMCLI_REGIONS``, ``SMCLI_CAPTIONS``, ``SMCLI_INDEX``); the nearest
``smcli.toml`` in the current directory or a parent; for the model last of all, the
default pretrained model shipped with smcli (said once on stderr). For example::

    # smcli.toml
    model = "demo-out/model"
    regions = "demo-out/feats.parquet"
    captions = "demo-out/captions.parquet"

Relative paths in smcli.toml are relative to the file's directory.
"""

from __future__ import annotations

import os
import tomllib
from pathlib import Path

from smcli.errors import InputError, UsageError

CONFIG_NAME = "smcli.toml"
KEYS = ("model", "regions", "captions", "index")


def find_config(start: Path | None = None) -> Path | None:
    here = (start or Path.cwd()).resolve()
    for d in (here, *here.parents):
        if (d / CONFIG_NAME).is_file():
            return d / CONFIG_NAME
    return None


def load_config(start: Path | None = None) -> tuple[dict[str, str], Path | None]:
    path = find_config(start)
    if path is None:
        return {}, None
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise InputError(f"{path}: invalid TOML ({exc})") from None
    out = {}
    for key in KEYS:
        if key in raw:
            p = Path(str(raw[key]))
            out[key] = str(p if p.is_absolute() else path.parent / p)
            if key == "model" and _is_name(str(raw[key])) and not Path(out[key]).exists():
                out[key] = str(raw[key])  # a pretrained model's name, not a path
    return out, path


def _is_name(value: str) -> bool:
    return "/" not in value and "\\" not in value and not value.startswith(".")


def resolve(key: str, flag_value: str | None, *, required: bool = True, flag: str | None = None) -> str | None:
    """The value of setting ``key`` from flag, environment or smcli.toml."""
    if flag_value:
        return flag_value
    env = os.environ.get(f"SMCLI_{key.upper()}")
    if env:
        return env
    config, _ = load_config()
    if key in config:
        return config[key]
    if key == "model":
        from smcli.models import pretrained

        if pretrained.DEFAULT in pretrained.available():
            from smcli.report import say

            say("model", f"no model given: using the pretrained {pretrained.DEFAULT} model (smcli models "
                         f"--info {pretrained.DEFAULT}; --model, $SMCLI_MODEL or {CONFIG_NAME} to choose)")
            return pretrained.DEFAULT
    if required:
        flag = flag or f"--{key}"
        raise UsageError(f"no {key} given: use {flag}, set SMCLI_{key.upper()}, or name it in {CONFIG_NAME}")
    return None
