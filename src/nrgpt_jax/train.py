"""Training: the jitted train step, evaluation, and the loop with checkpoints and metrics.

`train_and_evaluate(config, workdir)` is the whole job. A working directory receives
`config.json`, `metrics.jsonl`, `checkpoints/`, `samples.txt` and `loss.png`; running again on the
same directory resumes from its latest checkpoint and continues exactly as if never stopped.
"""

from __future__ import annotations

import dataclasses
import json
import signal
import sys
import time
from pathlib import Path
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from nrgpt_jax import checkpoint, metrics, optim, parallel, run_config
from nrgpt_jax.data.tokens import TokenData, check_stream, load_data, window_batches
from nrgpt_jax.files import write_json_atomic
from nrgpt_jax.model_config import ConfigError, ModelConfig
from nrgpt_jax.models import build_model, cross_entropy
from nrgpt_jax.sample import generate

# Fields that may change when a run is resumed; any other difference is an incompatible config.
RESUMABLE_CHANGES = ("steps", "eval_interval", "eval_batches", "eval_items", "checkpoint_interval", "keep_checkpoints",
                     "log_interval", "sample_tokens", "on_nonfinite")


class TrainError(RuntimeError):
    """Training cannot go on (non-finite values, incompatible working directory, ...)."""


class TrainState(NamedTuple):
    params: Any  # pure dict of float32 arrays
    opt_state: Any


@dataclasses.dataclass(frozen=True)
class Run:
    """Everything resolved before training starts."""

    model: ModelConfig
    train: run_config.TrainConfig
    data_cfg: run_config.DataConfig
    data: TokenData

    def to_json(self) -> dict:
        return {"model": self.model.to_dict(), "train": dataclasses.asdict(self.train),
                "data": dataclasses.asdict(self.data_cfg)}


# ------------------------------------------------------------------------------- the step
def compute_dtype(t: run_config.TrainConfig):
    return jnp.bfloat16 if t.dtype == "bfloat16" else jnp.float32


def make_loss_fn(graphdef, dtype):
    """loss(params, batch (B, T+1), dropout_key) -> mean next-token cross-entropy."""

    def loss_fn(params, batch, dropout_key):
        if dtype != jnp.float32:
            params = jax.tree.map(lambda p: p.astype(dtype), params)
        model = nnx.merge(graphdef, params)
        return cross_entropy(model(batch[:, :-1], dropout_key=dropout_key), batch[:, 1:])

    return loss_fn


def make_train_step(graphdef, optimizer, t: run_config.TrainConfig, use_dropout: bool):
    """train_step(state, batches (A, B, T+1), step) -> (state, metrics).

    The A micro-batches are scanned with one gradient accumulator. A non-finite loss or gradient
    leaves the state unchanged (metrics['finite'] is False) so nothing is ever poisoned.
    """
    loss_fn = make_loss_fn(graphdef, compute_dtype(t))
    grad_fn = jax.value_and_grad(loss_fn)
    root = jax.random.key(t.seed)

    def train_step(state: TrainState, batches, step):
        n_micro = batches.shape[0]
        keys = jax.random.split(jax.random.fold_in(root, step), n_micro) if use_dropout else None

        def micro(acc, inputs):
            batch, key = inputs
            loss, grads = grad_fn(state.params, batch, key)
            return (acc[0] + loss / n_micro, jax.tree.map(lambda a, g: a + g / n_micro, acc[1], grads)), None

        zeros = jax.tree.map(jnp.zeros_like, state.params)
        (loss, grads), _ = jax.lax.scan(micro, (jnp.zeros((), jnp.float32), zeros), (batches, keys))
        grad_norm = optax.tree.norm(grads)
        updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
        new = jax.tree.map(lambda a, b: jnp.where(finite, a, b), TrainState(params, opt_state), state)
        return new, {"loss": loss, "grad_norm": grad_norm, "lr": optim.learning_rate(step, t), "finite": finite}

    return jax.jit(train_step, donate_argnums=(0,))


def make_eval_step(graphdef, t: run_config.TrainConfig):
    loss_fn = make_loss_fn(graphdef, compute_dtype(t))
    return jax.jit(lambda params, batch: loss_fn(params, batch, None))


# ----------------------------------------------------------------------------- the setup
def prepare_run(config) -> Run:
    """Validate the config, load the data and check it against the model."""
    model_fields, t, d = run_config.resolve(config)
    data = load_data(d.name, d.path, seed=t.seed)
    cfg = run_config.model_config(model_fields, data.vocab_size)
    max_id = data.extras.get("max_token_id")
    check_stream(data.train, cfg.vocab_size, cfg.block_size, "the training split", max_id)
    check_stream(data.val, cfg.vocab_size, cfg.block_size, "the validation split", max_id)
    n_dev = jax.device_count()
    if t.batch_size % n_dev:
        raise ConfigError(f"train.batch_size={t.batch_size} is not divisible by the {n_dev} devices: "
                          f"use a multiple of {n_dev}")
    return Run(cfg, t, d, data)


def claim_workdir(run: Run, workdir: Path, decay_steps_set: bool) -> tuple[Run, bool]:
    """Check (or create) the working directory; returns the run to use and whether it resumes.

    A directory with a different model, data or optimisation config is refused; only the fields in
    RESUMABLE_CHANGES may differ. An unset train.decay_steps keeps the stored one, so raising
    train.steps extends a run without reshaping its learning-rate schedule.
    """
    cfg_file = workdir / checkpoint.CONFIG_FILE
    if not cfg_file.exists():
        workdir.mkdir(parents=True, exist_ok=True)
        write_json_atomic(cfg_file, run.to_json())
        return run, False
    try:
        stored = json.loads(cfg_file.read_text())
    except json.JSONDecodeError:
        raise ConfigError(f"{cfg_file} is corrupted: use another --workdir") from None
    train = run.train
    if not decay_steps_set and "train" in stored:
        train = dataclasses.replace(train, decay_steps=stored["train"].get("decay_steps", train.decay_steps))
    run = dataclasses.replace(run, train=train)
    new = run.to_json()
    for section in ("model", "data", "train"):
        old = stored.get(section, {})
        for key in sorted(set(old) | set(new[section])):
            if section == "train" and key in RESUMABLE_CHANGES:
                continue
            if old.get(key) != new[section].get(key):
                raise ConfigError(
                    f"{workdir} holds a run with {section}.{key}={old.get(key)!r} but this config has "
                    f"{new[section].get(key)!r}: use a new --workdir, or the run's own config to resume")
    write_json_atomic(cfg_file, new)
    return run, True


def default_workdir(config) -> Path:
    stamp = time.strftime("%Y%m%d-%H%M%S")
    return Path("runs") / f"{config.data.name}_{config.model.name}_{stamp}"


class StopRequest:
    """Turns SIGTERM/SIGINT into a request to checkpoint and stop after the current step."""

    def __init__(self):
        self.signal = None
        self._previous = {}

    def __enter__(self):
        for sig in (signal.SIGTERM, signal.SIGINT):
            try:
                self._previous[sig] = signal.signal(sig, self._handle)
            except ValueError:  # not the main thread: signals stay with the caller
                pass
        return self

    def _handle(self, signum, frame):
        self.signal = signal.Signals(signum).name

    def __exit__(self, *exc):
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


# ------------------------------------------------------------------------------- the loop
def evaluate(eval_step, params, batches) -> float:
    return float(np.mean([float(eval_step(params, b)) for b in batches]))


def train_and_evaluate(config, workdir=None, *, progress: bool = True) -> dict:
    """Train per `config` in `workdir` (resuming if it holds a run); returns the final metrics."""
    run = prepare_run(config)
    workdir = Path(workdir) if workdir else default_workdir(config)
    run, resuming = claim_workdir(run, workdir, config.train.decay_steps is not None)
    cfg, t, data = run.model, run.train, run.data
    is_main = jax.process_index() == 0
    log = print if is_main else (lambda *a, **k: None)

    mesh = parallel.build_mesh()
    model = build_model(cfg, seed=t.seed)
    graphdef, params = nnx.split(model, nnx.Param)
    params = nnx.to_pure_dict(params)
    optimizer = optim.make_optimizer(t)
    opt_state = optimizer.init(params)
    train_iter = iter(window_batches(data.train, cfg.block_size, t.batch_size, seed=t.seed).to_iter_dataset())
    ckpts = checkpoint.TrainCheckpoints(workdir, t.keep_checkpoints)

    start, best_val = 0, float("inf")
    abstract = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype), (params, opt_state))
    restored = ckpts.restore_latest_good(*abstract) if resuming else None
    if restored:
        start, (params, opt_state, meta) = restored
        train_iter.set_state(meta["data_state"])
        best_val = float(meta.get("best_val_loss", float("inf")))
        log(f"resuming {workdir} from step {start}")
    else:
        log(f"training {cfg.name} ({count(params):,} parameters) in {workdir}")
    state = parallel.replicate(TrainState(params, opt_state), mesh)
    mlog = metrics.MetricsLog(workdir / metrics.METRICS_FILE, resume_step=start if restored else None)

    train_step = make_train_step(graphdef, optimizer, t, use_dropout=cfg.dropout > 0)
    eval_step = make_eval_step(graphdef, t)
    eval_sets = {
        split: [parallel.shard_batch(ds[i], mesh) for i in range(t.eval_batches)]
        for split, ds in (("train", window_batches(data.train, cfg.block_size, t.batch_size, t.seed + 1)),
                          ("val", window_batches(data.val, cfg.block_size, t.batch_size, t.seed + 2)))
    }
    tokens_per_step = t.grad_accum * t.batch_size * cfg.block_size

    evaluator = data.extras.get("evaluator")  # a task's own metrics, e.g. ListOps accuracy

    def run_eval(step):
        nonlocal best_val
        out = {f"{split}_loss": evaluate(eval_step, state.params, b) for split, b in eval_sets.items()}
        best_val = min(best_val, out["val_loss"])
        if evaluator and t.eval_items:
            out.update(evaluator(nnx.merge(graphdef, state.params), final=False, limit=t.eval_items))
        return out

    def save(step, val_loss=None):
        meta = {"step": step, "data_state": train_iter.get_state(), "seed": t.seed, "best_val_loss": best_val}
        ckpts.save(step, state.params, state.opt_state, meta, val_loss)

    if start == 0:
        mlog.write({"step": 0, **run_eval(0)})
    bar = _progress(t.steps, start, enabled=progress and is_main)
    pending, last_log, last_time = [], start, time.perf_counter()
    stopped_by, done = None, start
    with StopRequest() as stop, bar:
        for step in range(start, t.steps):
            batches = np.stack([next(train_iter) for _ in range(t.grad_accum)])
            state, m = train_step(state, parallel.shard_batch(batches, mesh, axis=1), step)
            pending.append((step + 1, m["finite"]))
            done = step + 1
            record = {}
            is_eval = done % t.eval_interval == 0 or done % t.checkpoint_interval == 0 or done == t.steps
            if done % t.log_interval == 0 or is_eval or stop.signal:
                _check_finite(pending, t, ckpts)
                pending = []
                now = time.perf_counter()
                record.update(batch_loss=float(m["loss"]), lr=float(m["lr"]), grad_norm=float(m["grad_norm"]),
                              tokens_per_s=round(tokens_per_step * (done - last_log) / max(now - last_time, 1e-9), 1))
                last_log, last_time = done, now
                bar.set_postfix(loss=f"{record['batch_loss']:.4f}", tok_s=f"{record['tokens_per_s']:.0f}")
            if is_eval:
                record.update(run_eval(done))
                last_time = time.perf_counter()  # evaluation time is not training throughput
            if record:
                mlog.write({"step": done, **record})
            bar.update(1)
            if done % t.checkpoint_interval == 0 or done == t.steps or stop.signal:
                save(done, record.get("val_loss"))
            if stop.signal:
                stopped_by = stop.signal
                break
    ckpts.close()
    if stopped_by:
        log(f"received {stopped_by}: checkpoint saved at step {done}; run the same command to resume")
        return latest_values(mlog.records)
    if is_main:
        model = nnx.merge(graphdef, jax.device_get(state.params))
        if evaluator and not any("accuracy_final" in k for k in mlog.records[-1]):
            log("scoring the full held-out sets ...")
            mlog.write({"step": done, **evaluator(model, final=True)})
        metrics.plot_losses(mlog.records, workdir / metrics.PLOT_FILE, title=f"{cfg.name} on {run.data_cfg.name}")
        if t.sample_tokens:
            write_sample(model, data, workdir / "samples.txt", t.sample_tokens, t.seed)
    final = latest_values(mlog.records)
    log(f"done: step {final.get('step')} val_loss {final.get('val_loss')}; outputs in {workdir}")
    return final


def latest_values(records: list[dict]) -> dict:
    """The most recent value of every metric in the log."""
    out = {}
    for r in records:
        out.update(r)
    return out


def _check_finite(pending, t, ckpts) -> None:
    bad = [s for s, ok in pending if not bool(ok)]
    if not bad:
        return
    if t.on_nonfinite == "skip":
        print(f"warning: non-finite loss or gradient at step(s) {bad[:10]}: update(s) skipped", file=sys.stderr)
        return
    ckpts.close()
    raise TrainError(f"non-finite loss or gradient at step {bad[0]}; the last good checkpoint is kept. "
                     "Lower train.lr, raise train.warmup_steps, or set train.on_nonfinite=skip")


def write_sample(model, data: TokenData, path: Path, n_tokens: int, seed: int) -> str:
    """A sample of `n_tokens` from the model, prompted by the data's sample prompt."""
    prompt = data.extras.get("sample_prompt") or data.val[:1].tolist()
    ids = generate(model, np.asarray(prompt), n_tokens, seed=seed)[0]
    text = data.tokenizer.decode(ids.tolist())
    path.write_text(text + "\n")
    return text


def count(params) -> int:
    return sum(int(np.size(p)) for p in jax.tree.leaves(params))


def _progress(total, initial, enabled):
    from tqdm import tqdm

    return tqdm(total=total, initial=initial, disable=not enabled, dynamic_ncols=True, mininterval=1.0,
                unit="step", file=sys.stderr)
