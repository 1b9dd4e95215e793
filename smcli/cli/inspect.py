"""``smcli inspect``: what an smcli Parquet file is and what made it."""

from __future__ import annotations

import typer

from smcli.cli.app import app


@app.command("inspect")
def inspect_cmd(
    file: str = typer.Argument(..., help="Any smcli Parquet file, a finalized directory of parts, or '-' for stdin."),
    json_out: bool = typer.Option(False, "--json", help="Print JSON instead of a table."),
) -> None:
    """Show the kind, schema version, producer settings, columns and row count of a file."""
    import json

    from smcli.stage import open_any

    stage = open_any(file)
    meta = stage.meta
    info = {
        "file": stage.name,
        "kind": meta.kind if meta.kind != "?" else "not an smcli file",
        "schema_version": meta.schema_version,
        "smcli_version": meta.smcli_version,
        "rows": stage.num_rows,
        "columns": {f.name: str(f.type) for f in stage.schema},
        "producer": meta.producer,
        "blobs": {k: f"{len(v):,} bytes" for k, v in meta.blobs.items()},
    }
    manifest = getattr(stage, "manifest", None)  # a finalized directory of parts
    if manifest is not None:
        info["parts"] = {"shards": manifest["shards"], "list_fingerprint": manifest["list_fingerprint"],
                         "counts": manifest["counts"]}
    stage.close()
    if json_out:
        typer.echo(json.dumps(info, indent=2))
        return
    from rich.table import Table

    from smcli.output import console

    table = Table(show_header=False, box=None, pad_edge=False)
    table.add_column(style="bold")
    table.add_column()
    for key in ("file", "kind", "schema_version", "smcli_version", "rows"):
        value = info[key]
        table.add_row(key, f"{value:,}" if isinstance(value, int) and key == "rows" else str(value))
    table.add_row("columns", "\n".join(f"{k}: {v}" for k, v in info["columns"].items()))
    table.add_row("producer", json.dumps(meta.producer, indent=1, sort_keys=True))
    if "parts" in info:
        parts = info["parts"]
        table.add_row("parts", f"{parts['shards']} (input list {parts['list_fingerprint'][:19]}...): "
                      + ", ".join(f"{k} {v:,}" for k, v in parts["counts"].items()))
    if info["blobs"]:
        table.add_row("blobs", ", ".join(f"{k} ({v})" for k, v in info["blobs"].items()))
    console(width=None).print(table)
