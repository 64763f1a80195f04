"""The ListOps parameter transition: final accuracy against parameters for NRGPT_H_FF1,
NRGPT_H_FF2W and GPT_Rec_parallel over a grid of widths (the paper sweeps n_embed 8..256).

    python benchmarks/listops_transition.py [--widths 16,25,32,40,50,64] [--steps 3000]
        [--models NRGPT_H_FF1,NRGPT_H_FF2W,GPT_Rec_parallel] [--lr 3e-3] [--out runs/listops_transition]

Each run is configs/listops.py with the model, n_embed, steps and schedule overridden (cosine from
--lr with 200 warmup steps to 2e-5: the paper's 5e-4 -> 2e-5 exponential schedule is tuned for
100,000 steps). Runs already in the results file are skipped, so the sweep can be extended.
Writes benchmarks/results/listops_transition.{json,md,png}.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from _common import RESULTS, load_config, machine, write_results

from nrgpt_jax import ModelConfig, build_model, count_params
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
    results_file = RESULTS / "listops_transition.json"
    previous = json.loads(results_file.read_text())["runs"] if results_file.exists() else []
    runs = [r for r in previous if r["steps"] == args.steps and r["lr"] == args.lr]
    done = {(r["model"], r["n_embed"]) for r in runs}
    for name in args.models.split(","):
        for width in [int(w) for w in args.widths.split(",")]:
            if (name, width) in done:
                continue
            config = load_config("listops", **{
                "model.name": name, "model.n_embed": width, "model.unroll": 5, "train.steps": args.steps,
                "train.lr": args.lr, "train.min_lr": 2e-5, "train.schedule": "cosine", "train.warmup_steps": 200,
                "train.eval_interval": 1000, "train.checkpoint_interval": args.steps, "train.sample_tokens": 0})
            t0 = time.perf_counter()
            final = train_and_evaluate(config, Path(args.out) / f"{name}_{width}", progress=False)
            runs.append({"model": name, "n_embed": width, "params": n_params(name, width), "steps": args.steps,
                         "lr": args.lr, "val_loss": final["val_loss"], "accuracy": final["accuracy_final"],
                         **{k: v for k, v in final.items() if k.startswith("accuracy_final_")},
                         "wall_s": round(time.perf_counter() - t0, 1)})
            print(runs[-1], flush=True)
            report(runs, args)


def report(runs, args) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.2), dpi=110)
    for name in sorted({r["model"] for r in runs}):
        pts = sorted((r["params"], r["accuracy"]) for r in runs if r["model"] == name)
        line, = ax.plot(*zip(*pts), "o-", label=name)
        ax.axvline(PAPER_TRANSITION[name], color=line.get_color(), linestyle=":", alpha=0.7)
    ax.set_xscale("log")
    ax.set_ylim(0, 1)
    ax.set_xlabel("parameters")
    ax.set_ylabel("held-out accuracy (greedy, 2,000 items)")
    ax.set_title(f"ListOps after {args.steps:,} steps (paper: 100,000); dotted: the paper's transition points",
                 fontsize=8)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    RESULTS.mkdir(parents=True, exist_ok=True)
    fig.savefig(RESULTS / "listops_transition.png")
    plt.close(fig)
    table = ["# ListOps: accuracy against parameters", "",
             f"{args.steps:,} steps of batch 64 x block 128 per run (the paper: 100,000), cosine lr {args.lr} -> 2e-5, "
             "one head, 5 steps, strict mask; greedy accuracy on the 2,000 held-out items and on each single-function "
             "set. Command: `python benchmarks/listops_transition.py`. Paper transitions: GPT_Rec_parallel 2.3e4, "
             "NRGPT_H_FF1 2.4e4, NRGPT_H_FF2W 2.98e4 parameters.", "",
             "| model | n_embed | parameters | val loss | accuracy | max_10 | median_10 | add_10 | wall (s) |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in sorted(runs, key=lambda r: (r["model"], r["n_embed"])):
        table.append(f"| {r['model']} | {r['n_embed']} | {r['params']:,} | {r['val_loss']:.4f} | {r['accuracy']:.3f} | "
                     f"{r.get('accuracy_final_max_10', float('nan')):.3f} | {r.get('accuracy_final_median_10', float('nan')):.3f} | "
                     f"{r.get('accuracy_final_add_10', float('nan')):.3f} | {r['wall_s']:.0f} |")
    table += ["", "![accuracy against parameters](listops_transition.png)"]
    write_results("listops_transition", {"machine": machine(), "runs": runs}, "\n".join(table) + "\n")


if __name__ == "__main__":
    main()
