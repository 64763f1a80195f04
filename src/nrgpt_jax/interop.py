"""Reference (PyTorch) checkpoints in and out, and the parity check against reference fixtures.

    python -m nrgpt_jax.interop check FIXTURE.npz [FIXTURE.npz ...] [--dtype float32] [--tol T]
    python -m nrgpt_jax.interop import-torch CKPT.pt --out DIR [--model NAME] [--n_layer L]

A reference `state_dict` maps names such as `blocks.attn.heads.0.H.weight` to arrays; PyTorch
`Linear.weight` is (out, in) and ours is the transposed kernel (in, out).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping

import numpy as np

from nrgpt_jax.model_config import BASELINE_MODELS, ConfigError, ModelConfig

PREFIXES = ("_orig_mod.", "module.")
REFERENCE_FIELDS = ("vocab_size", "n_embed", "n_head", "n_layer", "ff_hid_factor", "block_size",
                    "dropout", "tril_plus_one")


class InteropError(ValueError):
    """A reference checkpoint does not fit; the message says what and how to fix it."""


@dataclasses.dataclass(frozen=True)
class Entry:
    """One reference tensor <-> (a slice of) one of our parameters."""

    ref_key: str
    path: tuple  # path in our parameter tree
    index: tuple = ()  # slice of our array this tensor fills
    to_ours: Callable = np.asarray
    to_ref: Callable = np.asarray


def _transpose(a):
    return np.asarray(a).T


def _linear(ref: str, path: tuple, bias: bool = True) -> Iterator[Entry]:
    yield Entry(f"{ref}.weight", path + ("kernel",), to_ours=_transpose, to_ref=_transpose)
    if bias:
        yield Entry(f"{ref}.bias", path + ("bias",))


def _layernorm(ref: str, path: tuple) -> Iterator[Entry]:
    yield Entry(f"{ref}.weight", path + ("scale",))
    yield Entry(f"{ref}.bias", path + ("bias",))


def _transformer_block(cfg: ModelConfig, ref: str, path: tuple) -> Iterator[Entry]:
    n, d, c = cfg.n_head, cfg.n_embed // cfg.n_head, cfg.n_embed
    for h in range(n):
        for name in ("key", "query", "value"):
            yield Entry(f"{ref}.sa.heads.{h}.{name}.weight", path + ("attn", name),
                        index=(slice(None), h), to_ours=_transpose, to_ref=_transpose)
    yield Entry(f"{ref}.sa.proj.weight", path + ("attn", "out"),
                to_ours=lambda w: np.asarray(w).T.reshape(n, d, c),
                to_ref=lambda o: np.asarray(o).reshape(n * d, c).T)
    yield Entry(f"{ref}.sa.proj.bias", path + ("attn", "out_bias"))
    yield from _linear(f"{ref}.ffwd.net.0", path + ("mlp", "fc1"))
    yield from _linear(f"{ref}.ffwd.net.2", path + ("mlp", "fc2"))
    yield from _layernorm(f"{ref}.ln1", path + ("ln1",))
    yield from _layernorm(f"{ref}.ln2", path + ("ln2",))


def _energy_block(cfg: ModelConfig) -> Iterator[Entry]:
    path = ("block",)
    yield Entry("blocks.scale_ff", path + ("scale_ff",),
                to_ours=lambda a: np.asarray(a).reshape(()), to_ref=lambda a: np.asarray(a).reshape(1))
    for h in range(cfg.n_head):
        yield Entry(f"blocks.attn.heads.{h}.H.weight", path + ("attn", "H"), index=(h,),
                    to_ours=_transpose, to_ref=_transpose)
    yield from _linear("blocks.ffwd.net.0", path + ("ff", "fc1"))
    if cfg.name != "NRGPT_H_FF1":
        yield from _linear("blocks.ffwd.net.2", path + ("ff", "fc2"))
    yield Entry("blocks.ln.bias", path + ("norm", "bias"))
    yield Entry("blocks.proj.weight", path + ("eta", "kernel"), to_ours=_transpose, to_ref=_transpose)


def reference_layout(cfg: ModelConfig) -> list[Entry]:
    """Every trainable reference tensor of `cfg`'s model and where it lives in our parameters."""
    _check_reference_compatible(cfg)
    entries = [Entry("token_embedding_table.weight", ("token_embed",)),
               Entry("position_embedding_table.weight", ("position_embed",))]
    if cfg.is_nrgpt:
        entries += _energy_block(cfg)
    elif cfg.name == "GPT":
        for layer in range(cfg.n_layer):
            entries += _transformer_block(cfg, f"blocks.{layer}", ("blocks", layer))
    else:
        entries += _transformer_block(cfg, "blocks", ("block",))
    entries += _layernorm("ln_f", ("final_norm",))
    entries += _linear("lm_head", ("lm_head",))
    return entries


def reference_buffers(cfg: ModelConfig) -> dict[str, np.ndarray]:
    """The non-trainable entries of a reference state_dict (positions, masks, frozen LN weight)."""
    tb, c = cfg.block_size, cfg.n_embed
    out = {"pos_idx": np.arange(tb, dtype=np.int64)}
    if cfg.is_nrgpt:
        tril = np.tril(np.ones((tb, tb)), k=-1 if cfg.tril_plus_one else 0)
        out.update({f"blocks.attn.heads.{h}.tril": tril for h in range(cfg.n_head)})
        out["blocks.ln.weight"] = np.ones((c,))
    else:
        size = tb + 1 if cfg.tril_plus_one else tb
        tril = np.tril(np.ones((size, size)))
        prefixes = [f"blocks.{l}" for l in range(cfg.n_layer)] if cfg.name == "GPT" else ["blocks"]
        out.update({f"{p}.sa.heads.{h}.tril": tril for p in prefixes for h in range(cfg.n_head)})
    return out


def _check_reference_compatible(cfg: ModelConfig) -> None:
    changed = [f for f in ("attn_beta", "attn_grad", "norm", "proj_type", "proj_scale_init", "step_size")
               if getattr(cfg, f) != ModelConfig.__dataclass_fields__[f].default]
    if changed:
        raise InteropError(f"model options {changed} have no counterpart in the reference code: "
                           "reset them to their defaults to import or export reference weights")


# ------------------------------------------------------------------------- params in and out
def _get(tree, path):
    for p in path:
        tree = tree[p]
    return tree


def _set(tree, path, value):
    for p in path[:-1]:
        tree = tree[p]
    tree[path[-1]] = value


def params_from_reference(state_dict: Mapping[str, Any], cfg: ModelConfig, dtype=np.float32) -> dict:
    """A reference state_dict -> our parameters as a pure nested dict of numpy arrays.

    Raises InteropError naming the first missing, unexpected or mis-shaped tensor.
    """
    import jax

    from nrgpt_jax.checkpoint import abstract_params

    sd = strip_prefixes(state_dict)
    params = jax.tree.map(lambda s: np.zeros(s.shape, dtype), abstract_params(cfg))
    layout = reference_layout(cfg)
    buffers = reference_buffers(cfg)
    missing = [e.ref_key for e in layout if e.ref_key not in sd]
    if missing:
        raise InteropError(f"reference state_dict lacks {missing[0]!r} ({len(missing)} missing) for "
                           f"{cfg.name}: check the model name and n_head/n_layer")
    unexpected = sorted(set(sd) - {e.ref_key for e in layout} - set(buffers))
    if unexpected:
        raise InteropError(f"reference state_dict has unexpected key {unexpected[0]!r} "
                           f"({len(unexpected)} in all) for {cfg.name}: check the model name and sizes")
    if "blocks.ln.weight" in sd and not np.allclose(np.asarray(sd["blocks.ln.weight"]), 1.0):
        raise InteropError("blocks.ln.weight is not all ones; the reference freezes it at 1")
    for e in layout:
        target = _get(params, e.path)
        value = np.asarray(e.to_ours(np.asarray(sd[e.ref_key])), dtype)
        want = target[e.index].shape
        if value.shape != want:
            raise InteropError(f"{e.ref_key} has shape {np.shape(sd[e.ref_key])}, which does not fit "
                               f"{cfg.name} with {_size_summary(cfg)}: fix the config to match the checkpoint")
        target[e.index] = value
    return params


def to_reference(params: Mapping, cfg: ModelConfig, buffers: bool = True) -> dict[str, np.ndarray]:
    """Our parameters (or gradients: same tree) -> a reference state_dict of numpy arrays.

    With `buffers=True` the masks, positions and frozen LayerNorm weight are included, so the
    result loads into the reference model with `load_state_dict(strict=True)`.
    """
    out = {}
    for e in reference_layout(cfg):
        value = np.asarray(_get(params, e.path))[e.index]
        out[e.ref_key] = np.ascontiguousarray(e.to_ref(value))
    if buffers:
        dtype = np.asarray(_get(params, ("token_embed",))).dtype
        for k, v in reference_buffers(cfg).items():
            out[k] = v if v.dtype == np.int64 else v.astype(dtype)
    return out


def _size_summary(cfg: ModelConfig) -> str:
    return ", ".join(f"{f}={getattr(cfg, f)}" for f in REFERENCE_FIELDS[:6])


def strip_prefixes(state_dict: Mapping[str, Any]) -> dict[str, Any]:
    """Drop the `_orig_mod.` (torch.compile) and `module.` (DDP) prefixes from every key."""
    out = {}
    for key, value in state_dict.items():
        changed = True
        while changed:
            changed = False
            for p in PREFIXES:
                if key.startswith(p):
                    key, changed = key[len(p):], True
        out[key] = value
    return out


def infer_config(state_dict: Mapping[str, Any], name: str | None = None,
                 model_args: Mapping[str, Any] | None = None, **overrides) -> ModelConfig:
    """Work out the ModelConfig of a reference state_dict.

    Sizes come from the tensor shapes; `model_args` (saved in reference checkpoints) supplies
    n_layer and dropout; `name` is needed to tell GPT_Rec from GPT_Rec_parallel (identical keys).
    """
    sd = strip_prefixes(state_dict)
    vocab, c = np.shape(sd["token_embedding_table.weight"])
    block_size = np.shape(sd["position_embedding_table.weight"])[0]
    args = dict(model_args or {})
    if "blocks.attn.heads.0.H.weight" in sd:
        n_head = sum(1 for k in sd if k.startswith("blocks.attn.heads.") and k.endswith(".H.weight"))
        w0 = np.shape(sd["blocks.ffwd.net.0.weight"])
        if "blocks.ffwd.net.2.weight" not in sd:
            guess = "NRGPT_H_FF1"
        elif w0 == (c, c) and np.shape(sd["blocks.ffwd.net.2.weight"])[0] != c:
            guess = "NRGPT_H_FF2"  # with ff_hid_factor 1, FF2 and FF2W look alike: --model decides
        else:
            guess = "NRGPT_H_FF2W"
        if name in ("NRGPT_H_FF2", "NRGPT_H_FF2W"):
            guess = name
        hidden = np.shape(sd["blocks.ffwd.net.2.weight"])[0] if guess == "NRGPT_H_FF2" else w0[0]
        tril = sd.get("blocks.attn.heads.0.tril")
        strict = bool(tril is not None and np.asarray(tril)[0, 0] == 0)
    else:
        stacked = "blocks.0.sa.proj.weight" in sd
        prefix = "blocks.0" if stacked else "blocks"
        if stacked:
            guess = "GPT"
            args.setdefault("n_layer", len({k.split(".")[1] for k in sd if k.startswith("blocks.")}))
        else:
            guess = name or args.get("name")
            if guess not in BASELINE_MODELS[1:]:
                raise InteropError("a recurrent baseline checkpoint does not say whether it is GPT_Rec or "
                                   "GPT_Rec_parallel: pass the model name (--model)")
        n_head = sum(1 for k in sd if k.startswith(f"{prefix}.sa.heads.") and k.endswith(".key.weight"))
        hidden = np.shape(sd[f"{prefix}.ffwd.net.0.weight"])[0]
        tril = sd.get(f"{prefix}.sa.heads.0.tril")
        strict = bool(tril is not None and np.shape(tril)[0] == block_size + 1)
    name = name or guess
    if name != guess:
        raise InteropError(f"the checkpoint holds a {guess} model, not {name}: pass --model {guess}")
    if hidden % c:
        raise InteropError(f"hidden width {hidden} is not a multiple of n_embed={c}")
    fields = {"name": name, "vocab_size": int(vocab), "n_embed": int(c), "n_head": int(n_head),
              "block_size": int(block_size), "ff_hid_factor": int(hidden // c), "tril_plus_one": strict}
    for f in ("n_layer", "dropout"):
        if f in args:
            fields[f] = type(getattr(ModelConfig, f))(args[f])
    if "tril_plus_one" in args:
        fields["tril_plus_one"] = bool(args["tril_plus_one"])
    fields.update(overrides)
    if "n_layer" not in fields:
        raise InteropError("the checkpoint does not record the number of recurrent steps: pass --n_layer")
    try:
        return ModelConfig(**fields)
    except ConfigError as err:
        raise InteropError(str(err)) from None


# ------------------------------------------------------------------------------ reading files
def read_state_dict(source) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """Read a reference state_dict from a mapping, an `.npz` or a PyTorch `.pt` file.

    Returns (state_dict, info); info holds `model_args` and `model_path` when the file has them.
    An `.npz` may store tensors under `param/<key>` (the parity fixtures) or plain `<key>`.
    """
    if isinstance(source, Mapping):
        return {k: np.asarray(v) for k, v in strip_prefixes(source).items()}, {}
    path = Path(source)
    if not path.exists():
        raise InteropError(f"{path}: no such file; give the path of a reference checkpoint")
    if path.suffix == ".npz":
        with np.load(path) as z:
            keys = z.files
            if any(k.startswith("param/") for k in keys):
                sd = {k[len("param/"):]: z[k] for k in keys if k.startswith("param/")}
            else:
                sd = {k: z[k] for k in keys}
        return strip_prefixes(sd), {}
    obj = _load_torch_file(path)
    info = {}
    if isinstance(obj, Mapping) and "model" in obj and isinstance(obj["model"], Mapping):
        info["model_args"] = dict(obj.get("model_args") or {})
        config = obj.get("config") or {}
        if isinstance(config, Mapping) and config.get("model_path"):
            info["model_path"] = str(config["model_path"])
        obj = obj["model"]
    if not isinstance(obj, Mapping):
        raise InteropError(f"{path} holds neither a state_dict nor a checkpoint dict with 'model'")
    return {k: _to_numpy(v) for k, v in strip_prefixes(obj).items()}, info


def _to_numpy(value):
    if hasattr(value, "detach"):
        value = value.detach().cpu()
        if str(value.dtype) == "torch.bfloat16":
            value = value.float()
        return value.numpy()
    return np.asarray(value)


def _load_torch_file(path: Path):
    try:
        import torch
    except ImportError:
        from nrgpt_jax import torch_zip

        try:
            return torch_zip.load(path)
        except torch_zip.TorchZipError as err:
            raise InteropError(str(err)) from None
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises many types for a bad file
        raise InteropError(f"{path}: cannot read it as a PyTorch checkpoint ({type(err).__name__}: "
                           f"{str(err).splitlines()[0][:200]})") from None


# ------------------------------------------------------------------------------- parity check
def relative_error(ours, ref) -> float:
    """max |ours - ref| / max |ref| (0 when both are zero)."""
    ours, ref = np.asarray(ours, np.float64), np.asarray(ref, np.float64)
    if ours.shape != ref.shape:
        return float("inf")
    scale = np.max(np.abs(ref)) if ref.size else 0.0
    err = np.max(np.abs(ours - ref)) if ref.size else 0.0
    return float(err / scale) if scale > 0 else float(err)


def load_fixture(path) -> tuple[ModelConfig, dict, dict]:
    """(config, meta, arrays) of a parity fixture NAME.npz with its NAME.json beside it."""
    path = Path(path)
    meta_path = path.with_suffix(".json")
    if not path.exists() or not meta_path.exists():
        raise InteropError(f"{path}: a fixture needs both NAME.npz and NAME.json")
    meta = json.loads(meta_path.read_text())
    cfg = ModelConfig(name=meta["official_class"],
                      **{k: meta["config"][k] for k in REFERENCE_FIELDS if k in meta["config"]})
    with np.load(path) as z:
        arrays = {k: z[k] for k in z.files}
    return cfg, meta, arrays


def compute_like_fixture(cfg: ModelConfig, arrays: Mapping[str, np.ndarray], dtype) -> dict[str, np.ndarray]:
    """Run our model on a fixture's weights and inputs; return arrays named as in the fixture."""
    import jax
    import jax.numpy as jnp
    from flax import nnx

    from nrgpt_jax.models import build_model, cross_entropy

    sd = {k[len("param/"):]: v for k, v in arrays.items() if k.startswith("param/")}
    params = params_from_reference(sd, cfg, dtype=dtype)
    graphdef, state = nnx.split(nnx.eval_shape(lambda: build_model(cfg, dtype=dtype)), nnx.Param)
    nnx.replace_by_pure_dict(state, jax.tree.map(jnp.asarray, params))
    idx, targets = jnp.asarray(arrays["idx"]), jnp.asarray(arrays["targets"])
    collect = ("states", "energies") if cfg.is_nrgpt else (("states",) if cfg.name != "GPT" else ())

    def loss_and_outputs(state):
        model = nnx.merge(graphdef, state)
        logits, trace = model.run(idx, collect=collect)
        return cross_entropy(logits, targets), (logits, trace)

    grad_fn = jax.jit(jax.value_and_grad(loss_and_outputs, has_aux=True))
    (loss, (logits, trace)), grads = grad_fn(state)
    out = {"logits": np.asarray(logits), "loss": np.asarray(loss)}
    if trace.states is not None:
        out["trajectory"] = np.asarray(trace.states)
    if trace.attn_energy is not None:
        out["energy_trace"] = np.asarray(trace.energy_trace())
    for k, v in to_reference(nnx.to_pure_dict(grads), cfg, buffers=False).items():
        out[f"grad/{k}"] = v
    return out


def check_fixture(path, dtype: str = "float64") -> dict[str, float]:
    """Relative error of every compared array of one fixture (our run vs the reference)."""
    cfg, _, arrays = load_fixture(path)
    ours = compute_like_fixture(cfg, arrays, np.dtype(dtype))
    compared = ["logits", "loss", "trajectory", "energy_trace"] + sorted(k for k in arrays if k.startswith("grad/"))
    errors = {}
    for key in compared:
        if key in arrays:
            errors[key] = relative_error(ours[key], arrays[key]) if key in ours else float("inf")
    return errors


# ----------------------------------------------------------------------------- command line
def _cmd_check(args) -> int:
    if args.dtype == "float64":
        import jax

        jax.config.update("jax_enable_x64", True)
    tol = args.tol if args.tol is not None else (1e-8 if args.dtype == "float64" else 1e-4)
    failed = False
    for path in args.fixtures:
        try:
            errors = check_fixture(path, args.dtype)
        except (InteropError, ConfigError, KeyError, OSError) as err:
            print(f"{Path(path).stem}: ERROR {err}")
            failed = True
            continue
        worst = max(errors, key=errors.get)
        ok = errors[worst] <= tol
        failed |= not ok
        parts = " ".join(f"{k}={v:.2e}" for k, v in errors.items())
        print(f"{Path(path).stem}: {'OK' if ok else 'FAIL'} max={errors[worst]:.2e} ({worst}) "
              f"tol={tol:.0e} {args.dtype} | {parts}")
    return 1 if failed else 0


def _cmd_import_torch(args) -> int:
    from nrgpt_jax import checkpoint

    state_dict, info = read_state_dict(args.checkpoint)
    name = args.model or (info.get("model_path", "").rsplit(".", 1)[-1] or None)
    overrides = {"n_layer": args.n_layer} if args.n_layer else {}
    cfg = infer_config(state_dict, name=name, model_args=info.get("model_args"), **overrides)
    params = params_from_reference(state_dict, cfg)
    out = checkpoint.save_model(args.out, cfg, params)
    print(f"wrote {cfg.name} ({_size_summary(cfg)}, n_layer={cfg.n_layer}, "
          f"tril_plus_one={cfg.tril_plus_one}) to {out}")
    return 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m nrgpt_jax.interop", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    check = sub.add_parser("check", help="compare our model with reference parity fixtures")
    check.add_argument("fixtures", nargs="+", help="NAME.npz files (NAME.json beside each)")
    check.add_argument("--dtype", choices=("float64", "float32"), default="float64")
    check.add_argument("--tol", type=float, default=None, help="default 1e-8 (float64) or 1e-4 (float32)")
    imp = sub.add_parser("import-torch", help="convert a reference .pt checkpoint to an orbax checkpoint")
    imp.add_argument("checkpoint", help="reference checkpoint (.pt, or .npz of a state_dict)")
    imp.add_argument("--out", required=True, help="output directory")
    imp.add_argument("--model", default=None, help="model name when the checkpoint does not record it")
    imp.add_argument("--n_layer", type=int, default=None, help="recurrent steps when not recorded")
    args = parser.parse_args(argv)
    try:
        return _cmd_check(args) if args.command == "check" else _cmd_import_torch(args)
    except (InteropError, ConfigError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
