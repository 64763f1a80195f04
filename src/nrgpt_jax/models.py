"""NRGPT variants and baselines, assembled from the energy block or transformer blocks by name.

Every model shares the reference skeleton:
    x0 = token_embed[idx] + position_embed[:T];  x = body(x0);  logits = lm_head(final_norm(x))
Shapes: B batch, T tokens (<= block_size), C = n_embed, V = vocab_size, L = steps.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from nrgpt_jax import dynamics
from nrgpt_jax.baselines import TransformerBlock
from nrgpt_jax.model_config import ModelConfig
from nrgpt_jax.modules import EnergyBlock, Norm, init_normal, linear


class LanguageModel(nnx.Module):
    """A causal language model: NRGPT_H_FF1/FF2/FF2W, GPT, GPT_Rec or GPT_Rec_parallel."""

    def __init__(self, cfg: ModelConfig, rngs: nnx.Rngs, dtype=jnp.float32):
        self.config = cfg
        c = cfg.n_embed
        self.token_embed = nnx.Param(init_normal(rngs.params(), (cfg.vocab_size, c), dtype))
        self.position_embed = nnx.Param(init_normal(rngs.params(), (cfg.block_size, c), dtype))
        if cfg.is_nrgpt:
            self.block = EnergyBlock(cfg, rngs, dtype)
        elif cfg.name == "GPT":
            self.blocks = nnx.List([TransformerBlock(cfg, rngs, dtype=dtype) for _ in range(cfg.n_layer)])
        else:
            self.block = TransformerBlock(cfg, rngs, parallel=cfg.name == "GPT_Rec_parallel", dtype=dtype)
        self.final_norm = Norm("layernorm_affine", c, dtype)
        self.lm_head = linear(c, cfg.vocab_size, rngs, dtype=dtype)

    # --------------------------------------------------------------------------------- stages
    def embed(self, idx):
        """Token ids (B,T) -> initial state x0 (B,T,C)."""
        t = idx.shape[-1]
        if t > self.config.block_size:
            raise ValueError(f"sequence length {t} exceeds block_size={self.config.block_size}: "
                             "crop the input to the last block_size tokens")
        return self.token_embed[...][idx] + self.position_embed[...][:t]

    def body(self, x, *, n_steps=None, dropout_key=None, collect=()):
        """The recurrent steps (or GPT's distinct blocks): x0 (B,T,C) -> (x_L, dynamics.Trace).

        `n_steps` (recurrent models) overrides the trained number of steps, n_layer.
        """
        cfg = self.config
        n = cfg.n_layer if n_steps is None else int(n_steps)
        if n < 0:
            raise ValueError(f"n_steps={n} must be >= 0")
        if cfg.is_nrgpt:
            return dynamics.descend(self.block, x, n, dropout_key=dropout_key, collect=collect,
                                    remat=cfg.remat, unroll=cfg.unroll)
        if not set(collect) <= {"states"}:
            raise ValueError(f"{cfg.name} has no energies: collect only 'states'")
        keys = [None] * n if dropout_key is None else list(jax.random.split(dropout_key, n))
        if cfg.name == "GPT":
            if n != cfg.n_layer:
                raise ValueError(f"GPT has n_layer={cfg.n_layer} distinct blocks: n_steps cannot change")
            states = [x]
            for blk, key in zip(self.blocks, keys):
                states.append(blk(states[-1], key))
            x_final = states[-1]
            states = jnp.stack(states) if "states" in collect else None
            return x_final, dynamics.Trace(states=states)

        def step(x, key):
            x = self.block(x, key)
            return x, (x if "states" in collect else None)

        if cfg.remat:
            step = jax.checkpoint(step)
        xs = None if dropout_key is None else jnp.stack(keys)
        x_final, states = jax.lax.scan(step, x, xs, length=n, unroll=cfg.unroll)
        if "states" in collect:
            states = jnp.concatenate([x[None], states], axis=0)
        return x_final, dynamics.Trace(states=states)

    def readout(self, x):
        """Final state (B,T,C) -> logits (B,T,V) in at least float32."""
        logits = self.lm_head(self.final_norm(x))
        return logits.astype(jnp.promote_types(logits.dtype, jnp.float32))

    # ---------------------------------------------------------------------------------- calls
    def run(self, idx, *, n_steps=None, dropout_key=None, collect=()):
        """idx (B,T) -> (logits (B,T,V), dynamics.Trace)."""
        x, trace = self.body(self.embed(idx), n_steps=n_steps, dropout_key=dropout_key,
                             collect=collect)
        return self.readout(x), trace

    def __call__(self, idx, *, n_steps=None, dropout_key=None):
        """idx (B,T) -> logits (B,T,V). Deterministic unless a `dropout_key` is given."""
        return self.run(idx, n_steps=n_steps, dropout_key=dropout_key)[0]


def build_model(cfg: ModelConfig, seed: int | jax.Array = 0, dtype=jnp.float32) -> LanguageModel:
    """Build any model by `cfg.name`, with parameters drawn from `seed` and stored in `dtype`."""
    return LanguageModel(cfg, nnx.Rngs(params=seed), dtype)


def cross_entropy(logits, targets):
    """Mean next-token cross-entropy over all B*T positions (no ignore index)."""
    return optax.softmax_cross_entropy_with_integer_labels(logits, targets).mean()


def next_token_loss(model: LanguageModel, idx, targets, *, dropout_key=None, n_steps=None):
    """Mean cross-entropy of the model's logits for idx (B,T) against targets (B,T)."""
    return cross_entropy(model(idx, n_steps=n_steps, dropout_key=dropout_key), targets)


def count_params(model: LanguageModel) -> int:
    """Trainable parameters (the reference count without its frozen LayerNorm weight)."""
    return sum(int(p.size) for p in jax.tree.leaves(nnx.state(model, nnx.Param)))
