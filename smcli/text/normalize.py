"""The one text normalisation smcli uses, for training captions and for queries alike."""

from __future__ import annotations

import re
import unicodedata

# Clitics split as in the Penn Treebank, which is how the Flickr and COCO token files
# were made: "dog's" -> "dog 's", "don't" -> "do n't".
_CLITIC = re.compile(r"(\w)(n't|'s|'re|'ve|'ll|'d|'m)\b")
_TOKEN = re.compile(r"n't|'(?:s|re|ve|ll|d|m)\b|\w+|[^\w\s]")


def normalize(text: str) -> str:
    """Unicode NFKC, lower case, curly quotes made straight, whitespace collapsed."""
    text = unicodedata.normalize("NFKC", text).lower()
    text = text.replace("\u2019", "'").replace("\u2018", "'")
    return " ".join(text.split())


def tokenize(text: str) -> list[str]:
    """Split normalised text into words and punctuation marks."""
    text = _CLITIC.sub(r"\1 \2", normalize(text))
    return _TOKEN.findall(text)
