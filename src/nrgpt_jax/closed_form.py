"""Closed-form energy gradients: the fast path for `model.energy_grad='closed_form'`.

The definition of every update is `jax.grad` of the energies in `energy.py`; these formulas compute
the same values without differentiating (so training needs only first-order derivatives), and the
tests check them against `jax.grad` in value and in parameter gradients. Kernel layout as in
`energy.py`: g (B,T,C), H (N,C,C), w1 (C,F) etc.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax.scipy.stats import norm as _normal

from nrgpt_jax import energy


def gelu_prime(z):
    """d gelu / dz for the exact GELU: Phi(z) + z phi(z)."""
    return _normal.cdf(z) + z * _normal.pdf(z)


def attention_update(g, H, mask, *, beta=1.0, self_key=False, keep=None):
    """dE_att/dq at q = k = g: -sum_h sum_j w_ij H_h g_j, w = softmax(beta S) (x keep).

    With `self_key` (exact mode) the term -w_ii H_h^T g_i of token i being its own key is added.
    A row with no key gets zero. Returns (B,T,C).
    """
    keys = jnp.einsum("bsc,hcd->bhsd", g, H)
    s = beta * jnp.einsum("btd,bhsd->bhts", g, keys)
    s = jnp.where(mask, s, jnp.finfo(s.dtype).min / 2)
    w = jnp.where(mask.any(-1)[:, None], jax.nn.softmax(s, axis=-1), 0.0)
    if keep is not None:
        w = w * keep
    u = -jnp.einsum("bhts,bhsd->btd", w, keys)
    if self_key:
        w_ii = jnp.diagonal(w, axis1=-2, axis2=-1)  # (B,N,T)
        u = u - jnp.einsum("bht,btd,hcd->btc", w_ii, g, H)
    return u


def ff1_update(g, w1, b1):
    z = g @ w1 + b1
    return -2.0 * (gelu_prime(z) * energy.gelu(z)) @ w1.T


def ff2_update(g, w1, b1, w2, b2):
    z1 = g @ w1 + b1
    z2 = energy.gelu(z1) @ w2 + b2
    return -2.0 * (gelu_prime(z1) * ((gelu_prime(z2) * energy.gelu(z2)) @ w2.T)) @ w1.T


def ff2w_update(g, w1, b1, w2, b2):
    z = g @ w1 + b1
    return -(energy.gelu(z) @ w2 + b2 + (gelu_prime(z) * (g @ w2.T)) @ w1.T)


FF_UPDATES = {"NRGPT_H_FF1": ff1_update, "NRGPT_H_FF2": ff2_update, "NRGPT_H_FF2W": ff2w_update}
