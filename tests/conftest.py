"""Shared test helpers: float64 mode, fixture locations, small random models."""

from pathlib import Path

import jax
import pytest

from nrgpt_jax import ModelConfig, build_model

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = Path(__file__).resolve().parent / "fixtures"
SHARED_PARITY = ROOT.parent / "shared" / "fixtures" / "official_parity"


@pytest.fixture
def x64():
    """Run the test with 64-bit floats (parity and closed-form checks)."""
    with jax.enable_x64(True):
        yield


def tiny_config(**overrides) -> ModelConfig:
    base = dict(name="NRGPT_H_FF2W", vocab_size=13, n_embed=12, n_head=2, n_layer=3, block_size=10)
    base.update(overrides)
    return ModelConfig(**base)


def random_model(seed=0, dtype=None, **overrides):
    """A tiny model whose parameters are perturbed away from the initialisation (non-trivial)."""
    from flax import nnx
    import jax.numpy as jnp

    dtype = dtype or jnp.float32
    model = build_model(tiny_config(**overrides), seed=seed, dtype=dtype)
    state = nnx.state(model, nnx.Param)
    leaves, treedef = jax.tree.flatten(state)
    keys = jax.random.split(jax.random.key(seed + 1000), len(leaves))
    noisy = [p + 0.2 * jax.random.normal(k, p.shape, p.dtype) for p, k in zip(leaves, keys)]
    nnx.update(model, jax.tree.unflatten(treedef, noisy))
    return model
