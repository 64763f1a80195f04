"""ListOps: tokenizer, chain of thought, generator, pickles, loading and greedy accuracy."""

import collections
import math
import pickle
import random
import re
from types import SimpleNamespace

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import ROOT, tiny_config
from nrgpt_jax import build_model, run_config
from nrgpt_jax.data import listops
from nrgpt_jax.data.listops import (EOS_ID, VOCAB, ListOpsSpec, ListOpsTokenizer, accuracy, answer_of,
                                    chain_of_thought, generate, greedy_complete, load_listops, read_pickle)
from nrgpt_jax.data.tokens import DataError, load_data
from nrgpt_jax.sample import generate as sample_generate

SMALL = ListOpsSpec(n_train=2000, n_test=100, seed=7)
EXAMPLES = {  # the reference's own chains (reference_implementation.md 3.4, 3.5)
    "add_10,(,0,median_10,(,1,7,1,),2,)": "add_10,(,0,median_10,(,1,7,1,),2,),=,add_10,(,0,1,2,),=,3,<eos>",
    "median_10,(,max_10,(,9,9,),max_10,(,0,1,),4,)":
        "median_10,(,max_10,(,9,9,),max_10,(,0,1,),4,),=,median_10,(,9,max_10,(,0,1,),4,),=,"
        "median_10,(,9,1,4,),=,4,<eos>",
    "max_10,(,2,9,3,)": "max_10,(,2,9,3,),=,9,<eos>",
    "add_10,(,6,5,)": "add_10,(,6,5,),=,1,<eos>",
    "add_10,(,max_10,(,7,3,6,),6,0,)": "add_10,(,max_10,(,7,3,6,),6,0,),=,add_10,(,7,6,0,),=,3,<eos>",
}


@pytest.fixture(scope="module")
def small():
    return generate(SMALL)


# ------------------------------------------------------------------- an independent evaluator
SEMANTICS = {"min": min, "max": max, "median": lambda xs: sorted(xs)[len(xs) // 2], "add": sum,
             "prod": math.prod, "nadd": lambda xs: sum(xs[0::2]) - sum(xs[1::2])}
INNERMOST = re.compile(r"([a-z]+)_(\d+),\(,((?:\d+,)+)\)")  # a call whose arguments are all digits


def value_of(tokens):
    """Recursive evaluation of a token list (a nested expression) -> its integer value."""
    def ev(i):
        if tokens[i].isdigit():
            return int(tokens[i]), i + 1
        name, modulus = tokens[i].rsplit("_", 1)
        assert tokens[i + 1] == "("
        args, i = [], i + 2
        while tokens[i] != ")":
            v, i = ev(i)
            args.append(v)
        return SEMANTICS[name](args) % int(modulus), i + 1

    value, end = ev(0)
    assert end == len(tokens)
    return value


def expected_chain(expression):
    """Reduce the first all-digit call, textually, until one number is left."""
    steps = [expression]
    while m := INNERMOST.search(steps[-1]):
        args = [int(a) for a in m.group(3).rstrip(",").split(",")]
        value = SEMANTICS[m.group(1)](args) % int(m.group(2))
        steps.append(steps[-1][:m.start()] + str(value) + steps[-1][m.end():])
    return ",=,".join(steps) + ",<eos>"


def random_expression(rng, depth, modulus=10):
    if depth == 0 or rng.random() < 0.3:
        return str(rng.randrange(modulus))
    name = f"{rng.choice(list(SEMANTICS))}_{modulus}"
    return ",".join([name, "("] + [random_expression(rng, depth - 1, modulus) for _ in range(rng.randint(1, 4))]
                    + [")"])


def n_functions(step):
    return sum(1 for t in step.split(",") if "_" in t)


# ----------------------------------------------------------------------------------- tokens
def test_vocabulary_and_tokenizer():
    assert VOCAB == ("<eos>", "(", ")", "=", "min_10", "max_10", "median_10", "add_10", "prod_10", "nadd_10",
                     *map(str, range(10)))
    assert listops.vocabulary(12)[-3:] == ["9", "10", "11"] and listops.vocabulary(12)[4] == "min_12"
    tok = ListOpsTokenizer()
    chain = EXAMPLES["add_10,(,0,median_10,(,1,7,1,),2,)"]
    assert tok.vocab_size == 20 and tok.decode(tok.encode(chain)) == chain
    assert tok.encode("add_10,(,0,median_10,(,1,7,1,),2,),=") == [7, 1, 10, 6, 1, 11, 17, 11, 2, 12, 2, 3]
    with pytest.raises(ValueError, match="not in the ListOps vocabulary"):
        tok.encode("max_10,(,1,sub_10,)")


# -------------------------------------------------------------------------- chain of thought
@pytest.mark.parametrize("expression", sorted(EXAMPLES))
def test_chain_of_thought_examples(expression):
    assert chain_of_thought(expression) == EXAMPLES[expression]


def test_chain_of_thought_random_expressions():
    rng = random.Random(0)
    checked = 0
    while checked < 500:
        expr = random_expression(rng, rng.randint(1, 3), modulus=rng.choice([10, 10, 7]))
        if "_" not in expr:
            continue
        chain = chain_of_thought(expr)
        assert chain == expected_chain(expr)
        steps = chain.removesuffix(",<eos>").split(",=,")
        assert steps[0] == expr and steps[-1] == str(value_of(expr.split(",")))
        assert len(steps) == n_functions(expr) + 1
        for a, b in zip(steps, steps[1:]):
            assert n_functions(b) == n_functions(a) - 1
            assert value_of(b.split(",")) == value_of(a.split(","))
        checked += 1


@pytest.mark.parametrize("bad", ["", "max_10,(,1,2", "max_10,1,2,)", "max_10,(,)", "max_10,(,1,),2",
                                 "foo_10,(,1,)", "max_10,(,1,x,)"])
def test_chain_of_thought_rejects_malformed(bad):
    with pytest.raises(ValueError, match="malformed ListOps expression"):
        chain_of_thought(bad)


# ------------------------------------------------------------------------------- generator
def chains_of(data):
    return ListOpsTokenizer().decode(data["train"]).removesuffix(",<eos>").split(",<eos>,")


def test_generator_is_deterministic_in_the_seed(small):
    assert generate(SMALL) == small
    other = generate(ListOpsSpec(n_train=2000, n_test=100, seed=8))
    assert other["train"] != small["train"] and other["metadata"]["exclusion_set"] != small["metadata"]["exclusion_set"]


def test_generator_statistics(small):
    chains = chains_of(small)
    assert len(chains) == SMALL.n_train and small["train"].count(EOS_ID) == SMALL.n_train
    lengths = [len(c.split(",")) + 1 for c in chains]
    assert 8 == min(lengths) and max(lengths) <= 60 and 13 < np.mean(lengths) < 19
    # functions per expression: 1 + Binomial(k, 1/4) nested calls, k uniform in {2, 3}
    binom = lambda k, n: math.comb(k, n) * 0.25 ** n * 0.75 ** (k - n)  # noqa: E731
    expected = {1 + n: 0.5 * (binom(2, n) if n <= 2 else 0) + 0.5 * binom(3, n) for n in range(4)}
    counts = collections.Counter(c.split(",").count("=") for c in chains)
    assert set(counts) <= {1, 2, 3, 4}
    for n, p in expected.items():
        assert abs(counts[n] / len(chains) - p) < 0.04, (n, counts)
    stats = listops.describe(small)
    assert stats["chain_length"] == (min(lengths), np.mean(lengths), max(lengths))
    assert stats["functions_per_chain"] == dict(sorted(counts.items())) and stats["test"] == SMALL.n_test
    roots = collections.Counter(c.split(",")[0] for c in chains)
    assert set(roots) == set(SMALL.functions)
    assert all(abs(v / len(chains) - 1 / 3) < 0.05 for v in roots.values()), roots
    # a deeper spec reaches deeper chains and uses every requested function
    deep = ListOpsSpec(functions=listops.vocabulary(10)[4:10], max_depth=3, n_train=300, n_test=10, seed=1)
    deep_chains = chains_of(generate(deep))
    assert max(c.count("=") for c in deep_chains) > 4
    assert {t for c in deep_chains for t in c.split(",") if "_" in t} == set(deep.functions)
    for c in deep_chains[:100]:
        assert c + ",<eos>" == chain_of_thought(c.split(",=,")[0])


def test_exclusion_split(small):
    meta = small["metadata"]
    excluded = {tuple(t.split(",")) for t in meta["exclusion_set"]}
    assert all(len(t) == 3 and len(set(t)) == 3 for t in excluded)
    assert len(listops.exclusion_set(random.Random(42), ListOpsSpec())) == 49

    def contains_excluded(chain):
        tokens = chain.split(",")
        return any(tuple(tokens[i:i + 3]) in excluded for i in range(len(tokens) - 2))

    assert not any(contains_excluded(c) for c in chains_of(small))
    tok = ListOpsTokenizer()
    assert len(small["test"]) == SMALL.n_test
    assert set(small["test_single_ops"]) == set(SMALL.functions)
    for f, items in [(None, small["test"])] + list(small["test_single_ops"].items()):
        assert items
        for item in items:
            ids = tok.encode(item["character"])
            assert contains_excluded(item["character"]) and ids[-1] == EOS_ID
            assert item["encoded"] == ids[:ids.index(3) + 1] and item["result"] == [ids[-2]]
            assert f is None or {t for t in item["character"].split(",") if "_" in t} == {f}
    assert meta["vocab"] == list(VOCAB) and meta["num_train"] == SMALL.n_train
    assert meta["funcs_to_use"] == list(SMALL.functions) and meta["input_set"] == list(range(10))


def test_spec_validation():
    with pytest.raises(ValueError, match="ListOpsSpec.functions"):
        ListOpsSpec(functions=("max_7",))
    with pytest.raises(ValueError, match="ListOpsSpec.max_args"):
        ListOpsSpec(min_args=3, max_args=2)
    assert ListOpsSpec().key() == ListOpsSpec().key() != SMALL.key()


# --------------------------------------------------------------------------- pickles, loading
def test_read_pickle_round_trip_and_errors(small, tmp_path):
    path = tmp_path / "data.pkl"
    path.write_bytes(pickle.dumps(small))
    assert read_pickle(path) == small

    evil = tmp_path / "evil.pkl"
    evil.write_bytes(pickle.dumps({**small, "metadata": {**small["metadata"], "when": collections.OrderedDict()}}))
    with pytest.raises(DataError, match="refers to the class collections.OrderedDict"):
        read_pickle(evil)

    vocab = list(VOCAB)
    vocab[5], vocab[6] = vocab[6], vocab[5]
    swapped = tmp_path / "swapped.pkl"
    swapped.write_bytes(pickle.dumps({**small, "metadata": {**small["metadata"], "vocab": vocab}}))
    with pytest.raises(DataError, match="mismatch at id 5: the pickle has 'median_10' where 'max_10'"):
        read_pickle(swapped)

    bad_ids = tmp_path / "bad_ids.pkl"
    bad_ids.write_bytes(pickle.dumps({**small, "train": small["train"] + [20]}))
    with pytest.raises(DataError, match="outside the vocabulary"):
        read_pickle(bad_ids)
    missing = tmp_path / "missing.pkl"
    missing.write_bytes(pickle.dumps({"train": [0]}))
    with pytest.raises(DataError, match="lacks the keys"):
        read_pickle(missing)


def test_load_listops_from_pickle_and_cache(small, tmp_path, monkeypatch):
    path = tmp_path / "small.pkl"
    path.write_bytes(pickle.dumps(small))
    data = load_data("listops", str(path))
    n = len(small["train"])
    assert len(data.train) == int(0.9 * n) and len(data.val) == n - int(0.9 * n)
    assert np.concatenate([data.train, data.val]).tolist() == small["train"]
    assert data.vocab_size == 20 and data.tokenizer.decode([0, 7]) == "<eos>,add_10"
    assert data.extras["sample_prompt"] == [0] and data.extras["test"] == small["test"]
    assert data.extras["test_single_ops"] == small["test_single_ops"] and callable(data.extras["evaluator"])
    with pytest.raises(DataError, match="not a .pkl file"):
        load_listops(str(tmp_path), seed=0)

    # an empty path reads the default spec's cache entry (pre-filled here: generating 50k takes seconds)
    monkeypatch.setenv("NRGPT_JAX_CACHE", str(tmp_path / "cache"))
    cached = listops.cache_path(ListOpsSpec())
    assert cached.parent == tmp_path / "cache" / "listops"
    listops.write_pickle_atomic(small, cached)
    assert load_listops("", seed=0).train.tolist() == data.train.tolist()
    tiny = ListOpsSpec(n_train=50, n_test=5, seed=3)
    assert listops.generated(tiny) == generate(tiny) and listops.cache_path(tiny).exists()
    assert listops.generated(tiny) == generate(tiny)  # now from the cache
    assert [p.name for p in cached.parent.iterdir() if p.suffix != ".pkl"] == []


# ---------------------------------------------------------------------------------- accuracy
@jax.tree_util.register_static
class ScriptedModel:
    """Emits a scripted continuation: the row of `scripts` whose start matches the input so far."""

    def __init__(self, scripts, block_size=64, vocab_size=20):
        width = max(map(len, scripts)) + block_size + 1
        self.scripts = jnp.asarray([s + [0] * (width - len(s)) for s in scripts], jnp.int32)  # (N,W)
        self.config = SimpleNamespace(block_size=block_size, vocab_size=vocab_size)

    def __call__(self, idx):  # (B,T) -> (B,T,V)
        t = idx.shape[1]
        match = jnp.cumprod(idx[:, None, :] == self.scripts[None, :, :t], axis=-1)  # (B,N,T)
        row = jnp.argmax(match, axis=1)  # (B,T) first script agreeing up to each position
        nxt = self.scripts[row, jnp.arange(t)[None] + 1]
        return 5.0 * jax.nn.one_hot(nxt, self.config.vocab_size)


def full_ids(item):
    return ListOpsTokenizer().encode(item["character"])


def test_answer_of():
    assert answer_of([7, 1, 10, 11, 2, 3, 15, 0], 6) == 15
    assert answer_of([7, 1, 10, 11, 2, 3, 15, 16], 6) is None
    assert answer_of([7, 1, 10, 11, 2, 3, 0, 15, 0], 6) is None  # <eos> straight after '='
    assert answer_of([0, 3, 12, 0, 14, 0], 2) == 12  # an <eos> in the prompt does not count


def test_accuracy_on_scripted_predictions(small):
    items = list({tuple(it["encoded"]): it for it in small["test"]}.values())[:40]  # distinct prompts
    right = [full_ids(it) for it in items]
    wrong = [ids[:-2] + [10 + (ids[-2] - 9) % 10, 0] for ids in right]  # another digit, then <eos>
    endless = [it["encoded"] + [12] * 100 for it in items]  # never <eos>
    assert accuracy(ScriptedModel(right), items) == 1.0
    assert accuracy(ScriptedModel(wrong), items) == 0.0
    assert accuracy(ScriptedModel(endless), items) == 0.0
    assert accuracy(ScriptedModel(right[:10] + wrong[10:]), items, batch_size=16) == 0.25

    completions = greedy_complete(ScriptedModel(right), [it["encoded"] for it in items], max_len=60)
    assert completions == right
    longest = max(len(ids) for ids in right)
    capped = greedy_complete(ScriptedModel(endless, block_size=30), [it["encoded"] for it in items], 1000)
    assert all(len(c) == 30 and c[:len(it["encoded"])] == it["encoded"] for c, it in zip(capped, items))
    assert max(len(c) for c in greedy_complete(ScriptedModel(endless), [it["encoded"] for it in items],
                                               longest)) == longest
    with pytest.raises(ValueError, match="does not fit"):
        greedy_complete(ScriptedModel(right, block_size=8), [items[0]["encoded"]], 60)


def test_evaluator_keys_and_subsets(small):
    items = small["test"] + [it for v in small["test_single_ops"].values() for it in v]
    evaluator = listops.make_evaluator(small["test"], small["test_single_ops"])
    model = ScriptedModel([full_ids(it) for it in items])
    quick, final = evaluator(model, final=False), evaluator(model, final=True)
    ops = [f"_{f}" for f in SMALL.functions]
    assert set(quick) == {"accuracy", *("accuracy" + s for s in ops)} and set(quick.values()) == {1.0}
    assert set(final) == {"accuracy_final", *("accuracy_final" + s for s in ops)} and set(final.values()) == {1.0}


def test_greedy_complete_matches_sliding_window_sampler():
    """Exactness: no left padding, so every row equals the reference-style greedy generation."""
    model = build_model(tiny_config(vocab_size=20, block_size=24, tril_plus_one=True), seed=3)
    rng = np.random.default_rng(0)
    prompts = {n: rng.integers(1, 20, size=(3, n)) for n in (2, 9)}  # (3, n) each
    flat = [p.tolist() for n in prompts for p in prompts[n]]
    out, ended = iter(greedy_complete(model, flat, max_len=20, batch_size=4)), []
    for n, batch in prompts.items():
        reference = sample_generate(model, batch, 20 - n, greedy=True)  # (3, 20)
        for ref in reference.tolist():
            c = next(out)
            assert c == ref[:len(c)] and (c[-1] == EOS_ID or len(c) == 20)
            assert EOS_ID not in c[n:-1]
            ended.append(c[-1] == EOS_ID)
    assert any(ended) and not all(ended)  # both ways of stopping occur


# ---------------------------------------------------------------------------------- config
def test_config_presets_resolve():
    def load(preset=""):
        return run_config.load_config_file(ROOT / "configs" / "listops.py", preset)

    model, train, data = run_config.resolve(load())
    assert (model["name"], model["n_embed"], model["n_layer"], model["tril_plus_one"]) == ("NRGPT_H_FF2W", 50, 5, True)
    assert (train.steps, train.schedule, train.min_lr, data.name, data.path) == (100000, "exp", 2e-5, "listops", "")
    model, train, _ = run_config.resolve(load("gpt_rec_parallel,c64,short"))
    assert (model["name"], model["n_embed"], train.steps) == ("GPT_Rec_parallel", 64, 20000)
    model, train, _ = run_config.resolve(load("tiny"))
    assert model["block_size"] >= 60 and train.steps < 10
    with pytest.raises(ValueError, match="unknown preset token"):
        load("c0")
