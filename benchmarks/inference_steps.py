"""Test-time compute: validation loss of a trained NRGPT model against the number of inference steps.

    python benchmarks/inference_steps.py --checkpoint runs/DIR [--steps 1,2,3,4,6,8,12,16] [--batches 20]
        [--tol 0.02] [--name inference_steps]

Also runs the adaptive mode (each sequence stops once no token's normalised state moves --tol per step)
and reports the steps it used. Writes benchmarks/results/<--name>.{json,md,png}.
"""

from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np
from _common import RESULTS, machine, write_results

from nrgpt_jax import checkpoint, dynamics
from nrgpt_jax.data.tokens import load_data, window_batches
from nrgpt_jax.models import cross_entropy


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--checkpoint", required=True)
    parser.add_argument("--steps", default="1,2,3,4,6,8,12,16")
    parser.add_argument("--batches", type=int, default=20)
    parser.add_argument("--batch_size", type=int, default=32)
    parser.add_argument("--tol", type=float, default=0.02,
                        help="adaptive mode: stop once no normalised token state moves this much per step")
    parser.add_argument("--name", default="inference_steps", help="results file name")
    args = parser.parse_args()

    model, step = checkpoint.load_model(args.checkpoint)
    cfg = model.config
    run_cfg = checkpoint.read_run_config(args.checkpoint)
    data = load_data(run_cfg["data"]["name"], run_cfg["data"].get("path", ""))
    ds = window_batches(data.val, cfg.block_size, args.batch_size, seed=12345)
    batches = [jnp.asarray(ds[i]) for i in range(args.batches)]

    rows = []
    for n in [int(s) for s in args.steps.split(",")]:
        fn = jax.jit(lambda b, n=n: cross_entropy(model(b[:, :-1], n_steps=n), b[:, 1:]))
        t0 = time.perf_counter()
        loss = float(np.mean([float(fn(b)) for b in batches]))
        rows.append({"steps": n, "val_loss": loss, "trained_steps": cfg.n_layer, "seconds": time.perf_counter() - t0})
        print(rows[-1], flush=True)

    max_steps = max(r["steps"] for r in rows)

    @jax.jit
    def adaptive(batch):
        x, used = dynamics.descend_until_settled(model.block, model.embed(batch[:, :-1]), max_steps, args.tol)
        return cross_entropy(model.readout(x), batch[:, 1:]), used

    out = [adaptive(b) for b in batches]
    adaptive_row = {"tol": args.tol, "max_steps": max_steps, "val_loss": float(np.mean([float(l) for l, _ in out])),
                    "mean_steps": float(np.mean([np.asarray(u).mean() for _, u in out])),
                    "min_steps": int(min(np.asarray(u).min() for _, u in out)),
                    "max_steps_used": int(max(np.asarray(u).max() for _, u in out))}
    print(adaptive_row)

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4), dpi=110)
    ax.plot([r["steps"] for r in rows], [r["val_loss"] for r in rows], "o-", label="fixed number of steps")
    ax.axvline(cfg.n_layer, color="gray", linestyle=":", label=f"trained with {cfg.n_layer} steps")
    ax.plot([adaptive_row["mean_steps"]], [adaptive_row["val_loss"]], "r*", markersize=12,
            label=f"adaptive (tol {args.tol})")
    ax.set_xlabel("inference steps")
    ax.set_ylabel("validation loss")
    ax.set_title(f"{cfg.name}, n_embed {cfg.n_embed}, {run_cfg['data']['name']}", fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    RESULTS.mkdir(parents=True, exist_ok=True)
    fig.savefig(RESULTS / f"{args.name}.png")

    table = ["# Validation loss against inference steps", "",
             f"{cfg.name} (n_embed {cfg.n_embed}, {cfg.n_head} heads, trained with {cfg.n_layer} steps, checkpoint step "
             f"{step}) on {run_cfg['data']['name']}; {args.batches} validation batches of {args.batch_size}. "
             f"Command: `python benchmarks/inference_steps.py --checkpoint DIR`.", "",
             "| inference steps | validation loss |", "|---|---|"]
    table += [f"| {r['steps']}{' (trained)' if r['steps'] == cfg.n_layer else ''} | {r['val_loss']:.4f} |" for r in rows]
    table += ["", f"Adaptive (stop a sequence once no normalised token state moves {args.tol} per step, at most {max_steps}): "
              f"validation loss {adaptive_row['val_loss']:.4f} with {adaptive_row['mean_steps']:.1f} steps on average "
              f"({adaptive_row['min_steps']}-{adaptive_row['max_steps_used']}).", "",
              f"![loss against steps]({args.name}.png)"]
    write_results(args.name, {"machine": machine(), "checkpoint": str(args.checkpoint), "model": cfg.to_dict(),
                                      "fixed": rows, "adaptive": adaptive_row}, "\n".join(table) + "\n")


if __name__ == "__main__":
    main()
