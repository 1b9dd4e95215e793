"""The tokenize stage in process: normalisation, vocabulary, every reader, bad rows.

The CLI-level checks (one error line, exit codes, pipes) are in test_cli.py.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import DATA, EXAMPLES

from smcli.errors import InputError, UsageError
from smcli.report import RunReport
from smcli.stage import OutputTarget, open_stage
from smcli.text.captions import CAPTIONS_SCHEMA, TokenizeOptions, captions_vocab, tokenize_file
from smcli.text.normalize import normalize, tokenize
from smcli.text.readers import ColumnNames, detect_format, read_captions
from smcli.text.vocab import PAD_ID, UNK, UNK_ID, Vocab

FLICKR = DATA / "flickr_tokens.txt"
SPLITS = DATA / "splits.csv"
TRAIN_IMAGE, VAL_IMAGE, TEST_IMAGE = "img_a.jpg", "img_b.jpg", "img_c.jpg"
# Words of the fixtures that occur only in val or test captions.
HELD_OUT_WORDS = {"zebra", "zebras", "striped", "graze", "stands", "near", "kayak", "kayaking",
                  "man", "paddles", "red", "river", "fun", "said", "is", '"'}


@dataclass
class Run:
    rows: list[dict]
    stage_meta: object
    vocab: Vocab
    counts: dict[str, int]
    err: list[str]
    path: Path

    def column(self, name: str) -> list:
        return [r[name] for r in self.rows]

    def by_id(self) -> dict[str, dict]:
        return {r["caption_id"]: r for r in self.rows}


def run_tokenize(tmp_path, capsys, source, *, errors=None, strict=False, **options) -> Run:
    """tokenize_file on ``source`` into tmp_path/out.parquet, read back through open_stage."""
    capsys.readouterr()
    out = tmp_path / "out.parquet"
    opts = TokenizeOptions(**options)
    report = RunReport("tokenize", errors_path=errors, strict=strict)
    counts = tokenize_file(str(source), OutputTarget(out), opts, report)
    report.finish(**counts)
    stage = open_stage(out, "captions")
    try:
        rows = stage.read().to_pylist()
        vocab = captions_vocab(stage)
        assert stage.parquet.schema_arrow.remove_metadata().equals(CAPTIONS_SCHEMA)
        meta = stage.meta
    finally:
        stage.close()
    return Run(rows, meta, vocab, counts, capsys.readouterr().err.splitlines(), out)


def words(vocab: Vocab) -> set[str]:
    return set(vocab.tokens[2:])


# --- normalisation -------------------------------------------------------------------


@pytest.mark.parametrize("text,expected", [
    ("A dog's running .", ["a", "dog", "'s", "running", "."]),
    ("Two dogs don't play", ["two", "dogs", "do", "n't", "play"]),
    ("they're I'm we've you'll he'd", ["they", "'re", "i", "'m", "we", "'ve", "you", "'ll",
                                       "he", "'d"]),
    ("It\u2019s a DOG!!  ", ["it", "'s", "a", "dog", "!", "!"]),            # curly apostrophe
    ("in the \ufb01eld", ["in", "the", "field"]),                          # NFKC ligature
    ("\uff34\uff57\uff4f zebras", ["two", "zebras"]),                       # NFKC full width
    ("Cafe\u0301 CAF\u00c9", ["caf\u00e9", "caf\u00e9"]),                   # composed, lower
    ('"Kayaking" is fun,said he.', ['"', "kayaking", '"', "is", "fun", ",", "said", "he", "."]),
    ("a dog;(small)", ["a", "dog", ";", "(", "small", ")"]),
    (" \t\u3000 ", []),                                                     # only spaces
])
def test_tokenize_normalises_and_splits_punctuation(text, expected):
    assert tokenize(text) == expected


def test_normalize_is_idempotent_and_collapses_whitespace():
    text = "  A\u00a0DOG\u2019s \t\n ball  "
    once = normalize(text)
    assert once == "a dog's ball"
    assert normalize(once) == once
    assert tokenize(once) == tokenize(text)


# --- vocabulary ----------------------------------------------------------------------


def test_vocab_build_order_specials_and_min_count():
    sents = [["b", "a", "c"], ["a", "b"], ["a", "d", UNK]]
    vocab = Vocab.build(sents)
    assert vocab.tokens == ["<pad>", "<unk>", "a", "b", "c", "d"]  # frequency, then a-z
    assert vocab.encode(["a", "zebra", "d"]) == [2, UNK_ID, 5]
    assert vocab.index["<pad>"] == PAD_ID
    assert Vocab.build(sents, min_count=2).tokens == ["<pad>", "<unk>", "a", "b"]


def test_vocab_hash_text_and_file_round_trip(tmp_path):
    vocab = Vocab.build([["a", "dog"], ["a", "cat"]])
    again = Vocab.from_text(vocab.to_text())
    assert again.tokens == vocab.tokens and again.hash == vocab.hash
    assert Vocab.build([["a", "dog"], ["a", "cow"]]).hash != vocab.hash
    vocab.save(tmp_path / "v.txt")
    assert (tmp_path / "v.txt").read_text() == "<pad>\n<unk>\na\ncat\ndog\n"
    assert Vocab.load(tmp_path / "v.txt").hash == vocab.hash


@pytest.mark.parametrize("content,fragment", [
    (b"dog\ncat\n", "not an smcli vocabulary"),
    (b"<pad>\n<unk>\ndog\ndog\n", "duplicate"),
    (b"<pad>\n<unk>\n\xff\n", "not UTF-8"),
])
def test_vocab_load_rejects_bad_files(tmp_path, content, fragment):
    path = tmp_path / "v.txt"
    path.write_bytes(content)
    with pytest.raises(InputError, match=fragment):
        Vocab.load(path)
    with pytest.raises(InputError, match="no such vocabulary file"):
        Vocab.load(tmp_path / "missing.txt")


# --- format detection ----------------------------------------------------------------


@pytest.mark.parametrize("name,fmt", [
    ("flickr_tokens.txt", "flickr"), ("captions.csv", "csv"), ("captions.tsv", "csv"),
    ("karpathy_dataset.json", "karpathy"), ("coco_captions.json", "coco"),
    ("queries.txt", "txt"),
])
def test_detect_format_of_every_fixture(name, fmt):
    data = (DATA / name).read_bytes()
    assert detect_format(name, data) == fmt
    if fmt in ("flickr", "karpathy", "coco"):  # these are recognised by content alone
        assert detect_format("<stdin>", data) == fmt


def test_detect_format_edge_cases(tmp_path):
    assert detect_format("x", b"PAR1....") == "parquet"
    assert detect_format("<stdin>", b"image,caption\na.jpg,a dog\n") == "csv"   # by header
    assert detect_format("<stdin>", b"\n\n  a dog, running\n") == "txt"
    bom_json = b"\xef\xbb\xbf" + (DATA / "karpathy_dataset.json").read_bytes()
    assert detect_format("k.json", bom_json) == "karpathy"                      # BOM skipped
    with pytest.raises(InputError, match="neither COCO captions nor Karpathy"):
        detect_format("x.json", b'{"foo": 1}')


def test_unknown_format_is_a_usage_error():
    with pytest.raises(UsageError, match="--format xml: unknown format; choose one of auto"):
        read_captions(str(FLICKR), "xml", RunReport("tokenize"))


# --- the readers, on the fixtures ----------------------------------------------------


def test_flickr_with_splits(tmp_path, capsys):
    run = run_tokenize(tmp_path, capsys, FLICKR, splits=str(SPLITS))
    assert run.counts == {"read": 9, "written": 9, "rejected": 0}
    assert run.column("caption_id")[:4] == ["img_a.jpg#0", "img_a.jpg#1", "img_a.jpg#2",
                                            "img_b.jpg#0"]
    row = run.by_id()["img_a.jpg#1"]
    assert row["image_id"] == TRAIN_IMAGE
    assert row["caption"] == "Two dogs don't play in the \ufb01eld ."   # original text kept
    assert row["tokens"] == ["two", "dogs", "do", "n't", "play", "in", "the", "field", "."]
    assert row["token_ids"] == run.vocab.encode(row["tokens"]) and UNK_ID not in row["token_ids"]
    splits = {r["image_id"]: r["split"] for r in run.rows}
    assert splits == {TRAIN_IMAGE: "train", VAL_IMAGE: "val", TEST_IMAGE: "test"}
    producer = run.stage_meta.producer
    assert producer["format"] == "flickr" and producer["vocab_from"] == "train"
    assert producer["vocab_hash"] == run.vocab.hash and producer["vocab_size"] == len(run.vocab)
    assert producer["normalization"] and producer["min_count"] == 1
    assert run.err[-1] == "smcli tokenize: read 9, written 9, rejected 0"


def test_vocabulary_comes_from_train_captions_only(tmp_path, capsys):
    run = run_tokenize(tmp_path, capsys, FLICKR, splits=str(SPLITS))
    train_tokens = {t for r in run.rows if r["split"] == "train" for t in r["tokens"]}
    assert words(run.vocab) == train_tokens
    assert not words(run.vocab) & HELD_OUT_WORDS
    for r in run.rows:  # held-out words are <unk> in the ids, kept in the tokens
        for tok, tid in zip(r["tokens"], r["token_ids"], strict=True):
            assert (tid == UNK_ID) == (tok not in train_tokens)
    zebra = run.by_id()["img_b.jpg#0"]
    assert zebra["tokens"][1] == "zebra" and zebra["token_ids"][1] == UNK_ID


def test_no_split_builds_from_all_captions_with_a_warning(tmp_path, capsys):
    run = run_tokenize(tmp_path, capsys, FLICKR)
    assert run.column("split") == [None] * 9
    assert run.stage_meta.producer["vocab_from"] == "all"
    assert HELD_OUT_WORDS <= words(run.vocab)
    assert any("warning: no split known" in line for line in run.err)


def test_images_missing_from_the_splits_file_get_no_split(tmp_path, capsys):
    splits = tmp_path / "splits.csv"
    splits.write_text("image,split\nimg_a.jpg,train\n")
    run = run_tokenize(tmp_path, capsys, FLICKR, splits=str(splits))
    assert run.column("split") == ["train"] * 3 + [None] * 6
    assert any("6 caption(s) whose image is not in" in line for line in run.err)
    assert not words(run.vocab) & HELD_OUT_WORDS


def test_csv_reader_agrees_with_the_flickr_reader(tmp_path, capsys):
    flickr = run_tokenize(tmp_path, capsys, FLICKR, splits=str(SPLITS))
    csv = run_tokenize(tmp_path, capsys, DATA / "captions.csv", splits=str(SPLITS))
    assert csv.stage_meta.producer["format"] == "csv"
    for column in ("caption_id", "image_id", "caption", "tokens", "token_ids", "split"):
        assert csv.column(column) == flickr.column(column), column
    assert csv.vocab.hash == flickr.vocab.hash


def test_tsv_with_named_columns(tmp_path, capsys):
    tsv = DATA / "captions.tsv"
    with pytest.raises(InputError) as exc:
        run_tokenize(tmp_path, capsys, tsv)
    assert "no caption column" in str(exc.value)
    assert "columns found: photo, description" in str(exc.value)
    run = run_tokenize(tmp_path, capsys, tsv,
                       columns=ColumnNames(image="photo", caption="description"))
    flickr = run_tokenize(tmp_path, capsys, FLICKR)
    assert run.column("caption_id") == flickr.column("caption_id")  # <image>#<n> by order
    assert run.column("tokens") == flickr.column("tokens")
    with pytest.raises(InputError, match="no column 'text'; columns found: photo, description"):
        run_tokenize(tmp_path, capsys, tsv, columns=ColumnNames(caption="text"))


def test_karpathy_json_with_its_splits(tmp_path, capsys):
    run = run_tokenize(tmp_path, capsys, DATA / "karpathy_dataset.json")
    assert run.counts == {"read": 11, "written": 11, "rejected": 0}
    assert run.stage_meta.producer["format"] == "karpathy"
    rows = run.by_id()
    assert rows["img_b.jpg#2"]["split"] == "val" and rows["img_c.jpg#0"]["split"] == "test"
    assert rows["img_d.jpg#0"]["split"] == "restval"
    assert rows["img_d.jpg#1"]["caption"] == "a cat yawns"  # a sentence with tokens only
    # restval is training data: its words are in; val and test words are not.
    assert {"cat", "sofa", "yawns", "dog"} <= words(run.vocab)
    assert not words(run.vocab) & HELD_OUT_WORDS
    assert run.stage_meta.producer["vocab_from"] == "train"


def test_splits_file_overrides_karpathy_splits(tmp_path, capsys):
    splits = tmp_path / "s.csv"
    splits.write_text("image,split\nimg_a.jpg,test\nimg_b.jpg,train\nimg_c.jpg,val\n"
                      "img_d.jpg,test\n")
    run = run_tokenize(tmp_path, capsys, DATA / "karpathy_dataset.json", splits=str(splits))
    assert {r["image_id"]: r["split"] for r in run.rows}["img_b.jpg"] == "train"
    assert "zebra" in words(run.vocab) and "dog" in words(run.vocab)  # img_b's "near a dog"
    assert not {"sofa", "kayak", "field"} & words(run.vocab)


def test_coco_json(tmp_path, capsys):
    run = run_tokenize(tmp_path, capsys, DATA / "coco_captions.json")
    assert run.stage_meta.producer["format"] == "coco"
    assert run.column("caption_id") == [str(i) for i in range(100, 109)]
    assert run.column("image_id") == [TRAIN_IMAGE] * 3 + [VAL_IMAGE] * 3 + [TEST_IMAGE] * 3
    flickr = run_tokenize(tmp_path, capsys, FLICKR)
    assert run.column("tokens") == flickr.column("tokens")
    with_splits = run_tokenize(tmp_path, capsys, DATA / "coco_captions.json", splits=str(SPLITS))
    assert not words(with_splits.vocab) & HELD_OUT_WORDS


def test_plain_text_queries(tmp_path, capsys):
    run = run_tokenize(tmp_path, capsys, DATA / "queries.txt")
    assert run.stage_meta.producer["format"] == "txt"
    assert run.column("caption_id") == ["1", "2", "3"]
    assert run.column("image_id") == [None, None, None]
    assert run.column("tokens")[2] == ["a", "zebra", "'s", "stripes"]


def test_queries_encoded_with_a_training_vocabulary(tmp_path, capsys):
    """The query path of retrieval: the training vocabulary reused with --vocab."""
    vocab_file = tmp_path / "vocab.txt"
    train = run_tokenize(tmp_path, capsys, FLICKR, splits=str(SPLITS), vocab_out=str(vocab_file))
    assert vocab_file.read_text() == train.vocab.to_text()
    run = run_tokenize(tmp_path, capsys, DATA / "queries.txt", vocab=str(vocab_file))
    assert run.vocab.hash == train.vocab.hash
    assert run.stage_meta.producer["vocab_hash"] == train.vocab.hash
    assert run.stage_meta.producer["vocab_from"] == "file:vocab.txt"
    assert run.column("token_ids")[0] == train.vocab.encode(["a", "dog", "on", "grass"])
    assert UNK_ID in run.column("token_ids")[2]  # "zebra" is not a training word


def test_reused_vocabulary_is_never_extended(tmp_path, capsys):
    vocab_file = tmp_path / "vocab.txt"
    Vocab.build([["a", "dog"]]).save(vocab_file)
    run = run_tokenize(tmp_path, capsys, FLICKR, splits=str(SPLITS), vocab=str(vocab_file))
    assert run.vocab.tokens == ["<pad>", "<unk>", "a", "dog"]
    assert set(t for ids in run.column("token_ids") for t in ids) == {UNK_ID, 2, 3}


def test_min_count_maps_rare_train_words_to_unk(tmp_path, capsys):
    run = run_tokenize(tmp_path, capsys, FLICKR, splits=str(SPLITS), min_count=2)
    train = [r for r in run.rows if r["split"] == "train"]
    counts: dict[str, int] = {}
    for r in train:
        for t in r["tokens"]:
            counts[t] = counts.get(t, 0) + 1
    assert words(run.vocab) == {t for t, c in counts.items() if c >= 2}
    assert "ball" not in words(run.vocab) and "a" in words(run.vocab)
    assert run.stage_meta.producer["min_count"] == 2


def test_parquet_input_round_trip(tmp_path, capsys):
    first = run_tokenize(tmp_path, capsys, FLICKR, splits=str(SPLITS))
    again_src = tmp_path / "captions.parquet"
    first.path.rename(again_src)
    again = run_tokenize(tmp_path, capsys, again_src)
    assert again.stage_meta.producer["format"] == "parquet"
    for column in ("caption_id", "image_id", "caption", "tokens", "split"):
        assert again.column(column) == first.column(column), column
    assert again.vocab.hash == first.vocab.hash  # splits came along, so the same train words


def test_plain_parquet_with_a_sentence_column(tmp_path, capsys):
    src = tmp_path / "plain.parquet"
    pq.write_table(pa.table({"file_name": ["x.jpg", "x.jpg", "y.jpg"],
                             "sentence": ["A dog .", "A DOG !", None]}), src)
    run = run_tokenize(tmp_path, capsys, src)
    assert run.column("caption_id") == ["x.jpg#0", "x.jpg#1"]
    assert run.counts == {"read": 3, "written": 2, "rejected": 1}
    assert "rejected" in run.err[0] and "row 3: empty caption" in run.err[0]


def test_example_captions(tmp_path, capsys):
    run = run_tokenize(tmp_path, capsys, EXAMPLES / "captions.txt",
                       splits=str(EXAMPLES / "splits.csv"))
    lines = (EXAMPLES / "captions.txt").read_text().splitlines()
    assert run.counts["read"] == len(lines) == run.counts["written"]
    assert run.column("caption_id") == [ln.split("\t")[0] for ln in lines]
    assert None not in run.column("split")


# --- row-level problems: reported, counted, the rest written -------------------------


def test_bad_rows_are_reported_and_counted(tmp_path, capsys):
    src = tmp_path / "caps.txt"
    src.write_text("a.jpg#0\tA dog .\n"
                   "a.jpg#1\t  \n"              # empty caption
                   "not a caption line\n"       # malformed
                   "a.jpg#0\tA second dog .\n"  # duplicate id
                   "\n"                         # blank lines are not rows
                   "b.jpg#0\t. . .\n")          # punctuation is not empty
    errors = tmp_path / "errors.csv"
    run = run_tokenize(tmp_path, capsys, src, errors=errors)
    assert run.column("caption_id") == ["a.jpg#0", "b.jpg#0"]
    assert run.column("caption")[0] == "A dog ."  # the first of the duplicates wins
    assert run.counts == {"read": 5, "written": 2, "rejected": 3}
    rejected = [ln for ln in run.err if "rejected " in ln and "read" not in ln]
    assert rejected == [
        f"smcli tokenize: rejected {src}:line 2: empty caption",
        f"smcli tokenize: rejected {src}:line 3: expected <image>#<n><TAB><caption>",
        f"smcli tokenize: rejected {src}:line 4: duplicate caption id 'a.jpg#0' (first at line 1)",
    ]
    assert run.err[-1] == "smcli tokenize: read 5, written 2, rejected 3"
    assert errors.read_text().splitlines()[1:] == [
        f"{src},line 2,empty caption",
        f"{src},line 3,expected <image>#<n><TAB><caption>",
        f"{src},line 4,duplicate caption id 'a.jpg#0' (first at line 1)",
    ]


def test_strict_makes_a_bad_row_fatal(tmp_path, capsys):
    src = tmp_path / "caps.txt"
    src.write_text("a.jpg#0\tA dog .\na.jpg#0\tAgain .\n")
    with pytest.raises(InputError, match=r"line 2: duplicate caption id .* \(--strict\)"):
        run_tokenize(tmp_path, capsys, src, strict=True)
    assert not (tmp_path / "out.parquet").exists()


def test_csv_row_with_an_unquoted_comma_is_rejected_not_truncated(tmp_path, capsys):
    src = tmp_path / "caps.csv"
    src.write_text('image,caption\na.jpg,"A dog, running"\nb.jpg,A cat, sleeping\nc.jpg\n')
    run = run_tokenize(tmp_path, capsys, src)
    assert run.column("caption") == ["A dog, running"]
    assert run.counts == {"read": 3, "written": 1, "rejected": 2}
    assert any("line 3: 3 cells for 2 columns" in ln for ln in run.err)
    assert any("line 4: empty caption" in ln for ln in run.err)


def test_coco_and_karpathy_structure_problems_are_row_rejects(tmp_path, capsys):
    coco = tmp_path / "coco.json"
    coco.write_text(json.dumps({"images": [{"id": 1, "file_name": "a.jpg"}, "junk"],
                                "annotations": [{"id": 1, "image_id": 1, "caption": "A dog ."},
                                                {"id": 2, "image_id": 9, "caption": "A cat ."},
                                                {"id": 3, "image_id": 1, "caption": 5}, 7]}))
    run = run_tokenize(tmp_path, capsys, coco)
    assert run.column("caption_id") == ["1"]
    assert run.counts == {"read": 4, "written": 1, "rejected": 3}
    assert any("annotations[1]: image id 9 not in the images list" in ln for ln in run.err)
    kp = tmp_path / "kp.json"
    kp.write_text(json.dumps({"images": [
        {"filename": "a.jpg", "split": "train", "sentences": [{"raw": "A dog ."}, 5, {}]},
        {"split": "train", "sentences": [{"raw": "lost"}]},
        3,
    ]}))
    run = run_tokenize(tmp_path, capsys, kp)
    assert run.column("caption_id") == ["a.jpg#0"]
    assert run.counts == {"read": 5, "written": 1, "rejected": 4}
    assert any("images[1]: image without a filename" in ln for ln in run.err)


# --- whole-file problems: one line naming the file and the problem -------------------


def test_invalid_utf8_names_the_line(tmp_path, capsys):
    src = tmp_path / "caps.txt"
    src.write_bytes(b"a.jpg#0\tA dog .\na.jpg#1\tA caf\xe9 .\n")
    utf8 = r"caps.txt: line 2: invalid UTF-8 \(byte 0xe9 at column 14\)"
    with pytest.raises(InputError, match=utf8):
        run_tokenize(tmp_path, capsys, src)
    for name, data in (("caps.csv", b"image,caption\na.jpg,ok\nb.jpg,caf\xe9\n"),
                       ("caps.json", b'{"images": [],\n"annotations": [\n"\xe9"]}')):
        path = tmp_path / name
        path.write_bytes(data)
        with pytest.raises(InputError, match=rf"{name}: line 3: invalid UTF-8"):
            run_tokenize(tmp_path, capsys, path)
    assert not (tmp_path / "out.parquet").exists()


@pytest.mark.parametrize("content,fragment", [
    (b"", "empty file"),
    (b" \n\n", "empty file"),
    (b'{"annotations": [', "caps.json: line 1: invalid JSON"),
    (b'{"images": {}}', "neither COCO"),
])
def test_unusable_files(tmp_path, capsys, content, fragment):
    src = tmp_path / "caps.json"
    src.write_bytes(content)
    with pytest.raises(InputError, match=fragment):
        run_tokenize(tmp_path, capsys, src)


def test_missing_inputs(tmp_path, capsys):
    with pytest.raises(InputError, match="nope.txt: no such file"):
        run_tokenize(tmp_path, capsys, tmp_path / "nope.txt")
    with pytest.raises(InputError, match="is a directory"):
        run_tokenize(tmp_path, capsys, tmp_path)
    with pytest.raises(InputError, match="no such file"):
        run_tokenize(tmp_path, capsys, FLICKR, splits=str(tmp_path / "nope.csv"))


def test_missing_vocab_fails_before_reading_the_input(tmp_path, capsys):
    # The input is unreadable too: the vocabulary error must come first.
    with pytest.raises(InputError, match="no such vocabulary file"):
        run_tokenize(tmp_path, capsys, tmp_path / "nope.txt", vocab=str(tmp_path / "v.txt"))


@pytest.mark.parametrize("content,fragment", [
    ("img,set\na.jpg,train\n", "no image column .*columns found: img, set"),
    ("image,set\na.jpg,train\n", "no split column"),
    ("image,split\na.jpg,train\na.jpg,test\n", "line 3: a.jpg is in two splits"),
    ("image,split\na.jpg,\n", "line 2: expected image,split"),
])
def test_bad_splits_files(tmp_path, capsys, content, fragment):
    splits = tmp_path / "splits.csv"
    splits.write_text(content)
    with pytest.raises(InputError, match=fragment):
        run_tokenize(tmp_path, capsys, FLICKR, splits=str(splits))


@pytest.mark.parametrize("content,fragment", [
    ('image,caption\na.jpg,"A dog\nb.jpg,A cat\nc.jpg,A cow\n', "line 4: malformed CSV"),
    ('image,caption\na.jpg,"A" dog\n', "line 2: malformed CSV"),
    ('"image,caption\n', "line 1: malformed CSV"),
])
def test_csv_quoting_errors_are_not_silent(tmp_path, capsys, content, fragment):
    """An unclosed quote must not swallow the following rows into one caption."""
    src = tmp_path / "caps.csv"
    src.write_text(content)
    with pytest.raises(InputError, match=fragment):
        run_tokenize(tmp_path, capsys, src)


def test_tsv_is_not_quoted(tmp_path, capsys):
    src = tmp_path / "caps.tsv"
    src.write_text('image\tcaption\na.jpg\t"Hello" said the dog\nb.jpg\t"unclosed\nc.jpg\tA cow\n')
    run = run_tokenize(tmp_path, capsys, src)
    assert run.column("caption") == ['"Hello" said the dog', '"unclosed', "A cow"]
