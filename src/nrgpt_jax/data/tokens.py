"""Token streams: a data set is a train and a validation stream of token ids plus a tokenizer.

On disk a prepared data set is a folder with `meta.json`, `train.bin` and `val.bin` (flat
uint16/uint32 arrays, read by memory map). Training draws random windows of block_size + 1 tokens
with a grain pipeline that is deterministic in its seed and whose position can be saved.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import grain
import numpy as np

from nrgpt_jax.data import shakespeare
from nrgpt_jax.data.tokenizers import CharTokenizer, IdTokenizer, SentencePieceTokenizer, Tokenizer

META_FILE = "meta.json"
DTYPES = ("uint16", "uint32")
DATA_NAMES = ("shakespeare_char", "tokens", "listops")


class DataError(ValueError):
    """Data files are missing or malformed; the message names the file and the fix."""


@dataclasses.dataclass
class TokenData:
    """A data set ready for training: 1-D id streams (arrays or memory maps) and a tokenizer."""

    name: str
    train: Any
    val: Any
    vocab_size: int
    tokenizer: Tokenizer
    extras: dict = dataclasses.field(default_factory=dict)  # e.g. ListOps test sets


def load_data(name: str, path: str = "", seed: int = 0) -> TokenData:
    """Load data set `name` ('shakespeare_char', 'tokens' or 'listops') from `path`."""
    if name == "shakespeare_char":
        try:
            train, val, tok = shakespeare.char_splits(shakespeare.read_text(path))
        except FileNotFoundError as err:
            raise DataError(str(err)) from None
        return TokenData(name, train, val, tok.vocab_size, tok, extras={"sample_prompt": tok.encode("\n")})
    if name == "tokens":
        return load_token_dir(path)
    if name == "listops":
        from nrgpt_jax.data import listops

        return listops.load_listops(path, seed=seed)
    raise DataError(f"data.name={name!r} is unknown: use one of {DATA_NAMES}")


def load_token_dir(path) -> TokenData:
    """A prepared folder (meta.json + train.bin + val.bin) as memory-mapped streams."""
    if not path:
        raise DataError("data.path is empty: point it at a folder made by `python -m nrgpt_jax.data.prepare`")
    folder = Path(path)
    meta_path = folder / META_FILE
    if not meta_path.exists():
        hint = (" (it looks like nanoGPT data: run `python -m nrgpt_jax.data.prepare nanogpt "
                f"--input {folder}`)") if (folder / "train.bin").exists() else ""
        raise DataError(f"{meta_path} not found: prepare the folder with "
                        f"`python -m nrgpt_jax.data.prepare`{hint}")
    try:
        meta = json.loads(meta_path.read_text())
        vocab_size, dtype = int(meta["vocab_size"]), str(meta["dtype"])
    except (json.JSONDecodeError, KeyError, TypeError, ValueError) as err:
        raise DataError(f"{meta_path} is malformed ({err}): re-run `python -m nrgpt_jax.data.prepare`") from None
    if dtype not in DTYPES:
        raise DataError(f"{meta_path}: dtype {dtype!r} is not one of {DTYPES}")
    streams = {s: open_stream(folder / meta.get(s, f"{s}.bin"), dtype) for s in ("train", "val")}
    return TokenData("tokens", streams["train"], streams["val"], vocab_size, _tokenizer(folder, meta),
                     extras={"max_token_id": meta.get("max_token_id")})


def _tokenizer(folder: Path, meta: dict) -> Tokenizer:
    spec = meta.get("tokenizer") or {"kind": "none"}
    if spec.get("kind") == "sentencepiece":
        return SentencePieceTokenizer(folder / spec.get("model", "tokenizer.model"))
    if spec.get("kind") == "char":
        return CharTokenizer(spec["itos"])
    return IdTokenizer(int(meta["vocab_size"]))


def open_stream(path: Path, dtype: str):
    """Memory-map a flat token file, checking that it exists and fits the dtype."""
    if not path.exists():
        raise DataError(f"{path} not found: the data folder is incomplete, re-run the preparation")
    size, itemsize = path.stat().st_size, np.dtype(dtype).itemsize
    if size % itemsize:
        raise DataError(f"{path} has {size} bytes, not a multiple of {itemsize}: it is not a {dtype} "
                        "token file (check dtype in meta.json)")
    if size == 0:
        raise DataError(f"{path} is empty")
    return np.memmap(path, dtype=dtype, mode="r")


def check_stream(tokens, vocab_size: int, block_size: int, where: str, max_id: int | None = None) -> None:
    """Raise DataError unless `tokens` holds >= block_size + 1 ids, all below vocab_size."""
    if len(tokens) < block_size + 1:
        raise DataError(f"{where} has {len(tokens)} tokens, fewer than block_size + 1 = {block_size + 1}: "
                        "lower model.block_size or use more data")
    if max_id is None:
        max_id = max(int(np.max(tokens[i:i + (1 << 26)])) for i in range(0, len(tokens), 1 << 26))
    if max_id >= vocab_size:
        raise DataError(f"{where} holds token id {max_id} >= vocab_size {vocab_size}: the data does not "
                        "match the vocabulary (check meta.json or model.vocab_size)")


class Windows:
    """Random-access source of every window tokens[i : i + block_size + 1] (int32)."""

    def __init__(self, tokens, block_size: int):
        self.tokens, self.block_size = tokens, block_size

    def __len__(self) -> int:
        return len(self.tokens) - self.block_size

    def __getitem__(self, i) -> np.ndarray:
        return np.asarray(self.tokens[i:i + self.block_size + 1], dtype=np.int32)


def window_batches(tokens, block_size: int, batch_size: int, seed: int) -> grain.MapDataset:
    """Batches (batch_size, block_size + 1) of windows in a seeded order, reshuffled every epoch."""
    return grain.MapDataset.source(Windows(tokens, block_size)).shuffle(seed=seed).repeat().batch(batch_size)
