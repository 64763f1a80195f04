"""ListOps: nested modular list operations solved by a chain of thought (the paper's algebra task).

An expression is comma-separated tokens, e.g. `add_10,(,0,median_10,(,1,7,1,),2,)`. Its chain of
thought reduces the left-most deepest function one step at a time and ends in the answer:
`add_10,(,0,median_10,(,1,7,1,),2,),=,add_10,(,0,1,2,),=,3,<eos>`.

The data layout follows the reference pickle: `train` (the training chains' ids, concatenated),
`test` and `test_single_ops` (held-out items `{'character', 'encoded', 'result'}`) and `metadata`.
Held-out items are those whose chain contains an excluded ordered digit tuple (max_args
consecutive digit tokens); no training chain contains one.

Vocabulary (modulus m): `<eos> ( ) =`, the six functions `min_m max_m median_m add_m prod_m nadd_m`
(whichever are used) and the digits `0`..`m-1`; for m = 10 this is `VOCAB` (20 tokens), the
reference order.

Accuracy: the prompt is an item's chain up to and including the first `=`; the model decodes
greedily until `<eos>`; an item is right iff the token before `<eos>` is the answer.
"""

from __future__ import annotations

import collections
import dataclasses
import hashlib
import io
import json
import math
import os
import pickle
import random
import tempfile
import time
from pathlib import Path
from typing import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from nrgpt_jax.data.tokenizers import TokenizerError
from nrgpt_jax.data.tokens import DataError, TokenData

EOS, OPEN, CLOSE, EQUALS = "<eos>", "(", ")", "="
EOS_ID, EQUALS_ID = 0, 3
FUNCTION_NAMES = ("min", "max", "median", "add", "prod", "nadd")
TRAIN_FRACTION = 0.9
QUICK_EVAL_ITEMS = 200
GENERATOR_VERSION = 1  # part of the cache key: bump when generation changes


def vocabulary(modulus: int = 10) -> list[str]:
    """`<eos> ( ) =`, the six `<name>_<modulus>` functions, then the digits 0..modulus-1."""
    return [EOS, OPEN, CLOSE, EQUALS] + [f"{f}_{modulus}" for f in FUNCTION_NAMES] + [
        str(d) for d in range(modulus)]


VOCAB = tuple(vocabulary(10))


class ListOpsTokenizer:
    """Comma-separated token strings <-> ids over a ListOps vocabulary (default `VOCAB`)."""

    def __init__(self, vocab: Sequence[str] = VOCAB):
        self.vocab = list(vocab)
        self.ids = {t: i for i, t in enumerate(self.vocab)}
        self.vocab_size = len(self.vocab)

    def encode(self, text: str) -> list[int]:
        tokens = [t.strip() for t in text.split(",")] if text.strip() else []
        unknown = sorted({t for t in tokens if t not in self.ids})
        if unknown:
            raise TokenizerError(f"tokens {unknown[:5]!r} are not in the ListOps vocabulary {self.vocab}: "
                                 "write comma-separated tokens, e.g. 'max_10,(,1,2,),='")
        return [self.ids[t] for t in tokens]

    def decode(self, ids: Sequence[int]) -> str:
        return ",".join(self.vocab[i] if 0 <= i < self.vocab_size else "\ufffd" for i in map(int, ids))


# ------------------------------------------------------------------------------ expressions
def _median(xs):
    return sorted(xs)[len(xs) // 2]  # upper median for an even count


def _nadd(xs):
    return sum(x if i % 2 == 0 else -x for i, x in enumerate(xs))  # x0 - x1 + x2 - ...


BASE_FUNCTIONS = {"min": min, "max": max, "median": _median, "add": sum, "prod": math.prod, "nadd": _nadd}


def split_function(name: str) -> tuple[str, int] | None:
    """'median_10' -> ('median', 10); None if `name` is not a function token."""
    base, _, modulus = name.rpartition("_")
    if base in BASE_FUNCTIONS and modulus.isdigit() and int(modulus) >= 1:
        return base, int(modulus)
    return None


def apply_function(name: str, args: Sequence[int]) -> int:
    """The value of function token `name` (e.g. 'add_10') on digit arguments: f(*args) % modulus."""
    base, modulus = split_function(name)
    return BASE_FUNCTIONS[base](list(args)) % modulus


@dataclasses.dataclass
class Call:
    """A function node: a function token and its arguments (nested calls or digits)."""

    name: str
    args: list


def tokens_of(tree) -> list[str]:
    """The tokens of an expression tree (a Call or a digit)."""
    if isinstance(tree, int):
        return [str(tree)]
    out = [tree.name, OPEN]
    for a in tree.args:
        out += tokens_of(a)
    out.append(CLOSE)
    return out


def parse(expression: str):
    """A comma-separated expression -> its tree (Call or int); ValueError if malformed."""
    tokens = [t.strip() for t in expression.split(",")]
    tree, end = _parse_at(tokens, 0, expression)
    if end != len(tokens):
        raise ValueError(f"malformed ListOps expression {expression!r}: unexpected {tokens[end]!r} "
                         f"after a complete expression (token {end})")
    return tree


def _parse_at(tokens: list[str], i: int, expression: str):
    def fail(why):
        raise ValueError(f"malformed ListOps expression {expression!r}: {why}")

    if i >= len(tokens):
        fail("it ends early")
    tok = tokens[i]
    if tok.isdigit():
        return int(tok), i + 1
    if split_function(tok) is None:
        fail(f"{tok!r} (token {i}) is neither a digit nor a function like 'max_10'")
    if i + 1 >= len(tokens) or tokens[i + 1] != OPEN:
        fail(f"{tok!r} (token {i}) is not followed by '('")
    args, i = [], i + 2
    while i < len(tokens) and tokens[i] != CLOSE:
        arg, i = _parse_at(tokens, i, expression)
        args.append(arg)
    if i >= len(tokens):
        fail(f"the '(' of {tok!r} is never closed")
    if not args:
        fail(f"{tok!r} has no arguments")
    return Call(tok, args), i + 1


def chain_tokens(tree) -> list[str]:
    """The chain of thought of a tree (which is reduced in place), as tokens ending in `<eos>`.

    Each step reduces the function reached by always descending into the first argument that is
    a function; the expression is written out after every step, steps separated by '='.
    """
    out = tokens_of(tree)
    while isinstance(tree, Call):
        parent, node = None, tree
        while (j := next((k for k, a in enumerate(node.args) if isinstance(a, Call)), None)) is not None:
            parent, slot, node = node, j, node.args[j]
        value = apply_function(node.name, node.args)
        if parent is None:
            tree = value
        else:
            parent.args[slot] = value
        out += [EQUALS] + tokens_of(tree)
    return out + [EOS]


def chain_of_thought(expression: str) -> str:
    """'add_10,(,0,median_10,(,1,7,1,),2,)' -> '...,=,add_10,(,0,1,2,),=,3,<eos>' (see chain_tokens)."""
    return ",".join(chain_tokens(parse(expression)))


# -------------------------------------------------------------------------------- generator
@dataclasses.dataclass(frozen=True)
class ListOpsSpec:
    """A generated data set; the defaults reproduce the reference's (its pickle's metadata).

    Trees: the root is a function with randint(min_args, max_args) arguments; each argument is a
    nested function with probability func_prob while depth < max_depth - 1, else a digit in
    0..modulus-1. int(modulus**max_args * exclusion_rate) random ordered max_args-tuples of distinct
    digits are excluded from training.
    """

    functions: tuple[str, ...] = ("max_10", "median_10", "add_10")
    modulus: int = 10
    max_depth: int = 2
    min_args: int = 2
    max_args: int = 3
    func_prob: float = 0.25
    n_train: int = 50000
    n_test: int = 2000
    exclusion_rate: float = 0.05
    seed: int = 42

    def __post_init__(self):
        object.__setattr__(self, "functions", tuple(self.functions))

        def check(ok, field, expected):
            if not ok:
                raise ValueError(f"ListOpsSpec.{field}={getattr(self, field)!r} is invalid: use {expected}")

        check(isinstance(self.modulus, int) and self.modulus >= 2, "modulus", "an integer >= 2")
        names = vocabulary(self.modulus)[4:4 + len(FUNCTION_NAMES)]
        check(self.functions and set(self.functions) <= set(names), "functions",
              f"a non-empty subset of {names}")
        check(self.max_depth >= 1, "max_depth", "an integer >= 1")
        check(1 <= self.min_args, "min_args", "an integer >= 1")
        check(self.min_args <= self.max_args <= self.modulus, "max_args",
              f"an integer in [min_args={self.min_args}, modulus={self.modulus}]")
        check(0 <= self.func_prob <= 1, "func_prob", "a probability in [0, 1]")
        check(self.n_train >= 0, "n_train", "an integer >= 0")
        check(self.n_test >= 0, "n_test", "an integer >= 0")
        check(0 <= self.exclusion_rate <= 1, "exclusion_rate", "a number in [0, 1]")

    def key(self) -> str:
        """A short hash of the spec and the generator version (the cache file name)."""
        text = json.dumps([GENERATOR_VERSION, dataclasses.asdict(self)], sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:16]


def random_tree(rng: random.Random, spec: ListOpsSpec, functions: Sequence[str], depth: int = 0) -> Call:
    """A random expression whose root is a function (reference `create_tree`)."""
    args = []
    for _ in range(rng.randint(spec.min_args, spec.max_args)):
        if depth < spec.max_depth - 1 and rng.random() < spec.func_prob:
            args.append(random_tree(rng, spec, functions, depth + 1))
        else:
            args.append(rng.randrange(spec.modulus))
    return Call(rng.choice(functions), args)


def exclusion_set(rng: random.Random, spec: ListOpsSpec) -> list[str]:
    """The excluded ordered digit tuples as 'a,b,c' strings (unique, in order of first draw)."""
    draws = int(spec.modulus ** spec.max_args * spec.exclusion_rate)
    tuples = (",".join(map(str, rng.sample(range(spec.modulus), spec.max_args))) for _ in range(draws))
    return list(dict.fromkeys(tuples))


def test_item(chain: str, tokenizer: ListOpsTokenizer) -> dict:
    """{'character': chain, 'encoded': ids through the first '=', 'result': [answer id]}."""
    ids = tokenizer.encode(chain)
    return {"character": chain, "encoded": ids[:ids.index(EQUALS_ID) + 1], "result": [ids[-2]]}


def generate(spec: ListOpsSpec = ListOpsSpec()) -> dict:
    """The data set of `spec` as a dict laid out like the reference pickle (deterministic in the seed).

    Samples whose chain contains an excluded tuple go to `test` (until n_test), the others to
    `train` (until n_train), over at most (n_train + n_test) * 100 samples. `test_single_ops` holds,
    for each function, up to n_test excluded-tuple samples (of n_test * 100) that use only it.
    """
    rng = random.Random(spec.seed)
    tokenizer = ListOpsTokenizer(vocabulary(spec.modulus))
    excluded = exclusion_set(rng, spec)
    patterns = [f",{t}," for t in excluded]

    def sample(functions):
        chain = ",".join(chain_tokens(random_tree(rng, spec, functions)))
        return chain, any(p in f",{chain}," for p in patterns)

    train, test, n_train = [], [], 0
    for _ in range((spec.n_train + spec.n_test) * 100):
        if n_train == spec.n_train and len(test) == spec.n_test:
            break
        chain, held_out = sample(spec.functions)
        if held_out and len(test) < spec.n_test:
            test.append(test_item(chain, tokenizer))
        elif not held_out and n_train < spec.n_train:
            train += tokenizer.encode(chain)
            n_train += 1

    single_ops = {}
    for f in spec.functions:
        items = single_ops[f] = []
        for _ in range(spec.n_test * 100):
            if len(items) == spec.n_test:
                break
            chain, held_out = sample([f])
            if held_out:
                items.append(test_item(chain, tokenizer))

    metadata = {
        "vocab": tokenizer.vocab, "max_depth": spec.max_depth, "min_children": spec.min_args,
        "max_children": spec.max_args, "func_node_prob": spec.func_prob,
        "all_funcs": tokenizer.vocab[4:4 + len(FUNCTION_NAMES)], "funcs_to_use": list(spec.functions),
        "input_set": list(range(spec.modulus)), "num_train": spec.n_train, "num_test": spec.n_test,
        "exclusion_set": excluded, "exclusion_rate": spec.exclusion_rate, "exclude_permutation": False,
        "polish_notation": False, "seed": spec.seed,
    }
    return {"train": train, "test": test, "test_single_ops": single_ops, "metadata": metadata}


# ---------------------------------------------------------------------------------- pickles
class _PlainUnpickler(pickle.Unpickler):
    def find_class(self, module, name):
        raise pickle.UnpicklingError(f"it refers to the class {module}.{name}")


def read_pickle(path) -> dict:
    """A ListOps data pickle (plain dicts/lists/ints/strs only), validated against the vocabulary."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"data.path={str(path)!r}: no such file (leave data.path empty to generate ListOps)")
    try:
        data = _PlainUnpickler(io.BytesIO(path.read_bytes())).load()
    except Exception as err:  # noqa: BLE001 - any unpickling failure is a bad file
        raise DataError(f"{path} is not a plain ListOps data pickle ({err}): only dicts, lists, ints and "
                        "strings are read") from None
    if not isinstance(data, dict) or not {"train", "test", "metadata"} <= set(data):
        found = sorted(data) if isinstance(data, dict) else type(data).__name__
        raise DataError(f"{path} lacks the keys 'train', 'test' and 'metadata' (found {found})")
    meta = data["metadata"]
    if not isinstance(meta, dict) or not isinstance(data.setdefault("test_single_ops", {}), dict):
        raise DataError(f"{path}: 'metadata' and 'test_single_ops' must be dicts")
    vocab = list(meta.get("vocab", []))
    expected = vocabulary(len(meta.get("input_set", range(10))))
    if vocab != expected:
        at = next((i for i, (a, b) in enumerate(zip(vocab, expected)) if a != b), min(len(vocab), len(expected)))
        got = vocab[at] if at < len(vocab) else "nothing"
        want = expected[at] if at < len(expected) else "nothing"
        raise DataError(f"{path}: vocabulary mismatch at id {at}: the pickle has {got!r} where {want!r} is "
                        f"expected ({len(vocab)} tokens vs {len(expected)}; expected order {expected})")
    _check_ids(data["train"], len(vocab), f"{path}: train")
    for name, items in [("test", data["test"])] + [(f"test_single_ops[{f!r}]", v)
                                                    for f, v in data["test_single_ops"].items()]:
        for i, item in enumerate(items):
            if not (isinstance(item, dict) and {"encoded", "result"} <= set(item)):
                raise DataError(f"{path}: {name}[{i}] is not a dict with 'encoded' and 'result'")
            _check_ids(item["encoded"], len(vocab), f"{path}: {name}[{i}]['encoded']")
            _check_ids(item["result"], len(vocab), f"{path}: {name}[{i}]['result']")
    return data


def _check_ids(ids, vocab_size: int, where: str) -> None:
    arr = np.asarray(ids)
    if arr.ndim != 1 or arr.size == 0 or not np.issubdtype(arr.dtype, np.integer):
        raise DataError(f"{where} is not a non-empty list of token ids")
    if arr.min() < 0 or arr.max() >= vocab_size:
        raise DataError(f"{where} holds token ids outside the vocabulary [0, {vocab_size})")


def write_pickle_atomic(data: dict, path: Path) -> None:
    """Write `data` to `path` through a temporary file in the same folder (no partial files)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            pickle.dump(data, f, protocol=pickle.HIGHEST_PROTOCOL)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def cache_path(spec: ListOpsSpec) -> Path:
    """$NRGPT_JAX_CACHE (default ~/.cache/nrgpt_jax) / listops / <spec key>.pkl."""
    root = Path(os.environ.get("NRGPT_JAX_CACHE") or Path.home() / ".cache" / "nrgpt_jax")
    return root / "listops" / f"{spec.key()}.pkl"


def generated(spec: ListOpsSpec = ListOpsSpec()) -> dict:
    """The data of `spec`, from the cache or generated (and then cached)."""
    path = cache_path(spec)
    if path.exists():
        try:
            return read_pickle(path)
        except DataError:
            pass  # a broken cache file is regenerated
    data = generate(spec)
    try:
        write_pickle_atomic(data, path)
    except OSError as err:
        print(f"warning: could not cache the ListOps data at {path} ({err})")
    return data


def load_listops(path: str, seed: int) -> TokenData:
    """ListOps as token streams: `path` a data pickle, or empty for the default generated set.

    The first 90% of the training stream trains, the rest validates (as the reference). `seed`
    (the training seed) does not change the data: as in the reference, every run uses one fixed
    data set. extras: 'test', 'test_single_ops', 'sample_prompt' ([<eos>]) and 'evaluator'.
    """
    del seed
    if not path:
        data = generated()
    elif str(path).endswith(".pkl"):
        data = read_pickle(path)
    else:
        raise DataError(f"data.path={path!r} is not a .pkl file: give a ListOps data pickle or leave it "
                        "empty to generate the default data set")
    tokenizer = ListOpsTokenizer(data["metadata"]["vocab"])
    ids = np.asarray(data["train"], dtype=np.uint16)
    n = int(len(ids) * TRAIN_FRACTION)
    extras = {"test": data["test"], "test_single_ops": data["test_single_ops"], "sample_prompt": [EOS_ID],
              "evaluator": make_evaluator(data["test"], data["test_single_ops"])}
    return TokenData("listops", ids[:n], ids[n:], tokenizer.vocab_size, tokenizer, extras=extras)


# ------------------------------------------------------------------------------- evaluation
@jax.jit
def _greedy_rows(model, buffer, lengths, done):
    """Greedy decoding of every row of buffer (B,W) from its length until <eos> or W tokens.

    Row b holds its prompt in buffer[b, :lengths[b]] (no left padding: positions start at 0); the
    model runs on the whole buffer, whose tokens after a row's position do not matter (causal).
    Returns (buffer (B,W), lengths (B,)).
    """
    width = buffer.shape[1]
    cols = jnp.arange(width)

    def body(carry):
        buf, lens, done = carry
        logits = model(buf)  # (B,W,V)
        last = jnp.take_along_axis(logits, (lens - 1)[:, None, None], axis=1)[:, 0]
        nxt = jnp.argmax(last, axis=-1).astype(buf.dtype)
        write = ~done
        buf = jnp.where(write[:, None] & (cols[None] == lens[:, None]), nxt[:, None], buf)
        lens = lens + write
        done = done | (nxt == EOS_ID) | (lens >= width)
        return buf, lens, done

    buf, lens, _ = jax.lax.while_loop(lambda c: ~jnp.all(c[2]), body, (buffer, lengths, done))
    return buf, lens


def greedy_complete(model, prompts: Sequence[Sequence[int]], max_len: int, batch_size: int = 256) -> list[list[int]]:
    """Each prompt extended greedily until <eos> (kept) or max_len tokens (at most block_size).

    Exact: no padding, every prompt starts at position 0. One compiled loop per (batch, width).
    """
    width = min(int(max_len), model.config.block_size)
    prompts = [list(map(int, p)) for p in prompts]
    for p in prompts:
        if not 0 < len(p) <= width:
            raise ValueError(f"a prompt of {len(p)} tokens does not fit: prompts need 1..{width} tokens "
                             f"(max_len={max_len}, block_size={model.config.block_size})")
        if min(p) < 0 or max(p) >= model.config.vocab_size:
            raise ValueError(f"prompt {p} holds token ids outside [0, {model.config.vocab_size})")
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))  # similar lengths end together
    rows = min(batch_size, len(prompts))
    out: list[list[int]] = [[] for _ in prompts]
    for start in range(0, len(order), rows):
        batch = order[start:start + rows]
        buffer = np.zeros((rows, width), np.int32)
        lengths = np.ones(rows, np.int32)
        done = np.ones(rows, bool)  # unused rows stay done
        for r, i in enumerate(batch):
            buffer[r, :len(prompts[i])] = prompts[i]
            lengths[r], done[r] = len(prompts[i]), len(prompts[i]) >= width
        buffer, lengths = jax.device_get(_greedy_rows(model, buffer, lengths, done))
        for r, i in enumerate(batch):
            out[i] = buffer[r, :lengths[r]].tolist()
    return out


def answer_of(completion: Sequence[int], prompt_len: int) -> int | None:
    """The token just before the first <eos> among the generated tokens; None if there is none."""
    generated_ids = list(completion[prompt_len:])
    if EOS_ID not in generated_ids:
        return None
    at = generated_ids.index(EOS_ID)
    return generated_ids[at - 1] if at > 0 else None


def chain_length(item: dict) -> int | None:
    """Tokens in an item's full chain (from its 'character' string), if known."""
    return item["character"].count(",") + 1 if "character" in item else None


def accuracy(model, items: Sequence[dict], max_len: int | None = None, batch_size: int = 256) -> float:
    """Fraction of `items` whose greedy answer is `result[0]` (denominator len(items)).

    max_len defaults to the longest full chain among the items (block_size if unknown).
    """
    if not items:
        raise ValueError("accuracy needs at least one test item")
    if max_len is None:
        lengths = [chain_length(it) for it in items]
        max_len = model.config.block_size if None in lengths else max(lengths)
    prompts = [it["encoded"] for it in items]
    completions = greedy_complete(model, prompts, max_len, batch_size)
    right = sum(answer_of(c, len(p)) == it["result"][0] for c, p, it in zip(completions, prompts, items))
    return right / len(items)


def make_evaluator(test: list[dict], single_ops: dict[str, list[dict]]) -> Callable[..., dict[str, float]]:
    """evaluator(model, final) -> accuracies of the main and each single-function test set.

    final=False: the first `limit` items of each set ('accuracy', 'accuracy_<f>');
    final=True: the full sets ('accuracy_final', 'accuracy_final_<f>'). Empty sets are skipped.
    Generation may run to the longest chain of all sets (capped by block_size).
    """
    sets = {"": test, **{f"_{f}": items for f, items in single_ops.items()}}
    lengths = [chain_length(it) for items in sets.values() for it in items]
    max_len = None if None in lengths or not lengths else max(lengths)

    def evaluator(model, final: bool, limit: int | None = QUICK_EVAL_ITEMS) -> dict[str, float]:
        prefix, limit = ("accuracy_final", None) if final else ("accuracy", limit)
        cap = max_len or model.config.block_size
        return {prefix + suffix: accuracy(model, items[:limit], cap)
                for suffix, items in sets.items() if items}

    return evaluator


# ------------------------------------------------------------------------------ statistics
def describe(data: dict) -> dict:
    """Summary statistics of a data dict: chain lengths, functions per chain, set sizes."""
    train = np.asarray(data["train"])
    ends = np.flatnonzero(train == EOS_ID)  # one <eos> closes each chain
    starts = np.concatenate([[0], ends[:-1] + 1])
    lengths = ends + 1 - starts
    functions = np.add.reduceat((train == EQUALS_ID).astype(np.int64), starts)  # one '=' per function
    return {
        "train_tokens": len(train), "train_chains": len(ends),
        "chain_length": (int(lengths.min()), float(lengths.mean()), int(lengths.max())),
        "functions_per_chain": dict(sorted(collections.Counter(functions.tolist()).items())),
        "test": len(data["test"]), "test_single_ops": {f: len(v) for f, v in data["test_single_ops"].items()},
        "excluded_tuples": len(data["metadata"]["exclusion_set"]),
    }


if __name__ == "__main__":
    t0 = time.perf_counter()
    stats = describe(generate())
    print(f"generated the default data set in {time.perf_counter() - t0:.1f} s: {stats}")
