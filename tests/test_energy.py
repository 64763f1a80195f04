"""Each energy's jax.grad against its closed-form gradient, on fresh random inputs (float64)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.scipy.stats import norm as normal_dist

from nrgpt_jax import energy

pytestmark = pytest.mark.usefixtures("x64")


def gelu_prime(z):
    return normal_dist.cdf(z) + z * normal_dist.pdf(z)


def rand(key, *shape, scale=1.0):
    return scale * jax.random.normal(key, shape, jnp.float64)


@pytest.fixture
def keys():
    return jax.random.split(jax.random.key(np.random.randint(1 << 30)), 8)


def closed_attention_update(g, H, mask, beta=1.0, exact=False):
    """-sum_h sum_j softmax_j(beta g_i.H_h g_j) H_h g_j (+ the self-key term when exact)."""
    out = jnp.zeros_like(g)
    for h in range(H.shape[0]):
        k = g @ H[h]  # k_j = W_h g_j
        s = beta * jnp.einsum("bic,bjc->bij", g, k)
        s = jnp.where(mask, s, -jnp.inf)
        p = jax.nn.softmax(s, axis=-1)
        p = jnp.where(mask.any(-1)[:, None], p, 0.0)
        out = out - jnp.einsum("bij,bjc->bic", p, k)
        if exact:
            p_ii = jnp.diagonal(p, axis1=1, axis2=2)[..., None]
            out = out - p_ii * (g @ H[h].T)
    return out


@pytest.mark.parametrize("strict", [False, True])
@pytest.mark.parametrize("beta", [1.0, 0.37])
@pytest.mark.parametrize("exact", [False, True])
def test_attention_update_is_closed_form(keys, strict, beta, exact):
    b, t, c, n = 2, 7, 5, 3
    g, H = rand(keys[0], b, t, c), rand(keys[1], n, c, c, scale=0.5)
    mask = energy.causal_mask(t, t, strict)
    u = jax.grad(lambda q: energy.attention_energy(q, g, H, mask, beta=beta, self_key=exact).sum())(g)
    np.testing.assert_allclose(u, closed_attention_update(g, H, mask, beta, exact), rtol=1e-12, atol=1e-12)


def test_attention_energy_value(keys):
    b, t, c, n = 2, 6, 4, 2
    g, H = rand(keys[0], b, t, c), rand(keys[1], n, c, c)
    e = energy.attention_energy(g, g, H, energy.causal_mask(t, t, strict=True))
    ref = np.zeros((b, t))
    gn, Hn = np.asarray(g), np.asarray(H)
    for bi in range(b):
        for i in range(1, t):
            for h in range(n):
                s = [gn[bi, i] @ (Hn[h].T @ gn[bi, j]) for j in range(i)]
                ref[bi, i] -= np.log(np.sum(np.exp(s)))
    np.testing.assert_allclose(e, ref, rtol=1e-12)
    assert np.all(np.asarray(e)[:, 0] == 0.0)


def test_exact_mode_is_gradient_of_own_energy(keys):
    """Under the default mask, exact mode = d/dg_i of E_i(g_i; g_{j<i} fixed), self included."""
    b, t, c, n = 1, 5, 4, 2
    g, H = rand(keys[0], b, t, c), rand(keys[1], n, c, c)
    mask = energy.causal_mask(t, t, strict=False)
    u = jax.grad(lambda q: energy.attention_energy(q, g, H, mask, self_key=True).sum())(g)
    for i in range(t):
        def own(gi, i=i):
            x = g.at[0, i].set(gi)  # token i as query and as its own key, others fixed
            return energy.attention_energy(x, x, H, mask)[0, i]
        np.testing.assert_allclose(u[0, i], jax.grad(own)(g[0, i]), rtol=1e-12, atol=1e-13)


def test_empty_mask_row_zero_update_and_finite_gradients(keys):
    b, t, c, n = 2, 5, 4, 2
    g, H = rand(keys[0], b, t, c), rand(keys[1], n, c, c)
    mask = energy.causal_mask(t, t, strict=True)

    def update(H, g):
        return jax.grad(lambda q: energy.attention_energy(q, g, H, mask).sum())(g)

    u = update(H, g)
    assert np.all(np.asarray(u)[:, 0] == 0.0)
    dH, dg = jax.grad(lambda H, g: jnp.sum(update(H, g) ** 2), argnums=(0, 1))(H, g)
    assert np.all(np.isfinite(dH)) and np.all(np.isfinite(dg))
    assert np.all(np.isfinite(jax.grad(lambda g: energy.attention_energy(g, g, H, mask).sum())(g)))


def test_dropout_update_weights_and_second_order(keys):
    """With a dropout mask the update is -sum_j keep_ij p_ij k_j, and its parameter gradient
    (differentiating through jax.grad) equals that of the explicit formula."""
    b, t, c, n = 2, 6, 4, 2
    g, H = rand(keys[0], b, t, c), rand(keys[1], n, c, c, scale=0.5)
    mask = energy.causal_mask(t, t, strict=False)
    keep = jax.random.bernoulli(keys[2], 0.7, (b, n, t, t)) / 0.7
    r = rand(keys[3], b, t, c)

    def via_grad(H):
        u = jax.grad(lambda q: energy.attention_energy(q, g, H, mask, keep=keep).sum())(g)
        return jnp.sum(u * r), u

    def explicit(H):
        k = jnp.einsum("bsc,hcd->bhsd", g, H)
        s = jnp.where(mask, jnp.einsum("btd,bhsd->bhts", g, k), -jnp.inf)
        u = -jnp.einsum("bhts,bhsd->btd", jax.nn.softmax(s, -1) * keep, k)
        return jnp.sum(u * r), u

    (_, u1), d1 = jax.value_and_grad(via_grad, has_aux=True)(H)
    (_, u2), d2 = jax.value_and_grad(explicit, has_aux=True)(H)
    np.testing.assert_allclose(u1, u2, rtol=1e-12, atol=1e-13)
    np.testing.assert_allclose(d1, d2, rtol=1e-10, atol=1e-12)


def test_ff_gradients_are_closed_form(keys):
    b, t, c, f = 2, 3, 5, 9
    g = rand(keys[0], b, t, c)
    w1, b1 = rand(keys[1], c, f, scale=0.4), rand(keys[2], f, scale=0.3)
    z = g @ w1 + b1
    u = jax.grad(lambda q: energy.ff1_energy(q, w1, b1).sum())(g)
    np.testing.assert_allclose(u, -2 * (gelu_prime(z) * energy.gelu(z)) @ w1.T, rtol=1e-12)

    w1c, b1c = rand(keys[3], c, c, scale=0.4), rand(keys[4], c, scale=0.3)
    w2, b2 = rand(keys[5], c, f, scale=0.4), rand(keys[6], f, scale=0.3)
    z1 = g @ w1c + b1c
    z2 = energy.gelu(z1) @ w2 + b2
    u = jax.grad(lambda q: energy.ff2_energy(q, w1c, b1c, w2, b2).sum())(g)
    ref = -2 * (gelu_prime(z1) * ((gelu_prime(z2) * energy.gelu(z2)) @ w2.T)) @ w1c.T
    np.testing.assert_allclose(u, ref, rtol=1e-12)

    w2w, b2w = rand(keys[5], f, c, scale=0.4), rand(keys[6], c, scale=0.3)
    u = jax.grad(lambda q: energy.ff2w_energy(q, w1, b1, w2w, b2w).sum())(g)
    ref = -(energy.gelu(z) @ w2w + b2w + (gelu_prime(z) * (g @ w2w.T)) @ w1.T)
    np.testing.assert_allclose(u, ref, rtol=1e-12)


def test_layer_norm_matches_definition(keys):
    x = rand(keys[0], 3, 7)
    bias, scale = rand(keys[1], 7), rand(keys[2], 7)
    mu = x.mean(-1, keepdims=True)
    var = ((x - mu) ** 2).mean(-1, keepdims=True)
    np.testing.assert_allclose(energy.layer_norm(x, scale, bias), (x - mu) / np.sqrt(var + 1e-5) * scale + bias,
                               rtol=1e-12)
    np.testing.assert_allclose(energy.rms_norm(x, scale), x / np.sqrt((x ** 2).mean(-1, keepdims=True) + 1e-5) * scale,
                               rtol=1e-12)
