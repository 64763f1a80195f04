"""Prepare token-stream data folders (meta.json + train.bin + val.bin) from local files.

    python -m nrgpt_jax.data.prepare text --input DIR_OR_FILES... --out DIR [--vocab_size 8000]
        Train a SentencePiece BPE model on local .txt/.md/.jsonl files and tokenize them.
    python -m nrgpt_jax.data.prepare nanogpt --input DIR [--out DIR]
        Adopt nanoGPT-format train.bin/val.bin (uint16) and optional meta.pkl.

Nothing is downloaded: every input is a local file.
"""

from __future__ import annotations

import argparse
import json
import os
import pickle
import random
import sys
import tempfile
from pathlib import Path

import numpy as np

from nrgpt_jax.data.tokens import META_FILE, DataError, open_stream
from nrgpt_jax.files import write_json_atomic

TEXT_SUFFIXES = (".txt", ".text", ".md")
JSONL_SUFFIXES = (".jsonl", ".json")
GPT2_PADDED_VOCAB = 50304


# -------------------------------------------------------------------------------- documents
def find_files(inputs) -> list[Path]:
    files = []
    for item in inputs:
        p = Path(item)
        if p.is_dir():
            files += sorted(f for f in p.rglob("*") if f.is_file() and f.suffix in TEXT_SUFFIXES + JSONL_SUFFIXES)
        elif p.is_file():
            files.append(p)
        else:
            raise DataError(f"{p}: no such file or folder")
    if not files:
        raise DataError(f"no {'/'.join(TEXT_SUFFIXES + JSONL_SUFFIXES)} files under {list(map(str, inputs))}")
    return files


def read_documents(files, text_key: str = "text") -> list[str]:
    """One document per text file, or per JSONL line (its `text_key` field)."""
    docs = []
    for f in files:
        if f.suffix in JSONL_SUFFIXES:
            for n, line in enumerate(f.read_text(encoding="utf-8").splitlines(), 1):
                if not line.strip():
                    continue
                try:
                    record = json.loads(line)
                    docs.append(str(record[text_key]))
                except (json.JSONDecodeError, KeyError, TypeError):
                    raise DataError(f"{f}:{n} is not a JSON object with a {text_key!r} field "
                                    "(set --text_key)") from None
        else:
            docs.append(f.read_text(encoding="utf-8", errors="replace"))
    docs = [d for d in docs if d.strip()]
    if not docs:
        raise DataError("the input files hold no text")
    return docs


def split_documents(docs: list[str], val_fraction: float, seed: int) -> tuple[list[str], list[str]]:
    """Shuffle documents by `seed` and hold out `val_fraction` of them (at least one).

    A single document is split by characters instead (first 1 - val_fraction for training).
    """
    if len(docs) == 1:
        cut = int(len(docs[0]) * (1 - val_fraction))
        return [docs[0][:cut]], [docs[0][cut:]]
    order = list(range(len(docs)))
    random.Random(seed).shuffle(order)
    n_val = max(1, int(round(len(docs) * val_fraction)))
    return [docs[i] for i in order[n_val:]], [docs[i] for i in order[:n_val]]


# ------------------------------------------------------------------------------ the writers
def write_stream(path: Path, ids: np.ndarray) -> None:
    tmp = path.with_suffix(".tmp")
    ids.tofile(tmp)
    os.replace(tmp, path)


def stream_dtype(vocab_size: int) -> str:
    return "uint16" if vocab_size <= 1 << 16 else "uint32"


def prepare_text(inputs, out, vocab_size: int = 8000, val_fraction: float = 0.01, seed: int = 0,
                 text_key: str = "text") -> dict:
    """Train a SentencePiece BPE tokenizer on local text and write a token-stream folder."""
    import sentencepiece as spm

    if not 0 < val_fraction < 1:
        raise DataError(f"--val_fraction={val_fraction} must be in (0, 1)")
    docs = read_documents(find_files(inputs), text_key)
    train_docs, val_docs = split_documents(docs, val_fraction, seed)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        corpus = Path(tmp) / "corpus.txt"
        corpus.write_text("\n".join(train_docs), encoding="utf-8")
        spm.set_random_generator_seed(seed)
        try:
            spm.SentencePieceTrainer.train(
                input=str(corpus), model_prefix=str(out / "tokenizer"), vocab_size=vocab_size,
                model_type="bpe", byte_fallback=True, character_coverage=1.0,
                normalization_rule_name="identity", remove_extra_whitespaces=False,
                split_digits=True, input_sentence_size=2_000_000, shuffle_input_sentence=True,
                max_sentence_length=1 << 16, num_threads=os.cpu_count() or 1, minloglevel=2,
                unk_id=0, bos_id=1, eos_id=2, pad_id=-1)
        except RuntimeError as err:
            msg = str(err).splitlines()[-1] if str(err) else type(err).__name__
            hint = ": try a smaller --vocab_size" if "vocab" in msg.lower() else ""
            raise DataError(f"SentencePiece training failed ({msg}){hint}") from None
    sp = spm.SentencePieceProcessor(model_file=str(out / "tokenizer.model"))
    dtype = stream_dtype(sp.get_piece_size())
    counts = {}
    for split, split_docs in (("train", train_docs), ("val", val_docs)):
        ids = [i for doc in sp.encode(split_docs) for i in (*doc, sp.eos_id())]
        arr = np.asarray(ids, dtype=dtype)
        write_stream(out / f"{split}.bin", arr)
        counts[split] = len(arr)
    meta = {"format": "nrgpt_jax.tokens/1", "vocab_size": sp.get_piece_size(), "dtype": dtype,
            "train": "train.bin", "val": "val.bin", "max_token_id": sp.get_piece_size() - 1,
            "tokenizer": {"kind": "sentencepiece", "model": "tokenizer.model"}, "eos_id": sp.eos_id(),
            "n_documents": {"train": len(train_docs), "val": len(val_docs)},
            "n_tokens": counts, "source": [str(p) for p in inputs]}
    write_json_atomic(out / META_FILE, meta)
    return meta


class _SafeUnpickler(pickle.Unpickler):
    """Plain containers and numbers only: a meta.pkl cannot run code."""

    def find_class(self, module, name):
        raise DataError(f"meta.pkl holds an object of type {module}.{name}; only plain dicts are read")


def adopt_nanogpt(folder, out=None) -> dict:
    """Write meta.json for a nanoGPT data folder (train.bin/val.bin uint16, optional meta.pkl)."""
    folder = Path(folder)
    out = Path(out) if out else folder
    streams = {s: open_stream(folder / f"{s}.bin", "uint16") for s in ("train", "val")}
    tokenizer, vocab = {"kind": "none", "note": "GPT-2 BPE ids (no vocabulary file)"}, GPT2_PADDED_VOCAB
    if (folder / "meta.pkl").exists():
        with (folder / "meta.pkl").open("rb") as f:
            try:
                meta_pkl = _SafeUnpickler(f).load()
            except (pickle.UnpicklingError, EOFError) as err:
                raise DataError(f"{folder / 'meta.pkl'} is unreadable ({err})") from None
        vocab = int(meta_pkl["vocab_size"])
        if "itos" in meta_pkl:
            itos = meta_pkl["itos"]
            tokenizer = {"kind": "char", "itos": [itos[i] for i in range(len(itos))]}
    max_id = max(int(np.max(s[i:i + (1 << 26)])) for s in streams.values() for i in range(0, len(s), 1 << 26))
    if max_id >= vocab:
        raise DataError(f"{folder} holds token id {max_id} >= vocab_size {vocab}: not nanoGPT uint16 data")
    out.mkdir(parents=True, exist_ok=True)
    if out.resolve() != folder.resolve():
        for s in ("train", "val"):
            link = out / f"{s}.bin"
            if link.exists() or link.is_symlink():
                link.unlink()
            link.symlink_to((folder / f"{s}.bin").resolve())
    meta = {"format": "nrgpt_jax.tokens/1", "vocab_size": vocab, "dtype": "uint16", "train": "train.bin",
            "val": "val.bin", "max_token_id": max_id, "tokenizer": tokenizer,
            "n_tokens": {s: int(len(a)) for s, a in streams.items()}, "source": str(folder.resolve())}
    write_json_atomic(out / META_FILE, meta)
    return meta


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m nrgpt_jax.data.prepare",
                                     description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    text = sub.add_parser("text", help="SentencePiece BPE on local .txt/.md/.jsonl files")
    text.add_argument("--input", nargs="+", required=True, help="files or folders")
    text.add_argument("--out", required=True, help="output folder")
    text.add_argument("--vocab_size", type=int, default=8000)
    text.add_argument("--val_fraction", type=float, default=0.01, help="share of documents held out")
    text.add_argument("--text_key", default="text", help="JSONL field holding the text")
    text.add_argument("--seed", type=int, default=0)
    nano = sub.add_parser("nanogpt", help="adopt nanoGPT train.bin/val.bin(/meta.pkl)")
    nano.add_argument("--input", required=True, help="folder with train.bin and val.bin")
    nano.add_argument("--out", default=None, help="output folder (default: the input folder)")
    args = parser.parse_args(argv)
    try:
        if args.command == "text":
            meta = prepare_text(args.input, args.out, args.vocab_size, args.val_fraction, args.seed, args.text_key)
            out = args.out
        else:
            meta = adopt_nanogpt(args.input, args.out)
            out = args.out or args.input
    except DataError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"wrote {Path(out) / META_FILE}: vocab {meta['vocab_size']}, {meta['n_tokens']['train']:,} train and "
          f"{meta['n_tokens']['val']:,} val tokens; train with --config.data.name=tokens --config.data.path={out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
