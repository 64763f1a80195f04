"""Energy-descent analysis of a trained or random NRGPT model.

    python -m nrgpt_jax.analyze descent (--checkpoint DIR | --random MODEL_NAME)
        [--config.model.FIELD=VALUE ...] [--prompt TEXT] [--steps N] [--seed S] [--out DIR]

Runs the dynamics on a prompt and measures, token by token, whether each token's OWN energy
E_i(g_i; g_j fixed for j != i) goes down at every step (the paper's Props. 2.1-2.2), how fast the
updates shrink, and whether tokens settle in causal order. Writes `energy.png` and
`update_norm.png` to --out and prints one JSON object as the last line of stdout.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from nrgpt_jax import dynamics
from nrgpt_jax.model_config import ConfigError, ModelConfig


class DescentReport(NamedTuple):
    """Per-step, per-token measurements of one run of the dynamics (L steps, B, T)."""

    energy: np.ndarray  # (L+1, B, T) E_i along the trajectory (keys at the same step's states)
    own_before: np.ndarray  # (L, B, T) E_i(g_i^t; keys g^t)
    own_after: np.ndarray  # (L, B, T) E_i(g_i^{t+1}; other keys frozen at g^t)
    update_norm: np.ndarray  # (L, B, T) ||x_i^{t+1} - x_i^t||
    state_change: np.ndarray  # (L, B, T) ||g_i^{t+1} - g_i^t||, g = norm(x): what the energy sees


def own_energies(block, x):
    """E_i (B,T) of every token at state x, each token its own key (B,T,C) -> (B,T)."""
    g = block.norm(x)
    e_att, e_ff = block.token_energies(g)
    return e_att + block.scale_ff[...] * e_ff


def descent_report(block, x0, n_steps: int) -> DescentReport:
    """Run `n_steps` deterministic steps from x0 (B,T,C) and measure every token's own energy."""
    _, trace = dynamics.descend(block, x0, n_steps, collect=("states", "update_norms"))
    states = trace.states
    s = block.scale_ff[...]

    def per_step(x_t, x_next):
        g_t, g_next = block.norm(x_t), block.norm(x_next)
        mask = block.mask(x_t.shape[1])
        before = block.attn(g_t, g_t, mask, self_key=True) + s * block.ff(g_t)
        # token i moved to g_next_i while every other token stays at g_t: queries g_next, keys
        # g_t, and on the diagonal the token's own new state (self_key)
        after = block.attn(g_next, g_t, mask, self_key=True) + s * block.ff(g_next)
        return before, after

    before, after = jax.vmap(per_step)(states[:-1], states[1:])
    along = jax.vmap(lambda x: own_energies(block, x))(states)
    g = jax.vmap(block.norm)(states)
    change = jnp.linalg.norm(g[1:] - g[:-1], axis=-1)
    return DescentReport(*(np.asarray(a, np.float64) for a in (along, before, after, trace.update_norm, change)))


def summarize(report: DescentReport, rise_tol: float = 1e-9, settle_tol: float = 0.05) -> dict:
    """Scalar summaries of a DescentReport.

    monotone_fraction  share of tokens whose own energy never rises at any step (a rise is
                       E_after - E_before > rise_tol * (1 + |E_before|))
    mean_energy_drop   mean over steps and tokens of E_before - E_after
    final_update_norm  mean over tokens of the last step's ||x^{t+1} - x^t||
    final_state_change mean over tokens of the last step's ||g^{t+1} - g^t|| (g = norm(x))
    state_change_ratio final_state_change / mean first-step state change. With a norm, x can
                       drift along directions the norm removes while g settles: g is what settles.
    settling_order     share of neighbouring pairs (i, i+1) where token i settles no later than
                       token i+1; a token settles at the first step after which its state change
                       stays below settle_tol times the largest state change of the run
    """
    rise = report.own_after - report.own_before > rise_tol * (1 + np.abs(report.own_before))
    norms = report.state_change
    threshold = settle_tol * norms.max()
    n_steps = norms.shape[0]
    below = norms <= threshold
    # settle step: first t such that below[t:] is all True
    tail_ok = np.flip(np.cumprod(np.flip(below, 0), 0), 0).astype(bool)
    settle = np.where(tail_ok.any(0), np.argmax(tail_ok, 0), n_steps)  # (B,T)
    pairs = settle[:, :-1] <= settle[:, 1:]
    return {
        "monotone_fraction": float(1.0 - rise.any(0).mean()),
        "rise_fraction_per_step": [float(r) for r in rise.mean((1, 2))],
        "mean_energy_drop": float((report.own_before - report.own_after).mean()),
        "final_update_norm": float(report.update_norm[-1].mean()),
        "final_state_change": float(norms[-1].mean()),
        "state_change_ratio": float(norms[-1].mean() / max(norms[0].mean(), 1e-30)),
        "settling_order": float(pairs.mean()) if pairs.size else 1.0,
        "settled_fraction": float((settle < n_steps).mean()),
        "n_steps": int(n_steps),
        "n_tokens": int(norms.shape[1] * norms.shape[2]),
    }


def plot_report(report: DescentReport, out: Path, title: str) -> list[Path]:
    """energy.png (own energy of each token against step, relative to step 0) and
    update_norm.png (||x^{t+1} - x^t|| and ||g^{t+1} - g^t|| of each token against step)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    t = report.update_norm.shape[2]
    colors = plt.cm.viridis(np.linspace(0, 1, t))
    colorbar = plt.cm.ScalarMappable(cmap="viridis", norm=plt.Normalize(0, t - 1))

    fig, ax = plt.subplots(figsize=(7, 4.2), dpi=110, constrained_layout=True)
    for i in range(t):
        ax.plot(report.energy[:, 0, i] - report.energy[0, 0, i], color=colors[i], linewidth=1)
    ax.set_xlabel("step")
    ax.set_ylabel("own energy $E_i(t) - E_i(0)$")
    fig.colorbar(colorbar, ax=ax, label="token position")
    ax.set_title(title, fontsize=8)
    ax.grid(alpha=0.3)
    fig.savefig(out / "energy.png")
    plt.close(fig)

    fig, axes = plt.subplots(1, 2, figsize=(12, 4.4), dpi=110, sharex=True, constrained_layout=True)
    steps = np.arange(1, report.update_norm.shape[0] + 1)
    for ax, data, label in ((axes[0], report.update_norm, r"update $\|x_i^{t+1}-x_i^t\|$"),
                            (axes[1], report.state_change, r"normalised state change $\|g_i^{t+1}-g_i^t\|$")):
        for i in range(t):
            ax.plot(steps, np.maximum(data[:, 0, i], 1e-300), color=colors[i], linewidth=1)
        ax.set_yscale("log")
        ax.set_xlabel("step")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    fig.colorbar(colorbar, ax=axes, label="token position")
    fig.suptitle(title, fontsize=8)
    fig.savefig(out / "update_norm.png")
    plt.close(fig)
    return [out / "energy.png", out / "update_norm.png"]


# ------------------------------------------------------------------------------ command line
def _parse_overrides(items: list[str]) -> dict:
    fields = {f.name: f for f in dataclasses.fields(ModelConfig)}
    out = {}
    for item in items:
        if not item.startswith("--config.model.") or "=" not in item:
            raise ConfigError(f"unrecognised argument {item!r}: model overrides look like --config.model.n_embed=64")
        key, value = item[len("--config.model."):].split("=", 1)
        if key not in fields:
            raise ConfigError(f"unknown key model.{key}; known keys are {sorted(fields)}")
        default = fields[key].default
        try:
            if isinstance(default, bool):
                if value.lower() not in ("true", "false", "1", "0"):
                    raise ValueError(value)
                out[key] = value.lower() in ("true", "1")
            else:
                out[key] = type(default)(value)
        except ValueError:
            raise ConfigError(f"model.{key}={value!r} is not a {type(default).__name__}") from None
    return out


def _load(args, overrides):
    """(model, prompt token ids or None, description) for --checkpoint or --random."""
    from nrgpt_jax import checkpoint
    from nrgpt_jax.data import shakespeare
    from nrgpt_jax.data.tokens import load_data
    from nrgpt_jax.models import build_model

    if args.checkpoint:
        model, step = checkpoint.load_model(args.checkpoint, overrides=overrides)
        data_cfg = checkpoint.read_run_config(args.checkpoint).get("data")
        description = f"{args.checkpoint} (step {step})"
        if data_cfg is None:
            tokenizer, default_ids = None, None
        else:
            data = load_data(data_cfg["name"], data_cfg.get("path", ""))
            tokenizer, default_ids = data.tokenizer, np.asarray(data.val[:64]).tolist()
    else:
        train, val, tokenizer = shakespeare.char_splits(shakespeare.read_text())
        fields = {"name": args.random, "vocab_size": tokenizer.vocab_size, **overrides}
        model = build_model(ModelConfig(**fields), seed=args.seed)
        description = f"random {args.random} (seed {args.seed})"
        if model.config.vocab_size != tokenizer.vocab_size:
            tokenizer = None
        default_ids = val[:64].tolist() if tokenizer else None
    if args.prompt is not None:
        if tokenizer is None:
            raise ConfigError("this model has no known tokenizer: leave out --prompt")
        return model, tokenizer.encode(args.prompt), description
    return model, default_ids, description


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m nrgpt_jax.analyze", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    d = sub.add_parser("descent", help="per-token energy descent along the dynamics")
    src = d.add_mutually_exclusive_group(required=True)
    src.add_argument("--checkpoint", help="a training working directory (or import-torch output)")
    src.add_argument("--random", metavar="MODEL_NAME", help="a randomly initialised model of this name")
    d.add_argument("--prompt", default=None, help="text (default: the start of the validation text)")
    d.add_argument("--steps", type=int, default=None, help="number of steps (default: the model's n_layer)")
    d.add_argument("--seed", type=int, default=0)
    d.add_argument("--batch", type=int, default=1, help="sequences analysed (random models: random prompts)")
    d.add_argument("--out", default=None, help="folder for the plots (default: runs/analyze_<time>)")
    args, rest = parser.parse_known_args(argv)
    try:
        overrides = _parse_overrides(rest)
        if args.steps is not None and args.steps < 1:
            raise ConfigError(f"--steps={args.steps} must be >= 1")
        model, prompt_ids, description = _load(args, overrides)
        if not model.config.is_nrgpt:
            raise ConfigError(f"{model.config.name} has no energy: analyse an NRGPT_H_* model")
    except (ConfigError, ValueError, FileNotFoundError) as err:
        print(f"error: {str(err).splitlines()[0]}", file=sys.stderr)
        return 2
    n_steps = args.steps or model.config.n_layer
    idx = _prompt_batch(model, prompt_ids, args)
    with jax.enable_x64(True):
        model64 = _to_float64(model)
        report = descent_report(model64.block, model64.embed(jnp.asarray(idx)), n_steps)
    summary = summarize(report)
    out = Path(args.out) if args.out else Path("runs") / f"analyze_{time.strftime('%Y%m%d-%H%M%S')}"
    out.mkdir(parents=True, exist_ok=True)
    cfg = model.config
    title = (f"{description}: {cfg.name}, proj_type={cfg.proj_type}, norm={cfg.norm}, attn_grad={cfg.attn_grad}, "
             f"{'strict' if cfg.tril_plus_one else 'causal'} mask")
    plots = plot_report(report, out, title)
    summary.update(model=cfg.name, source=description, proj_type=cfg.proj_type, norm=cfg.norm,
                   attn_grad=cfg.attn_grad, tril_plus_one=cfg.tril_plus_one, plots=[str(p) for p in plots])
    print(f"{description}: {summary['n_tokens']} tokens x {n_steps} steps; plots in {out}")
    print(json.dumps(summary))
    return 0


def _prompt_batch(model, prompt_ids, args) -> np.ndarray:
    tb = model.config.block_size
    if prompt_ids is not None:
        ids = np.asarray(prompt_ids[-tb:], np.int32)[None]
        return np.repeat(ids, args.batch, 0) if args.batch > 1 else ids
    rng = np.random.default_rng(args.seed)
    return rng.integers(0, model.config.vocab_size, (args.batch, min(tb, 64)), dtype=np.int32)


def _to_float64(model):
    from flax import nnx

    graphdef, state = nnx.split(model)
    return nnx.merge(graphdef, jax.tree.map(lambda a: jnp.asarray(a, jnp.float64), state))


if __name__ == "__main__":
    sys.exit(main())
