"""Training: end-to-end runs, exact resume, schedules, weight decay, accumulation, bad input."""

import json
import math
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from conftest import ROOT, tiny_config
from nrgpt_jax import build_model, main as main_mod, optim, run_config
from nrgpt_jax.metrics import read_metrics
from nrgpt_jax.train import TrainState, make_train_step, train_and_evaluate

CONFIGS = ROOT / "configs"


def tiny(preset="tiny", **overrides):
    """The tiny Shakespeare config with dotted overrides, e.g. tiny(**{"train.steps": 6})."""
    return run_config.load_config_file(CONFIGS / "shakespeare_char.py", preset, overrides)


def losses(workdir):
    return [{k: v for k, v in r.items() if k != "tokens_per_s"} for r in read_metrics(Path(workdir) / "metrics.jsonl")]


def test_end_to_end_run_writes_every_output(tmp_path):
    final = train_and_evaluate(tiny(), tmp_path, progress=False)
    for name in ("config.json", "metrics.jsonl", "samples.txt", "loss.png", "checkpoints"):
        assert (tmp_path / name).exists(), name
    records = read_metrics(tmp_path / "metrics.jsonl")
    assert records[0]["step"] == 0 and {"train_loss", "val_loss"} <= set(records[0])
    assert [r["step"] for r in records] == [0, 1, 2, 3, 4]
    assert {"batch_loss", "lr", "grad_norm", "tokens_per_s"} <= set(records[1])
    assert final["step"] == 4 and math.isfinite(final["val_loss"])
    assert records[-1]["val_loss"] < records[0]["val_loss"]
    stored = json.loads((tmp_path / "config.json").read_text())
    assert stored["model"]["vocab_size"] == 65 and stored["train"]["decay_steps"] == 4
    assert len((tmp_path / "samples.txt").read_text()) >= 20


@pytest.mark.parametrize("dropout, accum", [(0.0, 1), (0.2, 2)])
def test_resume_equals_straight_run(tmp_path, dropout, accum):
    common = {"train.steps": 6, "train.decay_steps": 6, "model.dropout": dropout, "train.grad_accum": accum,
              "train.eval_interval": 3, "train.checkpoint_interval": 3}
    train_and_evaluate(tiny(**common), tmp_path / "straight", progress=False)
    train_and_evaluate(tiny(**{**common, "train.steps": 3}), tmp_path / "resumed", progress=False)
    train_and_evaluate(tiny(**common), tmp_path / "resumed", progress=False)
    assert losses(tmp_path / "resumed") == losses(tmp_path / "straight")


def test_raising_steps_extends_with_the_stored_schedule(tmp_path):
    train_and_evaluate(tiny(), tmp_path, progress=False)
    train_and_evaluate(tiny(**{"train.steps": 6}), tmp_path, progress=False)
    records = read_metrics(tmp_path / "metrics.jsonl")
    assert [r["step"] for r in records] == list(range(7))
    assert json.loads((tmp_path / "config.json").read_text())["train"]["decay_steps"] == 4
    assert records[-1]["lr"] == pytest.approx(tiny().train.lr / 10)  # past decay_steps: min_lr


def reference_lr(it, lr, min_lr, warmup, decay, schedule):
    """The reference's get_lr, written out in plain Python."""
    if schedule == "constant":
        return lr * (it + 1) / (warmup + 1) if it < warmup else lr
    if it < warmup:
        return lr * (it + 1) / (warmup + 1)
    if it > decay:
        return min_lr
    r = (it - warmup) / (decay - warmup)
    if schedule == "cosine":
        return min_lr + 0.5 * (1.0 + math.cos(math.pi * r)) * (lr - min_lr)
    return math.exp((1 - r) * math.log(lr) + r * math.log(min_lr))


@pytest.mark.parametrize("schedule", ["cosine", "exp", "constant"])
def test_schedules_follow_the_reference_formulas(schedule):
    rng = np.random.default_rng()
    lr, warmup, decay = float(rng.uniform(1e-4, 1e-2)), int(rng.integers(0, 50)), int(rng.integers(60, 500))
    min_lr = lr / float(rng.uniform(1.5, 30))
    t = run_config.resolve_train({**run_config.base_config().train.to_dict(), "lr": lr, "min_lr": min_lr,
                                  "warmup_steps": warmup, "decay_steps": decay, "schedule": schedule})
    for it in sorted({0, warmup - 1, warmup, warmup + 1, decay - 1, decay, decay + 1, *rng.integers(0, 600, 20)}):
        if it < 0:
            continue
        assert float(optim.learning_rate(it, t)) == pytest.approx(reference_lr(it, lr, min_lr, warmup, decay, schedule),
                                                                  rel=2e-6)


def test_listops_annealing_is_the_exp_schedule():
    """The reference ListOps AnnealingLR, lr * (min/lr)^(t/T), is `exp` with no warmup."""
    t = run_config.resolve_train({**run_config.base_config().train.to_dict(), "lr": 5e-4, "min_lr": 2e-5,
                                  "warmup_steps": 0, "steps": 1000, "schedule": "exp"})
    for step in (0, 1, 250, 999):
        assert float(optim.learning_rate(step, t)) == pytest.approx(5e-4 * (2e-5 / 5e-4) ** (step / 1000), rel=2e-6)


def test_weight_decay_only_on_matrices():
    model = build_model(tiny_config(proj_type="full"))
    params = nnx.to_pure_dict(nnx.state(model, nnx.Param))
    mask = optim.decay_mask(params)
    flat = {jax.tree_util.keystr(k): v for k, v in jax.tree_util.tree_flatten_with_path(mask)[0]}
    decayed = {k for k, v in flat.items() if v}
    assert decayed == {"['token_embed']", "['position_embed']", "['block']['attn']['H']",
                       "['block']['eta']['kernel']", "['block']['ff']['fc1']['kernel']",
                       "['block']['ff']['fc2']['kernel']", "['lm_head']['kernel']"}
    # behaviour: with zero gradients, one AdamW step shrinks exactly the decayed parameters
    t = run_config.resolve_train({**run_config.base_config().train.to_dict(), "warmup_steps": 0,
                                  "schedule": "constant", "lr": 0.1, "weight_decay": 0.5})
    opt = optim.make_optimizer(t)
    updates, _ = opt.update(jax.tree.map(jnp.zeros_like, params), opt.init(params), params)
    new = optax.apply_updates(params, updates)
    for (path, p), n, m in zip(jax.tree_util.tree_flatten_with_path(params)[0], jax.tree.leaves(new),
                               jax.tree.leaves(mask)):
        np.testing.assert_allclose(n, p * (1 - 0.05) if m else p, rtol=1e-6, err_msg=jax.tree_util.keystr(path))


def test_gradient_accumulation_equals_one_big_batch():
    cfg = tiny_config(vocab_size=65, block_size=8)
    t = run_config.resolve_train({**run_config.base_config().train.to_dict(), "warmup_steps": 0})
    model = build_model(cfg, seed=0)
    graphdef, params = nnx.split(model, nnx.Param)
    params = nnx.to_pure_dict(params)
    opt = optim.make_optimizer(t)
    batch = jnp.asarray(np.random.default_rng().integers(0, 65, (8, 9)), jnp.int32)
    step = make_train_step(graphdef, opt, t, use_dropout=False)
    copy = lambda tree: jax.tree.map(jnp.array, tree)
    s1, m1 = step(TrainState(copy(params), opt.init(params)), batch.reshape(4, 2, 9), 0)
    s2, m2 = step(TrainState(copy(params), opt.init(params)), batch.reshape(1, 8, 9), 0)
    np.testing.assert_allclose(m1["loss"], m2["loss"], rtol=1e-5)
    np.testing.assert_allclose(m1["grad_norm"], m2["grad_norm"], rtol=1e-4)
    for a, b in zip(jax.tree.leaves(s1.params), jax.tree.leaves(s2.params)):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)


def test_bfloat16_compute_trains(tmp_path):
    final = train_and_evaluate(tiny(**{"train.dtype": "bfloat16"}), tmp_path, progress=False)
    assert math.isfinite(final["val_loss"])


def run_main(args, capsys):
    code = main_mod.main(["nrgpt_jax.main", *args])
    return code, capsys.readouterr().err.strip().splitlines()


@pytest.mark.parametrize("args, needle", [
    (["--config.train.stepz=3"], "stepz"),
    (["--config.model.n_embed=0"], "model.n_embed=0"),
    (["--config.model.name=GPT", "--config.model.n_head=32"], "model.n_head=32"),
    (["--config.train.schedule=linear"], "train.schedule='linear'"),
    (["--config.train.min_lr=1.0"], "train.min_lr=1.0"),
    (["--config.model.block_size=2000000"], "block_size"),
    (["--config.data.name=tokens", "--config.data.path=/nonexistent/owt"], "meta.json not found"),
    (["--config=configs/nope.py"], "nope.py"),
])
def test_bad_input_is_one_line_exit_2(tmp_path, capsys, args, needle):
    cfg = [f"--config={CONFIGS / 'shakespeare_char.py'}:tiny"] if not args[0].startswith("--config=") else []
    code, err = run_main([*cfg, *args, f"--workdir={tmp_path / 'w'}"], capsys)
    assert code == 2
    assert len(err) == 1 and err[0].startswith("error: ") and needle in err[0], err
    assert not (tmp_path / "w" / "checkpoints").exists()


def test_bad_data_files(tmp_path, capsys):
    data = tmp_path / "data"
    data.mkdir()
    (data / "meta.json").write_text(json.dumps({"vocab_size": 50, "dtype": "uint16"}))
    (data / "train.bin").write_bytes(np.arange(1000, dtype=np.uint16).tobytes()[:-1])
    (data / "val.bin").write_bytes(np.arange(100, dtype=np.uint16).tobytes())
    base = [f"--config={CONFIGS / 'shakespeare_char.py'}:tiny", "--config.data.name=tokens",
            f"--config.data.path={data}", f"--workdir={tmp_path / 'w'}"]
    code, err = run_main(base, capsys)
    assert code == 2 and "not a multiple of 2" in err[0] and len(err) == 1
    (data / "train.bin").write_bytes(np.arange(1000, dtype=np.uint16).tobytes())
    code, err = run_main(base, capsys)
    assert code == 2 and "token id 999 >= vocab_size 50" in err[0] and len(err) == 1


def test_incompatible_workdir_is_refused_untouched(tmp_path, capsys):
    cfg = f"--config={CONFIGS / 'shakespeare_char.py'}:tiny"
    assert run_main([cfg, f"--workdir={tmp_path}"], capsys)[0] == 0
    before = (tmp_path / "config.json").read_text(), (tmp_path / "metrics.jsonl").read_text()
    code, err = run_main([cfg, "--config.model.n_embed=32", f"--workdir={tmp_path}"], capsys)
    assert code == 2 and "model.n_embed=16" in err[0] and "32" in err[0] and len(err) == 1
    assert ((tmp_path / "config.json").read_text(), (tmp_path / "metrics.jsonl").read_text()) == before


@pytest.mark.parametrize("config", ["shakespeare_char.py", "shakespeare_char.py:gpt_rec_parallel,c256,paper",
                                    "listops.py", "listops.py:gpt_rec_parallel,c64,short",
                                    "shakespeare_char.py:nrgpt_ff1,c32", "owt.py", "owt.py:mmlu",
                                    "owt.py:gpt"])
def test_config_files_resolve(config):
    name, _, preset = config.partition(":")
    model, t, d = run_config.resolve(run_config.load_config_file(CONFIGS / name, preset))
    run_config.model_config(model, 65)
    assert t.steps > 0 and d.name


def test_every_config_field_is_settable_from_the_command_line():
    """Each leaf of the base config parses as `--config.section.field=value` (a field named like a
    ConfigDict method, e.g. `update`, would not)."""
    base = run_config.base_config()
    argv = ["main", f"--config={CONFIGS / 'shakespeare_char.py'}"]
    expected = {}
    for section, fields in base.items():
        for field, value in fields.items():
            kind = fields.get_type(field) if value is None else type(value)  # placeholders: declared type
            new = (not value) if kind is bool else kind((value or 0) + 1) if kind in (int, float) else value + "x"
            argv.append(f"--config.{section}.{field}={new}")
            expected[(section, field)] = new
    parsed = main_mod.parse_flags(argv).config
    for (section, field), value in expected.items():
        assert parsed[section][field] == value, (section, field)
