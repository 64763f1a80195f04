"""The command-line tools around a trained model: analysis, sampling, several devices."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from conftest import ROOT
from nrgpt_jax import analyze, sample
from nrgpt_jax.metrics import read_metrics
from test_train import tiny


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("trained")
    from nrgpt_jax.train import train_and_evaluate

    train_and_evaluate(tiny(), workdir, progress=False)
    return workdir


def last_json(out: str) -> dict:
    return json.loads(out.strip().splitlines()[-1])


def test_analyze_random_model(tmp_path, capsys):
    code = analyze.main(["descent", "--random", "NRGPT_H_FF2W", "--config.model.n_embed=16",
                         "--config.model.proj_type=pos_scalar", "--config.model.proj_scale_init=0.01",
                         "--config.model.tril_plus_one=true", "--steps", "8", "--out", str(tmp_path)])
    assert code == 0
    summary = last_json(capsys.readouterr().out)
    for key in ("monotone_fraction", "mean_energy_drop", "final_update_norm", "settling_order"):
        assert key in summary
    assert summary["monotone_fraction"] == 1.0 and summary["n_steps"] == 8
    for name in ("energy.png", "update_norm.png"):
        assert (tmp_path / name).stat().st_size > 10_000


def test_analyze_trained_checkpoint_with_prompt(trained, tmp_path, capsys):
    code = analyze.main(["descent", "--checkpoint", str(trained), "--prompt", "ROMEO:", "--steps", "5",
                         "--config.model.attn_grad=exact", "--out", str(tmp_path)])
    assert code == 0
    summary = last_json(capsys.readouterr().out)
    assert summary["n_tokens"] == 6 and summary["attn_grad"] == "exact"


@pytest.mark.parametrize("args, needle", [
    (["--random", "GPT"], "has no energy"),
    (["--random", "NRGPT_H_FF2W", "--config.model.n_embd=3"], "unknown key model.n_embd"),
    (["--random", "NRGPT_H_FF2W", "--config.model.n_embed=x"], "not a int"),
    (["--checkpoint", "/nonexistent"], "config.json not found"),
])
def test_analyze_errors_are_one_line(capsys, args, needle):
    assert analyze.main(["descent", *args]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and needle in err[0], err


def test_sample_command(trained, capsys):
    assert sample.main(["--checkpoint", str(trained), "--prompt", "KING", "--tokens", "12", "--seed", "1"]) == 0
    text = capsys.readouterr().out
    assert text.startswith("KING") and len(text) == 17  # 4 + 12 characters and the newline of print
    assert sample.main(["--checkpoint", str(trained), "--prompt", "KING", "--tokens", "12", "--greedy",
                        "--steps", "4"]) == 0


@pytest.mark.parametrize("args, needle", [
    (["--prompt", "KING\u00e9"], "not in the 65-symbol vocabulary"),
    (["--temperature", "0"], "temperature=0.0 must be > 0"),
    (["--top_k", "999"], "top_k=999"),
    (["--tokens", "-3"], "max_new_tokens=-3"),
])
def test_sample_errors_are_one_line(trained, capsys, args, needle):
    assert sample.main(["--checkpoint", str(trained), *args]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and needle in err[0], err


def test_generate_rejects_out_of_range_ids(trained):
    from nrgpt_jax.checkpoint import load_model

    model, _ = load_model(trained)
    with pytest.raises(ValueError, match=r"token ids \[65\] outside the vocabulary"):
        sample.generate(model, [1, 65], 3)


def test_data_parallel_training_matches_one_device(tmp_path):
    """The same run sharded over 4 (virtual CPU) devices gives the same losses."""
    script = (
        "import sys; sys.path.insert(0, 'tests');"
        "from test_train import tiny; from nrgpt_jax.train import train_and_evaluate;"
        "train_and_evaluate(tiny(**{'train.sample_tokens': 0}), sys.argv[1], progress=False)"
    )
    losses = []
    for n, name in ((1, "one"), (4, "four")):
        env = {**os.environ, "XLA_FLAGS": f"--xla_force_host_platform_device_count={n}", "JAX_PLATFORMS": "cpu"}
        subprocess.run([sys.executable, "-c", script, str(tmp_path / name)], cwd=ROOT, env=env, check=True,
                       capture_output=True, timeout=300)
        losses.append([r.get("batch_loss", r.get("val_loss")) for r in read_metrics(tmp_path / name / "metrics.jsonl")])
    np.testing.assert_allclose(losses[0], losses[1], rtol=2e-5)
