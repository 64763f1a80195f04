"""The energies of NRGPT as pure functions, and the norms that feed them.

Every energy here returns one value per token, shape (B, T); the scalar a user differentiates is
its sum. Shapes: B batch, T tokens, C = n_embed, N = n_head, F = hidden width.

Conventions: weights are stored in Flax "kernel" layout (in, out), so a PyTorch `Linear.weight`
W is our `W.T`. For the attention matrix of head h, `H[h] = W_h.T` and the key of token j is
`k_j = g_j @ H[h] = W_h g_j`; the score is `S_ij = q_i . k_j` (no 1/sqrt(d)).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

LN_EPS = 1e-5


# ----------------------------------------------------------------------------------------- norms
def layer_norm(x, scale=None, bias=None, eps=LN_EPS):
    """LayerNorm over the last axis; statistics in float32 (biased variance), result in x's dtype.

    `scale=None` means a weight fixed to 1 (the reference's BareLayerNorm).
    """
    xf = x.astype(jnp.promote_types(x.dtype, jnp.float32))
    mean = xf.mean(-1, keepdims=True)
    var = jnp.square(xf - mean).mean(-1, keepdims=True)
    y = (xf - mean) * jax.lax.rsqrt(var + eps)
    if scale is not None:
        y = y * scale
    if bias is not None:
        y = y + bias
    return y.astype(x.dtype)


def rms_norm(x, scale=None, eps=LN_EPS):
    """RMSNorm over the last axis: x / sqrt(mean(x^2) + eps) * scale."""
    xf = x.astype(jnp.promote_types(x.dtype, jnp.float32))
    y = xf * jax.lax.rsqrt(jnp.square(xf).mean(-1, keepdims=True) + eps)
    if scale is not None:
        y = y * scale
    return y.astype(x.dtype)


def gelu(z):
    """The exact (erf) GELU, as torch.nn.GELU()."""
    return jax.nn.gelu(z, approximate=False)


# ------------------------------------------------------------------------------------ attention
def causal_mask(t_q: int, t_k: int, strict: bool, offset: int = 0):
    """(t_q, t_k) boolean mask: query i (at absolute position offset+i) sees key j iff j <= i
    (`strict=False`) or j < i (`strict=True`)."""
    qi = jnp.arange(t_q)[:, None] + offset
    kj = jnp.arange(t_k)[None, :]
    return kj < qi if strict else kj <= qi


@jax.custom_jvp
def _logsumexp_dropped(s, keep):
    """logsumexp over the last axis whose derivative uses dropped-out softmax weights.

    Value: logsumexp(s). Derivative: sum_j keep_j * softmax(s)_j * ds_j, `keep` being the
    (already 1/(1-p)-scaled) dropout mask. This is how attention-probability dropout enters an
    update that is still `jax.grad` of an energy; it stays differentiable to any order.
    """
    del keep
    return jax.nn.logsumexp(s, axis=-1)


@_logsumexp_dropped.defjvp
def _logsumexp_dropped_jvp(primals, tangents):
    s, keep = primals
    ds, _ = tangents
    return jax.nn.logsumexp(s, axis=-1), jnp.sum(jax.nn.softmax(s, axis=-1) * keep * ds, axis=-1)


def masked_logsumexp(s, mask, keep=None):
    """logsumexp of `s` (..., T_q, T_k) over keys allowed by `mask`; 0 for a row with no key.

    Masked entries are filled with a large finite negative number rather than -inf, and empty rows
    are zeroed afterwards, so neither the value nor any derivative is NaN.
    """
    fill = jnp.asarray(jnp.finfo(s.dtype).min / 2, s.dtype)
    s = jnp.where(mask, s, fill)
    lse = jax.nn.logsumexp(s, axis=-1) if keep is None else _logsumexp_dropped(s, keep)
    return jnp.where(mask.any(-1), lse, 0.0)


def attention_scores(q, k, H, self_key: bool = False):
    """Per-head scores S[b,h,i,j] = q_i . (k_j @ H[h]).

    q: (B,T,C) queries, k: (B,S,C) keys, H: (N,C,C). With `self_key=True` (requires S == T) the
    diagonal uses token i's own query as its key, S_ii = q_i . (q_i @ H[h]): then the gradient in q
    is the exact gradient of each token's own energy (the `exact` mode).
    Returns (B,N,T,S).
    """
    keys = jnp.einsum("bsc,hcd->bhsd", k, H)
    s = jnp.einsum("btd,bhsd->bhts", q, keys)
    if self_key:
        own = jnp.einsum("btd,btc,hcd->bht", q, q, H)
        eye = jnp.eye(q.shape[1], k.shape[1], dtype=bool)
        s = jnp.where(eye, own[..., None], s)
    return s


def attention_energy(q, k, H, mask, *, beta=1.0, self_key=False, keep=None):
    """Token attention energies E_i = -(1/beta) sum_h logsumexp_{j in M(i)} beta * q_i . H_h k_j.

    q: (B,T,C), k: (B,S,C), H: (N,C,C), mask: (T,S) bool. `keep` (B,N,T,S), optional, is a scaled
    dropout mask applied to the softmax weights of the gradient (see `_logsumexp_dropped`).
    Returns (B,T); a token with an empty mask row has energy 0.
    """
    s = beta * attention_scores(q, k, H, self_key=self_key)
    return -masked_logsumexp(s, mask, keep).sum(1) / beta


# ---------------------------------------------------------------------------------- feed-forward
def ff1_energy(g, w1, b1):
    """FF1: E = -||gelu(g W1 + b1)||^2 per token. g: (B,T,C), w1: (C,F). Returns (B,T)."""
    return -jnp.sum(jnp.square(gelu(g @ w1 + b1)), axis=-1)


def ff2_energy(g, w1, b1, w2, b2):
    """FF2: E = -||gelu(gelu(g W1 + b1) W2 + b2)||^2. w1: (C,C), w2: (C,F). Returns (B,T)."""
    return -jnp.sum(jnp.square(gelu(gelu(g @ w1 + b1) @ w2 + b2)), axis=-1)


def ff2w_energy(g, w1, b1, w2, b2):
    """FF2W: E = -g . (gelu(g W1 + b1) W2 + b2). w1: (C,F), w2: (F,C). Returns (B,T)."""
    return -jnp.sum(g * (gelu(g @ w1 + b1) @ w2 + b2), axis=-1)
