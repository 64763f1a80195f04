"""ListOps chains of thought (the paper's algebra task), generated on first use and cached.

    python -m nrgpt_jax.main --config=configs/listops.py
    python -m nrgpt_jax.main --config=configs/listops.py:gpt_rec_parallel,c64,short

The default follows the reference ListOps runs: NRGPT_H_FF2W with n_embed 50, one head, 5 steps,
strict causal energy mask, block 128, batch 64, 100,000 steps of AdamW (betas 0.9/0.999) with
exponential decay 5e-4 -> 2e-5 and no warmup, clipping at 1.0. data.path='' generates the
reference-like data set (50,000 training chains, 2,000 held-out items; see
nrgpt_jax.data.listops); a reference data pickle can be given instead.

Difference: the reference AdamW decays ALL parameters (torch default 0.01); ours decays only the
>= 2-D ones (matrices and embeddings), never biases or norm parameters.

Preset: comma-separated tokens, in any order:
  model   nrgpt_ff2w (default) | nrgpt_ff2 | nrgpt_ff1 | gpt | gpt_rec | gpt_rec_parallel
  size    c<int>   n_embed (e.g. c8, c50, c128)
  setup   short    20,000 steps
          tiny     a seconds-long smoke run (tests)
"""

from nrgpt_jax.run_config import base_config

MODELS = {"nrgpt_ff2w": "NRGPT_H_FF2W", "nrgpt_ff2": "NRGPT_H_FF2", "nrgpt_ff1": "NRGPT_H_FF1",
          "gpt": "GPT", "gpt_rec": "GPT_Rec", "gpt_rec_parallel": "GPT_Rec_parallel"}


def get_config(preset: str = ""):
    c = base_config()
    c.data.name, c.data.path = "listops", ""

    m = c.model
    m.name = "NRGPT_H_FF2W"
    m.n_embed, m.n_head, m.n_layer, m.ff_hid_factor = 50, 1, 5, 4
    m.block_size, m.dropout, m.tril_plus_one = 128, 0.0, True
    t = c.train
    t.steps, t.batch_size = 100000, 64
    t.lr, t.min_lr, t.schedule, t.warmup_steps = 5e-4, 2e-5, "exp", 0
    t.weight_decay, t.beta1, t.beta2, t.grad_clip = 0.01, 0.9, 0.999, 1.0
    t.eval_interval, t.eval_batches, t.checkpoint_interval, t.log_interval = 1000, 10, 5000, 100
    t.sample_tokens = 200

    for token in filter(None, (s.strip() for s in preset.split(","))):
        if token in MODELS:
            m.name = MODELS[token]
        elif token[:1] == "c" and token[1:].isdigit() and int(token[1:]) > 0:
            m.n_embed = int(token[1:])
        elif token == "short":
            t.steps = 20000
        elif token == "tiny":  # block 64 still holds the longest chain (60 tokens) for the evaluator
            m.n_embed, m.n_layer, m.block_size = 8, 2, 64
            t.steps, t.batch_size = 4, 4
            t.eval_interval, t.eval_batches, t.checkpoint_interval, t.log_interval = 2, 2, 2, 1
            t.sample_tokens = 20
        else:
            raise ValueError(f"unknown preset token {token!r}: see the docstring of configs/listops.py")
    return c
