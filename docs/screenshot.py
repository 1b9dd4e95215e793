"""Regenerate docs/serve.png, the README's picture of smcli serve, in headless Chromium.

    smcli extract-regions examples/images -o /tmp/feats.parquet
    smcli index --regions /tmp/feats.parquet -o /tmp/gallery
    smcli tokenize examples/captions.txt --splits examples/splits.csv -o /tmp/caps.parquet
    python docs/screenshot.py --index /tmp/gallery --captions /tmp/caps.parquet

It serves the gallery in process, searches for --query, opens the first result's
explanation, and writes the grid above the explanation, 640 pixels wide, in 256 colours.
Driving the browser reuses the tests' WebDriver client (tests/webdriver.py).
"""

from __future__ import annotations

import argparse
import io
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))

from webdriver import Browser, Keys, missing_reason  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--index", required=True)
    ap.add_argument("--model", default="flickr8k")
    ap.add_argument("--captions")
    ap.add_argument("--image-root")
    ap.add_argument("--query", default="a dog on grass")
    ap.add_argument("-o", "--output", default=str(REPO / "docs" / "serve.png"))
    args = ap.parse_args()
    if missing_reason():
        raise SystemExit(missing_reason())

    from PIL import Image

    from smcli.serve.engine import SearchEngine
    from smcli.serve.server import make_server, running

    engine = SearchEngine.open(model=args.model, index=args.index, captions=args.captions,
                               image_base=args.image_root)
    with running(make_server("127.0.0.1", 0, engine, log=False)) as server, \
            tempfile.TemporaryDirectory() as tmp, Browser.start(Path(tmp)) as browser:
        browser.call("POST", "/window/rect", {"width": 1280, "height": 760})
        browser.get(server.url)
        browser.wait_for("return document.querySelector('#info').textContent.includes('images')")
        browser.find("#q").type(args.query + Keys.ENTER)
        browser.wait_for("return [...document.querySelectorAll('#results .card img')]"
                         ".filter(i => i.complete && i.naturalWidth > 0).length >= 10")
        grid = Image.open(io.BytesIO(browser.screenshot())).convert("RGB")
        browser.find("#results .card").click()
        browser.wait_for("const imgs = [...document.querySelectorAll('#explain .stack img')];"
                         "return imgs.length >= 2 && imgs.every(i => i.complete && i.naturalWidth > 0)")
        explain = Image.open(io.BytesIO(browser.screenshot())).convert("RGB")
    width = 640
    parts = [p.resize((width, round(p.height * width / p.width)), Image.Resampling.LANCZOS) for p in (grid, explain)]
    out = Image.new("RGB", (width, sum(p.height for p in parts) + 8), (255, 255, 255))
    out.paste(parts[0], (0, 0))
    out.paste(parts[1], (0, parts[0].height + 8))
    out.quantize(256, method=Image.Quantize.MEDIANCUT).save(args.output, optimize=True)
    print(f"wrote {args.output} ({Path(args.output).stat().st_size / 1024:.0f} KiB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
