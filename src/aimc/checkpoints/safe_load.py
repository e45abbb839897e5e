"""Loading pickled files from the internet without running their code.

Official STEVE-1/VPT/MineCLIP files are pickles (``.model``, ``.weights``, ``.pt``,
``.pth``, ``.pkl``). A pickle can name any importable callable and have it called while
loading, so a file from the internet could run anything. Everything in aimc goes through
the two functions here:

* :func:`load_plain_pickle` for pickles that hold plain data (``.model`` files, STEVE-1's
  ``actions.pkl``/``embeds_attn.pkl``): only builtin containers, scalars and numpy arrays
  are rebuilt; any other global is refused.
* :func:`load_torch_file` for ``torch.save`` files: ``torch.load(weights_only=True)``,
  and, if the file also carries foreign objects beside its tensors (e.g. a training
  framework's hyper-parameters), a second pass that rebuilds tensors and replaces every
  other object with an inert placeholder — nothing from the file is ever called.
"""

from __future__ import annotations

import io
import pickle
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch

from aimc.errors import UserError


class UnsafeFileError(UserError, pickle.UnpicklingError):
    """The file asks to run code (or construct an unknown object) while loading."""


# globals a plain-data pickle may reference: builtin containers and numpy arrays.
_PLAIN_ALLOWED = {
    ("builtins", "dict"),
    ("builtins", "list"),
    ("builtins", "tuple"),
    ("builtins", "set"),
    ("builtins", "frozenset"),
    ("builtins", "bytearray"),
    ("builtins", "complex"),
    ("builtins", "slice"),
    ("collections", "OrderedDict"),
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"),
    ("numpy._core.multiarray", "scalar"),
    ("numpy.core.numeric", "_frombuffer"),
    ("numpy._core.numeric", "_frombuffer"),
}


class _PlainUnpickler(pickle.Unpickler):
    def __init__(self, f, source: str):
        super().__init__(f)
        self._source = source

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in _PLAIN_ALLOWED:
            return super().find_class(module, name)
        raise UnsafeFileError(
            f"{self._source}: refused to load: the pickle asks for '{module}.{name}', which a "
            "plain-data file never needs (a pickle can run code while loading). If this file "
            "came from the internet, do not load it with pickle elsewhere either."
        )


def load_plain_pickle(path: str | Path) -> Any:
    """Unpickle a file that should contain only plain data (dicts, lists, numbers, arrays)."""
    path = Path(path)
    data = _read(path)
    try:
        return _PlainUnpickler(io.BytesIO(data), str(path)).load()
    except UnsafeFileError:
        raise
    except Exception as e:  # truncated or not a pickle
        raise UnsafeFileError(f"{path}: not a readable pickle ({type(e).__name__}: {e})") from e


def _read(path: Path) -> bytes:
    if not path.exists():
        raise FileNotFoundError(f"{path}: file not found")
    if path.is_dir():
        raise IsADirectoryError(f"{path}: expected a file, found a directory")
    return path.read_bytes()


class InertObject:
    """Stands in for an object a checkpoint referenced but aimc does not trust or need."""

    _aimc_global = "?"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.args, self.kwargs = args, kwargs

    def __setstate__(self, state: Any) -> None:
        self.state = state

    def __repr__(self) -> str:
        return f"<inert {self._aimc_global}>"


# callables the tensor-rebuilding part of a torch pickle needs (the same family
# torch's own weights_only loader accepts).
_TORCH_ALLOWED = {
    ("torch._utils", "_rebuild_tensor"),
    ("torch._utils", "_rebuild_tensor_v2"),
    ("torch._utils", "_rebuild_parameter"),
    ("torch._utils", "_rebuild_parameter_with_state"),
    ("torch", "Size"),
    ("torch", "device"),
    ("torch", "dtype"),
    ("collections", "OrderedDict"),
} | {("torch", n) for n in ("float32", "float16", "bfloat16", "float64", "int64", "int32", "int8", "uint8", "bool")} | {
    ("torch", n)
    for n in (
        "FloatStorage", "HalfStorage", "BFloat16Storage", "DoubleStorage", "LongStorage",
        "IntStorage", "ShortStorage", "CharStorage", "ByteStorage", "BoolStorage",
    )
} | {("torch.storage", "UntypedStorage")}


# modules whose callables only an attack would reference in a checkpoint: such a file is
# refused outright instead of being loaded with the reference made inert.
_HOSTILE_MODULES = {
    "os", "posix", "nt", "subprocess", "sys", "builtins", "__builtin__", "importlib", "runpy",
    "shutil", "socket", "pty", "code", "codeop", "pickle", "_pickle", "marshal", "ctypes", "types",
    "functools", "operator", "webbrowser", "urllib", "http", "requests", "pathlib", "io", "tempfile",
    "multiprocessing", "threading", "signal", "platform", "pdb", "timeit", "torch", "numpy",
}


def _make_inert_pickle_module(neutralised: list[str]):
    class _InertUnpickler(pickle.Unpickler):
        def find_class(self, module: str, name: str) -> Any:
            if (module, name) in _TORCH_ALLOWED or (module, name) in _PLAIN_ALLOWED:
                return super().find_class(module, name)
            if module.split(".")[0] in _HOSTILE_MODULES:
                raise UnsafeFileError(
                    f"refused to load: the file asks to call '{module}.{name}' while loading, which a "
                    "checkpoint never needs (it may be malicious; do not open it with torch.load elsewhere)"
                )
            neutralised.append(f"{module}.{name}")
            return type(name, (InertObject,), {"_aimc_global": f"{module}.{name}"})

    mod = type(pickle)("aimc_inert_pickle")
    mod.__dict__.update({k: getattr(pickle, k) for k in dir(pickle) if not k.startswith("__")})
    mod.Unpickler = _InertUnpickler
    mod.load = lambda f, **kw: _InertUnpickler(f, **kw).load()
    return mod


def load_torch_file(path: str | Path, map_location: str | torch.device = "cpu") -> Any:
    """Load a ``torch.save`` file safely. Never executes code from the file."""
    path = Path(path)
    _read_check = path.exists() and path.is_file()
    if not _read_check:
        _read(path)
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as first_error:
        msg = str(first_error)
        if "global" not in msg.lower() and "unsupported operand" not in msg.lower():
            raise UnsafeFileError(f"{path}: cannot be read as a PyTorch file: {msg.splitlines()[0]}") from first_error
    except (RuntimeError, EOFError, ValueError) as e:
        raise UnsafeFileError(
            f"{path}: cannot be read as a PyTorch file (truncated or not a checkpoint?): {str(e).splitlines()[0]}"
        ) from e
    # The file holds objects besides tensors. Rebuild the tensors, keep the rest inert.
    neutralised: list[str] = []
    try:
        obj = torch.load(
            path, map_location=map_location, weights_only=False, pickle_module=_make_inert_pickle_module(neutralised)
        )
    except UnsafeFileError as e:
        raise UnsafeFileError(f"{path}: {e}") from None
    except Exception as e:
        raise UnsafeFileError(f"{path}: refused to load: {e}") from e
    if neutralised:
        warnings.warn(
            f"{path}: ignored {len(set(neutralised))} non-tensor object type(s) in the file "
            f"({', '.join(sorted(set(neutralised))[:5])}); they were not executed.",
            stacklevel=2,
        )
    return obj


def as_numpy_float32(x: Any) -> np.ndarray:
    """Plain lists / tensors / arrays -> float32 numpy array."""
    if isinstance(x, torch.Tensor):
        return x.detach().cpu().float().numpy()
    return np.asarray(x, dtype=np.float32)
