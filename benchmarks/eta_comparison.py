"""Validation loss on Shakespeare for the reference `full` inference rate eta versus the provably
descending `pos_scalar` (eta = c I) and `identity` (eta = I), at equal size and equal steps.

    python benchmarks/eta_comparison.py [--steps 1200] [--out runs/eta_comparison]

Every run is the default config (configs/shakespeare_char.py) with only model.proj_type changed.
Writes benchmarks/results/eta_comparison.{json,md}.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from _common import load_config, machine, write_results

from nrgpt_jax.metrics import read_metrics
from nrgpt_jax.train import train_and_evaluate

VARIANTS = {"full": {}, "pos_scalar": {"model.proj_scale_init": 0.1}, "identity": {}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=None, help="default: the config's")
    parser.add_argument("--out", default="runs/eta_comparison")
    args = parser.parse_args()
    rows = []
    for proj_type, extra in VARIANTS.items():
        overrides = {"model.proj_type": proj_type, **extra}
        if args.steps:
            overrides["train.steps"] = args.steps
        config = load_config("shakespeare_char", **overrides)
        t0 = time.perf_counter()
        final = train_and_evaluate(config, Path(args.out) / proj_type, progress=False)
        records = read_metrics(Path(args.out) / proj_type / "metrics.jsonl")
        best = min(r["val_loss"] for r in records if r.get("val_loss") is not None)
        rows.append({"proj_type": proj_type, **{k: v for k, v in extra.items()}, "steps": final["step"],
                     "final_val_loss": final["val_loss"], "best_val_loss": best,
                     "final_train_loss": final["train_loss"], "wall_s": round(time.perf_counter() - t0, 1)})
        print(rows[-1], flush=True)
    cfg = load_config("shakespeare_char").model
    table = ["# Inference-rate families on Shakespeare (char)", "",
             f"NRGPT_H_FF2W, n_embed {cfg.n_embed}, {cfg.n_head} heads, {cfg.n_layer} steps, block {cfg.block_size}; "
             "the default config with only `model.proj_type` changed. Command: "
             "`python benchmarks/eta_comparison.py`.", "",
             "| proj_type | eta | final val loss | best val loss | final train loss | wall (s) |",
             "|---|---|---|---|---|---|"]
    eta = {"full": "learned C x C (reference)", "pos_scalar": "c I, c > 0 learned (init 0.1)", "identity": "I"}
    for r in rows:
        table.append(f"| {r['proj_type']} | {eta[r['proj_type']]} | {r['final_val_loss']:.4f} | {r['best_val_loss']:.4f} "
                     f"| {r['final_train_loss']:.4f} | {r['wall_s']:.0f} |")
    write_results("eta_comparison", {"machine": machine(), "runs": rows}, "\n".join(table) + "\n")


if __name__ == "__main__":
    main()
