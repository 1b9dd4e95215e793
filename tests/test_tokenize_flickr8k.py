"""The foundation's "done" check on the real Flickr8k files (skipped without ../shared).

smcli tokenize Flickr8k.token.txt --splits splits.csv -o caps.parquet: all 40,460 captions,
splits 6,000/1,000/1,000 images x 5 captions, a vocabulary from train captions only, a file
any Parquet reader reads; and the same through a pipe.
"""

from __future__ import annotations

import csv
from collections import Counter, defaultdict

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import FLICKR8K, FLICKR8K_SPLITS, FLICKR8K_TOKENS, needs_shared, run_main, run_smcli

from smcli.stage import open_stage
from smcli.text.captions import captions_vocab
from smcli.text.vocab import UNK_ID

pytestmark = [needs_shared, pytest.mark.slow]


@pytest.fixture(scope="module")
def caps(tmp_path_factory):
    """The captions file made by the documented command, and its stderr."""
    out = tmp_path_factory.mktemp("flickr8k") / "caps.parquet"
    rc, stdout, err = run_main("tokenize", FLICKR8K_TOKENS, "--splits", FLICKR8K_SPLITS,
                               "-o", out)
    assert rc == 0, err
    assert stdout == b""
    return out, err


@pytest.fixture(scope="module")
def table(caps):
    return pq.read_table(caps[0])


def test_every_caption_is_written(caps, table):
    lines = FLICKR8K_TOKENS.read_bytes().decode("utf-8").splitlines()
    assert len(lines) == 40460
    assert table.num_rows == 40460
    assert table.column("caption_id").to_pylist() == [ln.split("\t", 1)[0] for ln in lines]
    assert table.column("caption").to_pylist() == [ln.split("\t", 1)[1] for ln in lines]
    assert len(set(table.column("caption_id").to_pylist())) == 40460
    assert caps[1].splitlines()[-1] == "smcli tokenize: read 40,460, written 40,460, rejected 0"


def test_splits_are_6000_1000_1000_images_of_5_captions(table):
    images: dict[str, set[str]] = defaultdict(set)
    captions = Counter()
    pairs = zip(table.column("image_id").to_pylist(), table.column("split").to_pylist(),
                strict=True)
    for image, split in pairs:
        images[split].add(image)
        captions[split] += 1
    assert {s: len(images[s]) for s in ("train", "val", "test")} == {
        "train": 6000, "val": 1000, "test": 1000}
    assert captions["train"] == 30000 and captions["val"] == 5000 and captions["test"] == 5000
    # The rest, as the data README says: 91 unused images, and the 5 captions of the
    # "2258277193_586949ec62.jpg.1" quirk, whose image is in no split.
    assert captions["unused"] == 455 and captions[None] == 5
    assert images[None] == {"2258277193_586949ec62.jpg.1"}
    with open(FLICKR8K_SPLITS, newline="") as fh:
        official = {row["image"]: row["split"] for row in csv.DictReader(fh)}
    for split in ("train", "val", "test"):
        assert images[split] == {i for i, s in official.items() if s == split}


def test_vocabulary_is_built_from_train_captions_only(caps, table):
    stage = open_stage(caps[0], "captions")
    vocab = captions_vocab(stage)
    producer = stage.meta.producer
    stage.close()
    rows = table.select(["tokens", "token_ids", "split"]).to_pylist()
    train_words = {t for r in rows if r["split"] == "train" for t in r["tokens"]}
    other_words = {t for r in rows if r["split"] != "train" for t in r["tokens"]}
    assert set(vocab.tokens[2:]) == train_words
    held_out = other_words - train_words
    assert len(held_out) > 100  # val/test really have words of their own, none admitted
    for r in rows:
        if r["split"] != "train":
            for tok, tid in zip(r["tokens"], r["token_ids"], strict=True):
                assert (tid == UNK_ID) == (tok in held_out)
    assert producer["vocab_from"] == "train" and producer["vocab_hash"] == vocab.hash
    assert producer["vocab_size"] == len(vocab) and producer["format"] == "flickr"


def test_the_same_through_a_pipe(table):
    rc, out, err = run_smcli("tokenize", FLICKR8K_TOKENS, "--splits", FLICKR8K_SPLITS)
    assert rc == 0, err
    piped = pq.read_table(pa.BufferReader(out))
    assert piped.equals(table)
    assert piped.schema.metadata == table.schema.metadata


def test_captions_csv_gives_the_same_ids_and_tokens(table, tmp_path):
    """The shared captions.csv (image,caption_idx,caption) through the CSV reader."""
    out = tmp_path / "csv.parquet"
    rc, _, err = run_main("tokenize", FLICKR8K / "captions.csv", "--splits", FLICKR8K_SPLITS,
                          "-o", out)
    assert rc == 0, err
    from_csv = pq.read_table(out)
    assert from_csv.num_rows == 40455
    assert err.splitlines()[-1] == "smcli tokenize: read 40,455, written 40,455, rejected 0"
    by_id = dict(zip(table.column("caption_id").to_pylist(), table.column("tokens").to_pylist(),
                     strict=True))
    ids = from_csv.column("caption_id").to_pylist()
    assert set(ids) == set(by_id) - {f"2258277193_586949ec62.jpg.1#{i}" for i in range(5)}
    assert from_csv.column("tokens").to_pylist() == [by_id[i] for i in ids]
