"""The paper's energy-descent theory, checked on fresh random models every run (float64).

* exploration = gradient descent: the update of token i is -eta grad E_i (own energy, others fixed)
* Prop. 2.1: LayerNorm/RMSNorm with eta = c diag(gamma), small c: own energies never rise
* Prop. 2.2: no normalisation, eta with PSD symmetric part (+ antisymmetric): same
* negative control: a random `full` eta makes energy rise for a measurable share of tokens
* asymptotic stability: with a descending eta, the normalised states settle
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import random_model
from nrgpt_jax import analyze, dynamics

pytestmark = pytest.mark.usefixtures("x64")
SEED = np.random.SeedSequence().entropy % (1 << 30)  # fresh models each run, printed on failure


def model_and_state(seed, t=9, batch=2, **options):
    options.setdefault("n_embed", 10)
    model = random_model(seed=seed, dtype=jnp.float64, **options)
    x = 0.5 * jax.random.normal(jax.random.key(seed + 7), (batch, t, model.config.n_embed), jnp.float64)
    return model, x + model.embed(jax.random.randint(jax.random.key(seed), (batch, t), 0, 13))


@pytest.mark.parametrize("options", [
    dict(tril_plus_one=True),
    dict(tril_plus_one=True, proj_type="psd_plus_antisym", norm="rmsnorm"),
    dict(attn_grad="exact"),
    dict(attn_grad="exact", tril_plus_one=True, name="NRGPT_H_FF1", norm="layernorm_affine"),
    dict(attn_grad="exact", name="NRGPT_H_FF2", norm="none", proj_type="pos_diag"),
], ids=["strict", "strict-psd-rms", "exact", "exact-strict-ff1-affine", "exact-ff2-none"])
def test_update_is_minus_eta_grad_of_own_energy(options):
    model, x = model_and_state(SEED, **options)
    blk = model.block
    dx, g = dynamics.step_update(blk, x, 0)
    eta = blk.eta.matrix(blk.norm.gamma())
    for b in range(x.shape[0]):
        for i in range(x.shape[1]):
            def own(gi, b=b, i=i):
                q = g.at[b, i].set(gi)  # token i moves; every other token stays a fixed key
                e_att, e_ff = blk.token_energies(q[b:b + 1], g[b:b + 1].at[0, i].set(gi))
                return e_att[0, i] + blk.scale_ff[...] * e_ff[0, i]
            grad = jax.grad(own)(g[b, i])
            np.testing.assert_allclose(dx[b, i], eta @ grad, rtol=1e-10, atol=1e-12,
                                       err_msg=f"seed {SEED}, token {i}")


def test_reference_mode_default_mask_is_not_the_own_gradient():
    """Under the default mask the reference update drops the self-key term (SPEC 2)."""
    model, x = model_and_state(SEED)
    exact, _ = model_and_state(SEED, attn_grad="exact")
    dx_ref, _ = dynamics.step_update(model.block, x, 0)
    dx_exact, _ = dynamics.step_update(exact.block, x, 0)
    assert not np.allclose(dx_ref, dx_exact, rtol=1e-3)


def monotone_fraction(model, x, n_steps):
    return analyze.summarize(analyze.descent_report(model.block, x, n_steps))["monotone_fraction"]


@pytest.mark.parametrize("norm", ["layernorm", "layernorm_affine", "rmsnorm"])
@pytest.mark.parametrize("mode", [dict(tril_plus_one=True), dict(attn_grad="exact")], ids=["strict", "exact"])
def test_prop_2_1_normalised_descent(norm, mode):
    """eta = c diag(gamma), c small: every token's own energy is non-increasing at every step."""
    for k in range(6):
        seed = SEED + 100 * k
        name = ("NRGPT_H_FF1", "NRGPT_H_FF2", "NRGPT_H_FF2W")[k % 3]
        model, x = model_and_state(seed, name=name, norm=norm, proj_type="pos_scalar", proj_scale_init=2e-3, **mode)
        if norm != "layernorm":  # a non-trivial positive gamma
            model.block.norm.scale[...] = jnp.abs(model.block.norm.scale[...]) + 0.3
        assert monotone_fraction(model, x, 12) == 1.0, f"seed {seed}"


@pytest.mark.parametrize("proj_type", ["psd", "psd_plus_antisym", "pos_diag", "identity"])
def test_prop_2_2_unnormalised_descent(proj_type):
    """Without normalisation, eta with a PSD symmetric part (plus any antisymmetric part).
    eta = I takes its small step from the learnable per-step step sizes."""
    for k in range(6):
        seed = SEED + 100 * k
        name = ("NRGPT_H_FF1", "NRGPT_H_FF2", "NRGPT_H_FF2W")[k % 3]
        c = 1e-3
        step_size = "per_step" if proj_type == "identity" else "none"
        model, x = model_and_state(seed, name=name, norm="none", proj_type=proj_type, proj_scale_init=c,
                                   attn_grad="exact", step_size=step_size)
        if step_size == "per_step":  # positive step sizes around c
            model.block.raw_step_size[...] = np.log(np.expm1(c * np.linspace(0.5, 1.5, model.config.n_layer)))
        eta, noise = model.block.eta, jax.random.normal(jax.random.key(seed + 3), (2, 10, 10), jnp.float64)
        if proj_type.startswith("psd"):  # a random PSD part of scale c: A = sqrt(c) (I + 0.3 N)
            eta.psd_factor[...] = np.sqrt(c) * (jnp.eye(10) + 0.3 * noise[0])
        if proj_type == "psd_plus_antisym":  # a rotation part larger than the PSD part
            eta.antisym[...] = 2 * c * noise[1]
            sym = eta.matrix() + eta.matrix().T
            assert np.linalg.norm(eta.matrix() - sym / 2, 2) > np.linalg.norm(sym / 2, 2)
        assert monotone_fraction(model, x, 12) == 1.0, f"seed {seed}"


def test_negative_control_random_full_eta_raises_energy():
    """With an unconstrained eta nothing is guaranteed: energy rises for many tokens."""
    fractions = []
    for k in range(4):
        model, x = model_and_state(SEED + k, attn_grad="exact", proj_type="full")
        model.block.eta.kernel[...] = 0.3 * jax.random.normal(jax.random.key(SEED + k), (10, 10), jnp.float64)
        fractions.append(monotone_fraction(model, x, 8))
    assert np.mean(fractions) < 0.8, fractions


def test_asymptotic_stability():
    """A descending eta and many steps: own energies never rise and the normalised states settle
    (their per-step change shrinks a hundredfold). The x states themselves may keep drifting along
    the directions the norm removes, so x-update norms need not shrink (README, theory section)."""
    for k in range(3):
        model, x = model_and_state(SEED + k, t=16, block_size=16, tril_plus_one=True, proj_type="pos_scalar",
                                   proj_scale_init=0.05)
        s = analyze.summarize(analyze.descent_report(model.block, x, 300))
        assert s["monotone_fraction"] == 1.0, (SEED + k, s)
        assert s["state_change_ratio"] < 2e-2, (SEED + k, s)
        assert 0.0 <= s["settling_order"] <= 1.0 and s["settled_fraction"] > 0.5, s


def test_token_zero_settles_on_its_own_under_the_strict_mask():
    """Causality: token 0 sees no key, so its trajectory is the same whatever follows it."""
    model, x = model_and_state(SEED, tril_plus_one=True, proj_type="pos_scalar", proj_scale_init=0.05)
    full = analyze.descent_report(model.block, x, 50)
    alone = analyze.descent_report(model.block, x[:, :1], 50)
    np.testing.assert_allclose(full.state_change[:, :, 0], alone.state_change[:, :, 0], rtol=1e-10, atol=1e-14)
    np.testing.assert_allclose(full.energy[:, :, 0], alone.energy[:, :, 0], rtol=1e-10)
