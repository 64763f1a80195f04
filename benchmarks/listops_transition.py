"""The ListOps parameter transition: final accuracy against parameters for NRGPT_H_FF1,
NRGPT_H_FF2W and GPT_Rec_parallel over a grid of widths (the paper sweeps n_embed 8..256).

    python benchmarks/listops_transition.py [--widths 16,25,32,40,50,64] [--steps 3000]
        [--models NRGPT_H_FF1,NRGPT_H_FF2W,GPT_Rec_parallel] [--lr 3e-3] [--out runs/listops_transition]

Each run is configs/listops.py with the model, n_embed, steps and schedule overridden (cosine from
--lr with 200 warmup steps to 2e-5: the paper's 5e-4 -> 2e-5 exponential schedule is tuned for
100,000 steps). Every run is kept in the results file; a (model, width) already there at the same
--steps and --lr is skipped, so the sweep can be extended.
Writes benchmarks/results/listops_transition.{json,md,png}.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from _common import RESULTS, load_config, machine, write_results

from nrgpt_jax import ModelConfig, build_model, count_params
from nrgpt_jax.metrics import read_metrics
from nrgpt_jax.train import train_and_evaluate

PAPER_TRANSITION = {"GPT_Rec_parallel": 2.3e4, "NRGPT_H_FF1": 2.4e4, "NRGPT_H_FF2W": 2.98e4}


def n_params(name: str, width: int) -> int:
    cfg = load_config("listops").model
    fields = {**cfg.to_dict(), "name": name, "n_embed": width, "vocab_size": 20}
    return count_params(build_model(ModelConfig.from_dict(fields)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--widths", default="16,25,32,40,50,64")
    parser.add_argument("--models", default="NRGPT_H_FF1,NRGPT_H_FF2W,GPT_Rec_parallel")
    parser.add_argument("--steps", type=int, default=3000)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--out", default="runs/listops_transition")
    args = parser.parse_args()
    done = {(r["model"], r["n_embed"]) for r in stored_runs() if r["steps"] == args.steps and r["lr"] == args.lr}
    for name in args.models.split(","):
        for width in [int(w) for w in args.widths.split(",")]:
            if (name, width) in done:
                continue
            config = load_config("listops", **{
                "model.name": name, "model.n_embed": width, "model.unroll": 5, "train.steps": args.steps,
                "train.lr": args.lr, "train.min_lr": 2e-5, "train.schedule": "cosine", "train.warmup_steps": 200,
                "train.eval_interval": 1000, "train.checkpoint_interval": args.steps, "train.sample_tokens": 0})
            t0 = time.perf_counter()
            workdir = Path(args.out) / f"{name}_{width}_{args.steps}_{args.lr:g}"
            final = train_and_evaluate(config, workdir, progress=False)
            run = {"model": name, "n_embed": width, "params": n_params(name, width), "steps": args.steps,
                   "lr": args.lr, "val_loss": final["val_loss"], "accuracy": final["accuracy_final"],
                   **{k: v for k, v in final.items() if k.startswith("accuracy_final_")},
                   "wall_s": round(time.perf_counter() - t0, 1), "curve": accuracy_curve(workdir)}
            print(run, flush=True)
            report([r for r in stored_runs() if run_key(r) != run_key(run)] + [run])


def run_key(run: dict) -> tuple:
    return run["model"], run["n_embed"], run["steps"], run["lr"]


def stored_runs() -> list[dict]:
    """Every run in the results file, re-read before each write so that concurrent sweeps merge."""
    results_file = RESULTS / "listops_transition.json"
    return json.loads(results_file.read_text())["runs"] if results_file.exists() else []


def accuracy_curve(workdir: Path) -> list[list[float]]:
    """[[step, held-out accuracy on the evaluation subset], ...] from the run's metrics.jsonl."""
    return [[m["step"], m["accuracy"]] for m in read_metrics(workdir / "metrics.jsonl") if "accuracy" in m]


def dress(ax, xlabel: str, ylabel: str, title: str) -> None:
    ax.set_ylim(0, 1)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=8)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)


def report(runs) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax, ax_curve) = plt.subplots(1, 2, figsize=(11, 4.2), dpi=110)
    colors = {}
    longest = max(r["steps"] for r in runs)
    for name, steps, lr in sorted({(r["model"], r["steps"], r["lr"]) for r in runs}):
        pts = sorted((r["params"], r["accuracy"]) for r in runs
                     if (r["model"], r["steps"], r["lr"]) == (name, steps, lr))
        style = "o-" if steps == longest else "x--"  # shorter budgets: same colour, crosses
        line, = ax.plot(*zip(*pts), style, color=colors.get(name), label=f"{name}, {steps:,} steps, lr {lr:g}")
        colors[name] = line.get_color()
    for name, color in colors.items():
        ax.axvline(PAPER_TRANSITION[name], color=color, linestyle=":", alpha=0.7)
    ax.set_xscale("log")
    dress(ax, "parameters", "held-out accuracy (greedy, 2,000 items)",
          "final accuracy (paper: 100,000 steps); dotted: the paper's transition points")
    for r in sorted(runs, key=lambda r: (r["model"], r["n_embed"], r["steps"])):
        if r.get("curve"):
            ax_curve.plot(*zip(*r["curve"]), "o-", ms=3,
                          label=f"{r['model']} n_embed {r['n_embed']} ({r['params']:,}), lr {r['lr']:g}")
    dress(ax_curve, "training step", "accuracy (first 200 held-out items, greedy)", "accuracy during training")
    fig.tight_layout()
    RESULTS.mkdir(parents=True, exist_ok=True)
    fig.savefig(RESULTS / "listops_transition.png")
    plt.close(fig)
    intro = ("Batch 64 x block 128 per step (the paper: 100,000 steps), cosine lr from `lr` with 200 warmup steps to "
             "2e-5, one head, 5 steps, strict mask; greedy accuracy on the 2,000 held-out items and on each "
             "single-function set. Command per row: `python benchmarks/listops_transition.py --steps STEPS --lr LR "
             "--models MODEL --widths N_EMBED`. Paper transitions: GPT_Rec_parallel 2.3e4, NRGPT_H_FF1 2.4e4, "
             "NRGPT_H_FF2W 2.98e4 parameters.")
    table = ["# ListOps: accuracy against parameters", "", intro, "",
             "| model | n_embed | parameters | steps | lr | val loss | accuracy | max_10 | median_10 | add_10 | wall (s) |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in sorted(runs, key=lambda r: (r["model"], r["n_embed"], r["steps"])):
        per_op = " | ".join(f"{r.get(f'accuracy_final_{op}', float('nan')):.3f}"
                            for op in ("max_10", "median_10", "add_10"))
        table.append(f"| {r['model']} | {r['n_embed']} | {r['params']:,} | {r['steps']:,} | {r['lr']:g} | "
                     f"{r['val_loss']:.4f} | {r['accuracy']:.3f} | {per_op} | {r['wall_s']:.0f} |")
    table += ["", "![accuracy against parameters](listops_transition.png)"]
    write_results("listops_transition", {"machine": machine(), "runs": runs}, "\n".join(table) + "\n")


if __name__ == "__main__":
    main()
