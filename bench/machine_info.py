"""What the benchmark scripts print about the machine they ran on (imported as `machine_info`)."""

from __future__ import annotations

import os


def cpu_model() -> str:
    """The CPU's model name (smcli.runtime.cpu_model), or '?'."""
    from smcli.runtime import cpu_model as model_name

    return model_name() or "?"


def load_average() -> str:
    """The 1/5/15-minute load average, or '?' where the OS has none."""
    return " ".join(f"{x:.2f}" for x in os.getloadavg()) if hasattr(os, "getloadavg") else "?"
