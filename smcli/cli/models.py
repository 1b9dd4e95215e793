"""``smcli models``: the pretrained models shipped with smcli, and their cards."""

from __future__ import annotations

import typer

from smcli.cli.app import app


@app.command("models")
def models_cmd(
    info: str | None = typer.Option(None, "--info", help="Print the model card of this pretrained model."),
    json_out: bool = typer.Option(False, "--json", help="Print JSON instead of a table."),
) -> None:
    """List the pretrained models (--model NAME works wherever a model directory does):
    name, variant, the features it expects, val/test rsum, size on disk and the data's terms.

    Example: smcli models --info flickr8k
    """
    import json

    from smcli.models import pretrained

    if info is not None:
        model = pretrained.get(info)
        if json_out:
            typer.echo(json.dumps(model.card, indent=2))
        else:
            typer.echo((model.directory / "MODEL_CARD.md").read_text().rstrip())
        return
    rows = []
    for name, model in pretrained.available().items():
        c = model.card
        f = c["features"]
        rows.append({"name": name + (" (default)" if name == pretrained.DEFAULT else ""), "variant": c["variant"],
                     "features": f"{f['backbone']} {f['image_size']}px {f['grid'][0]}x{f['grid'][1]}",
                     "val rsum": c["val"]["rsum"], "test rsum": c["test"]["rsum"],
                     "size": f"{model.size_bytes / 2**20:.1f} MiB", "terms": "research use (Flickr8k)"})
    if json_out:
        typer.echo(json.dumps(rows, indent=2))
        return
    if not rows:
        typer.echo("no pretrained models in this install")
        return
    from rich.table import Table

    from smcli.output import console

    table = Table()
    for col in rows[0]:
        table.add_column(col, justify="right" if "rsum" in col or col == "size" else "left")
    for r in rows:
        table.add_row(*[f"{v:.1f}" if isinstance(v, float) else str(v) for v in r.values()])
    console(width=None).print(table)
