"""Package the Flickr8k benchmark's models as smcli's pretrained models (``make pretrained``).

    python bench/package_pretrained.py --work runs/flickr8k [--data ../shared/data/flickr8k]

For each shipped model (``flickr8k``: the benchmark's sm-LSTM with its one-to-one head;
``flickr8k-vse``: the one-to-one model alone; ``flickr8k-pair``: the recipe on
efficientnet-lite0+lite2 features, the seed of bench/flickr8k_pair.sh with the best val rsum)
this copies the model directory into
``smcli/pretrained/NAME/`` with float16 weights, scores the float16 copy on the test split
the way the benchmark scored the float32 model (``smcli retrieve --eval``), refuses it if
test rsum moves by more than 0.2 (on a bf16 CPU both copies are scored again in fp32 for
that check: bf16 scoring itself moves rsum by a few tenths with any change of the weights),
and writes ``card.json`` and ``MODEL_CARD.md``: the data
and its terms, the exact commands, val and test metrics of both copies, the features it
expects, the sha256 of the weights, the machine and precision, and its limits.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import platform
import shutil
import subprocess
import sys
from dataclasses import dataclass, replace
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "bench"))

from machine_info import cpu_model  # noqa: E402

from smcli.runtime import resolve_precision  # noqa: E402


@dataclass(frozen=True)
class Shipped:
    """One shipped model: where the recipe left it in --work, how it was scored on test, and
    the recipe's steps (logs/STEP.cmd, the command lines the card cites)."""

    model_dir: str
    eval_file: str
    eval_args: tuple[str, ...]
    summary: str
    steps: tuple[str, ...]
    features: str = "feats.parquet"
    seeds: tuple[int, ...] = ()  # several seeds trained: "{seed}" in the names above, the one shipped chosen on val


def choose_seed(shipped: Shipped, work: Path) -> tuple[Shipped, list[str]]:
    """The seed of ``shipped.seeds`` with the best val rsum (test is never looked at), and a
    note for the card saying so; ``shipped`` as it is when it names one run."""
    if not shipped.seeds:
        return shipped, []
    val = {}
    for seed in shipped.seeds:
        config = work / shipped.model_dir.format(seed=seed) / "config.json"
        if config.exists():
            val[seed] = json.loads(config.read_text())["best"]["rsum"]
    if not val:
        sys.exit(f"no {shipped.model_dir} in {work} for seeds {shipped.seeds}: run its recipe first")
    best = max(val, key=lambda seed: (val[seed], -seed))

    def fmt(text: str) -> str:
        return text.format(seed=best)

    chosen = replace(shipped, model_dir=fmt(shipped.model_dir), eval_file=fmt(shipped.eval_file),
                     steps=tuple(fmt(step) for step in shipped.steps), seeds=())
    trained = ", ".join(f"seed {seed} {rsum:.1f}" for seed, rsum in sorted(val.items()))
    return chosen, [f"Seed {best} of those trained, chosen by val rsum ({trained}); test was not looked at."]


MODELS = {
    "flickr8k": Shipped(
        "model-smlstm", "eval-smlstm-two-stage.json", ("--shortlist", "50"),
        "The Flickr8k benchmark's sm-LSTM (context-modulated attention over the 7x7 region grid and "
        "the MiniLM word states, with word-steered region attention and word coverage), trained as a "
        "re-ranker on the flickr8k-vse head; two-stage search.",
        ("extract", "tokenize", "train-vse", "train-smlstm")),
    "flickr8k-vse": Shipped(
        "model-vse", "eval-vse-exhaustive.json", ("--exhaustive",),
        "The one-to-one model alone (global image feature and MiniLM sentence vector in a joint "
        "space, cosine score): fast, a dot product per pair.",
        ("extract", "tokenize", "train-vse")),
    "flickr8k-pair": Shipped(
        "model-pair-smlstm-seed{seed}", "eval-pair-smlstm-seed{seed}-two-stage.json", ("--shortlist", "50"),
        "The sm-LSTM re-ranker on its own one-to-one head, on efficientnet-lite0+lite2 features "
        "(7x7x2560: both offline EfficientNets side by side), with word-steered region attention, "
        "word coverage and region coverage (each step holds back the regions and words earlier "
        "steps selected, so the steps select different pairs), reading MiniLM's word-piece "
        "embeddings beside its last layer as the word instances (--word-layers 0+6): the best "
        "Flickr8k model here; "
        "two-stage search. "
        "Its photos must be extracted with --backbone efficientnet-lite0+lite2.",
        ("extract-pair", "tokenize", "train-pair-vse-seed{seed}", "train-pair-smlstm-seed{seed}"),
        features="feats-pair.parquet", seeds=(0, 1, 2)),
}
MAX_RSUM_DRIFT = 0.2


def with_tag(shipped: Shipped, tag: str) -> Shipped:
    """The runs of a re-ranker that bench/flickr8k_pair.sh named with TAG (model-pair-smlstmTAG-seedS)."""
    tagged = lambda text: text.replace("pair-smlstm-", f"pair-smlstm{tag}-")  # noqa: E731
    return replace(shipped, model_dir=tagged(shipped.model_dir), eval_file=tagged(shipped.eval_file),
                   steps=tuple(tagged(step) for step in shipped.steps))
TERMS = ("Flickr8k (Hodosh, Young & Hockenmaier, JAIR 2013): the photos are from Flickr and the "
         "captions were collected for research; the data set is distributed for research use only. "
         "These weights were trained on it and inherit that restriction.")
LIMITS = ("Trained on 6,000 Flickr8k photos (everyday scenes: people, dogs, sports, streets) at "
          "224x224 pixels with 30,000 English captions. It knows nothing of text in images, faces, "
          "brands, fine-grained species or places it was not shown, and captions in other languages; "
          "scores are comparable within one model, not across models. {features} features "
          "at 224 px are what it expects.")


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def to_float16(src: Path, dst: Path) -> None:
    from safetensors.torch import load, save

    state = load(src.read_bytes())
    half = {k: (v.half() if v.is_floating_point() else v).contiguous() for k, v in state.items()}
    tmp = dst.with_suffix(".tmp")
    tmp.write_bytes(save(half))
    tmp.replace(dst)


def evaluate(model: Path, work: Path, extra: list[str], features: str = "feats.parquet", tag: str = "float16") -> dict:
    out = work / f"eval-{model.name}-{tag}.json"
    cmd = [sys.executable, "-m", "smcli", "retrieve", "--eval", "--split", "test", "--model", str(model),
           "--regions", str(work / features), "--captions", str(work / "captions.parquet"), *extra,
           "-o", str(out)]
    subprocess.run(cmd, check=True, cwd=REPO)
    return json.loads(out.read_text())


def rounding_check(src: Path, half: Path, work: Path, extra: list[str], features: str,
                   float32: dict, float16: dict) -> dict:
    """How far float16 weights move test rsum. Where scoring runs in bf16 autocast (the
    default on bf16 CPUs) any change to the weights, float16 rounding included, moves a
    model's rsum by a few tenths (bf16 keeps 8 bits of mantissa), so there both copies are
    scored again in fp32: the figure then measures the rounding of the weights alone."""
    if resolve_precision("auto", "cpu") == "fp32":
        return {"precision": "fp32", "float32": float32["rsum"], "float16": float16["rsum"],
                "drift": abs(float16["rsum"] - float32["rsum"])}
    fp32 = ["--precision", "fp32"]
    a = evaluate(src, work, extra + fp32, features, tag="fp32-scoring")["rsum"]
    b = evaluate(half, work, extra + fp32, features, tag="float16-fp32-scoring")["rsum"]
    return {"precision": "fp32", "float32": a, "float16": b, "drift": abs(a - b),
            "bf16": {"float32": float32["rsum"], "float16": float16["rsum"]}}


def metrics_of(d: dict) -> dict:
    keys = ("i2t_r1", "i2t_r5", "i2t_r10", "t2i_r1", "t2i_r5", "t2i_r10", "rsum")
    return {k: d[k] for k in keys if k in d}


def card_markdown(card: dict) -> str:
    m_val, m32, m16 = card["val"], card["test_float32"], card["test"]
    row = lambda m: " | ".join(f"{m[k]:.1f}" for k in ("i2t_r1", "i2t_r5", "i2t_r10", "t2i_r1", "t2i_r5",  # noqa: E731
                                                       "t2i_r10", "rsum"))
    lines = [f"# {card['name']}", "", card["summary"], "",
             f"- variant: {card['variant']} ({card['text_encoder']} text encoder)",
             f"- features it expects: {card['features']['backbone']} at {card['features']['image_size']} px, "
             f"{card['features']['grid'][0]}x{card['features']['grid'][1]} grid "
             f"(`smcli extract-regions --backbone {card['features']['backbone']}`)",
             f"- weights: float16; {card['size_bytes']:,} bytes with config and vocabulary; "
             f"sha256 {card['weights_sha256']}",
             f"- trained on: {card['machine']}, {card['precision']}",
             *[f"- note: {n}" for n in card.get("notes", [])], "",
             "| split | i2t R@1 | R@5 | R@10 | t2i R@1 | R@5 | R@10 | rsum |", "|---|---|---|---|---|---|---|---|",
             f"| val (epoch chosen) | {row(m_val)} |", f"| test, float32 | {row(m32)} |",
             f"| test, float16 (shipped) | {row(m16)} |", ""]
    r = card.get("rounding_check")
    if r and "bf16" in r:
        lines += [f"The test rows were scored in bf16 autocast (`--precision auto` on the packaging CPU), where "
                  f"any change to the weights moves rsum by a few tenths. Scored in fp32, the float32 and "
                  f"float16 weights give test rsum {r['float32']:.2f} and {r['float16']:.2f}: that is the "
                  f"rounding of the weights alone (checked: at most {MAX_RSUM_DRIFT}).", ""]
    lines += ["## How it was made", ""]
    lines += [f"    {c}" for c in card["commands"]]
    lines += ["", "## Data and terms", "", card["terms"], "", "## Limits", "", card["limits"], ""]
    return "\n".join(lines)


def portable(command: str, work: Path) -> str:
    """A logged command line as a user of the card runs it: the work folder as runs/flickr8k
    and paths inside this checkout relative to it (the card must not name our machine's paths)."""
    return command.replace(str(work.resolve()), "runs/flickr8k").replace(str(work), "runs/flickr8k") \
        .replace(str(REPO) + "/", "")


def training_precision(config: dict) -> str:
    """What the model's --precision meant on this machine (make pretrained trains and packages on one)."""
    asked = config["training"]["precision"]
    return f"{resolve_precision(asked, 'cpu')} training (--precision {asked} on this CPU)"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", type=Path, default=REPO / "runs" / "flickr8k")
    ap.add_argument("--out", type=Path, default=REPO / "smcli" / "pretrained")
    ap.add_argument("--only", nargs="*", default=list(MODELS))
    ap.add_argument("--pair-tag", default="", metavar="TAG",
                    help="The TAG bench/flickr8k_pair.sh's re-rankers were given (their model, eval and log "
                         "names carry it): flickr8k-pair is packaged from those runs.")
    ap.add_argument("--note", action="append", default=[], metavar="NAME=TEXT",
                    help="A remark for a model's card (how this build departs from the recipe).")
    args = ap.parse_args()
    logs = args.work / "logs"
    for name in args.only:
        shipped = MODELS[name]
        if name == "flickr8k-pair" and args.pair_tag:
            shipped = with_tag(shipped, args.pair_tag)
        shipped, seed_note = choose_seed(shipped, args.work)
        eval_args = list(shipped.eval_args)
        src = args.work / shipped.model_dir
        dst = args.out / name
        staging = args.out / f".{name}.tmp"
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir(parents=True)
        for f in ("config.json", "vocab.txt"):
            shutil.copy2(src / f, staging / f)
        to_float16(src / "model.safetensors", staging / "model.safetensors")
        float32 = json.loads((args.work / shipped.eval_file).read_text())
        float16 = evaluate(staging, args.work, eval_args, shipped.features)
        rounding = rounding_check(src, staging, args.work, eval_args, shipped.features, float32, float16)
        if rounding["drift"] > MAX_RSUM_DRIFT:
            shutil.rmtree(staging)
            sys.exit(f"{name}: float16 test rsum {rounding['float16']} is {rounding['drift']:.2f} from float32's "
                     f"{rounding['float32']} (scored in {rounding['precision']})")
        config = json.loads((src / "config.json").read_text())
        commands = [portable((logs / f"{s}.cmd").read_text().strip().removeprefix("+ "), args.work)
                    for s in shipped.steps]
        tag = f" --pair-tag={args.pair_tag}" if name == "flickr8k-pair" and args.pair_tag else ""
        commands.append(f"python bench/package_pretrained.py --only {name}{tag}  "
                        "(make pretrained runs all of the above)")
        notes = seed_note + [t.partition("=")[2] for t in args.note if t.partition("=")[0] == name]
        card = {
            "name": name, "summary": shipped.summary, "notes": notes, "variant": config["model"]["variant"],
            "text_encoder": config["model"]["text_encoder"], "features": config["features"],
            "val": metrics_of(config["best"]), "epoch": config["best"].get("epoch"),
            "global_weight": config["best"].get("global_weight"),
            "test_float32": metrics_of(float32), "test": metrics_of(float16), "rounding_check": rounding,
            "test_protocol": " ".join(["smcli retrieve --eval --split test", *eval_args]),
            "weights_sha256": sha256(staging / "model.safetensors"),
            "size_bytes": sum(p.stat().st_size for p in staging.iterdir()),  # weights, config, vocabulary
            "commands": commands, "terms": TERMS,
            "limits": LIMITS.format(features=config["features"]["backbone"]),
            "data": "Flickr8k, train split (6,000 photos x 5 captions); epoch chosen on val; test reported",
            "machine": f"{cpu_model()}, {platform.machine()}", "precision": training_precision(config),
        }
        (staging / "card.json").write_text(json.dumps(card, indent=2) + "\n")
        (staging / "MODEL_CARD.md").write_text(card_markdown(card))
        shutil.rmtree(dst, ignore_errors=True)
        staging.rename(dst)
        print(f"{name}: test rsum {float16['rsum']} (float32 {float32['rsum']}), {card['size_bytes']:,} bytes -> {dst}")


if __name__ == "__main__":
    main()
