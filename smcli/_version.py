"""The version of smcli (one place; the package, the metadata of every file and pyproject read it)."""

__version__ = "0.1.0"
