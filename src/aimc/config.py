"""Typed configs: dataclasses, YAML presets and dotted command-line overrides.

Every config in aimc is a (possibly nested) dataclass. A preset is a YAML file that
lists only the fields that differ from the dataclass defaults; it may name another
preset to start from with a top-level ``base: other_preset`` key. Any field can then
be overridden on the command line as ``section.field=value`` (values are parsed as YAML,
so ``optim.lr=1e-5``, ``data.stores=[a,b]`` and ``runtime.compile=true`` all work).

    cfg = load_config(TrainConfig, "finetune", ["optim.lr=2e-5", "optim.batch_size=4"])
    save_config(cfg, run_dir / "config.yaml")

Unknown keys are errors that name the key and list the valid ones, so a typo never
silently does nothing.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from importlib import resources
from pathlib import Path
from typing import Any, TypeVar

import yaml

from aimc.errors import ConfigError
from aimc.utils.io import atomic_write_text

T = TypeVar("T")

__all__ = ["ConfigError", "load_config", "save_config", "to_dict", "preset_path", "list_presets"]




def preset_path(name: str | Path) -> Path:
    """Resolve a preset name (``finetune``) or a path (``my.yaml``) to a file."""
    p = Path(name)
    if p.suffix in (".yaml", ".yml") and p.exists():
        return p
    if p.exists() and p.is_file():
        return p
    root = resources.files("aimc") / "configs"
    for cand in (f"{name}.yaml", f"{name}.yml"):
        f = root / cand
        if f.is_file():
            return Path(str(f))
    available = sorted(q.name.rsplit(".", 1)[0] for q in root.iterdir() if q.name.endswith((".yaml", ".yml")))
    raise ConfigError(
        f"config preset {str(name)!r} not found: it is neither a file nor one of the "
        f"shipped presets ({', '.join(available) or 'none'})"
    )


def list_presets() -> list[str]:
    root = resources.files("aimc") / "configs"
    return sorted(q.name.rsplit(".", 1)[0] for q in root.iterdir() if q.name.endswith((".yaml", ".yml")))


def _read_yaml(path: Path, _seen: tuple[Path, ...] = ()) -> dict:
    if path.is_dir():
        raise ConfigError(f"{path}: is a directory; expected a YAML config file (field: value lines)")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not a text file; expected a YAML config file (field: value lines)") from None
    except OSError as e:
        raise ConfigError(f"{path}: cannot be read ({e.strerror}); expected a YAML config file") from None
    if not text:
        raise ConfigError(f"{path}: the file is empty (an interrupted copy?); expected a YAML config file "
                          "(field: value lines)")
    try:
        data = yaml.safe_load(text) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML: {e}") from e
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: a config file must be a mapping of field: value")
    base = data.pop("base", None)
    if base is not None:
        bpath = preset_path(base) if not (path.parent / str(base)).is_file() else path.parent / str(base)
        if bpath.resolve() in _seen:
            raise ConfigError(f"{path}: 'base: {base}' makes a cycle")
        parent = _read_yaml(bpath, _seen + (path.resolve(),))
        data = _deep_merge(parent, data)
    return data


def _deep_merge(a: dict, b: dict) -> dict:
    out = dict(a)
    for k, v in b.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = _deep_merge(out[k], v)
        else:
            out[k] = v
    return out


def _merge_typed(tp: Any, a: dict, b: dict) -> dict:
    """Merge ``b`` over ``a`` for dataclass ``tp``: recurse only into nested dataclass fields,
    so a dict-valued field (e.g. ``action_heads``) is replaced, not merged with its default."""
    hints = typing.get_type_hints(tp) if _is_dataclass_type(tp) else {}
    out = dict(a)
    for k, v in b.items():
        ftp = hints.get(k)
        if isinstance(v, dict) and isinstance(out.get(k), dict) and _is_dataclass_type(ftp):
            out[k] = _merge_typed(ftp, out[k], v)
        else:
            out[k] = v
    return out


def _set_dotted(d: dict, dotted: str, value: Any) -> None:
    keys = dotted.split(".")
    cur = d
    for k in keys[:-1]:
        nxt = cur.get(k)
        if not isinstance(nxt, dict):
            nxt = {}
            cur[k] = nxt
        cur = nxt
    cur[keys[-1]] = value


def parse_overrides(overrides: list[str] | None) -> dict:
    """``["a.b=1", "c=[x,y]"]`` -> nested dict with YAML-parsed values."""
    out: dict = {}
    for item in overrides or []:
        if "=" not in item:
            raise ConfigError(f"override {item!r} must look like key=value (e.g. optim.lr=1e-5)")
        key, raw = item.split("=", 1)
        key = key.strip().lstrip("-")
        try:
            value = yaml.safe_load(raw) if raw != "" else ""
        except yaml.YAMLError:
            value = raw
        _set_dotted(out, key, value)
    return out


def _is_dataclass_type(tp: Any) -> bool:
    return isinstance(tp, type) and dataclasses.is_dataclass(tp)


def _coerce(value: Any, tp: Any, where: str) -> Any:
    """Convert a YAML value to the annotated type, with a helpful error."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if tp is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for a in args:
            if a is type(None):
                continue
            try:
                return _coerce(value, a, where)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(errors[0] if errors else f"{where}: bad value {value!r}")
    if _is_dataclass_type(tp):
        if isinstance(value, tp):
            return value
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping for {tp.__name__}, got {value!r}")
        return from_dict(tp, value, where)
    if origin in (list, tuple):
        if value is None:
            raise ConfigError(f"{where}: expected a list, got null")
        if not isinstance(value, (list, tuple)):
            value = [value]
        inner = args[0] if args else Any
        if origin is tuple and args and not (len(args) == 2 and args[1] is Ellipsis):
            if len(args) != len(value):
                raise ConfigError(f"{where}: expected {len(args)} items, got {len(value)}")
            return tuple(_coerce(v, a, f"{where}[{i}]") for i, (v, a) in enumerate(zip(value, args)))
        seq = [_coerce(v, inner, f"{where}[{i}]") for i, v in enumerate(value)]
        return tuple(seq) if origin is tuple else seq
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, got {value!r}")
        kt, vt = args if args else (Any, Any)
        return {_coerce(k, kt, where): _coerce(v, vt, f"{where}.{k}") for k, v in value.items()}
    if origin is typing.Literal:
        if value not in args:
            raise ConfigError(f"{where}: {value!r} is not one of {list(args)}")
        return value
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false", "yes", "no", "1", "0"):
            return value.lower() in ("true", "yes", "1")
        raise ConfigError(f"{where}: expected true/false, got {value!r}")
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, (int, float, str)):
            raise ConfigError(f"{where}: expected an integer, got {value!r}")
        try:
            f = float(value)
        except ValueError as e:
            raise ConfigError(f"{where}: expected an integer, got {value!r}") from e
        if f != int(f):
            raise ConfigError(f"{where}: expected an integer, got {value!r}")
        return int(f)
    if tp is float:
        if isinstance(value, bool):
            raise ConfigError(f"{where}: expected a number, got {value!r}")
        try:
            return float(value)
        except (TypeError, ValueError) as e:
            raise ConfigError(f"{where}: expected a number, got {value!r}") from e
    if tp is str:
        if value is None:
            raise ConfigError(f"{where}: expected a string, got null")
        return str(value)
    if tp is Path:
        return Path(value)
    return value


def from_dict(cls: type[T], data: dict, where: str = "") -> T:
    """Build dataclass ``cls`` from a (nested) dict; unknown keys are errors."""
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = [k for k in data if k not in fields]
    if unknown:
        prefix = f"{where}." if where else ""
        raise ConfigError(
            f"unknown config key '{prefix}{unknown[0]}'; valid keys here: {', '.join(sorted(fields))}"
        )
    kwargs = {}
    for name, value in data.items():
        kwargs[name] = _coerce(value, hints[name], f"{where}.{name}" if where else name)
    # nested dataclasses given partially: merge over their defaults
    for name, f in fields.items():
        tp = hints[name]
        if name in kwargs and _is_dataclass_type(tp) and isinstance(data.get(name), dict):
            base = _default_of(f)
            if base is not None:
                merged = _merge_typed(tp, to_dict(base), data[name])
                kwargs[name] = from_dict(tp, merged, f"{where}.{name}" if where else name)
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as e:
        raise ConfigError(f"{cls.__name__}{' at ' + where if where else ''}: {e}") from e


def _default_of(f: dataclasses.Field) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
        return f.default_factory()  # type: ignore[misc]
    return None


def to_dict(cfg: Any) -> dict:
    """Dataclass -> plain dict (Paths become strings, tuples lists) for YAML/JSON."""

    def conv(v: Any) -> Any:
        if dataclasses.is_dataclass(v) and not isinstance(v, type):
            return {f.name: conv(getattr(v, f.name)) for f in dataclasses.fields(v)}
        if isinstance(v, Path):
            return str(v)
        if isinstance(v, (list, tuple)):
            return [conv(x) for x in v]
        if isinstance(v, dict):
            return {k: conv(x) for k, x in v.items()}
        return v

    return conv(cfg)


def flat_settings(d: dict, keep: tuple[str, ...] = (), prefix: str = "") -> dict[str, Any]:
    """A nested settings dict as {dotted key: value}; dicts under a key named in ``keep`` (free-form
    maps such as per-task options) stay whole. What a resumed run compares with its saved config."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, dict) and k not in keep:
            out.update(flat_settings(v, keep, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def changed_settings(old: dict, new: dict, continuable: set[str] | frozenset[str] = frozenset(),
                     keep: tuple[str, ...] = ()) -> list[tuple[str, Any, Any]]:
    """(dotted key, old value, new value) of every setting that differs between two nested
    settings dicts (:func:`flat_settings` with ``keep``), sorted, leaving out the ``continuable``
    keys: what stops a resumed run from continuing with changed settings."""
    a, b = flat_settings(old, keep), flat_settings(new, keep)
    return [(k, a.get(k), b.get(k)) for k in sorted(set(a) | set(b)) if k not in continuable and a.get(k) != b.get(k)]


def load_config(cls: type[T], preset: str | Path | None = None, overrides: list[str] | None = None) -> T:
    """Defaults of ``cls`` <- preset YAML (if any) <- dotted overrides.

    A config class may refuse keys of its earlier versions with a classmethod
    ``refuse_retired_keys(raw, resolved, source)``: it is given the preset file's keys (source: the
    file) and the overrides' keys (source: "the overrides"), each with the whole resolved dict, and
    raises :class:`ConfigError` naming the new key."""
    data: dict = {}
    path = None
    if preset is not None:
        path = preset_path(preset)
        data = _read_yaml(path)
    over = parse_overrides(overrides)

    def named(e: ConfigError) -> ConfigError:  # say which file the value came from
        if path is None or str(path) in str(e):
            return e
        source = f"{path}" + (f" with the overrides {' '.join(overrides)}" if overrides else "")
        return ConfigError(f"{e} (in the config read from {source})")

    try:
        resolved = _merge_typed(cls, to_dict(cls()), _deep_merge(data, over))
    except ConfigError as e:
        raise named(e) from None
    refuse = getattr(cls, "refuse_retired_keys", None)
    if refuse is not None:  # its errors name their source themselves
        if path is not None:
            refuse(data, resolved, str(path))
        refuse(over, resolved, "the overrides (KEY=VALUE)")
    try:
        return from_dict(cls, resolved)
    except ConfigError as e:
        raise named(e) from None


def save_config(cfg: Any, path: str | Path) -> None:
    """Write the fully resolved config as YAML (atomically)."""
    atomic_write_text(Path(path), yaml.safe_dump(to_dict(cfg), sort_keys=False, allow_unicode=True))
