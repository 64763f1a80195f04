"""Model directories on disk: `config.json` plus orbax checkpoints under `checkpoints/<step>/`.

A training working directory and the output of `interop import-torch` share this layout, so
every tool that takes `--checkpoint DIR` (sampling, analysis) reads both.
"""

from __future__ import annotations

import json
from pathlib import Path

import jax
import jax.numpy as jnp
import orbax.checkpoint as ocp
from flax import nnx

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
    (workdir / CONFIG_FILE).write_text(json.dumps({"model": cfg.to_dict()}, indent=2) + "\n")
    options = ocp.CheckpointManagerOptions(enable_async_checkpointing=False)
    with ocp.CheckpointManager(workdir / CHECKPOINT_DIR, options=options) as mngr:
        mngr.save(step, args=ocp.args.Composite(params=ocp.args.StandardSave(params)), force=True)
    return workdir


def read_model_config(workdir) -> ModelConfig:
    """The ModelConfig recorded in a model directory's config.json."""
    path = Path(workdir) / CONFIG_FILE
    if not path.exists():
        raise CheckpointError(f"{path} not found: give a training working directory or the output "
                              "of `python -m nrgpt_jax.interop import-torch`")
    try:
        return ModelConfig.from_dict(json.loads(path.read_text())["model"])
    except (json.JSONDecodeError, KeyError, TypeError) as err:
        raise CheckpointError(f"{path} is not a valid config file ({err})") from None


def abstract_params(cfg: ModelConfig, dtype=jnp.float32):
    """Shapes and dtypes of a `cfg` model's parameters, as a pure dict of ShapeDtypeStructs."""
    abstract = nnx.eval_shape(lambda: build_model(cfg, dtype=dtype))
    return nnx.to_pure_dict(nnx.state(abstract, nnx.Param))


def model_from_params(cfg: ModelConfig, params) -> LanguageModel:
    """A LanguageModel carrying the given parameters (pure dict)."""
    graphdef, state = nnx.split(nnx.eval_shape(lambda: build_model(cfg)), nnx.Param)
    nnx.replace_by_pure_dict(state, jax.tree.map(jnp.asarray, params))
    return nnx.merge(graphdef, state)


def load_model(workdir, step: int | None = None) -> tuple[LanguageModel, int]:
    """Restore the model of a model directory at `step` (default: the latest); (model, step)."""
    cfg = read_model_config(workdir)
    directory = Path(workdir).absolute() / CHECKPOINT_DIR
    options = ocp.CheckpointManagerOptions(read_only=True)
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
