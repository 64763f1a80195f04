"""Fault injection on real training processes: SIGKILL at random moments (also during asynchronous
checkpoint saves), SIGTERM, corrupted and half-written checkpoints, non-finite values, bad input.

After every fault, finishing the run must give exactly the metrics and the final parameters
(SHA-256 of every array) of an uninterrupted run. CI runs a fast subset; `-m slow` runs the full
suite (more kill seeds and corruption kinds). Every process's stderr is checked for tracebacks.
"""

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import ROOT

CONFIG = f"--config={ROOT / 'configs' / 'shakespeare_char.py'}:tiny"
RUN = ["--config.train.steps=24", "--config.train.decay_steps=24", "--config.train.checkpoint_interval=2",
       "--config.train.eval_interval=4", "--config.train.keep_checkpoints=2", "--config.model.dropout=0.1",
       "--config.train.grad_accum=2", "--config.train.sample_tokens=0"]
FAULT_LOG = []  # (kind, detail) of every fault injected, summarised by test_zz_report


def command(workdir, *extra):
    return [sys.executable, "-m", "nrgpt_jax.main", CONFIG, *RUN, *extra, f"--workdir={workdir}"]


def run(workdir, *extra, timeout=300):
    """Run training to its end; returns (exit code, stderr)."""
    proc = subprocess.run(command(workdir, *extra), capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, "PYTHONUNBUFFERED": "1"})
    assert "Traceback" not in proc.stderr, proc.stderr
    return proc.returncode, proc.stderr


def start(workdir, *extra):
    return subprocess.Popen(command(workdir, *extra), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def outcome(workdir):
    """(metrics without timings, SHA-256 of the final parameters and optimizer state)."""
    workdir = Path(workdir)
    records = [{k: v for k, v in json.loads(line).items() if k != "tokens_per_s"}
               for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    ckpts = workdir / "checkpoints"
    last = max(int(p.name) for p in ckpts.iterdir() if p.name.isdigit())
    meta = json.loads((ckpts / str(last) / "meta" / "metadata").read_text())
    return records, last, meta["sha256"]


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("reference")
    t0 = time.perf_counter()
    code, _ = run(workdir)
    assert code == 0
    return outcome(workdir), time.perf_counter() - t0


def kill_and_resume(workdir, reference, seed, kills):
    """SIGKILL `kills` times at random moments, then run to the end; compare with the reference."""
    rng = random.Random(seed)
    (_, duration) = reference
    for _ in range(kills):
        proc = start(workdir)
        delay = rng.uniform(0.5, duration)
        try:
            proc.wait(timeout=delay)
        except subprocess.TimeoutExpired:
            proc.send_signal(signal.SIGKILL)
            proc.wait()
        FAULT_LOG.append(("SIGKILL", f"seed {seed} after {delay:.1f}s"))
        assert "Traceback" not in proc.stderr.read()
    code, _ = run(workdir)
    assert code == 0
    assert outcome(workdir) == reference[0]


@pytest.mark.parametrize("seed", [0, pytest.param(1, marks=pytest.mark.slow)])
def test_sigkill_at_random_moments_then_resume_is_exact(tmp_path, reference, seed):
    kill_and_resume(tmp_path, reference, seed, kills=2)


@pytest.mark.slow
@pytest.mark.parametrize("seed", range(2, 10))
def test_sigkill_many_seeds(tmp_path, reference, seed):
    kill_and_resume(tmp_path, reference, seed, kills=3)


@pytest.mark.parametrize("sig", [signal.SIGTERM, pytest.param(signal.SIGINT, marks=pytest.mark.slow)])
def test_sigterm_checkpoints_and_exits_zero(tmp_path, reference, sig):
    proc = start(tmp_path)
    deadline = time.time() + 120
    while not (tmp_path / "metrics.jsonl").exists() or len((tmp_path / "metrics.jsonl").read_text().splitlines()) < 4:
        assert time.time() < deadline and proc.poll() is None
        time.sleep(0.05)
    proc.send_signal(sig)
    err = proc.communicate(timeout=120)[1]
    FAULT_LOG.append((sig.name, "mid-run"))
    assert proc.returncode == 0 and "Traceback" not in err
    ckpts = [int(p.name) for p in (tmp_path / "checkpoints").iterdir() if p.name.isdigit()]
    assert ckpts and max(ckpts) < 24  # stopped early, with a checkpoint of the step it finished
    code, _ = run(tmp_path)
    assert code == 0 and outcome(tmp_path) == reference[0]


def _latest(workdir):
    ckpts = Path(workdir) / "checkpoints"
    return ckpts / str(max(int(p.name) for p in ckpts.iterdir() if p.name.isdigit()))


def _flip_bytes(path: Path):
    data = bytearray(path.read_bytes())
    for i in range(len(data) // 3, len(data) // 3 + 16):
        data[i] ^= 0xFF
    path.write_bytes(bytes(data))


CORRUPTIONS = {
    "array bytes flipped": lambda step: _flip_bytes(max((p for p in (step / "params").rglob("*") if p.is_file()),
                                                        key=lambda p: p.stat().st_size)),
    "optimizer file truncated": lambda step: [p.write_bytes(p.read_bytes()[: p.stat().st_size // 2])
                                              for p in (step / "opt_state").rglob("*") if p.is_file()],
    "metadata deleted": lambda step: (step / "params" / "_METADATA").unlink(),
    "meta json garbled": lambda step: (step / "meta" / "metadata").write_text("{not json"),
}


@pytest.mark.parametrize("kind", [k if k == "array bytes flipped" else pytest.param(k, marks=pytest.mark.slow)
                                  for k in CORRUPTIONS])
def test_corrupted_latest_checkpoint_falls_back_to_the_previous(tmp_path, reference, kind):
    code, _ = run(tmp_path, "--config.train.steps=12")
    assert code == 0
    latest = _latest(tmp_path)
    CORRUPTIONS[kind](latest)
    FAULT_LOG.append(("corruption", kind))
    code, err = run(tmp_path)
    assert code == 0
    warnings = [line for line in err.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 1 and str(latest) in warnings[0], err
    assert list((tmp_path / "checkpoints_corrupted").iterdir())  # kept for inspection, not deleted
    assert outcome(tmp_path) == reference[0]


@pytest.mark.slow
def test_half_written_checkpoint_is_ignored(tmp_path, reference):
    code, _ = run(tmp_path, "--config.train.steps=12")
    assert code == 0
    junk = tmp_path / "checkpoints" / "14.orbax-checkpoint-tmp-1234"
    (junk / "params").mkdir(parents=True)
    (junk / "params" / "partial").write_bytes(b"\x00" * 100)
    FAULT_LOG.append(("corruption", "half-written checkpoint folder"))
    code, _ = run(tmp_path)
    assert code == 0 and outcome(tmp_path) == reference[0]


def test_nonfinite_loss_stops_with_the_step_and_keeps_the_last_checkpoint(tmp_path):
    code, err = run(tmp_path, "--config.train.lr=1e9", "--config.train.min_lr=1e9", "--config.train.warmup_steps=0",
                    "--config.train.checkpoint_interval=1", "--config.train.log_interval=1")
    FAULT_LOG.append(("non-finite", "lr 1e9"))
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert code == 1 and len(errors) == 1 and errors[0].startswith("error: non-finite loss or gradient at step "), err
    bad_step = int(errors[0].split("at step ")[1].split(";")[0])
    steps = sorted(int(p.name) for p in (tmp_path / "checkpoints").iterdir() if p.name.isdigit())
    assert steps and max(steps) == bad_step - 1


@pytest.mark.slow
def test_nonfinite_can_skip_updates(tmp_path):
    code, err = run(tmp_path, "--config.train.lr=1e9", "--config.train.min_lr=1e9", "--config.train.warmup_steps=0",
                    "--config.train.on_nonfinite=skip")
    FAULT_LOG.append(("non-finite", "skip"))
    assert code == 0 and "update(s) skipped" in err


BAD_INPUTS = [
    (["--config.train.steps=-1"], "train.steps=-1"),
    (["--config.train.batch_size=0"], "train.batch_size=0"),
    (["--config.train.lr=0.0"], "train.lr=0.0"),
    (["--config.train.beta2=1.5"], "train.beta2=1.5"),
    (["--config.train.dtype=float16"], "train.dtype='float16'"),
    (["--config.train.warmup_steps=100"], "train.warmup_steps=100"),
    (["--config.model.norm=batchnorm"], "model.norm='batchnorm'"),
    (["--config.model.attn_grad=approx"], "model.attn_grad='approx'"),
    (["--config.model.vocab_size=10"], "model.vocab_size=10"),
    (["--config.data.name=wikipedia"], "data.name='wikipedia'"),
    (["--config.data.path=/nonexistent/input.txt"], "no such text file"),
    (["--config.model.n_layer=abc"], "n_layer"),
]


@pytest.mark.parametrize("args, needle", [b if i < 3 else pytest.param(*b, marks=pytest.mark.slow)
                                          for i, b in enumerate(BAD_INPUTS)], ids=[b[1] for b in BAD_INPUTS])
def test_bad_input_is_one_line(tmp_path, args, needle):
    code, err = run(tmp_path / "w", *args)
    FAULT_LOG.append(("bad input", needle))
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and lines[0].startswith("error:") and needle in lines[0], err


def test_corrupted_run_config_is_refused(tmp_path):
    code, _ = run(tmp_path, "--config.train.steps=4")
    assert code == 0
    (tmp_path / "config.json").write_text("{broken")
    code, err = run(tmp_path)
    FAULT_LOG.append(("bad input", "corrupted config.json"))
    assert code == 2 and "config.json is corrupted" in err


def test_zz_report():
    """Prints the figures of this run of the suite (quoted in the README's Reliability section)."""
    kinds = {}
    for kind, _ in FAULT_LOG:
        kinds[kind] = kinds.get(kind, 0) + 1
    print("\nfault suite:", json.dumps(kinds))
