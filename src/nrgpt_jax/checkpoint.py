"""Model directories on disk: `config.json` plus orbax checkpoints under `checkpoints/<step>/`.

A training working directory and the output of `interop import-torch` share this layout, so
every tool that takes `--checkpoint DIR` (sampling, analysis) reads both.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
from flax import nnx

from nrgpt_jax.files import write_json_atomic
from nrgpt_jax.model_config import ModelConfig
from nrgpt_jax.models import LanguageModel, build_model

CONFIG_FILE = "config.json"
CHECKPOINT_DIR = "checkpoints"


class CheckpointError(ValueError):
    """A checkpoint is missing, corrupted or does not match; the message says which and why."""


def save_model(workdir, cfg: ModelConfig, params, step: int = 0) -> Path:
    """Write `params` (pure dict) of a `cfg` model as step `step` of a new model directory."""
    workdir = Path(workdir).absolute()
    workdir.mkdir(parents=True, exist_ok=True)
    write_json_atomic(workdir / CONFIG_FILE, {"model": cfg.to_dict()})
    options = ocp.CheckpointManagerOptions(enable_async_checkpointing=False)
    with ocp.CheckpointManager(workdir / CHECKPOINT_DIR, options=options) as mngr:
        mngr.save(step, args=ocp.args.Composite(params=ocp.args.StandardSave(params)), force=True)
    return workdir


def read_run_config(workdir) -> dict:
    """The config.json of a model directory, as a dict with at least a `model` section."""
    path = Path(workdir) / CONFIG_FILE
    if not path.exists():
        raise CheckpointError(f"{path} not found: give a training working directory or the output "
                              "of `python -m nrgpt_jax.interop import-torch`")
    try:
        config = json.loads(path.read_text())
        if not isinstance(config.get("model"), dict):
            raise KeyError("model")
        return config
    except (json.JSONDecodeError, KeyError, TypeError, AttributeError) as err:
        raise CheckpointError(f"{path} is not a valid config file ({err})") from None


def read_model_config(workdir) -> ModelConfig:
    """The ModelConfig recorded in a model directory's config.json."""
    return ModelConfig.from_dict(read_run_config(workdir)["model"])


def abstract_params(cfg: ModelConfig, dtype=jnp.float32):
    """Shapes and dtypes of a `cfg` model's parameters, as a pure dict of ShapeDtypeStructs."""
    abstract = nnx.eval_shape(lambda: build_model(cfg, dtype=dtype))
    return nnx.to_pure_dict(nnx.state(abstract, nnx.Param))


def model_from_params(cfg: ModelConfig, params) -> LanguageModel:
    """A LanguageModel carrying the given parameters (pure dict)."""
    graphdef = nnx.graphdef(nnx.eval_shape(lambda: build_model(cfg)))
    return nnx.merge(graphdef, jax.tree.map(jnp.asarray, params))


def load_model(workdir, step: int | None = None, overrides: dict | None = None) -> tuple[LanguageModel, int]:
    """Restore the model of a model directory at `step` (default: the latest); (model, step).

    `overrides` change inference-time fields of the stored ModelConfig (e.g. attn_grad, n_layer as
    the default number of steps); ones that change parameter shapes make the restore fail.
    """
    cfg = read_model_config(workdir)
    if overrides:
        cfg = cfg.replace(**overrides)
    directory = Path(workdir).absolute() / CHECKPOINT_DIR
    options = ocp.CheckpointManagerOptions(read_only=True, save_interval_steps=0, create=False)
    with ocp.CheckpointManager(directory, options=options) as mngr:
        steps = mngr.all_steps()
        if not steps:
            raise CheckpointError(f"{directory} holds no checkpoint")
        step = max(steps) if step is None else step
        if step not in steps:
            raise CheckpointError(f"{directory} has no step {step}; it has {sorted(steps)}")
        try:
            restored = mngr.restore(step, args=ocp.args.Composite(
                params=ocp.args.StandardRestore(abstract_params(cfg))))
        except Exception as err:  # orbax raises many types for damaged or mismatched files
            raise CheckpointError(f"{directory / str(step)}: cannot restore the parameters of a "
                                  f"{cfg.name} model ({type(err).__name__}: {str(err)[:200]})") from None
    return model_from_params(cfg, restored["params"]), step


class TrainCheckpoints:
    """The checkpoints of one training run: the latest `keep` plus the best by validation loss.

    Each step holds `params`, `opt_state` and `meta` (JSON: step, data-iterator position, seed,
    best validation loss). Saving is asynchronous and atomic (orbax writes to a temporary folder
    and renames it when complete).
    """

    def __init__(self, workdir, keep: int):
        from orbax.checkpoint.checkpoint_managers import preservation_policy as pp

        policy = pp.AnyPreservationPolicy([
            pp.LatestN(n=keep),
            pp.BestN(get_metric_fn=lambda m: m["val_loss"], reverse=True, n=1,
                     keep_checkpoints_without_metrics=False),
        ])
        options = ocp.CheckpointManagerOptions(enable_async_checkpointing=True, preservation_policy=policy,
                                               cleanup_tmp_directories=True)
        self.directory = Path(workdir).absolute() / CHECKPOINT_DIR
        self.manager = ocp.CheckpointManager(self.directory, options=options)

    def all_steps(self) -> list[int]:
        return sorted(self.manager.all_steps())

    def save(self, step: int, params, opt_state, meta: dict, val_loss: float | None = None) -> None:
        """Start an asynchronous save of `step`; meta gets a SHA-256 of every array saved."""
        params, opt_state = jax.device_get((params, opt_state))
        meta = {**meta, "sha256": tree_digest((params, opt_state))}
        args = ocp.args.Composite(params=ocp.args.StandardSave(params),
                                  opt_state=ocp.args.StandardSave(opt_state),
                                  meta=ocp.args.JsonSave(meta))
        metrics = None if val_loss is None else {"val_loss": float(val_loss)}
        self.manager.save(step, args=args, metrics=metrics, force=True)

    def restore(self, step: int, abstract_params, abstract_opt_state):
        """(params, opt_state, meta) of `step`; CheckpointError if unreadable or its data do not
        match the digest recorded when it was saved."""
        args = ocp.args.Composite(params=ocp.args.StandardRestore(abstract_params),
                                  opt_state=ocp.args.StandardRestore(abstract_opt_state),
                                  meta=ocp.args.JsonRestore())
        where = self.directory / str(step)
        try:
            out = self.manager.restore(step, args=args)
        except Exception as err:  # orbax raises many types for damaged or mismatched files
            first = (str(err).strip().splitlines() or [""])[0][:160]
            raise CheckpointError(f"checkpoint {where} is unreadable ({type(err).__name__}: {first})") from None
        meta = dict(out["meta"] or {})
        if meta.get("sha256") != tree_digest((out["params"], out["opt_state"])):
            raise CheckpointError(f"checkpoint {where} is corrupted: its arrays do not match the digest "
                                  "saved with them")
        return out["params"], out["opt_state"], meta

    def restore_latest_good(self, abstract_params, abstract_opt_state):
        """Restore the newest checkpoint that reads back intact, or None if there is none.

        A damaged one is reported in one line and moved to `checkpoints_corrupted/` beside
        `checkpoints/` (kept for inspection, never deleted), and the previous one is tried.
        """
        for step in reversed(self.all_steps()):
            try:
                return step, self.restore(step, abstract_params, abstract_opt_state)
            except CheckpointError as err:
                moved = self.quarantine(step)
                print(f"warning: {err}; moved it to {moved} and trying the previous one", file=sys.stderr)
        return None

    def quarantine(self, step: int) -> Path:
        target = self.directory.parent / "checkpoints_corrupted" / f"{step}-{time.strftime('%Y%m%d-%H%M%S')}"
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.move(str(self.directory / str(step)), str(target))
        self.manager.reload()
        return target

    def wait(self) -> None:
        self.manager.wait_until_finished()

    def close(self) -> None:
        self.manager.wait_until_finished()
        self.manager.close()


def tree_digest(tree) -> str:
    """SHA-256 over the shapes, dtypes and bytes of every array of a pytree (in tree order)."""
    h = hashlib.sha256()
    for leaf in jax.tree.leaves(tree):
        a = np.ascontiguousarray(np.asarray(leaf))
        h.update(f"{a.shape}{a.dtype}".encode())
        h.update(a.tobytes())
    return h.hexdigest()

