"""Train NRGPT or a baseline: `python -m nrgpt_jax.main [--config=configs/NAME.py[:PRESET]] [--workdir=DIR]`.

Overrides: `--config.model.n_embed=256 --config.train.steps=5000 ...` (every field is in the README).
Flags are parsed here; everything else lives in `train.train_and_evaluate`. Bad input ends with a
one-line error and exit code 2; a failure during training with exit code 1.
"""

from __future__ import annotations

import sys
from pathlib import Path

from absl import flags
from ml_collections import config_flags

DEFAULT_CONFIG = "configs/shakespeare_char.py"


def _default_config_path() -> str:
    """configs/shakespeare_char.py in the current folder, else in the source checkout."""
    if Path(DEFAULT_CONFIG).exists():
        return DEFAULT_CONFIG
    return str(Path(__file__).resolve().parents[2] / DEFAULT_CONFIG)


def parse_flags(argv) -> flags.FlagValues:
    """Parse argv (argv[0] is the program) into fresh flag values: `config` and `workdir`."""
    for arg in argv[1:]:
        if arg.startswith("--config="):
            path = arg[len("--config="):].split(":", 1)[0]
            if not Path(path).is_file():
                raise FileNotFoundError(f"config file {path} not found: use e.g. --config={DEFAULT_CONFIG}")
    fv = flags.FlagValues()
    config_flags.DEFINE_config_file("config", _default_config_path(), "Run configuration file[:preset].",
                                    flag_values=fv, lock_config=True, sys_argv=list(argv))
    flags.DEFINE_string("workdir", None, "Working directory (default: a fresh folder under runs/).",
                        flag_values=fv)
    fv(argv)
    return fv


def main(argv=None) -> int:
    argv = sys.argv if argv is None else argv
    if any(a in ("-h", "--help", "-help") for a in argv[1:]):
        print(__doc__)
        return 0
    try:
        fv = parse_flags(argv)
        config = fv.config
    except (flags.Error, ValueError, KeyError, AttributeError, TypeError, OSError, SyntaxError) as err:
        print(f"error: {_one_line(err)}", file=sys.stderr)
        return 2
    import jax

    from nrgpt_jax.checkpoint import CheckpointError
    from nrgpt_jax.data.tokenizers import TokenizerError
    from nrgpt_jax.data.tokens import DataError
    from nrgpt_jax.model_config import ConfigError
    from nrgpt_jax.train import TrainError, train_and_evaluate

    if jax.process_index() == 0:
        print(f"jax {jax.__version__}, {jax.device_count()} {jax.devices()[0].platform} device(s)")
    try:
        train_and_evaluate(config, fv.workdir)
    except (ConfigError, DataError, CheckpointError, TokenizerError) as err:
        print(f"error: {_one_line(err)}", file=sys.stderr)
        return 2
    except TrainError as err:
        print(f"error: {_one_line(err)}", file=sys.stderr)
        return 1
    return 0


def _one_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return text[0] if text else type(err).__name__


if __name__ == "__main__":
    sys.exit(main())
