"""Autoregressive sampling by full recomputation over a sliding window of block_size tokens.

Matches the reference `generate`: the context is cropped to the last block_size tokens and
re-embedded from position 0. One compiled loop per (batch, prompt length, new tokens).
"""

from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp
import numpy as np


def check_token_ids(ids, vocab_size: int, what: str = "prompt") -> np.ndarray:
    """ids as int32 (B, P), or a one-line ValueError naming out-of-range ids."""
    ids = np.asarray(ids)
    if ids.ndim == 1:
        ids = ids[None]
    if ids.ndim != 2 or ids.shape[1] == 0:
        raise ValueError(f"{what} must be a non-empty sequence of token ids (or a batch of them)")
    if not np.issubdtype(ids.dtype, np.integer):
        raise ValueError(f"{what} token ids must be integers, got {ids.dtype}")
    bad = ids[(ids < 0) | (ids >= vocab_size)]
    if bad.size:
        raise ValueError(f"{what} holds token ids {sorted(set(bad.tolist()))[:5]} outside the vocabulary "
                         f"[0, {vocab_size}): encode it with the model's tokenizer")
    return ids.astype(np.int32)


@partial(jax.jit, static_argnames=("max_new_tokens", "greedy", "top_k", "n_steps"))
def _generate(model, prompt, key, max_new_tokens: int, temperature, greedy: bool, top_k: int, n_steps):
    b, p = prompt.shape
    tb = model.config.block_size
    total = p + max_new_tokens
    out = jnp.zeros((b, max(tb, total)), jnp.int32).at[:, :p].set(prompt)

    def body(i, carry):
        out, key = carry
        start = jnp.maximum(i - tb, 0)
        window = jax.lax.dynamic_slice(out, (0, start), (b, tb))
        logits = model(window, n_steps=n_steps)
        last = jax.lax.dynamic_index_in_dim(logits, i - 1 - start, axis=1, keepdims=False)
        key, sub = jax.random.split(key)
        if greedy:
            nxt = jnp.argmax(last, axis=-1)
        else:
            last = last / temperature
            if top_k:
                kth = jax.lax.top_k(last, top_k)[0][:, -1:]
                last = jnp.where(last < kth, -jnp.inf, last)
            nxt = jax.random.categorical(sub, last, axis=-1)
        out = jax.lax.dynamic_update_slice(out, nxt.astype(jnp.int32)[:, None], (0, i))
        return out, key

    out, _ = jax.lax.fori_loop(p, total, body, (out, key))
    return out[:, :total]


def generate(model, prompt, max_new_tokens: int, *, seed: int = 0, temperature: float = 1.0,
             top_k: int = 0, greedy: bool = False, n_steps: int | None = None) -> np.ndarray:
    """Extend `prompt` (P,) or (B, P) token ids by `max_new_tokens`; returns (B, P + new) ids.

    Sampling at `temperature` (optionally among the `top_k` likeliest), or argmax if `greedy`;
    `n_steps` runs an NRGPT model for more or fewer steps than it was trained with.
    """
    prompt = check_token_ids(prompt, model.config.vocab_size)
    if max_new_tokens < 0:
        raise ValueError(f"max_new_tokens={max_new_tokens} must be >= 0")
    if not greedy and not temperature > 0:
        raise ValueError(f"temperature={temperature} must be > 0 (or use greedy decoding)")
    if not 0 <= top_k <= model.config.vocab_size:
        raise ValueError(f"top_k={top_k} must be in [0, vocab_size={model.config.vocab_size}]")
    if n_steps is not None and (n_steps < 1 or model.config.name == "GPT" and n_steps != model.config.n_layer):
        raise ValueError(f"n_steps={n_steps}: use >= 1 steps (GPT's distinct blocks cannot change)")
    out = _generate(model, jnp.asarray(prompt), jax.random.key(seed), max_new_tokens,
                    jnp.float32(temperature), greedy, top_k, n_steps)
    return np.asarray(out)


def main(argv=None) -> int:
    """python -m nrgpt_jax.sample --checkpoint DIR [--prompt TEXT] [--tokens N] [--temperature T]
    [--top_k K] [--greedy] [--steps S] [--seed S]"""
    import argparse
    import sys

    from nrgpt_jax import checkpoint
    from nrgpt_jax.data.tokens import load_data

    parser = argparse.ArgumentParser(prog="python -m nrgpt_jax.sample",
                                     description="Sample text from a trained model.")
    parser.add_argument("--checkpoint", required=True, help="a training working directory")
    parser.add_argument("--prompt", default="\n", help="prompt text (default: a newline)")
    parser.add_argument("--tokens", type=int, default=500, help="new tokens to generate")
    parser.add_argument("--temperature", type=float, default=1.0)
    parser.add_argument("--top_k", type=int, default=0, help="sample among the k likeliest (0: all)")
    parser.add_argument("--greedy", action="store_true", help="argmax decoding")
    parser.add_argument("--steps", type=int, default=None, help="NRGPT inference steps (default: trained)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    try:
        model, _ = checkpoint.load_model(args.checkpoint)
        data_cfg = checkpoint.read_run_config(args.checkpoint).get("data")
        if data_cfg is None:
            raise ValueError(f"{args.checkpoint} records no data set, so no tokenizer: sample from a "
                             "training working directory")
        tokenizer = load_data(data_cfg["name"], data_cfg.get("path", "")).tokenizer
        ids = generate(model, tokenizer.encode(args.prompt), args.tokens, seed=args.seed,
                       temperature=args.temperature, top_k=args.top_k, greedy=args.greedy, n_steps=args.steps)
    except ValueError as err:  # config, checkpoint, data, tokenizer and argument errors
        print(f"error: {str(err).splitlines()[0]}", file=sys.stderr)
        return 2
    print(tokenizer.decode(ids[0].tolist()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
