"""Training-step time of NRGPT and the baselines, and of the update and unroll options.

    python benchmarks/step_time.py [--repeats 6]

The SPEC's reference point (section 5): NRGPT_H_FF2W, n_embed 128, 4 heads, 6 steps, block 256,
batch 16, one AdamW step; the authors' PyTorch code takes 0.78-0.89 s on this 2-core CPU kind.
Every row is measured in the same process, one after another (median of --repeats steps after
compilation). Writes benchmarks/results/step_time.{json,md}.
"""

from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np
from _common import machine, write_results
from flax import nnx

from nrgpt_jax import ModelConfig, build_model, optim, run_config
from nrgpt_jax.train import TrainState, make_train_step

SPEC = dict(vocab_size=65, n_embed=128, n_head=4, n_layer=6, block_size=256)
ROWS = [
    ("NRGPT_H_FF2W", {}, "jax.grad updates (reference semantics)"),
    ("NRGPT_H_FF2W", {"unroll": 6}, "scan fully unrolled"),
    ("NRGPT_H_FF2W", {"energy_grad": "closed_form"}, "closed-form updates"),
    ("NRGPT_H_FF2W", {"energy_grad": "closed_form", "unroll": 6}, "closed-form, unrolled"),
    ("NRGPT_H_FF2W", {"remat": True}, "rematerialised steps"),
    ("GPT_Rec_parallel", {}, "baseline, same size"),
    ("GPT", {}, "baseline, 6 distinct blocks"),
]


def step_seconds(name: str, options: dict, batch: int, repeats: int) -> float:
    cfg = ModelConfig(name=name, **SPEC, **options)
    t = run_config.resolve_train(run_config.base_config().train.to_dict())
    graphdef, params = nnx.split(build_model(cfg), nnx.Param)
    params = nnx.to_pure_dict(params)
    opt = optim.make_optimizer(t)
    state = TrainState(params, opt.init(params))
    step = make_train_step(graphdef, opt, t, use_dropout=False)
    data = jnp.asarray(np.random.default_rng(0).integers(0, 65, (1, batch, SPEC["block_size"] + 1)), jnp.int32)
    state, m = step(state, data, 0)
    jax.block_until_ready(m["loss"])
    times = []
    for i in range(repeats):
        t0 = time.perf_counter()
        state, m = step(state, data, i + 1)
        jax.block_until_ready(m["loss"])
        times.append(time.perf_counter() - t0)
    return float(np.median(times))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=6)
    parser.add_argument("--batch", type=int, default=16)
    args = parser.parse_args()
    rows = []
    for name, options, note in ROWS:
        seconds = step_seconds(name, options, args.batch, args.repeats)
        rows.append({"model": name, "options": options, "note": note, "seconds": seconds,
                     "tokens_per_s": args.batch * SPEC["block_size"] / seconds})
        print(rows[-1], flush=True)
    base = rows[0]["seconds"]
    table = ["# Training-step time", "",
             f"One AdamW step (batch {args.batch} x block 256, float32), n_embed 128, 4 heads, 6 steps/layers; median of "
             f"{args.repeats} steps, all rows in one process. Command: `python benchmarks/step_time.py`. The authors' "
             "PyTorch code: 0.78-0.89 s per step for the first row's model on this CPU kind (SPEC.md section 5).", "",
             "| model | options | step (s) | tokens/s | relative to row 1 |", "|---|---|---|---|---|"]
    for r in rows:
        opts = ", ".join(f"{k}={v}" for k, v in r["options"].items()) or "defaults"
        table.append(f"| {r['model']} | {opts} ({r['note']}) | {r['seconds']:.3f} | {r['tokens_per_s']:.0f} | "
                     f"{base / r['seconds']:.2f}x |")
    write_results("step_time", {"machine": machine(), "batch": args.batch, "spec": SPEC, "rows": rows},
                  "\n".join(table) + "\n")


if __name__ == "__main__":
    main()
