"""``smcli explain``: the saliency maps an attention model used to score one image and caption."""

from __future__ import annotations

import typer

from smcli.cli.app import app

MODEL_HELP = "Model directory from smcli train (default: $SMCLI_MODEL or smcli.toml)."
REGIONS_HELP = "Regions Parquet the --image id is looked up in (default: $SMCLI_REGIONS or smcli.toml)."


@app.command("explain")
def explain_cmd(
    image: str = typer.Option(..., "--image", help="Image id in --regions, or an image file."),
    caption: str = typer.Option(..., "--caption", help="The sentence to match with the image."),
    output: str = typer.Option(..., "-o", "--output", help="Picture to write: .png or .html."),
    html: bool = typer.Option(False, "--html", help="Write a self-contained HTML page whatever -o's suffix."),
    model: str | None = typer.Option(None, "--model", help=MODEL_HELP),
    regions: str | None = typer.Option(None, "--regions", help=REGIONS_HELP),
    device: str = typer.Option("auto", "--device", help="auto | cpu | cuda"),
    precision: str = typer.Option("auto", "--precision", help="auto | fp32 | bf16"),
) -> None:
    """Show what the model selected: for each step, the image's saliency map over the region
    grid and each word's weight, with the final score (the paper's instance-aware saliency).

    Example: smcli explain --image dog.jpg --caption "a dog runs on grass" -o why.png
    """
    from pathlib import Path

    from smcli.defaults import resolve
    from smcli.errors import InputError, UsageError
    from smcli.report import say
    from smcli.stage import check_not_input, check_output_path

    out = check_output_path(output)
    check_not_input(out, [image, resolve("regions", regions, required=False)])  # a .png photo, say
    suffix = out.suffix.lower()
    if not html and suffix not in (".png", ".html", ".htm"):
        raise UsageError(f"-o {output}: give a .png or .html file (or --html)")
    as_html = html or suffix in (".html", ".htm")

    from smcli.inference import explain as maps
    from smcli.inference import tasks
    from smcli.inference.inputs import resolve_images
    from smcli.inference.matcher import MatchModel
    from smcli.render import saliency

    matcher = MatchModel(resolve("model", model), device=device, precision=precision)
    maps.require_attention(matcher)
    reg_path = resolve("regions", regions, required=False)
    feats = tasks.load_features(matcher, reg_path) if reg_path else None
    from_regions = feats is not None and image in feats.index()
    photo_path = feats.paths[feats.index()[image]] if from_regions else image
    if from_regions and not Path(photo_path).is_file():
        # paths in a regions file are as extract-regions was given them: relative ones are
        # read from the current directory
        raise InputError(f"--image {image}: image file {photo_path} (path stored in {feats.name}) not found")
    images = resolve_images([image], feats, matcher.features)  # unknown ids: one line
    photo = saliency.load_photo(photo_path)
    ex = maps.explain_pair(matcher, images, caption)
    ex.image_path = photo_path
    render = saliency.render_html if as_html else saliency.render_png
    render(ex, photo_path, out, photo=photo)
    kind = "HTML" if as_html else "PNG"
    selection = f"; {maps.NO_SELECTION}" if not ex.selective else ""
    say("explain", f"score {ex.score:.4f} ({ex.variant}, {ex.steps} steps{selection}); "
                   f"{kind} written to {out}")
