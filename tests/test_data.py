"""Data preparation and loading: SentencePiece on a generated corpus, nanoGPT adoption, windows."""

import json
import pickle

import numpy as np
import pytest

from nrgpt_jax.data import prepare
from nrgpt_jax.data.tokens import DataError, Windows, check_stream, load_data, window_batches


def generated_corpus(folder, n_docs=40, seed=0):
    """Text files and a JSONL file of pseudo-English documents."""
    rng = np.random.default_rng(seed)
    words = ["energy", "token", "descent", "gradient", "attention", "the", "of", "and", "model", "step",
             "layer", "norm", "value", "query", "key", "landscape", "falls", "moves", "every", "each"]
    docs = [" ".join(rng.choice(words, size=int(rng.integers(30, 120)))).capitalize() + "." for _ in range(n_docs)]
    folder.mkdir(parents=True, exist_ok=True)
    for i, doc in enumerate(docs[: n_docs // 2]):
        (folder / f"doc{i}.txt").write_text(doc)
    with (folder / "more.jsonl").open("w") as f:
        for doc in docs[n_docs // 2:]:
            f.write(json.dumps({"text": doc, "id": 1}) + "\n")
    return docs


def test_sentencepiece_preparation_round_trips(tmp_path):
    docs = generated_corpus(tmp_path / "corpus")
    meta = prepare.prepare_text([tmp_path / "corpus"], tmp_path / "data", vocab_size=300, val_fraction=0.1)
    assert meta["vocab_size"] == 300 and meta["dtype"] == "uint16"
    assert meta["n_documents"] == {"train": 36, "val": 4}
    data = load_data("tokens", str(tmp_path / "data"))
    assert data.vocab_size == 300 and len(data.train) == meta["n_tokens"]["train"]
    eos = meta["eos_id"]
    assert int(np.sum(np.asarray(data.train) == eos)) == 36  # one <eos> closes each document
    first = np.asarray(data.train[: int(np.argmax(np.asarray(data.train) == eos))]).tolist()
    assert data.tokenizer.decode(first) in docs  # decoding gives back a document exactly
    assert data.tokenizer.decode(data.tokenizer.encode("energy descent")) == "energy descent"
    check_stream(data.train, data.vocab_size, 16, "train")


def test_sentencepiece_preparation_errors(tmp_path):
    with pytest.raises(DataError, match="no such file"):
        prepare.prepare_text([tmp_path / "missing"], tmp_path / "out")
    generated_corpus(tmp_path / "corpus", n_docs=4)
    with pytest.raises(DataError, match="smaller --vocab_size"):
        prepare.prepare_text([tmp_path / "corpus"], tmp_path / "out", vocab_size=50000)
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "x.jsonl").write_text('{"body": "no text field"}\n')
    with pytest.raises(DataError, match="text_key"):
        prepare.prepare_text([tmp_path / "bad"], tmp_path / "out")
    assert prepare.main(["text", "--input", str(tmp_path / "missing"), "--out", str(tmp_path / "o")]) == 2


def test_adopt_nanogpt_char_and_bpe(tmp_path):
    folder = tmp_path / "shakespeare_char"
    folder.mkdir()
    itos = {i: ch for i, ch in enumerate("abcdefgh\n ")}
    np.arange(200, dtype=np.uint16).__mod__(10).astype(np.uint16).tofile(folder / "train.bin")
    (np.arange(50, dtype=np.uint16) % 10).astype(np.uint16).tofile(folder / "val.bin")
    with (folder / "meta.pkl").open("wb") as f:
        pickle.dump({"vocab_size": 10, "itos": itos, "stoi": {v: k for k, v in itos.items()}}, f)
    meta = prepare.adopt_nanogpt(folder)
    assert meta["vocab_size"] == 10 and meta["tokenizer"]["kind"] == "char"
    data = load_data("tokens", str(folder))
    assert data.tokenizer.decode([0, 1, 2]) == "abc" and len(data.val) == 50

    bpe = tmp_path / "owt"
    bpe.mkdir()
    np.asarray([50256, 3, 7, 50000] * 20, np.uint16).tofile(bpe / "train.bin")
    np.asarray([1, 2, 50256] * 10, np.uint16).tofile(bpe / "val.bin")
    out = tmp_path / "owt_adopted"
    meta = prepare.adopt_nanogpt(bpe, out)
    assert meta["vocab_size"] == 50304 and (out / "train.bin").is_symlink()
    assert load_data("tokens", str(out)).tokenizer.decode([3, 7]) == "3 7"


def test_nanogpt_meta_pickle_cannot_run_code(tmp_path):
    folder = tmp_path / "evil"
    folder.mkdir()
    np.zeros(100, np.uint16).tofile(folder / "train.bin")
    np.zeros(100, np.uint16).tofile(folder / "val.bin")
    with (folder / "meta.pkl").open("wb") as f:
        pickle.dump({"vocab_size": 10, "x": np.int64(3)}, f)  # any class is refused
    with pytest.raises(DataError, match="only plain dicts"):
        prepare.adopt_nanogpt(folder)


def test_missing_meta_suggests_adoption(tmp_path):
    np.zeros(100, np.uint16).tofile(tmp_path / "train.bin")
    with pytest.raises(DataError, match="prepare nanogpt"):
        load_data("tokens", str(tmp_path))


def test_windows_are_shifted_pairs_and_the_order_is_seeded():
    tokens = np.arange(1000, dtype=np.uint16)
    w = Windows(tokens, 16)
    assert len(w) == 1000 - 16 and np.array_equal(w[5], np.arange(5, 22))
    a = window_batches(tokens, 16, 8, seed=3)
    b = window_batches(tokens, 16, 8, seed=3)
    c = window_batches(tokens, 16, 8, seed=4)
    assert np.array_equal(a[7], b[7]) and not np.array_equal(a[7], c[7])
    starts = np.concatenate([a[i][:, 0] for i in range(len(w) // 8)])
    assert len(set(starts.tolist())) == len(starts)  # an epoch visits each window at most once
