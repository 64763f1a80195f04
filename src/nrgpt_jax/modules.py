"""Flax NNX modules holding the parameters of NRGPT's energy block.

Each module owns its parameters and calls the pure math in `energy.py`. Shapes: B batch, T
tokens, C = n_embed, N = n_head, F = hidden width. Initialisation follows the reference: every
weight matrix and embedding N(0, 0.02^2), biases 0, norm scales 1, `scale_ff` 1.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from flax import nnx

from nrgpt_jax import closed_form, energy

init_normal = jax.nn.initializers.normal(0.02)
PSD_EPS = 1e-6  # eta = A A^T + PSD_EPS * I for the 'psd' families


def linear(c_in: int, c_out: int, rngs: nnx.Rngs, use_bias: bool = True, dtype=jnp.float32):
    """A Linear layer with the reference initialisation (kernel N(0, 0.02^2), bias 0)."""
    return nnx.Linear(c_in, c_out, use_bias=use_bias, kernel_init=init_normal,
                      param_dtype=dtype, rngs=rngs)


def dropout(x, rate: float, key):
    """Inverted dropout; the identity when `key` is None (evaluation) or `rate` is 0."""
    if key is None or rate == 0.0:
        return x
    keep = jax.random.bernoulli(key, 1.0 - rate, x.shape)
    return jnp.where(keep, x / (1.0 - rate), 0.0).astype(x.dtype)


def _inverse_softplus(y: float) -> float:
    return math.log(math.expm1(y))


class Norm(nnx.Module):
    """Token normalisation g = norm(x).

    kinds: 'layernorm' (reference BareLayerNorm: weight fixed to 1, learnable bias),
    'layernorm_affine' (learnable scale and bias), 'rmsnorm' (learnable scale), 'none'.
    """

    def __init__(self, kind: str, size: int, dtype=jnp.float32):
        self.kind = kind
        if kind in ("layernorm_affine", "rmsnorm"):
            self.scale = nnx.Param(jnp.ones((size,), dtype))
        if kind in ("layernorm", "layernorm_affine"):
            self.bias = nnx.Param(jnp.zeros((size,), dtype))

    def gamma(self):
        """The learnable scale gamma (C,), or None where it is fixed to 1."""
        return self.scale[...] if hasattr(self, "scale") else None

    def __call__(self, x):
        if self.kind == "none":
            return x
        if self.kind == "rmsnorm":
            return energy.rms_norm(x, self.scale[...])
        return energy.layer_norm(x, self.gamma(), self.bias[...])


class EnergyAttention(nnx.Module):
    """Multi-head attention energy: one full C x C matrix per head, `H` (N, C, C)."""

    def __init__(self, n_embed: int, n_head: int, rngs: nnx.Rngs, beta: float = 1.0, dtype=jnp.float32):
        self.H = nnx.Param(init_normal(rngs.params(), (n_head, n_embed, n_embed), dtype))
        self.beta = beta

    def __call__(self, q, k, mask, *, self_key=False, keep=None):
        """Token energies (B,T) of queries q (B,T,C) against keys k (B,S,C) under mask (T,S)."""
        return energy.attention_energy(q, k, self.H[...], mask, beta=self.beta,
                                       self_key=self_key, keep=keep)


class FeedForwardEnergy(nnx.Module):
    """The token-wise feed-forward energy of an NRGPT model (F = hidden width):

    NRGPT_H_FF1   E = -||gelu(W1 g + b1)||^2                     W1: C -> F
    NRGPT_H_FF2   E = -||gelu(W2 gelu(W1 g + b1) + b2)||^2       W1: C -> C, W2: C -> F
    NRGPT_H_FF2W  E = -g . (W2 gelu(W1 g + b1) + b2)             W1: C -> F, W2: F -> C
    """

    def __init__(self, kind: str, n_embed: int, hidden: int, rngs: nnx.Rngs, dtype=jnp.float32):
        self.kind = kind
        c, f = n_embed, hidden
        sizes = {"NRGPT_H_FF1": [(c, f)], "NRGPT_H_FF2": [(c, c), (c, f)], "NRGPT_H_FF2W": [(c, f), (f, c)]}[kind]
        self.fc1 = linear(*sizes[0], rngs, dtype=dtype)
        if len(sizes) > 1:
            self.fc2 = linear(*sizes[1], rngs, dtype=dtype)

    def weights(self):
        layers = [self.fc1] + ([self.fc2] if hasattr(self, "fc2") else [])
        return [a for layer in layers for a in (layer.kernel[...], layer.bias[...])]

    def __call__(self, g):
        """Token energies (B,T) of g (B,T,C)."""
        return FF_ENERGIES[self.kind](g, *self.weights())

    def closed_form_gradient(self, g):
        """dE/dg (B,T,C) by its explicit formula (equal to jax.grad of __call__)."""
        return closed_form.FF_UPDATES[self.kind](g, *self.weights())


FF_ENERGIES = {"NRGPT_H_FF1": energy.ff1_energy, "NRGPT_H_FF2": energy.ff2_energy,
               "NRGPT_H_FF2W": energy.ff2w_energy}


class InferenceRate(nnx.Module):
    """The inference-rate matrix eta of x <- x - eta u (u the energy gradient, per token).

    families (`proj_type`):
      full              unconstrained C x C (reference; stored as `kernel` = eta^T)
      identity          eta = I
      pos_scalar        eta = c diag(gamma), c = softplus(raw) > 0 (gamma = norm scale, else 1)
      pos_diag          eta = diag(d), d = softplus(raw) > 0
      psd               eta = A A^T + eps I
      psd_plus_antisym  eta = A A^T + eps I + (S - S^T)
    `scale_init` is the initial c, diagonal, or PSD scale (A starts at sqrt(scale) I + noise).
    """

    def __init__(self, proj_type: str, n_embed: int, rngs: nnx.Rngs, scale_init: float = 1.0,
                 dtype=jnp.float32):
        self.proj_type = proj_type
        self.size = c = n_embed
        if proj_type == "full":
            self.kernel = nnx.Param(init_normal(rngs.params(), (c, c), dtype))
        elif proj_type == "pos_scalar":
            self.raw_scale = nnx.Param(jnp.full((), _inverse_softplus(scale_init), dtype))
        elif proj_type == "pos_diag":
            self.raw_diag = nnx.Param(jnp.full((c,), _inverse_softplus(scale_init), dtype))
        elif proj_type in ("psd", "psd_plus_antisym"):
            a = math.sqrt(scale_init) * jnp.eye(c, dtype=dtype)
            self.psd_factor = nnx.Param(a + init_normal(rngs.params(), (c, c), dtype))
            if proj_type == "psd_plus_antisym":
                self.antisym = nnx.Param(init_normal(rngs.params(), (c, c), dtype))
        elif proj_type != "identity":
            raise ValueError(f"unknown proj_type {proj_type!r}")

    def matrix(self, gamma=None):
        """eta as a (C, C) matrix acting on column vectors; gamma (C,) is the norm scale."""
        kind = self.proj_type
        if kind == "full":
            return self.kernel[...].T
        if kind in ("identity", "pos_scalar"):
            diag = jnp.ones((self.size,)) if gamma is None else gamma
            return jnp.diag(self.apply(diag))
        if kind == "pos_diag":
            return jnp.diag(jax.nn.softplus(self.raw_diag[...]))
        if kind in ("psd", "psd_plus_antisym"):
            a = self.psd_factor[...]
            eta = a @ a.T + PSD_EPS * jnp.eye(a.shape[0], dtype=a.dtype)
            if kind == "psd_plus_antisym":
                s = self.antisym[...]
                eta = eta + (s - s.T)
        return eta

    def apply(self, u, gamma=None):
        """eta u for every token: u (..., C) -> (..., C)."""
        kind = self.proj_type
        if kind == "identity":
            return u
        if kind == "pos_scalar":
            c = jax.nn.softplus(self.raw_scale[...])
            return c * u if gamma is None else c * gamma * u
        if kind == "pos_diag":
            return jax.nn.softplus(self.raw_diag[...]) * u
        if kind == "full":
            return u @ self.kernel[...]
        return u @ self.matrix(gamma).T


class EnergyBlock(nnx.Module):
    """The shared NRGPT block: norm, attention energy, feed-forward energy, eta and scale_ff.

    The energy of the state g = norm(x) is E = E_att(g) + s * E_ff(g); one step of the dynamics
    (see `dynamics.py`) is x <- x - alpha_t * eta (dE_att/dq + s * dE_ff/dg).
    """

    def __init__(self, cfg, rngs: nnx.Rngs, dtype=jnp.float32):
        c = cfg.n_embed
        self.norm = Norm(cfg.norm, c, dtype)
        self.attn = EnergyAttention(c, cfg.n_head, rngs, beta=cfg.attn_beta, dtype=dtype)
        self.ff = FeedForwardEnergy(cfg.name, c, cfg.ff_hidden, rngs, dtype=dtype)
        self.eta = InferenceRate(cfg.proj_type, c, rngs, scale_init=cfg.proj_scale_init, dtype=dtype)
        self.scale_ff = nnx.Param(jnp.ones((), dtype))
        if cfg.step_size == "per_step":
            self.raw_step_size = nnx.Param(jnp.full((cfg.n_layer,), _inverse_softplus(1.0), dtype))
        self.strict = cfg.tril_plus_one
        self.exact = cfg.attn_grad == "exact"
        self.closed_form = cfg.energy_grad == "closed_form"
        self.dropout = cfg.dropout

    def mask(self, t: int):
        return energy.causal_mask(t, t, strict=self.strict)

    def step_size(self, t):
        """alpha_t > 0 of step t (steps beyond the trained count reuse the last), or None."""
        if not hasattr(self, "raw_step_size"):
            return None
        raw = self.raw_step_size[...]
        return jax.nn.softplus(raw[jnp.minimum(t, raw.shape[0] - 1)])

    def token_energies(self, q, k=None, self_key=True):
        """(E_att, E_ff), each (B,T): token energies of queries q (B,T,C) with keys k (default q).

        With `self_key=True` each token is its own key on the diagonal, so E_att[:, i] is token i's
        own energy as a function of q_i with the other tokens' keys fixed at k.
        """
        k = q if k is None else k
        e_att = self.attn(q, k, self.mask(q.shape[1]), self_key=self_key)
        return e_att, self.ff(q)

    def energy_gradient(self, g, dropout_key=None):
        """u = dE_att/dq + s * dE_ff/dg at q = g, keys closed over (B,T,C); by jax.grad, or by the
        explicit formulas of `closed_form.py` when the model config says energy_grad=closed_form.

        Closing over `g` as the keys (rather than stop_gradient) keeps the parameter gradients of
        training exact: the outer derivative flows through the keys too.
        """
        mask = self.mask(g.shape[1])
        keep, out_key = None, None
        if dropout_key is not None and self.dropout > 0:
            prob_key, out_key = jax.random.split(dropout_key)
            b, t = g.shape[:2]
            keep_shape = (b, self.attn.H.shape[0], t, t)
            keep = jax.random.bernoulli(prob_key, 1.0 - self.dropout, keep_shape)
            keep = keep.astype(g.dtype) / (1.0 - self.dropout)

        if self.closed_form:
            u_att = closed_form.attention_update(g, self.attn.H[...], mask, beta=self.attn.beta,
                                                 self_key=self.exact, keep=keep)
            u_ff = self.ff.closed_form_gradient(g)
        else:
            def attn_energy(q):
                return self.attn(q, g, mask, self_key=self.exact, keep=keep).sum()

            u_att = jax.grad(attn_energy)(g)
            u_ff = jax.grad(lambda q: self.ff(q).sum())(g)
        return dropout(u_att, self.dropout, out_key) + self.scale_ff[...] * u_ff
