"""Models and dynamics: closed-form equivalence of whole runs (values and parameter gradients),
step-count changes, trajectories, shapes and dtypes, dropout, remat/unroll, adaptive stopping."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from conftest import random_model, tiny_config
from nrgpt_jax import MODEL_NAMES, ConfigError, ModelConfig, build_model, dynamics, energy
from nrgpt_jax.models import cross_entropy
from test_energy import closed_attention_update, gelu_prime


def closed_form_ff_update(cfg, ff, g):
    """The closed-form gradient of the FF energy (kernel layout), independent of energy.py."""
    w1, b1 = ff.fc1.kernel[...], ff.fc1.bias[...]
    z = g @ w1 + b1
    gelu = lambda v: jax.nn.gelu(v, approximate=False)
    if cfg.name == "NRGPT_H_FF1":
        return -2 * (gelu_prime(z) * gelu(z)) @ w1.T
    w2, b2 = ff.fc2.kernel[...], ff.fc2.bias[...]
    if cfg.name == "NRGPT_H_FF2":
        z2 = gelu(z) @ w2 + b2
        return -2 * (gelu_prime(z) * ((gelu_prime(z2) * gelu(z2)) @ w2.T)) @ w1.T
    return -(gelu(z) @ w2 + b2 + (gelu_prime(z) * (g @ w2.T)) @ w1.T)


def closed_form_logits(model, idx):
    """NRGPT forward with explicit update formulas (no jax.grad), for equivalence tests."""
    cfg, blk = model.config, model.block
    x = model.embed(idx)
    mask = energy.causal_mask(idx.shape[1], idx.shape[1], cfg.tril_plus_one)
    for _ in range(cfg.n_layer):
        g = energy.layer_norm(x, None, blk.norm.bias[...])
        u = closed_attention_update(g, blk.attn.H[...], mask, exact=cfg.attn_grad == "exact")
        u = u + blk.scale_ff[...] * closed_form_ff_update(cfg, blk.ff, g)
        x = x - u @ blk.eta.kernel[...]
    return model.readout(x)


@pytest.mark.usefixtures("x64")
@pytest.mark.parametrize("name, strict", [("NRGPT_H_FF1", False), ("NRGPT_H_FF2", True), ("NRGPT_H_FF2W", False),
                                          pytest.param("NRGPT_H_FF1", True, marks=pytest.mark.slow),
                                          pytest.param("NRGPT_H_FF2", False, marks=pytest.mark.slow),
                                          pytest.param("NRGPT_H_FF2W", True, marks=pytest.mark.slow)])
def test_grad_dynamics_equal_closed_form_values_and_parameter_gradients(name, strict):
    """The scan of jax.grad updates matches explicit formulas, and so do the parameter gradients:
    the keys are closed over (not stop_gradient), so training differentiates through them."""
    model = random_model(seed=3, dtype=jnp.float64, name=name, tril_plus_one=strict)
    graphdef, state = nnx.split(model, nnx.Param)
    idx = jax.random.randint(jax.random.key(1), (2, 8), 0, 13)
    tgt = jax.random.randint(jax.random.key(2), (2, 8), 0, 13)

    def loss(state, forward):
        return cross_entropy(forward(nnx.merge(graphdef, state), idx), tgt)

    l1, g1 = jax.value_and_grad(loss)(state, lambda m, i: m(i))
    l2, g2 = jax.value_and_grad(loss)(state, closed_form_logits)
    np.testing.assert_allclose(l1, l2, rtol=1e-12)
    for a, b in zip(jax.tree.leaves(g1), jax.tree.leaves(g2)):
        np.testing.assert_allclose(a, b, rtol=1e-9, atol=1e-12)


@pytest.mark.usefixtures("x64")
def test_stop_gradient_keys_would_change_parameter_gradients():
    """The trap SPEC.md warns about is real: stop_gradient on the keys changes training gradients
    (so the equivalence test above can fail)."""
    model = random_model(seed=4, dtype=jnp.float64)
    blk = model.block
    g = jax.random.normal(jax.random.key(0), (1, 6, 12), jnp.float64)
    mask = energy.causal_mask(6, 6, False)

    def update_norm(H, stop):
        keys = jax.lax.stop_gradient(g) if stop else g
        u = jax.grad(lambda q: energy.attention_energy(q, keys, H, mask).sum())(g)
        return jnp.sum(u ** 2)

    H = blk.attn.H[...]
    np.testing.assert_allclose(jax.grad(update_norm)(H, False), jax.grad(update_norm)(H, True))
    gx_closed = jax.grad(lambda g: jnp.sum(closed_attention_update(g, H, mask) ** 2))(g)

    def via(g, stop):
        keys = jax.lax.stop_gradient(g) if stop else g
        return jnp.sum(jax.grad(lambda q: energy.attention_energy(q, keys, H, mask).sum())(g) ** 2)

    np.testing.assert_allclose(jax.grad(via)(g, False), gx_closed, rtol=1e-10)
    assert not np.allclose(jax.grad(via)(g, True), gx_closed, rtol=1e-3)


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_every_model_builds_and_runs(name):
    cfg = tiny_config(name=name, dropout=0.1)
    model = build_model(cfg, seed=0)
    idx = jnp.zeros((3, 7), jnp.int32)
    logits = model(idx)
    assert logits.shape == (3, 7, cfg.vocab_size) and logits.dtype == jnp.float32
    assert np.all(np.isfinite(logits))
    # deterministic without a key, stochastic with one
    np.testing.assert_array_equal(logits, model(idx))
    assert not np.allclose(model(idx, dropout_key=jax.random.key(0)), logits)


def test_dropout_zero_ignores_key():
    model = random_model(seed=1)
    idx = jnp.arange(8)[None] % 13
    np.testing.assert_allclose(model(idx, dropout_key=jax.random.key(5)), model(idx), rtol=1e-6)


def test_bfloat16_parameters_compute_in_bfloat16():
    model = build_model(tiny_config(), seed=0, dtype=jnp.bfloat16)
    logits, trace = model.run(jnp.zeros((2, 5), jnp.int32), collect=("states",))
    assert trace.states.dtype == jnp.bfloat16 and logits.dtype == jnp.float32
    assert np.all(np.isfinite(logits))


def test_more_and_fewer_steps_than_trained():
    model = random_model(seed=2, n_layer=3)
    idx = jax.random.randint(jax.random.key(0), (2, 9), 0, 13)
    _, long = model.run(idx, n_steps=8, collect=("states", "energies", "update_norms"))
    _, short = model.run(idx, collect=("states", "energies"))
    assert long.states.shape == (9, 2, 9, 12) and long.token_energy().shape == (8, 2, 9)
    assert long.update_norm.shape == (8, 2, 9)
    np.testing.assert_allclose(long.states[:4], short.states, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(long.attn_energy[:3], short.attn_energy, rtol=1e-5, atol=1e-5)
    _, none = model.run(idx, n_steps=0, collect=("states",))
    np.testing.assert_array_equal(none.states[0], model.embed(idx))
    assert np.all(np.isfinite(model(idx, n_steps=20)))


def test_energy_trace_matches_direct_evaluation():
    model = random_model(seed=5)
    idx = jax.random.randint(jax.random.key(3), (2, 6), 0, 13)
    _, trace = model.run(idx, collect=("states", "energies"))
    blk = model.block
    for t in range(model.config.n_layer):
        g = blk.norm(trace.states[t])
        e_att, e_ff = blk.token_energies(g)
        np.testing.assert_allclose(trace.energy_trace()[t], [e_att.sum(), e_ff.sum(), blk.scale_ff[...]],
                                   rtol=1e-5)


@pytest.mark.parametrize("name", ["NRGPT_H_FF2W", "GPT_Rec_parallel"])
def test_remat_and_unroll_do_not_change_results(name):
    idx = jax.random.randint(jax.random.key(0), (2, 8), 0, 13)
    outs = []
    for remat, unroll in [(False, 1), (True, 1), (False, 3)]:
        model = random_model(seed=7, name=name, remat=remat, unroll=unroll)
        graphdef, state = nnx.split(model, nnx.Param)
        val, grad = jax.value_and_grad(lambda s: nnx.merge(graphdef, s)(idx).sum())(state)
        outs.append((val, jax.tree.leaves(grad)))
    for val, grads in outs[1:]:
        np.testing.assert_allclose(val, outs[0][0], rtol=1e-5)
        for a, b in zip(grads, outs[0][1]):
            np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)


def test_gpt_with_identical_blocks_equals_gpt_rec():
    rec = random_model(seed=8, name="GPT_Rec")
    gpt = build_model(tiny_config(name="GPT"), seed=0)
    gpt.token_embed, gpt.position_embed = rec.token_embed, rec.position_embed
    gpt.final_norm, gpt.lm_head = rec.final_norm, rec.lm_head
    for blk in gpt.blocks:
        nnx.update(blk, nnx.state(rec.block))
    idx = jax.random.randint(jax.random.key(0), (2, 8), 0, 13)
    np.testing.assert_allclose(gpt(idx), rec(idx), rtol=1e-5, atol=1e-6)


def test_adaptive_stopping_matches_fixed_steps_per_sequence():
    model = random_model(seed=9, proj_type="pos_scalar", proj_scale_init=0.05)
    idx = jax.random.randint(jax.random.key(1), (3, 7), 0, 13)
    x0 = model.embed(idx)
    _, trace = dynamics.descend(model.block, x0, 40, collect=("states",))
    g = model.block.norm(trace.states)
    change = np.asarray(jnp.linalg.norm(g[1:] - g[:-1], axis=-1).max(-1))  # (steps, B)
    tol = float(np.median(change))
    x, steps = jax.jit(lambda x: dynamics.descend_until_settled(model.block, x, 40, tol))(x0)
    for b in range(3):
        below = change[:, b] < tol
        expected = int(np.argmax(below)) if below.any() else 40
        assert int(steps[b]) == expected
        x_fixed, _ = dynamics.descend(model.block, x0[b:b + 1], expected)
        np.testing.assert_allclose(x[b], x_fixed[0], rtol=1e-5, atol=1e-5)


def test_sequence_longer_than_block_size_is_a_clear_error():
    model = build_model(tiny_config(block_size=4))
    with pytest.raises(ValueError, match="exceeds block_size=4"):
        model(jnp.zeros((1, 5), jnp.int32))


@pytest.mark.parametrize("changes, field", [
    (dict(name="NRGPT_H_FF3"), "name"), (dict(n_embed=0), "n_embed"), (dict(dropout=1.0), "dropout"),
    (dict(name="GPT", n_head=20), "n_head"), (dict(proj_type="lower"), "proj_type"),
    (dict(name="GPT", proj_type="identity"), "proj_type"),
])
def test_config_errors_name_the_field(changes, field):
    with pytest.raises(ConfigError, match=rf"model\.{field}="):
        tiny_config(**changes)
    with pytest.raises(ConfigError, match="unknown key"):
        ModelConfig.from_dict({"n_embd": 3})


@pytest.mark.usefixtures("x64")
@pytest.mark.parametrize("name, options", [
    ("NRGPT_H_FF1", dict(tril_plus_one=True)),
    ("NRGPT_H_FF2", dict(attn_grad="exact", attn_beta=0.6)),
    ("NRGPT_H_FF2W", dict(dropout=0.3)),
    ("NRGPT_H_FF2W", dict(attn_grad="exact", tril_plus_one=True, dropout=0.2, proj_type="psd_plus_antisym")),
])
def test_closed_form_update_equals_autodiff(name, options):
    """The fast path gives the same logits and parameter gradients as jax.grad of the energies."""
    idx = jax.random.randint(jax.random.key(1), (2, 8), 0, 13)
    tgt = jax.random.randint(jax.random.key(2), (2, 8), 0, 13)
    key = jax.random.key(7) if options.get("dropout") else None
    results = []
    for energy_grad in ("autodiff", "closed_form"):
        model = random_model(seed=11, dtype=jnp.float64, name=name, energy_grad=energy_grad, **options)
        graphdef, state = nnx.split(model, nnx.Param)
        loss = lambda s: cross_entropy(nnx.merge(graphdef, s)(idx, dropout_key=key), tgt)
        results.append(jax.value_and_grad(loss)(state))
    np.testing.assert_allclose(results[0][0], results[1][0], rtol=1e-12)
    for a, b in zip(jax.tree.leaves(results[0][1]), jax.tree.leaves(results[1][1])):
        np.testing.assert_allclose(a, b, rtol=1e-9, atol=1e-12)
