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


class _ForeignGlobal(Exception):
    """Raised by the fast reader on a global outside the allow-list (the careful reader takes over)."""


class _PlainUnpickler(pickle.Unpickler):
    """Fast path (C unpickler): builtins and numpy arrays only."""

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in _PLAIN_ALLOWED:
            return super().find_class(module, name)
        raise _ForeignGlobal(module, name)


class InertRecord:
    """A foreign object a plain-data pickle built with NEWOBJ + BUILD, kept as data.

    Official VPT ``.model`` files hold ``gym3.types`` objects under ``extra_args``; they
    become records like ``InertRecord('gym3.types.TensorType', {'eltype': ..., 'shape': ...})``.
    The named module is never imported and nothing from the file is called.
    """

    __slots__ = ("cls", "args", "state")

    def __init__(self, cls: str, args: tuple = (), state: Any = None) -> None:
        self.cls, self.args, self.state = cls, args, state

    def __repr__(self) -> str:
        return f"<inert {self.cls}>"


class _ClassRef:
    """A global named by the file, not imported: only NEWOBJ (+ BUILD) may use it."""

    __slots__ = ("module", "name")

    def __init__(self, module: str, name: str) -> None:
        self.module, self.name = module, name

    def __str__(self) -> str:
        return f"{self.module}.{self.name}"

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        raise _CallAttempt(self)


class _CallAttempt(Exception):
    """The pickle tried to call a foreign global (REDUCE, INST, OBJ)."""


_OP = {name: getattr(pickle, name)[0] for name in ("REDUCE", "NEWOBJ", "NEWOBJ_EX", "INST", "OBJ", "BUILD")}


class _CarefulUnpickler(pickle._Unpickler):  # type: ignore[name-defined]
    """Pure-Python reader that turns NEWOBJ of a foreign class into an :class:`InertRecord`.

    Every opcode that would call something (REDUCE, INST, OBJ, NEWOBJ_EX) is refused when it
    names a foreign global; globals of modules only an attack would name are refused outright.
    """

    dispatch = dict(pickle._Unpickler.dispatch)  # type: ignore[attr-defined]

    def __init__(self, f, source: str):
        super().__init__(f)
        self._source = source

    def _refuse(self, ref: _ClassRef, opcode: str, how: str) -> UnsafeFileError:
        return UnsafeFileError(
            f"{self._source}: refused to load: the pickle {how.format(ref=ref)} ({opcode} opcode). "
            "A data file only ever builds such objects from stored state (NEWOBJ + BUILD); "
            "this one asks to call it, so nothing was loaded. If you trust where the file came from, re-save "
            "it as plain data (e.g. with the tool that made it)."
        )

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in _PLAIN_ALLOWED:
            return super().find_class(module, name)
        if module.split(".")[0] in _HOSTILE_MODULES:
            raise UnsafeFileError(
                f"{self._source}: refused to load: the pickle names '{module}.{name}', which no data file "
                "needs (a pickle can run code while loading). Nothing was loaded or run."
            )
        return _ClassRef(module, name)

    def _load_newobj(self) -> None:
        args = self.stack.pop()
        cls = self.stack.pop()
        if isinstance(cls, _ClassRef):
            self.append(InertRecord(str(cls), tuple(args)))
        else:
            self.append(cls.__new__(cls, *args))

    def _load_build(self) -> None:
        if isinstance(self.stack[-2], InertRecord):  # stack: ..., instance, state
            state = self.stack.pop()
            self.stack[-1].state = state
            return
        pickle._Unpickler.load_build(self)  # type: ignore[attr-defined]

    def _calls(opcode: str, base):  # noqa: N805 - builds a dispatch entry
        def load(self) -> None:
            try:
                base(self)
            except _CallAttempt as e:
                raise self._refuse(e.args[0], opcode, "asks to call '{ref}'") from None

        return load

    def _load_newobj_ex(self) -> None:
        if isinstance(self.stack[-3], _ClassRef):
            raise self._refuse(self.stack[-3], "NEWOBJ_EX", "asks to construct '{ref}' with keyword arguments")
        pickle._Unpickler.load_newobj_ex(self)  # type: ignore[attr-defined]

    dispatch[_OP["NEWOBJ"]] = _load_newobj
    dispatch[_OP["NEWOBJ_EX"]] = _load_newobj_ex
    dispatch[_OP["BUILD"]] = _load_build
    for _name, _base in (("REDUCE", "load_reduce"), ("OBJ", "load_obj"), ("INST", "load_inst")):
        dispatch[_OP[_name]] = _calls(_name, getattr(pickle._Unpickler, _base))  # type: ignore[attr-defined]
    del _name, _base


def _find_class_refs(obj: Any, seen: set[int] | None = None) -> _ClassRef | None:
    """The first bare (never instantiated) foreign global left in loaded data, if any."""
    seen = set() if seen is None else seen
    if id(obj) in seen:
        return None
    seen.add(id(obj))
    if isinstance(obj, _ClassRef):
        return obj
    if isinstance(obj, InertRecord):
        return _find_class_refs(obj.args, seen) or _find_class_refs(obj.state, seen)
    if isinstance(obj, dict):
        items: Any = [*obj.keys(), *obj.values()]
    elif isinstance(obj, (list, tuple, set, frozenset)):
        items = obj
    else:
        return None
    for item in items:
        found = _find_class_refs(item, seen)
        if found is not None:
            return found
    return None


def load_plain_pickle(path: str | Path) -> Any:
    """Unpickle a file that should contain only plain data (dicts, lists, numbers, arrays).

    Foreign classes that the file only builds from stored state (NEWOBJ + BUILD, as the
    ``gym3.types`` objects in official ``.model`` files) come back as :class:`InertRecord`;
    anything the file asks to *call* is refused with :class:`UnsafeFileError`.
    """
    path = Path(path)
    data = _read(path)
    try:
        return _PlainUnpickler(io.BytesIO(data)).load()
    except _ForeignGlobal:
        pass  # a foreign global: read again with the careful reader, which decides how it is used
    except Exception as e:  # truncated or not a pickle
        raise UnsafeFileError(f"{path}: not a readable pickle ({_describe(e)}); is it the right file?") from None
    reader = _CarefulUnpickler(io.BytesIO(data), str(path))
    try:
        obj = reader.load()
    except UnsafeFileError:
        raise
    except Exception as e:
        raise UnsafeFileError(f"{path}: not a readable pickle ({_describe(e)}); is it the right file?") from None
    bare = _find_class_refs(obj)
    if bare is not None:
        raise UnsafeFileError(
            f"{path}: refused to load: the pickle refers to '{bare}' itself (not to data built from it); "
            "a data file never needs that. Nothing was loaded or run."
        )
    return obj


def _describe(e: BaseException) -> str:
    return f"{type(e).__name__}: {e}" if str(e) else type(e).__name__


def _read(path: Path) -> bytes:
    check_readable_file(path)
    return path.read_bytes()


class NotAFileError(UserError, IsADirectoryError):
    """A directory or other non-file was given where a file is expected."""


class EmptyFileError(UserError, ValueError):
    """The file is empty (an interrupted download or copy?)."""


def check_readable_file(path: str | Path, what: str = "file") -> Path:
    """Clear errors for the usual wrong paths: missing, a directory, empty."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: {what} not found")
    if path.is_dir():
        raise NotAFileError(f"{path}: is a directory; expected a {what}")
    if not path.is_file():
        raise NotAFileError(f"{path}: not a regular file; expected a {what}")
    if path.stat().st_size == 0:
        raise EmptyFileError(f"{path}: the file is empty (an interrupted download or copy?); expected a {what}")
    return path


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
    path = check_readable_file(Path(path))
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as first_error:
        msg = str(first_error)
        if "global" not in msg.lower() and "unsupported operand" not in msg.lower():
            raise UnsafeFileError(f"{path}: cannot be read as a PyTorch file: {msg.splitlines()[0]}") from first_error
    except Exception as e:  # truncated, not a checkpoint, or garbage that confuses the reader
        first = (str(e).splitlines() or [type(e).__name__])[0].split(". ")[0]
        raise UnsafeFileError(
            f"{path}: cannot be read as a PyTorch file (truncated, or not a checkpoint?): {type(e).__name__}: {first}"
        ) from None
    # The file holds objects besides tensors. Rebuild the tensors, keep the rest inert.
    neutralised: list[str] = []
    try:
        obj = torch.load(
            path, map_location=map_location, weights_only=False, pickle_module=_make_inert_pickle_module(neutralised)
        )
    except UnsafeFileError as e:
        raise UnsafeFileError(f"{path}: {e}") from None
    except Exception as e:  # not a checkpoint after all (garbage, truncated)
        raise UnsafeFileError(f"{path}: cannot be read as a PyTorch file (truncated, or not a checkpoint?): {_describe(e)}") from None
    if neutralised:
        warnings.warn(
            f"{path}: ignored {len(set(neutralised))} non-tensor object type(s) in the file "
            f"({', '.join(sorted(set(neutralised))[:5])}); they were not executed.",
            stacklevel=2,
        )
    return obj
