"""Benchmark of read-text and of search by written words, on Flickr8k photos with rendered words.

    python bench/ocr_synthetic.py [--data ../shared/data/flickr8k] [--work runs/ocr] [--seed 0]
                                  [--n-text 150] [--n-plain 150] [--plain-eval]

No scene-text data set is available offline, so the gallery is made reproducibly (from
--seed) out of a split's photos: --n-text photos get one or two words from WORDS rendered
into them (a Debian font from FONTS, a size, a colour contrasting with the spot or a plate
behind it, a rotation, a perspective warp, a blur and a JPEG quality, all drawn at random),
and --n-plain other photos of the split are copied untouched as distractors. For val (to
choose the fusion weight) and test (to report), it measures:

- OCR word recall (rendered words read, exactly after normalisation, or as the search
  matches them: similarity >= 0.75) and precision (words read that are a rendered word of
  their image; the distractors' own text, if any, counts against it);
- text queries (each rendered word; its relevant images are those it was rendered in):
  R@1/5/10 of text spotting alone, of the flickr8k matcher alone and of the fusion at the
  weights in --weights;
- with --plain-eval, the standard protocol on the split's real photos (1,000 images, 5,000
  captions, two-stage shortlist 100, like `smcli retrieve --eval`): rsum of the matcher
  alone and with the fusion on, at each weight (words read by read-text in the untouched
  photos);
- real photos: the Flickr8k val and test photos with legible text listed in
  bench/data/flickr8k_text_photos.csv (found by looking) with the words a person reads
  there: recall of read-text on them, exact and as the search matches;
- speed: images/s of extract-regions and of read-text on the synthetic gallery (as the
  commands report them; on this 2-core machine other sessions' load shares the CPU).

The weight is chosen on val: the largest sum of the text queries' R@1+R@5+R@10 and the
change in plain rsum. Everything is written under --work; results in --work/results.json.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import random
import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

WORDS = """
london paris berlin rome tokyo boston denver chicago seattle dallas miami austin oxford
cambridge york dublin madrid vienna prague sydney toronto coffee pizza bakery hotel motel
taxi police museum garden market bridge station airport harbor library theater cinema
pharmacy hospital school college stadium arena bistro diner grill burger tacos sushi
noodles donuts bagels candy cookies pastry butcher florist barber salon tattoo repair
garage tires parking exit entrance welcome open closed sale sorry stop slow danger
caution private office bank casino lottery tickets rental bikes surf kayak fishing
camping trail summit canyon valley river lake ocean island castle tower palace temple
church chapel cathedral abbey gallery studio records music guitar piano jazz blues rock
festival parade marathon rodeo circus carnival fair derby soccer hockey rugby tennis
golf boxing karate yoga fitness wildcats tigers eagles bears lions sharks rangers
pirates giants rebels saints kings royals storm thunder rocket comet galaxy planet
orbit sunset sunrise winter summer autumn spring harvest organic fresh local famous
vintage classic deluxe express premium quality service supply central union liberty
victory freedom peace hope dream smile happy lucky magic wonder
""".split()

FONTS = [
    "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/truetype/dejavu/DejaVuSans-Bold.ttf",
    "/usr/share/fonts/truetype/dejavu/DejaVuSerif.ttf",
    "/usr/share/fonts/truetype/dejavu/DejaVuSerif-Bold.ttf",
    "/usr/share/fonts/truetype/dejavu/DejaVuSansMono-Bold.ttf",
    "/usr/share/fonts/truetype/dejavu/DejaVuSansCondensed-Bold.ttf",
    "/usr/share/fonts/truetype/liberation/LiberationSans-Regular.ttf",
    "/usr/share/fonts/truetype/liberation/LiberationSans-Bold.ttf",
    "/usr/share/fonts/truetype/liberation/LiberationSerif-Bold.ttf",
    "/usr/share/fonts/truetype/liberation/LiberationSansNarrow-Bold.ttf",
    "/usr/share/fonts/truetype/liberation/LiberationMono-Bold.ttf",
    "/usr/share/fonts/truetype/freefont/FreeSans.ttf",
    "/usr/share/fonts/truetype/freefont/FreeSansBold.ttf",
    "/usr/share/fonts/truetype/freefont/FreeSerifBold.ttf",
    "/usr/share/fonts/truetype/freefont/FreeMonoBold.ttf",
]  # Debian's fonts-dejavu-core/-extra, fonts-liberation, fonts-freefont-ttf
WEIGHTS = (0.0, 0.5, 1.0, 2.0)


# ---------------------------------------------------------------------------------------
# Rendering


def _perspective_coeffs(src, dst):
    """PIL's PERSPECTIVE coefficients mapping output points ``dst`` to input points ``src``."""
    a = []
    b = []
    for (x, y), (u, v) in zip(dst, src):
        a.append([x, y, 1, 0, 0, 0, -u * x, -u * y])
        a.append([0, 0, 0, x, y, 1, -v * x, -v * y])
        b += [u, v]
    return np.linalg.solve(np.array(a, float), np.array(b, float)).tolist()


def _contrasting(rng: random.Random, luminance: float) -> tuple[int, int, int]:
    if luminance > 128:
        return tuple(rng.randint(0, 70) for _ in range(3))
    return tuple(rng.randint(185, 255) for _ in range(3))


def render_words(photo, words: list[str], rng: random.Random, fonts: list[str]):
    """The photo with ``words`` drawn into it; returns (image, [(word, box)], settings)."""
    from PIL import Image, ImageDraw, ImageFilter, ImageFont, ImageStat

    img = photo.convert("RGB").copy()
    placed, settings = [], []
    taken: list[tuple[int, int, int, int]] = []
    for word in words:
        shown = rng.choice([word.upper(), word.capitalize(), word])
        font_path = rng.choice(fonts)
        for _ in range(20):
            size = rng.randint(14, 34)
            font = ImageFont.truetype(font_path, size)
            left, top, right, bottom = font.getbbox(shown)
            tw, th = right - left + 6, bottom - top + 6
            plate = rng.random() < 0.4
            angle = rng.uniform(-25, 25) if rng.random() < 0.6 else 0.0
            layer = Image.new("RGBA", (tw + 8, th + 8), (0, 0, 0, 0))
            d = ImageDraw.Draw(layer)
            # rotated and warped extent must fit
            diag = math.hypot(tw + 8, th + 8)
            if diag > img.width - 4:
                continue
            x = rng.randint(2, int(img.width - diag - 2))
            y = rng.randint(2, int(img.height - diag - 2))
            box = (x, y, int(x + diag), int(y + diag))
            if any(not (box[2] < t[0] or box[0] > t[2] or box[3] < t[1] or box[1] > t[3]) for t in taken):
                continue
            spot = ImageStat.Stat(img.crop(box).convert("L")).mean[0]
            if plate:
                plate_colour = tuple(rng.randint(0, 255) for _ in range(3))
                d.rounded_rectangle((0, 0, tw + 7, th + 7), radius=4, fill=(*plate_colour, 255))
                lum = 0.299 * plate_colour[0] + 0.587 * plate_colour[1] + 0.114 * plate_colour[2]
                colour = _contrasting(rng, lum)
            else:
                colour = _contrasting(rng, spot)
            d.text((4 - left + 3, 4 - top + 3), shown, font=font, fill=(*colour, 255))
            layer = layer.rotate(angle, resample=Image.BICUBIC, expand=True)
            w, h = layer.size
            j = 0.12 * rng.random()
            def jitter(j: float = j) -> float:
                return rng.uniform(0, j)

            dst = [(jitter() * w, jitter() * h), (w - jitter() * w, jitter() * h),
                   (w - jitter() * w, h - jitter() * h), (jitter() * w, h - jitter() * h)]
            coeffs = _perspective_coeffs([(0, 0), (w, 0), (w, h), (0, h)], dst)
            layer = layer.transform((w, h), Image.PERSPECTIVE, coeffs, resample=Image.BICUBIC)
            img.paste(layer, (x, y), layer)
            bb = layer.getbbox() or (0, 0, w, h)
            taken.append(box)
            placed.append((word, (x + bb[0], y + bb[1], x + bb[2], y + bb[3])))
            settings.append({"word": shown, "font": Path(font_path).stem, "size": size, "angle": round(angle, 1),
                             "plate": plate, "warp": round(j, 3)})
            break
    blur = rng.choice([0.0, 0.0, 0.4, 0.8, 1.2])
    if blur:
        img = img.filter(ImageFilter.GaussianBlur(blur))
    return img, placed, {"words": settings, "blur": blur}


def make_gallery(data: Path, split: str, out: Path, n_text: int, n_plain: int, seed: int) -> list[dict]:
    """The synthetic gallery of ``split`` under ``out``/images, with truth.csv; returns its rows."""
    import shutil

    from PIL import Image

    fonts = [f for f in FONTS if Path(f).is_file()]
    if len(fonts) < 3:
        sys.exit("bench: fewer than 3 of the Debian fonts found; apt-get install fonts-dejavu-core "
                 "fonts-dejavu-extra fonts-liberation fonts-freefont-ttf")
    with open(data / "splits.csv") as fh:
        photos = sorted(r["image"] for r in csv.DictReader(fh) if r["split"] == split)
    rng = random.Random(f"{seed}-{split}")
    chosen = rng.sample(photos, n_text + n_plain)
    images = out / "images"
    if images.exists():
        shutil.rmtree(images)
    images.mkdir(parents=True)
    rows = []
    for k, name in enumerate(chosen):
        if k < n_text:
            words = rng.sample(WORDS, rng.choice([1, 1, 2]))
            img, placed, settings = render_words(Image.open(data / "images" / name), words, rng, fonts)
            quality = rng.randint(35, 95)
            img.save(images / name, quality=quality)
            settings["jpeg_quality"] = quality
            rows.append({"image_id": name, "words": " ".join(w for w, _ in placed), "settings": json.dumps(settings)})
        else:
            shutil.copy(data / "images" / name, images / name)
            rows.append({"image_id": name, "words": "", "settings": "{}"})
    with open(out / "truth.csv", "w", newline="") as fh:
        w = csv.DictWriter(fh, ["image_id", "words", "settings"])
        w.writeheader()
        w.writerows(rows)
    return rows


# ---------------------------------------------------------------------------------------
# Running the commands


def smcli(*args: str) -> str:
    """Run smcli; return its stderr (and exit on failure)."""
    proc = subprocess.run([sys.executable, "-m", "smcli", *map(str, args)], capture_output=True, text=True,
                          cwd=REPO, env={**__import__("os").environ, "PYTHONPATH": str(REPO)})
    if proc.returncode:
        sys.exit(f"bench: smcli {' '.join(map(str, args))} failed:\n{proc.stderr}")
    return proc.stderr


def images_per_s(stderr: str) -> float:
    m = re.search(r"\(([\d.]+) images/s\)", stderr)
    return float(m.group(1)) if m else float("nan")


# ---------------------------------------------------------------------------------------
# Measures


def ocr_quality(truth: list[dict], text_file: Path) -> dict:
    from smcli.images.read_text import load_image_text
    from smcli.inference.text_spotting import MATCH_THRESHOLD, TextIndex, normalize

    words = load_image_text(text_file)
    index = TextIndex(words)
    row = {k: i for i, k in enumerate(words.image_ids)}
    read: dict[int, list[str]] = {}
    for w, img in zip(index.word_norm, words.word_image):
        if w:
            read.setdefault(img, []).append(w)
    n_truth = exact = fuzzy = 0
    true_read = n_read = 0
    for t in truth:
        r = row.get(t["image_id"])
        got = read.get(r, []) if r is not None else []
        want = list(dict.fromkeys(normalize(w) for w in t["words"].split()))
        n_read += len(got)
        true_read += sum(1 for g in got if g in want)
        for w in want:
            n_truth += 1
            exact += w in got
            m = index.term_matches(w)
            fuzzy += r in m and m[r].similarity >= MATCH_THRESHOLD
    return {"rendered_words": n_truth, "recall_exact": exact / max(1, n_truth),
            "recall_search": fuzzy / max(1, n_truth), "words_read": n_read,
            "precision_exact": true_read / max(1, n_read),
            "images_with_text_read": sum(1 for v in read.values() if v)}


def recall_at(ranked: list[list[str]], relevant: list[set[str]]) -> dict:
    out = {}
    for k in (1, 5, 10):
        out[f"R@{k}"] = 100.0 * float(np.mean([bool(set(r[:k]) & rel) for r, rel in zip(ranked, relevant)]))
    return out


def text_queries(truth: list[dict], text_file: Path, feats_file: Path, model, weights) -> dict:
    from smcli.images.features import load_regions
    from smcli.images.read_text import load_image_text
    from smcli.inference.text_spotting import search_images_with_text, spot_images

    relevant: dict[str, set[str]] = {}
    for t in truth:
        for w in t["words"].split():
            relevant.setdefault(w, set()).add(t["image_id"])
    queries = sorted(relevant)
    rel = [relevant[q] for q in queries]
    words = load_image_text(text_file)
    feats = load_regions(feats_file)
    out = {"queries": len(queries)}
    spot = spot_images(words, queries, 10)
    out["text only"] = recall_at(_ids_by_query(spot, queries), rel)
    for w in weights:
        table = search_images_with_text(model, feats, words, queries, 10, 100, w)
        out["matcher alone" if w == 0 else f"fused w={w:g}"] = recall_at(_ids_by_query(table, queries), rel)
    return out


def _ids_by_query(table, queries: list[str]) -> list[list[str]]:
    got: dict[str, list[str]] = {q: [] for q in queries}
    for q, i in zip(table.column("query").to_pylist(), table.column("id").to_pylist()):
        got[q].append(i)
    return [got[q] for q in queries]


def plain_eval(model, feats: Path, caps: Path, split: str, text_file: Path, weights) -> dict:
    """The protocol of `smcli retrieve --eval` (two-stage, shortlist 100) with the fusion at each
    weight: the matcher's scores are computed once and fused per weight by the same functions
    `retrieve --eval --image-text FILE --image-text-weight W` runs (smcli.evaluation.protocol)."""
    from smcli.dataset import load_matching_data
    from smcli.evaluation.protocol import _fused_two_stage
    from smcli.evaluation.recall import recall_metrics
    from smcli.images.read_text import load_image_text
    from smcli.inference.scoring import two_stage_scores
    from smcli.inference.text_spotting import text_pairs
    from smcli.runtime import autocast

    data = load_matching_data(str(feats), str(caps), command="retrieve", with_regions=model.many_to_many)
    rows = np.flatnonzero(data.split == split)
    images = np.unique(data.caption_image[rows])
    pos = np.full(len(data.image_ids), -1)
    pos[images] = np.arange(len(images))
    gallery = model.encode_images([data.image_ids[i] for i in images], [""] * len(images),
                                  data.regions[images], data.global_[images])
    texts = model.encode_texts([data.caption_ids[i] for i in rows], [data.captions[i] for i in rows],
                               [data.token_ids[i] for i in rows])
    cap_img = pos[data.caption_image[rows]]
    t0 = time.time()
    with autocast(model.device, model.precision):
        two = two_stage_scores(model.model, gallery.side, texts.side, 100)
    t1 = time.time()
    spotted = text_pairs(load_image_text(text_file), gallery.image_ids, texts.texts)
    t2 = time.time()
    out = {"seconds_matcher": round(t1 - t0, 1), "seconds_text_pairs": round(t2 - t1, 1),
           "pairs_with_text": int(len(spotted[0])),
           "captions_with_text": int(len(np.unique(spotted[1]))) if len(spotted[1]) else 0}
    for w in weights:
        t2i = two.t2i if w == 0 else _fused_two_stage(model, gallery, texts, two.t2i, spotted, w)
        m = recall_metrics(two.i2t, cap_img, t2i)
        out["matcher alone" if w == 0 else f"fused w={w:g}"] = {k: round(v, 2) for k, v in m.to_dict().items()}
    return out


def real_photos(data: Path, listing: Path, work: Path, side: int = 480) -> dict:
    """Recall of read-text on real photos with the words a person reads in them."""
    with open(listing, newline="") as fh:
        rows = list(csv.DictReader(fh))
    work.mkdir(parents=True, exist_ok=True)
    (work / "list.txt").write_text("".join(f"{r['image']}\n" for r in rows))
    text = work / f"text-{side}.parquet"
    err = smcli("read-text", f"@{work / 'list.txt'}", "--root", data / "images", "-o", text, "--detector-side", side)
    truth = [{"image_id": r["image"], "words": r["words"]} for r in rows]
    out = ocr_quality(truth, text)
    from smcli.images.read_text import load_image_text

    words = load_image_text(text)
    read = {i: [] for i in words.image_ids}
    for img, w in zip(words.word_image, words.word_text):
        read[words.image_ids[img]].append(w)
    out["per_image"] = {r["image"]: {"person": r["words"], "read": " ".join(read.get(r["image"], []))} for r in rows}
    out["read_text_line"] = err.strip().splitlines()[-2]
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data" / "flickr8k")
    ap.add_argument("--work", type=Path, default=REPO / "runs" / "ocr")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--n-text", type=int, default=150)
    ap.add_argument("--n-plain", type=int, default=150)
    ap.add_argument("--splits", nargs="+", default=["val", "test"])
    ap.add_argument("--plain-eval", action="store_true", help="also the standard protocol on the real photos")
    ap.add_argument("--weights", type=float, nargs="+", default=list(WEIGHTS))
    ap.add_argument("--model", default="flickr8k")
    ap.add_argument("--real", type=Path, default=REPO / "bench" / "data" / "flickr8k_text_photos.csv",
                    help="the real photos' list ('' to skip)")
    ap.add_argument("--detector-sides", type=int, nargs="*", default=[320, 736],
                    help="on val, also read the gallery with these --detector-side values (recall and speed)")
    args = ap.parse_args()

    from machine_info import cpu_model, load_average

    from smcli.inference.matcher import MatchModel

    args.work.mkdir(parents=True, exist_ok=True)
    model = MatchModel(args.model)
    results: dict = {"machine": f"{cpu_model()}, {__import__('os').cpu_count()} cores", "seed": args.seed,
                     "n_text": args.n_text, "n_plain": args.n_plain, "splits": {}}
    if args.real.name:
        results["real_photos"] = {str(side): real_photos(args.data, args.real, args.work / "real", side)
                                  for side in [480, *args.detector_sides]}
        print(json.dumps({"real_photos": results["real_photos"]}, indent=1), flush=True)
    for split in args.splits:
        work = args.work / split
        t0 = time.time()
        truth = make_gallery(args.data, split, work, args.n_text, args.n_plain, args.seed)
        made = time.time() - t0
        load = load_average()
        err_x = smcli("extract-regions", work / "images", "-o", work / "feats.parquet")
        err_t = smcli("read-text", work / "images", "-o", work / "text.parquet")
        r = {"gallery_seconds": round(made, 1), "load_before": load,
             "extract_regions_images_per_s": images_per_s(err_x), "read_text_images_per_s": images_per_s(err_t),
             "read_text_line": err_t.strip().splitlines()[-2] if err_t.strip() else ""}
        r["ocr"] = ocr_quality(truth, work / "text.parquet")
        if split == "val":
            r["detector_sides"] = {"480": {**r["ocr"], "images_per_s": r["read_text_images_per_s"]}}
            for side in args.detector_sides:
                other = work / f"text-{side}.parquet"
                err = smcli("read-text", work / "images", "-o", other, "--detector-side", side)
                r["detector_sides"][str(side)] = {**ocr_quality(truth, other), "images_per_s": images_per_s(err)}
        r["text_queries"] = text_queries(truth, work / "text.parquet", work / "feats.parquet", model, args.weights)
        if args.plain_eval:
            plain = args.work / f"plain-{split}"
            plain.mkdir(exist_ok=True)
            with open(args.data / "splits.csv") as fh:
                names = [row["image"] for row in csv.DictReader(fh) if row["split"] == split]
            (plain / "list.txt").write_text("".join(f"{n}\n" for n in names))
            root = args.data / "images"
            if not (plain / "feats.parquet").exists():
                smcli("extract-regions", f"@{plain / 'list.txt'}", "--root", root, "-o", plain / "feats.parquet")
            if not (plain / "caps.parquet").exists():
                smcli("tokenize", args.data / "Flickr8k_text" / "Flickr8k.token.txt", "--splits",
                      args.data / "splits.csv", "-o", plain / "caps.parquet")
            if not (plain / "text.parquet").exists():
                err = smcli("read-text", f"@{plain / 'list.txt'}", "--root", root, "-o", plain / "text.parquet")
                r["plain_read_text_line"] = err.strip().splitlines()[-2]
            r["plain_eval"] = plain_eval(model, plain / "feats.parquet", plain / "caps.parquet", split,
                                         plain / "text.parquet", args.weights)
        r["load_after"] = load_average()
        results["splits"][split] = r
        print(json.dumps({split: r}, indent=1), flush=True)
    if "val" in results["splits"]:
        v = results["splits"]["val"]

        def gain(w: float) -> float:
            key = "matcher alone" if w == 0 else f"fused w={w:g}"
            tq = v["text_queries"][key]
            g = tq["R@1"] + tq["R@5"] + tq["R@10"]
            if "plain_eval" in v:
                g += v["plain_eval"][key]["rsum"] - v["plain_eval"]["matcher alone"]["rsum"]
            return g

        results["chosen_weight_on_val"] = max(args.weights, key=lambda w: (round(gain(w), 6), -w))
    out = args.work / ("results.json" if len(args.splits) > 1 else f"results-{args.splits[0]}.json")
    out.write_text(json.dumps(results, indent=1))
    print(f"bench: results in {out}; weight chosen on val: "
          f"{results.get('chosen_weight_on_val')}")


if __name__ == "__main__":
    main()
