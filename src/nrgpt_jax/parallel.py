"""Device mesh and data sharding: batches split over the 'data' axis, parameters replicated."""

from __future__ import annotations

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P


def build_mesh(devices=None) -> Mesh:
    """A 1-D mesh ('data',) over all (or the given) devices."""
    devices = jax.devices() if devices is None else devices
    return Mesh(np.asarray(devices), ("data",))


def replicate(tree, mesh: Mesh):
    """Place every array of `tree` on all devices of the mesh."""
    return jax.device_put(tree, NamedSharding(mesh, P()))


def shard_batch(batch: np.ndarray, mesh: Mesh, axis: int = 0):
    """Split a host batch over the mesh's 'data' axis along `axis` (its size must divide evenly)."""
    spec = [None] * batch.ndim
    spec[axis] = "data"
    return jax.device_put(batch, NamedSharding(mesh, P(*spec)))
