"""The reference's transformer baselines: pre-LN blocks, sequential or parallel.

Shapes: B batch, T tokens, C = n_embed, N = n_head, D = C // N head size, F = hidden width.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from nrgpt_jax import energy
from nrgpt_jax.modules import Norm, dropout, init_normal, linear


class CausalSelfAttention(nnx.Module):
    """Multi-head causal attention (1/sqrt(D) scaling), concatenated heads, output Linear with bias.

    query/key/value: (C, N, D) without bias; out: (N, D, C) plus out_bias (C,). When N does not
    divide C, N*D < C and the output projection maps N*D -> C, as in the reference.
    """

    def __init__(self, n_embed: int, n_head: int, rngs: nnx.Rngs, dtype=jnp.float32):
        d = n_embed // n_head
        self.query = nnx.Param(init_normal(rngs.params(), (n_embed, n_head, d), dtype))
        self.key = nnx.Param(init_normal(rngs.params(), (n_embed, n_head, d), dtype))
        self.value = nnx.Param(init_normal(rngs.params(), (n_embed, n_head, d), dtype))
        self.out = nnx.Param(init_normal(rngs.params(), (n_head, d, n_embed), dtype))
        self.out_bias = nnx.Param(jnp.zeros((n_embed,), dtype))

    def __call__(self, x, rate: float = 0.0, key=None):
        """x (B,T,C) -> (B,T,C); `key` enables dropout on the probabilities and the output."""
        q = jnp.einsum("btc,cnd->bntd", x, self.query[...])
        k = jnp.einsum("btc,cnd->bntd", x, self.key[...])
        v = jnp.einsum("btc,cnd->bntd", x, self.value[...])
        t = x.shape[1]
        s = jnp.einsum("bntd,bnsd->bnts", q, k) * (q.shape[-1] ** -0.5)
        s = jnp.where(energy.causal_mask(t, t, strict=False), s, -jnp.inf)
        p = jax.nn.softmax(s.astype(jnp.promote_types(s.dtype, jnp.float32)), axis=-1).astype(x.dtype)
        k_prob, k_out = (None, None) if key is None else jax.random.split(key)
        p = dropout(p, rate, k_prob)
        y = jnp.einsum("bnts,bnsd->bntd", p, v)
        y = jnp.einsum("bntd,ndc->btc", y, self.out[...]) + self.out_bias[...]
        return dropout(y, rate, k_out)


class MLP(nnx.Module):
    """Linear(C, F) -> ReLU -> Linear(F, C) -> dropout (the reference baseline feed-forward)."""

    def __init__(self, n_embed: int, hidden: int, rngs: nnx.Rngs, dtype=jnp.float32):
        self.fc1 = linear(n_embed, hidden, rngs, dtype=dtype)
        self.fc2 = linear(hidden, n_embed, rngs, dtype=dtype)

    def __call__(self, x, rate: float = 0.0, key=None):
        return dropout(self.fc2(jax.nn.relu(self.fc1(x))), rate, key)


class TransformerBlock(nnx.Module):
    """Pre-LN block. Sequential: x + attn(ln1 x), then + mlp(ln2 x). Parallel: x + attn(ln1 x) + mlp(ln2 x)."""

    def __init__(self, cfg, rngs: nnx.Rngs, parallel: bool = False, dtype=jnp.float32):
        c = cfg.n_embed
        self.ln1 = Norm("layernorm_affine", c, dtype)
        self.attn = CausalSelfAttention(c, cfg.n_head, rngs, dtype=dtype)
        self.ln2 = Norm("layernorm_affine", c, dtype)
        self.mlp = MLP(c, cfg.ff_hidden, rngs, dtype=dtype)
        self.parallel = parallel
        self.rate = cfg.dropout

    def __call__(self, x, key=None):
        k_attn, k_mlp = (None, None) if key is None else jax.random.split(key)
        attn_out = self.attn(self.ln1(x), self.rate, k_attn)
        if self.parallel:
            return x + attn_out + self.mlp(self.ln2(x), self.rate, k_mlp)
        x = x + attn_out
        return x + self.mlp(self.ln2(x), self.rate, k_mlp)
