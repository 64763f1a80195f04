"""Parity with the reference PyTorch code, and reference checkpoints in and out."""

import importlib.util

import jax
import numpy as np
import pytest
from flax import nnx

from conftest import FIXTURES, SHARED_PARITY, tiny_config
from nrgpt_jax import build_model, checkpoint, interop, torch_zip

COMMITTED = sorted((FIXTURES / "official").glob("*.npz")) + sorted((FIXTURES / "reference").glob("*.npz"))
SHARED = sorted(SHARED_PARITY.glob("*.npz"))
HAVE_TORCH = importlib.util.find_spec("torch") is not None
TINY_PT = FIXTURES / "tiny_nrgpt_ff2w.pt"


def _assert_parity(path, dtype, tol):
    with jax.enable_x64(dtype == "float64"):
        errors = interop.check_fixture(path, dtype)
    assert {"logits", "loss"} <= set(errors) and any(k.startswith("grad/") for k in errors)
    worst = max(errors, key=errors.get)
    assert errors[worst] <= tol, f"{path.name}: {worst} relative error {errors[worst]:.2e} > {tol}"


@pytest.mark.parametrize("path", COMMITTED, ids=lambda p: f"{p.parent.name}/{p.stem}")
def test_parity_committed_fixtures_float64(path):
    _assert_parity(path, "float64", 1e-8)


@pytest.mark.parametrize("path", [p if p.parent.name == "official" or p.stem == "nrgpt_ff2_strict"
                                  else pytest.param(p, marks=pytest.mark.slow) for p in COMMITTED],
                         ids=lambda p: f"{p.parent.name}/{p.stem}")
def test_parity_committed_fixtures_float32(path):
    _assert_parity(path, "float32", 1e-4)


@pytest.mark.skipif(not SHARED, reason=f"official parity fixtures not found at {SHARED_PARITY} "
                                       "(they live in the project's ../shared folder)")
@pytest.mark.parametrize("dtype, tol", [("float64", 1e-8), pytest.param("float32", 1e-4, marks=pytest.mark.slow)])
@pytest.mark.parametrize("path", SHARED or [None], ids=lambda p: getattr(p, "stem", "none"))
def test_parity_shared_official_fixtures(path, dtype, tol):
    _assert_parity(path, dtype, tol)


def test_fixture_arrays_are_checked():
    """The check compares trajectories and energy traces when the fixture has them."""
    with jax.enable_x64(True):
        errors = interop.check_fixture(FIXTURES / "official" / "nrgpt_ff2w.npz")
    assert {"trajectory", "energy_trace", "grad/blocks.proj.weight", "grad/blocks.scale_ff"} <= set(errors)


def test_check_command_fails_on_a_wrong_fixture(tmp_path, capsys):
    src = FIXTURES / "reference" / "nrgpt_ff2w_strict"
    arrays = dict(np.load(src.with_suffix(".npz")))
    arrays["grad/blocks.proj.weight"] = arrays["grad/blocks.proj.weight"] * 1.001
    np.savez(tmp_path / "bad.npz", **arrays)
    (tmp_path / "bad.json").write_text(src.with_suffix(".json").read_text())
    assert interop.main(["check", str(tmp_path / "bad.npz")]) == 1
    line = capsys.readouterr().out.strip()
    assert line.startswith("bad: FAIL") and "grad/blocks.proj.weight" in line


@pytest.mark.parametrize("name", ["NRGPT_H_FF1", "NRGPT_H_FF2", "NRGPT_H_FF2W", "GPT", "GPT_Rec",
                                  "GPT_Rec_parallel"])
def test_reference_round_trip_and_config_inference(name):
    cfg = tiny_config(name=name, n_embed=10, n_head=3, tril_plus_one=True)
    params = nnx.to_pure_dict(nnx.state(build_model(cfg, seed=1), nnx.Param))
    sd = interop.to_reference(params, cfg)
    back = interop.params_from_reference({"module." + k: v for k, v in sd.items()}, cfg)
    for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(back)):
        np.testing.assert_array_equal(a, b)
    inferred = interop.infer_config(sd, name=name if name.startswith("GPT_Rec") else None,
                                    model_args={"n_layer": cfg.n_layer})
    assert inferred == cfg


def test_import_errors_are_one_line():
    cfg = tiny_config()
    sd = interop.to_reference(nnx.to_pure_dict(nnx.state(build_model(cfg), nnx.Param)), cfg)
    missing = {k: v for k, v in sd.items() if k != "blocks.proj.weight"}
    with pytest.raises(interop.InteropError, match="lacks 'blocks.proj.weight'"):
        interop.params_from_reference(missing, cfg)
    with pytest.raises(interop.InteropError, match="does not fit"):
        interop.params_from_reference(sd, cfg.replace(n_embed=16))
    with pytest.raises(interop.InteropError, match="unexpected key"):
        interop.params_from_reference({**sd, "blocks.alpha": np.ones(1)}, cfg)
    with pytest.raises(interop.InteropError, match="GPT_Rec or GPT_Rec_parallel"):
        cfg_rec = tiny_config(name="GPT_Rec")
        interop.infer_config(interop.to_reference(
            nnx.to_pure_dict(nnx.state(build_model(cfg_rec), nnx.Param)), cfg_rec))


def test_torch_zip_reader_reads_a_reference_checkpoint():
    obj = torch_zip.load(TINY_PT)
    expected = dict(np.load(FIXTURES / "tiny_nrgpt_ff2w_params.npz"))
    model = {k.removeprefix("_orig_mod."): v for k, v in obj["model"].items()}
    assert set(model) == set(expected)
    for k, v in expected.items():
        np.testing.assert_array_equal(model[k], v)
    assert obj["model_args"]["n_layer"] == 3 and obj["iter_num"] == 5
    assert float(obj["best_val_loss"]) == pytest.approx(2.5)


def test_torch_zip_rejects_non_checkpoints(tmp_path):
    bad = tmp_path / "x.pt"
    bad.write_bytes(b"not a zip")
    with pytest.raises(torch_zip.TorchZipError, match="not a PyTorch zip checkpoint"):
        torch_zip.load(bad)


@pytest.mark.skipif(not HAVE_TORCH, reason="torch not installed (optional extra nrgpt_jax[torch])")
def test_torch_zip_agrees_with_torch_load():
    import torch

    ours = torch_zip.load(TINY_PT)
    theirs = torch.load(TINY_PT, map_location="cpu", weights_only=True)
    for k, v in theirs["model"].items():
        np.testing.assert_array_equal(ours["model"][k], v.numpy())


def test_import_torch_command_writes_a_loadable_model(tmp_path, capsys):
    out = tmp_path / "imported"
    assert interop.main(["import-torch", str(TINY_PT), "--out", str(out)]) == 0
    assert "NRGPT_H_FF2W" in capsys.readouterr().out
    model, step = checkpoint.load_model(out)
    cfg = model.config
    assert (cfg.n_layer, cfg.tril_plus_one, cfg.n_head, cfg.vocab_size) == (3, True, 2, 11)
    sd = dict(np.load(FIXTURES / "tiny_nrgpt_ff2w_params.npz"))
    reference = checkpoint.model_from_params(cfg, interop.params_from_reference(sd, cfg))
    idx = np.arange(8)[None] % 11
    np.testing.assert_allclose(model(idx), reference(idx), rtol=1e-6)


def test_import_torch_reports_bad_files(tmp_path, capsys):
    assert interop.main(["import-torch", str(tmp_path / "missing.pt"), "--out", str(tmp_path / "o")]) == 2
    assert "no such file" in capsys.readouterr().err
