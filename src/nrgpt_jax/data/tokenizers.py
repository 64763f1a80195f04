"""Tokenizers that turn model ids back into text (and text into ids) for sampling and prompts."""

from __future__ import annotations

from pathlib import Path
from typing import Protocol, Sequence


class Tokenizer(Protocol):
    vocab_size: int

    def encode(self, text: str) -> list[int]: ...

    def decode(self, ids: Sequence[int]) -> str: ...


class TokenizerError(ValueError):
    """Text cannot be encoded, or a tokenizer file is missing or broken."""


class CharTokenizer:
    """Characters <-> ids by a fixed symbol list (`itos`)."""

    def __init__(self, itos: Sequence[str]):
        self.itos = list(itos)
        self.stoi = {ch: i for i, ch in enumerate(self.itos)}
        self.vocab_size = len(self.itos)

    def encode(self, text: str) -> list[int]:
        unknown = sorted({ch for ch in text if ch not in self.stoi})
        if unknown:
            raise TokenizerError(f"characters {unknown!r} are not in the {self.vocab_size}-symbol "
                                 "vocabulary: use only characters of the training text")
        return [self.stoi[ch] for ch in text]

    def decode(self, ids: Sequence[int]) -> str:
        return "".join(self.itos[i] if 0 <= i < self.vocab_size else "\ufffd" for i in ids)


class SentencePieceTokenizer:
    """A SentencePiece model file (trained by `python -m nrgpt_jax.data.prepare text`)."""

    def __init__(self, model_file):
        import sentencepiece as spm

        model_file = Path(model_file)
        if not model_file.exists():
            raise TokenizerError(f"tokenizer model {model_file} not found: re-run "
                                 "`python -m nrgpt_jax.data.prepare text` for this data directory")
        try:
            self.sp = spm.SentencePieceProcessor(model_file=str(model_file))
        except (OSError, RuntimeError) as err:
            raise TokenizerError(f"tokenizer model {model_file} is unreadable ({err})") from None
        self.vocab_size = self.sp.get_piece_size()
        self.eos_id = self.sp.eos_id()

    def encode(self, text: str) -> list[int]:
        return list(self.sp.encode(text))

    def decode(self, ids: Sequence[int]) -> str:
        return self.sp.decode([int(i) for i in ids if 0 <= i < self.vocab_size])


class IdTokenizer:
    """No text form known (e.g. GPT-2 BPE data without its vocabulary): ids as space-separated numbers."""

    def __init__(self, vocab_size: int):
        self.vocab_size = vocab_size

    def encode(self, text: str) -> list[int]:
        try:
            ids = [int(t) for t in text.split()]
        except ValueError:
            raise TokenizerError("this data set has no tokenizer: give the prompt as space-separated "
                                 "token ids") from None
        bad = [i for i in ids if not 0 <= i < self.vocab_size]
        if bad:
            raise TokenizerError(f"token ids {bad[:5]} are outside the vocabulary [0, {self.vocab_size})")
        return ids

    def decode(self, ids: Sequence[int]) -> str:
        return " ".join(str(int(i)) for i in ids)
