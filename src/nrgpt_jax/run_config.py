"""The run configuration: one ml_collections ConfigDict with `model`, `train` and `data` sections.

`base_config()` defines every field, its type and default; the files in `configs/` start from it
and set values. `resolve()` validates the whole config once and returns frozen dataclasses.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from ml_collections import config_dict

from nrgpt_jax.model_config import ConfigError, ModelConfig

SCHEDULES = ("cosine", "exp", "constant")
DTYPES = ("float32", "bfloat16")
ON_NONFINITE = ("stop", "skip")


def base_config() -> config_dict.ConfigDict:
    """Every field with its default. Unset placeholders are derived in `resolve()`."""
    c = config_dict.ConfigDict()
    c.model = config_dict.ConfigDict(ModelConfig().to_dict())
    c.model.vocab_size = config_dict.placeholder(int)  # default: the data set's vocabulary

    t = c.train = config_dict.ConfigDict()
    t.steps = 1000  # optimizer steps
    t.batch_size = 32  # sequences per micro-batch (all devices together)
    t.grad_accum = 1  # micro-batches per optimizer step
    t.lr = 1e-3
    t.min_lr = config_dict.placeholder(float)  # default: lr / 10 (as the reference)
    t.warmup_steps = 100
    t.schedule = "cosine"  # cosine | exp | constant
    t.decay_steps = config_dict.placeholder(int)  # default: steps
    t.weight_decay = 0.1  # on >= 2-D parameters only
    t.beta1 = 0.9
    t.beta2 = 0.95
    t.grad_clip = 1.0  # global-norm clipping; 0 disables
    t.eval_interval = 200
    t.eval_batches = 20
    t.eval_items = 200  # held-out task items scored at each evaluation (ListOps accuracy); 0: none
    t.checkpoint_interval = 500
    t.keep_checkpoints = 3  # latest checkpoints kept, besides the best by validation loss
    t.log_interval = 10
    t.seed = 0
    t.dtype = "float32"  # compute dtype; parameters and optimizer state stay float32
    t.sample_tokens = 500  # length of the sample written to samples.txt (0: none)
    t.on_nonfinite = "stop"  # stop | skip: what a non-finite loss or gradient does

    d = c.data = config_dict.ConfigDict()
    d.name = "shakespeare_char"  # shakespeare_char | tokens | listops
    d.path = ""  # shakespeare_char: optional text file; tokens: prepared folder; listops: .pkl or empty
    return c


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    steps: int
    batch_size: int
    grad_accum: int
    lr: float
    min_lr: float
    warmup_steps: int
    schedule: str
    decay_steps: int
    weight_decay: float
    beta1: float
    beta2: float
    grad_clip: float
    eval_interval: int
    eval_batches: int
    eval_items: int
    checkpoint_interval: int
    keep_checkpoints: int
    log_interval: int
    seed: int
    dtype: str
    sample_tokens: int
    on_nonfinite: str


@dataclasses.dataclass(frozen=True)
class DataConfig:
    name: str
    path: str


def _fail(field: str, value: Any, expected: str):
    raise ConfigError(f"{field}={value!r} is invalid: use {expected}")


def resolve_train(t: dict) -> TrainConfig:
    """Validate the `train` section and fill derived defaults."""
    t = dict(t)
    if t.get("min_lr") is None:
        t["min_lr"] = t["lr"] / 10
    if t.get("decay_steps") is None:
        t["decay_steps"] = t["steps"]
    for f in ("steps", "decay_steps", "warmup_steps", "seed", "sample_tokens", "eval_items"):
        if not isinstance(t[f], int) or t[f] < 0:
            _fail(f"train.{f}", t[f], "an integer >= 0")
    for f in ("batch_size", "grad_accum", "eval_interval", "eval_batches", "checkpoint_interval",
              "keep_checkpoints", "log_interval"):
        if not isinstance(t[f], int) or t[f] < 1:
            _fail(f"train.{f}", t[f], "an integer >= 1")
    if not t["lr"] > 0:
        _fail("train.lr", t["lr"], "a positive number")
    if not 0 < t["min_lr"] <= t["lr"]:
        _fail("train.min_lr", t["min_lr"], f"a number in (0, lr={t['lr']}]")
    for f in ("beta1", "beta2"):
        if not 0 <= t[f] < 1:
            _fail(f"train.{f}", t[f], "a number in [0, 1)")
    for f in ("weight_decay", "grad_clip"):
        if t[f] < 0:
            _fail(f"train.{f}", t[f], "a number >= 0")
    if t["schedule"] not in SCHEDULES:
        _fail("train.schedule", t["schedule"], f"one of {SCHEDULES}")
    if t["schedule"] != "constant" and t["warmup_steps"] > t["decay_steps"]:
        _fail("train.warmup_steps", t["warmup_steps"], f"at most decay_steps={t['decay_steps']}")
    if t["dtype"] not in DTYPES:
        _fail("train.dtype", t["dtype"], f"one of {DTYPES}")
    if t["on_nonfinite"] not in ON_NONFINITE:
        _fail("train.on_nonfinite", t["on_nonfinite"], f"one of {ON_NONFINITE}")
    return TrainConfig(**t)


def resolve(config: config_dict.ConfigDict) -> tuple[dict, TrainConfig, DataConfig]:
    """Validate a run config; returns (model fields without vocab_size resolved, train, data).

    The model section is checked by ModelConfig once the vocabulary is known (`model_config()`).
    """
    known = set(base_config().keys())
    unknown = sorted(set(config.keys()) - known)
    if unknown:
        raise ConfigError(f"unknown config section(s) {unknown}: the sections are {sorted(known)}")
    for section in known:
        extra = sorted(set(config[section].keys()) - set(base_config()[section].keys()))
        if extra:
            raise ConfigError(f"unknown key {section}.{extra[0]}: see the README for the fields of "
                              f"`{section}`")
    model = config.model.to_dict()
    ModelConfig.from_dict({**model, "vocab_size": model["vocab_size"] or 1})  # early check
    train = resolve_train(config.train.to_dict())
    data = DataConfig(**config.data.to_dict())
    return model, train, data


def load_config_file(path, preset: str = "", overrides: dict | None = None) -> config_dict.ConfigDict:
    """The config of a config file's `get_config(preset)`, with dotted overrides applied
    ({"train.steps": 10}); the programmatic twin of `--config=path:preset --config.train.steps=10`."""
    import importlib.util
    from pathlib import Path

    spec = importlib.util.spec_from_file_location(Path(path).stem, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    config = module.get_config(preset)
    for key, value in (overrides or {}).items():
        section, field = key.split(".")
        setattr(config[section], field, value)
    return config


def model_config(model_fields: dict, data_vocab_size: int) -> ModelConfig:
    """The ModelConfig with vocab_size defaulting to the data's; a smaller one is an error."""
    vocab = model_fields.get("vocab_size") or data_vocab_size
    if vocab < data_vocab_size:
        raise ConfigError(f"model.vocab_size={vocab} is smaller than the data's vocabulary "
                          f"({data_vocab_size}): leave it unset or raise it")
    return ModelConfig.from_dict({**model_fields, "vocab_size": vocab})
