"""smcli serve in a real browser: Debian's headless Chromium, driven over WebDriver
(tests/webdriver.py), loads the page, searches by keyboard, sees the grid, opens one
explanation and closes it; the screenshots are checked against the photos and maps the
API gives, pixel by pixel."""

from __future__ import annotations

import io
import json
import urllib.request

import numpy as np
import pytest
from webdriver import Browser, Keys, missing_reason

pytestmark = pytest.mark.skipif(missing_reason() is not None, reason=missing_reason() or "")

QUERY = "a dog on grass"


@pytest.fixture(scope="module")
def server(serve_gallery):
    from smcli.serve.engine import SearchEngine
    from smcli.serve.server import make_server, running

    g = serve_gallery
    engine = SearchEngine.open(model="flickr8k", index=str(g["gallery"]), captions=str(g["captions"]),
                               image_base=str(g["dir"]))
    with running(make_server("127.0.0.1", 0, engine, log=False)) as srv:
        yield srv


def fetch_json(url: str):
    with urllib.request.build_opener(urllib.request.ProxyHandler({})).open(url, timeout=120) as resp:
        return json.loads(resp.read())


def image(png: bytes):
    from PIL import Image

    return Image.open(io.BytesIO(png)).convert("RGB")


def crop(shot, rect: dict[str, float]):
    x, y = round(rect["x"]), round(rect["y"])
    return shot.crop((x, y, x + round(rect["width"]), y + round(rect["height"])))


def covered(photo, size: tuple[int, int]):
    """The photo as CSS object-fit: cover shows it in a box of ``size``."""
    from PIL import Image

    w, h = photo.size
    scale = max(size[0] / w, size[1] / h)
    cw, ch = size[0] / scale, size[1] / scale
    box = ((w - cw) / 2, (h - ch) / 2, (w + cw) / 2, (h + ch) / 2)
    return photo.resize(size, Image.Resampling.BILINEAR, box=box)


def diff(a, b) -> float:
    """Mean absolute difference of two pictures at 48x36, in 0-255 levels."""
    from PIL import Image

    small = [np.asarray(p.resize((48, 36), Image.Resampling.BOX), dtype=np.float64) for p in (a, b)]
    return float(np.abs(small[0] - small[1]).mean())


def test_search_a_result_and_its_explanation_in_chromium(server, serve_gallery, tmp_path):
    from PIL import Image

    base = server.url
    want = fetch_json(f"{base}api/search?q=a+dog+on+grass&k=20")["results"]
    photos = serve_gallery["photos"]
    with Browser.start(tmp_path) as browser:
        browser.get(base)
        browser.wait_for("return document.querySelector('#info').textContent.includes('32 images')",
                         what="the gallery's description")
        assert browser.script("return document.activeElement.id") == "q"  # the search box has the focus
        browser.find("#q").type(QUERY + Keys.ENTER)
        browser.wait_for("return [...document.querySelectorAll('#results .card img')]"
                         ".filter(i => i.complete && i.naturalWidth > 0).length >= 4",
                         what="the result grid's thumbnails")
        cards = browser.script("return [...document.querySelectorAll('#results .card')].map(c => "
                               "[c.dataset.id, c.querySelector('.score').textContent])")
        assert [c[0] for c in cards] == [r["id"] for r in want]  # the API's ranking, in order
        assert [c[1] for c in cards] == [f"{r['score']:.4f}" for r in want]
        assert browser.find("#status").text == f"20 results for \u201c{QUERY}\u201d"
        assert browser.script("return location.search") == "?q=a+dog+on+grass"

        # the grid shows the photos: each thumbnail looks like its own file, not another's
        shot = image(browser.screenshot())
        (tmp_path / "grid.png").write_bytes(browser.screenshot())
        thumbs = browser.find_all("#results .card img")
        for k in (0, 1, 2):
            rect = thumbs[k].rect()
            seen = crop(shot, rect)
            own = covered(Image.open(photos / want[k]["id"]).convert("RGB"), seen.size)
            other = covered(Image.open(photos / want[k + 3]["id"]).convert("RGB"), seen.size)
            assert diff(seen, own) < 12 < diff(seen, other), want[k]["id"]

        # keyboard: arrows move between the cards, Enter opens the explanation
        browser.script("document.querySelector('#results .card').focus()")
        browser.press(Keys.ARROW_RIGHT, Keys.ARROW_RIGHT, Keys.ARROW_LEFT)
        assert browser.script("return document.activeElement.dataset.id") == want[1]["id"]
        browser.press(Keys.ENTER)
        browser.wait_for("return document.querySelector('#explain').open && "
                         "[...document.querySelectorAll('#explain .stack img')]"
                         ".filter(i => i.complete && i.naturalWidth > 0).length === 6",
                         what="the three steps' photos and maps")
        browser.wait_for("return !document.querySelector('#captions').hidden", what="the image's best captions")
        chosen = want[1]["id"]
        ex = fetch_json(f"{base}api/explain?image={chosen}&caption=a+dog+on+grass")
        dom = browser.script("return [...document.querySelectorAll('#explain figure.step')].map(f => ({"
                             "  note: f.querySelector('figcaption span').textContent,"
                             "  words: [...f.querySelectorAll('.w > span')].map(w => w.textContent),"
                             "  colours: [...f.querySelectorAll('.w > span')].map(w => w.style.backgroundColor)}))")
        assert len(dom) == len(ex["steps"]) == 3
        for got, step in zip(dom, ex["steps"]):
            assert got["note"] == step["note"]
            assert got["words"] == [w["word"] for w in step["words"]] == ["a", "dog", "on", "grass"]
            assert got["colours"] == ["rgb({}, {}, {})".format(*(int(w["background"][i:i + 2], 16) for i in (1, 3, 5)))
                                      for w in step["words"]]
        assert browser.find("#explain-status").text.startswith(f"score {ex['score']:.4f}")
        assert len(browser.find_all("#caption-list li")) == 5

        # the picture: step 1 is the photo under the API's overlay, and visibly not the bare photo
        browser.script("document.querySelector('#explain figure.step').scrollIntoView()")
        png = browser.screenshot()
        (tmp_path / "explain.png").write_bytes(png)
        shot = image(png)
        stack = browser.find("#explain figure.step .stack").rect()
        seen = crop(shot, stack)
        assert list(seen.size) == ex["size"]
        photo = Image.open(photos / chosen).convert("RGB").resize(seen.size, Image.Resampling.BILINEAR)
        import base64

        layer = Image.open(io.BytesIO(base64.b64decode(ex["steps"][0]["overlay"].split(",", 1)[1])))
        expected = Image.alpha_composite(photo.convert("RGBA"), layer).convert("RGB")
        assert diff(seen, expected) < 8 < diff(seen, photo)

        # Escape closes it and gives the focus back to the card
        browser.press(Keys.ESCAPE)
        browser.wait_for("return !document.querySelector('#explain').open", what="the dialog to close")
        assert browser.script("return document.activeElement.dataset.id") == chosen

        # a bad query is shown as the API's one line
        browser.script("document.querySelector('#q').value = ''")
        browser.find("#q").type("qqzx blorf" + Keys.ENTER)
        browser.wait_for("return document.querySelector('#status').classList.contains('error')",
                         what="the error line")
        assert browser.find("#status").text == "query 'qqzx blorf': no word of it is in the model's vocabulary"
        assert browser.find_all("#results .card") == []
