"""The optimizer: AdamW (decay on >= 2-D parameters), warmup then cosine/exp decay, clipping."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

from nrgpt_jax.run_config import TrainConfig


def learning_rate(step, t: TrainConfig):
    """The reference schedule at optimizer step `step` (0-based):

    warmup   lr * (step + 1) / (warmup + 1)                      for step < warmup
    cosine   min_lr + (1 + cos(pi r)) / 2 * (lr - min_lr)        r = (step - warmup) / (decay - warmup)
    exp      exp((1 - r) log lr + r log min_lr)                  (log-linear)
    constant lr after the warmup
    and min_lr once step > decay_steps (cosine and exp).
    """
    step = jnp.asarray(step, jnp.float32)
    warm = t.lr * (step + 1) / (t.warmup_steps + 1)
    if t.schedule == "constant":
        return jnp.where(step < t.warmup_steps, warm, t.lr)
    r = jnp.clip((step - t.warmup_steps) / max(t.decay_steps - t.warmup_steps, 1), 0.0, 1.0)
    if t.schedule == "cosine":
        decayed = t.min_lr + 0.5 * (1.0 + jnp.cos(jnp.pi * r)) * (t.lr - t.min_lr)
    else:
        decayed = jnp.exp((1 - r) * jnp.log(t.lr) + r * jnp.log(t.min_lr))
    lr = jnp.where(step > t.decay_steps, t.min_lr, decayed)
    return jnp.where(step < t.warmup_steps, warm, lr)


def decay_mask(params):
    """True for parameters that get weight decay: matrices and embeddings (ndim >= 2)."""
    return jax.tree.map(lambda p: jnp.ndim(p) >= 2, params)


def make_optimizer(t: TrainConfig) -> optax.GradientTransformation:
    """Global-norm clipping, then AdamW (eps 1e-8) with the schedule above."""
    adamw = optax.adamw(lambda step: learning_rate(step, t), b1=t.beta1, b2=t.beta2, eps=1e-8,
                        weight_decay=t.weight_decay, mask=decay_mask)
    if t.grad_clip > 0:
        return optax.chain(optax.clip_by_global_norm(t.grad_clip), adamw)
    return adamw
