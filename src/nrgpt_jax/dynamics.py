"""NRGPT inference dynamics: each step moves every token down the energy, `jax.lax.scan` over steps.

    g_t     = norm(x_t)
    x_{t+1} = x_t - alpha_t * eta (dE_att/dq (g_t) + s * dE_ff/dg (g_t))

Shapes: B batch, T tokens, C = n_embed, L steps.
"""

from __future__ import annotations

from typing import NamedTuple, Optional

import jax
import jax.numpy as jnp

COLLECTABLE = frozenset({"states", "energies", "update_norms"})


class Trace(NamedTuple):
    """What the scan recorded; fields not asked for are None.

    states:      (L+1, B, T, C) residual stream before the first step and after each step.
    attn_energy: (L, B, T) attention energy of each token at the state entering step t.
    ff_energy:   (L, B, T) feed-forward energy (without scale_ff) at that state.
    scale_ff:    () the scalar s; a token's energy is attn_energy + scale_ff * ff_energy.
    update_norm: (L, B, T) ||x_{t+1} - x_t|| of each token.
    """

    states: Optional[jax.Array] = None
    attn_energy: Optional[jax.Array] = None
    ff_energy: Optional[jax.Array] = None
    scale_ff: Optional[jax.Array] = None
    update_norm: Optional[jax.Array] = None

    def token_energy(self):
        """(L, B, T) total energy E_i = E_att,i + s E_ff,i of each token entering each step."""
        return self.attn_energy + self.scale_ff * self.ff_energy

    def energy_trace(self):
        """(L, 3) per step: [sum of attention energies, sum of FF energies, scale_ff]."""
        s = jnp.broadcast_to(self.scale_ff, self.attn_energy.shape[:1])
        return jnp.stack([self.attn_energy.sum((1, 2)), self.ff_energy.sum((1, 2)), s], axis=1)


def step_update(block, x, t, dropout_key=None):
    """The displacement of one step, x_t - x_{t+1} = alpha_t * eta u (B,T,C), and g_t."""
    g = block.norm(x)
    dx = block.eta.apply(block.energy_gradient(g, dropout_key), block.norm.gamma())
    alpha = block.step_size(t)
    return (dx if alpha is None else alpha * dx), g


def descend(block, x, n_steps: int, *, dropout_key=None, collect=(), remat: bool = False,
            unroll: int = 1):
    """Run `n_steps` steps of the shared energy block from x (B,T,C); returns (x_L, Trace).

    `collect` names what the Trace records: any of 'states', 'energies', 'update_norms'.
    `dropout_key=None` runs deterministically (evaluation); otherwise each step gets its own key.
    """
    collect = frozenset(collect)
    if not collect <= COLLECTABLE:
        raise ValueError(f"collect={sorted(collect)}: choose from {sorted(COLLECTABLE)}")
    keys = None if dropout_key is None else jax.random.split(dropout_key, n_steps)

    def body(x, inputs):
        t, key = inputs
        dx, g = step_update(block, x, t, key)
        x_next = x - dx
        out = {}
        if "states" in collect:
            out["states"] = x_next
        if "energies" in collect:
            out["attn_energy"], out["ff_energy"] = block.token_energies(g)
        if "update_norms" in collect:
            out["update_norm"] = jnp.linalg.norm(dx.astype(jnp.float32), axis=-1)
        return x_next, out

    if remat:
        body = jax.checkpoint(body)
    x_final, out = jax.lax.scan(body, x, (jnp.arange(n_steps), keys), unroll=unroll)
    if "states" in out:
        out["states"] = jnp.concatenate([x[None], out["states"]], axis=0)
    if "energies" in collect:
        out["scale_ff"] = block.scale_ff[...]
    return x_final, Trace(**out)


def descend_until_settled(block, x, max_steps: int, tol: float):
    """Adaptive test-time compute: step each sequence until its tokens stop moving.

    A sequence stops (and stays frozen) at the first step in which no token's normalised state
    g = norm(x) moves by `tol` or more (||g_{t+1} - g_t|| < tol for every token); the loop ends when
    all have stopped or after `max_steps`. The normalised state is what the energies and the readout
    see: with a norm, x itself may keep drifting along directions the norm removes. Deterministic,
    jittable. Returns (x (B,T,C), steps (B,) int32: the number of updates each sequence received).
    """

    def cond(carry):
        i, _, active, _ = carry
        return (i < max_steps) & active.any()

    def body(carry):
        i, x, active, steps = carry
        dx, g = step_update(block, x, i)
        change = jnp.linalg.norm((block.norm(x - dx) - g).astype(jnp.float32), axis=-1).max(-1)
        active = active & (change >= tol)
        x = jnp.where(active[:, None, None], x - dx, x)
        return i + 1, x, active, steps + active.astype(jnp.int32)

    b = x.shape[0]
    init = (jnp.int32(0), x, jnp.ones((b,), bool), jnp.zeros((b,), jnp.int32))
    _, x, _, steps = jax.lax.while_loop(cond, body, init)
    return x, steps
