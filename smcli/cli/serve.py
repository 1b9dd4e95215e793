"""``smcli serve``: search a gallery from a web page and a JSON API (:mod:`smcli.serve`)."""

from __future__ import annotations

import typer

from smcli.cli.app import app
from smcli.cli.search import DEVICE_HELP, MODEL_HELP, PRECISION_HELP


@app.command("serve")
def serve_cmd(
    index: str | None = typer.Option(
        None, "--index", help="Saved gallery from smcli index (default: $SMCLI_INDEX or smcli.toml)."),
    regions: str | None = typer.Option(
        None, "--regions", help="A regions file instead of --index (encoded once at start; fine for small galleries)."),
    model: str | None = typer.Option(None, "--model", help=MODEL_HELP),
    captions: str | None = typer.Option(
        None, "--captions", help="Captions Parquet for image -> captions (optional; default: $SMCLI_CAPTIONS "
                                 "or smcli.toml)."),
    host: str = typer.Option(
        "127.0.0.1", "--host", help="Address to listen on; the default is this machine only."),
    port: int = typer.Option(8000, "--port", min=0, max=65535, help="Port (0: any free one)."),
    image_root: str | None = typer.Option(
        None, "--image-root", help="Directory the gallery's relative image paths are read from "
                                   "(default: the current directory, where extract-regions ran)."),
    quiet: bool = typer.Option(False, "--quiet", help="Do not log each request on stderr."),
    device: str = typer.Option("auto", "--device", help=DEVICE_HELP),
    precision: str = typer.Option("auto", "--precision", help=PRECISION_HELP),
) -> None:
    """Serve a gallery: a web page (search box, results with scores, the saliency maps of a
    result) and a JSON API (search, captions, scores, explain) on http://HOST:PORT/.

    Example: smcli serve --index gallery/ --captions caps.parquet; then open http://127.0.0.1:8000/
    """
    from pathlib import Path

    from smcli.defaults import resolve
    from smcli.errors import UsageError
    from smcli.report import say, warn

    if index and regions:
        raise UsageError("give --index or --regions, not both")
    if image_root is not None and not Path(image_root).is_dir():
        raise UsageError(f"--image-root {image_root}: not a directory")
    if not regions:
        index = resolve("index", index, required=False)
        if not index:
            regions = resolve("regions", None, required=False)
        if not index and not regions:
            raise UsageError("nothing to serve: give --index GALLERY_DIR (from smcli index) or --regions FILE")

    from smcli.serve.engine import SearchEngine
    from smcli.serve.server import make_server

    server = make_server(host, port, log=not quiet)  # a taken port fails before the model loads
    try:
        server.engine = SearchEngine.open(model=resolve("model", model), index=index, regions=regions,
                                          captions=resolve("captions", captions, required=False),
                                          image_base=image_root, device=device, precision=precision)
        if not server.loopback:
            warn("serve", f"listening on {host}: anyone who can reach this machine can search the gallery")
        say("serve", f"{len(server.engine):,} images ({server.engine.source}), model {server.engine.model.name}; "
                     f"open {server.url} (Ctrl-C to stop)")
        server.serve_forever()
    finally:
        server.server_close()
