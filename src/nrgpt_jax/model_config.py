"""The one model configuration every model is built from, validated once."""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping

NRGPT_MODELS = ("NRGPT_H_FF1", "NRGPT_H_FF2", "NRGPT_H_FF2W")
BASELINE_MODELS = ("GPT", "GPT_Rec", "GPT_Rec_parallel")
MODEL_NAMES = NRGPT_MODELS + BASELINE_MODELS

PROJ_TYPES = ("full", "identity", "pos_scalar", "pos_diag", "psd", "psd_plus_antisym")
NORMS = ("layernorm", "layernorm_affine", "rmsnorm", "none")
ATTN_GRADS = ("reference", "exact")
STEP_SIZES = ("none", "per_step")
ENERGY_GRADS = ("autodiff", "closed_form")


class ConfigError(ValueError):
    """A configuration value is invalid; the message names the field and the fix."""


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """Architecture of an NRGPT model or a baseline.

    The first block of fields mirrors the reference `ModelConfig`; the second holds the
    energy-theory options (NRGPT models only), whose defaults reproduce the reference.
    """

    name: str = "NRGPT_H_FF2W"
    vocab_size: int = 65
    n_embed: int = 64
    n_head: int = 4
    n_layer: int = 4  # distinct blocks (GPT) or recurrent steps (all others)
    ff_hid_factor: int = 4
    block_size: int = 256
    dropout: float = 0.0
    tril_plus_one: bool = False  # strict causal mask for the energy attention (j < i)

    attn_beta: float = 1.0  # inverse temperature of the attention energy
    attn_grad: str = "reference"  # 'exact' adds the self-key term: the true gradient of E_i
    norm: str = "layernorm"  # 'layernorm' = reference: weight fixed to 1, learnable bias
    proj_type: str = "full"  # the inference-rate matrix eta
    proj_scale_init: float = 1.0  # initial c / diagonal / PSD scale of constrained eta
    step_size: str = "none"  # 'per_step': a learnable positive step size for each step
    energy_grad: str = "autodiff"  # how the energy gradient is computed: jax.grad, or explicit formulas
    remat: bool = False  # rematerialise each recurrent step in the backward pass
    unroll: int = 1  # unroll factor of the scan over steps

    @property
    def is_nrgpt(self) -> bool:
        return self.name in NRGPT_MODELS

    @property
    def ff_hidden(self) -> int:
        return self.ff_hid_factor * self.n_embed

    def __post_init__(self):
        _check(self.name in MODEL_NAMES, "name", self.name, f"one of {', '.join(MODEL_NAMES)}")
        for field in ("vocab_size", "n_embed", "n_head", "n_layer", "ff_hid_factor", "block_size"):
            value = getattr(self, field)
            _check(isinstance(value, int) and not isinstance(value, bool) and value >= 1,
                   field, value, "a positive integer")
        if not self.is_nrgpt:
            _check(self.n_embed // self.n_head >= 1, "n_head", self.n_head,
                   f"at most n_embed={self.n_embed} for {self.name} (head size n_embed // n_head)")
        _check(0.0 <= self.dropout < 1.0, "dropout", self.dropout, "a number in [0, 1)")
        _check(self.attn_beta > 0, "attn_beta", self.attn_beta, "a positive number")
        _check(self.attn_grad in ATTN_GRADS, "attn_grad", self.attn_grad, f"one of {ATTN_GRADS}")
        _check(self.norm in NORMS, "norm", self.norm, f"one of {NORMS}")
        _check(self.proj_type in PROJ_TYPES, "proj_type", self.proj_type, f"one of {PROJ_TYPES}")
        _check(self.proj_scale_init > 0, "proj_scale_init", self.proj_scale_init, "a positive number")
        _check(self.step_size in STEP_SIZES, "step_size", self.step_size, f"one of {STEP_SIZES}")
        _check(self.energy_grad in ENERGY_GRADS, "energy_grad", self.energy_grad, f"one of {ENERGY_GRADS}")
        _check(isinstance(self.unroll, int) and self.unroll >= 1, "unroll", self.unroll,
               "a positive integer")
        if not self.is_nrgpt:
            defaults = ModelConfig.__dataclass_fields__
            for field in ("attn_beta", "attn_grad", "norm", "proj_type", "proj_scale_init", "step_size", "energy_grad"):
                _check(getattr(self, field) == defaults[field].default, field, getattr(self, field),
                       f"left at its default for the baseline {self.name} (NRGPT models only)")

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> "ModelConfig":
        """Build from a mapping (e.g. an ml_collections ConfigDict), rejecting unknown keys."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ConfigError(f"model: unknown key(s) {unknown}; known keys are {sorted(known)}")
        return cls(**dict(values))

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def replace(self, **changes) -> "ModelConfig":
        return dataclasses.replace(self, **changes)


def _check(ok: bool, field: str, value: Any, expected: str) -> None:
    if not ok:
        raise ConfigError(f"model.{field}={value!r} is invalid: use {expected}")
