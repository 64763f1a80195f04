"""Read a PyTorch `.pt` file (the zip format of torch >= 1.6) without torch installed.

Only what checkpoints need is understood: tensors, parameters, dicts, lists, numbers, strings.
Any other object in the pickle is refused, so loading cannot run arbitrary code.
"""

from __future__ import annotations

import collections
import pickle
import zipfile
from pathlib import Path

import ml_dtypes
import numpy as np

STORAGE_DTYPES = {
    "DoubleStorage": np.float64, "FloatStorage": np.float32, "HalfStorage": np.float16,
    "BFloat16Storage": ml_dtypes.bfloat16, "LongStorage": np.int64, "IntStorage": np.int32,
    "ShortStorage": np.int16, "CharStorage": np.int8, "ByteStorage": np.uint8, "BoolStorage": np.bool_,
}


class TorchZipError(ValueError):
    """The file is not a readable PyTorch zip checkpoint."""


def _rebuild_tensor(storage, offset, size, stride, *_):
    itemsize = storage.dtype.itemsize
    if not size:
        return storage[offset:offset + 1].reshape(()).copy()
    view = np.lib.stride_tricks.as_strided(storage[offset:], shape=tuple(size),
                                           strides=tuple(s * itemsize for s in stride))
    return np.array(view)


def _rebuild_parameter(data, *_):
    return data


class _StorageType:
    def __init__(self, dtype):
        self.dtype = np.dtype(dtype)


class _Unpickler(pickle.Unpickler):
    def __init__(self, file, archive: zipfile.ZipFile, root: str):
        super().__init__(file)
        self.archive, self.root = archive, root

    def find_class(self, module, name):
        if module == "torch._utils" and name in ("_rebuild_tensor_v2", "_rebuild_tensor"):
            return _rebuild_tensor
        if module == "torch._utils" and name == "_rebuild_parameter":
            return _rebuild_parameter
        if module == "torch" and name in STORAGE_DTYPES:
            return _StorageType(STORAGE_DTYPES[name])
        if module == "collections" and name == "OrderedDict":
            return collections.OrderedDict
        if module == "torch" and name == "device":
            return str
        raise TorchZipError(f"unsupported object {module}.{name} in the checkpoint; install torch to read it")

    def persistent_load(self, pid):
        kind, storage_type, key, _location, numel = pid[:5]
        if kind != "storage":
            raise TorchZipError(f"unsupported persistent id {kind!r}")
        raw = self.archive.read(f"{self.root}/data/{key}")
        return np.frombuffer(raw, dtype=storage_type.dtype, count=numel)


def load(path) -> object:
    """The object saved by `torch.save`, with every tensor as a numpy array."""
    path = Path(path)
    try:
        archive = zipfile.ZipFile(path)
    except zipfile.BadZipFile:
        raise TorchZipError(f"{path} is not a PyTorch zip checkpoint (legacy or corrupted file); "
                            "install torch to read legacy files") from None
    with archive:
        pkl = [n for n in archive.namelist() if n.endswith("/data.pkl") or n == "data.pkl"]
        if not pkl:
            raise TorchZipError(f"{path} has no data.pkl: not a PyTorch checkpoint")
        root = pkl[0].rsplit("/", 1)[0] if "/" in pkl[0] else ""
        with archive.open(pkl[0]) as f:
            return _Unpickler(f, archive, root).load()
