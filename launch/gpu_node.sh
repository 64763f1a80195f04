#!/usr/bin/env bash
# Train on every GPU of one machine (data parallel over a jax.sharding mesh of the local devices).
#
#   launch/gpu_node.sh --config=configs/owt.py --config.data.path=data/openwebtext --workdir=runs/owt
#
# As a SLURM job on one node:  sbatch --gres=gpu:8 --cpus-per-task=16 launch/gpu_node.sh --config=...
# Needs a CUDA build of JAX in the environment:  pip install -e . 'jax[cuda12]'
# train.batch_size must be divisible by the number of GPUs. Re-running the same command resumes.
set -euo pipefail
cd "$(dirname "$0")/.."
export XLA_PYTHON_CLIENT_PREALLOCATE=${XLA_PYTHON_CLIENT_PREALLOCATE:-true}
python - <<'PY'
import jax
gpus = [d for d in jax.devices() if d.platform == "gpu"]
if not gpus:
    raise SystemExit("error: JAX sees no GPU: install a CUDA build of jax (pip install 'jax[cuda12]')")
print(f"{len(gpus)} GPU(s): {gpus[0].device_kind}")
PY
exec python -m nrgpt_jax.main "$@"
