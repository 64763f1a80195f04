"""tiny-shakespeare at character level: vocabulary = sorted unique characters, 90/10 split."""

from __future__ import annotations

from importlib import resources
from pathlib import Path

import numpy as np

from nrgpt_jax.data.tokenizers import CharTokenizer

EMBEDDED = "tinyshakespeare.txt"


def read_text(path: str | None = None) -> str:
    """The embedded corpus, or a local text file given by `path`."""
    if not path:
        return resources.files("nrgpt_jax.data").joinpath(EMBEDDED).read_text(encoding="utf-8")
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"data.path={path!r}: no such text file (leave data.path empty for the "
                                "embedded tiny-shakespeare)")
    return p.read_text(encoding="utf-8")


def char_splits(text: str, train_fraction: float = 0.9):
    """(train ids, val ids, tokenizer): the first 90% of characters train, the rest validate."""
    tokenizer = CharTokenizer(sorted(set(text)))
    ids = np.asarray(tokenizer.encode(text), dtype=np.uint16)
    n = int(len(ids) * train_fraction)
    return ids[:n], ids[n:], tokenizer
