"""OpenWebText, the paper's language-modelling setup (config/train_owt_config.py of the reference).

Data: nanoGPT's GPT-2 BPE `train.bin`/`val.bin`, adopted once with
    python -m nrgpt_jax.data.prepare nanogpt --input data/openwebtext
then
    python -m nrgpt_jax.main --config=configs/owt.py --config.data.path=data/openwebtext

Preset (comma-separated): gpt | gpt_rec_parallel (the paper's baselines), mmlu (the authors'
MMLU checkpoint: n_embed 1536, 12 heads, 6 steps, lr 3e-5 -> 3e-6, 500k steps).
"""

from nrgpt_jax.run_config import base_config


def get_config(preset: str = ""):
    c = base_config()
    c.data.name, c.data.path = "tokens", "data/openwebtext"
    m = c.model
    m.name, m.vocab_size = "NRGPT_H_FF2W", 50304  # GPT-2 BPE padded to a multiple of 64
    m.n_embed, m.n_head, m.n_layer, m.ff_hid_factor = 768, 12, 12, 4
    m.block_size, m.dropout, m.tril_plus_one = 1024, 0.0, False
    t = c.train
    t.steps, t.batch_size, t.grad_accum = 100_000, 12, 32  # 12 x 32 x 1024 = 393,216 tokens per step
    t.lr, t.min_lr, t.warmup_steps, t.schedule = 1e-4, 5e-5, 2000, "cosine"
    t.weight_decay, t.beta1, t.beta2, t.grad_clip = 0.1, 0.9, 0.99, 1.0
    t.dtype = "bfloat16"
    t.eval_interval, t.eval_batches, t.checkpoint_interval, t.log_interval = 1000, 200, 1000, 100
    t.sample_tokens = 200
    for token in filter(None, (s.strip() for s in preset.split(","))):
        if token == "gpt":
            m.name = "GPT"
        elif token == "gpt_rec_parallel":
            m.name = "GPT_Rec_parallel"
        elif token == "mmlu":
            m.n_embed, m.n_head, m.n_layer = 1536, 12, 6
            t.lr, t.min_lr, t.steps = 3e-5, 3e-6, 500_000
        else:
            raise ValueError(f"unknown preset token {token!r}: see the docstring of configs/owt.py")
    return c
