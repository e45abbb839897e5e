"""The search space file of ``aimc tune``: what to optimise and over which config keys.

    objective: val_loss          # or: eval (success rate or lift of a short evaluation)
    direction: minimize          # val_loss: minimize; eval: maximize
    budget_frames: 200000        # every trial trains this many frames; wall clock is only a cap
    max_seconds: 0               # optional cap per trial (0: none)
    params:
      optim.lr: {log_uniform: [1.0e-5, 1.0e-3]}
      optim.weight_decay: {uniform: [0.0, 0.1]}
      optim.batch_size: {int: [4, 16]}          # also {log_int: [a, b]} and {int: [a, b, step]}
      model.lora.rank: {choice: [0, 8, 16]}
    eval:                        # only for objective: eval
      suite: crafter-core
      episodes: 4                # per condition
      metric: success            # success (mean instructed success) or lift (instructed - unconditioned)
      cond_scale: 1.0
      mineclip: runs/quickstart/mineclip/mineclip.safetensors
      prior: runs/quickstart/prior/prior.safetensors

Every key under ``params`` is a dotted key of the training config (``aimc train``'s schema);
a key that does not exist is refused with its name, as is a bound the key cannot take.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from aimc.config import ConfigError

KINDS = ("log_uniform", "uniform", "int", "log_int", "choice")
OBJECTIVES = {"val_loss": "minimize", "eval": "maximize"}


@dataclass(frozen=True)
class Param:
    """One searched key: ``kind`` from :data:`KINDS`, ``values`` its bounds (low, high[, step]) or choices."""

    key: str
    kind: str
    values: tuple

    def suggest(self, trial: Any) -> Any:
        """The value an Optuna trial proposes for this key."""
        if self.kind == "choice":
            return trial.suggest_categorical(self.key, list(self.values))
        if self.kind in ("int", "log_int"):
            step = int(self.values[2]) if len(self.values) > 2 else 1
            return trial.suggest_int(self.key, int(self.values[0]), int(self.values[1]), step=step, log=self.kind == "log_int")
        return trial.suggest_float(self.key, float(self.values[0]), float(self.values[1]), log=self.kind == "log_uniform")

    def override(self, value: Any) -> str:
        """``key=value`` as ``aimc train`` takes it (YAML-parsed, so lists and strings survive)."""
        return f"{self.key}={yaml.safe_dump(value, default_flow_style=True).strip().removesuffix('...').strip()}"


@dataclass
class EvalObjective:
    suite: str = "crafter-core"
    episodes: int = 4
    metric: str = "success"
    cond_scale: float = 1.0
    mineclip: str = ""
    prior: str = ""
    workers: int = 0


@dataclass
class SearchSpace:
    objective: str
    direction: str
    budget_frames: int
    params: list[Param]
    max_seconds: float = 0.0
    eval: EvalObjective = field(default_factory=EvalObjective)
    source: str = "<space>"


def _fail(source: str, message: str) -> ConfigError:
    return ConfigError(f"{source}: {message}")


def parse_param(key: str, spec: Any, source: str) -> Param:
    if not isinstance(spec, dict) or len(spec) != 1:
        raise _fail(source, f"params.{key}: expected one of {{{', '.join(KINDS)}}}: [...], got {spec!r}")
    (kind, values), = spec.items()
    if kind not in KINDS:
        raise _fail(source, f"params.{key}: unknown kind {kind!r}; use one of {', '.join(KINDS)}")
    if not isinstance(values, list) or not values:
        raise _fail(source, f"params.{key}.{kind}: expected a list, got {values!r}")
    if kind != "choice":
        if len(values) not in ((2, 3) if kind in ("int", "log_int") else (2,)):
            raise _fail(source, f"params.{key}.{kind}: expected [low, high]" + (" or [low, high, step]" if "int" in kind else ""))
        try:
            low, high = float(values[0]), float(values[1])
        except (TypeError, ValueError):
            raise _fail(source, f"params.{key}.{kind}: bounds must be numbers, got {values!r}") from None
        if not low < high:
            raise _fail(source, f"params.{key}.{kind}: low {values[0]} must be below high {values[1]}")
        if kind.startswith("log") and low <= 0:
            raise _fail(source, f"params.{key}.{kind}: a log scale needs low > 0, got {values[0]}")
        if "int" in kind and any(not float(v).is_integer() for v in values):
            raise _fail(source, f"params.{key}.{kind}: integer bounds expected, got {values!r}")
    return Param(key, kind, tuple(values))


def check_against_schema(space: SearchSpace, preset: str | None, base_overrides: list[str]) -> None:
    """Every searched key exists in the training config and takes its bounds/choices."""
    from aimc.config import load_config
    from aimc.train.config import TrainConfig

    import dataclasses

    from aimc.models.vpt import PolicyConfig

    base = load_config(TrainConfig, preset, base_overrides)  # the base itself loads
    if space.objective == "val_loss" and not base.validation.enabled:
        raise _fail(space.source, "objective val_loss needs validation, but the trials' config sets "
                    "validation.enabled=false: keep validation on or choose another objective")
    policy_fields = {f.name for f in dataclasses.fields(PolicyConfig)}
    for p in space.params:
        parts = p.key.split(".")
        if parts[:2] == ["model", "policy"] and (len(parts) != 3 or parts[2] not in policy_fields):
            raise _fail(space.source, f"params.{p.key}: unknown config key '{p.key}'; model.policy keys are "
                        f"PolicyConfig fields: {', '.join(sorted(policy_fields))}")
        samples = p.values if p.kind == "choice" else p.values[:2]
        for value in samples:
            if p.kind in ("int", "log_int"):
                value = int(value)
            try:
                load_config(TrainConfig, preset, [*base_overrides, p.override(value)])
            except ConfigError as e:
                raise _fail(space.source, f"params.{p.key}: {e}") from None


def load_space(path: str | Path) -> SearchSpace:
    """Read and check a space file (the schema check against the config is :func:`check_against_schema`)."""
    path = space_path(path)
    try:
        doc = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as e:
        raise _fail(str(path), f"not valid YAML ({e})") from None
    return space_from_dict(doc, str(path))


def space_path(name: str | Path) -> Path:
    """A space file's path, or the name of one shipped with aimc (``crafter``: configs/spaces/crafter.yaml)."""
    from importlib import resources

    path = Path(name)
    if path.is_file():
        return path
    shipped = resources.files("aimc") / "configs" / "spaces" / f"{name}.yaml"
    if shipped.is_file():
        return Path(str(shipped))
    names = sorted(p.name.removesuffix(".yaml") for p in (resources.files("aimc") / "configs" / "spaces").iterdir())
    raise FileNotFoundError(f"{path}: search space file not found (shipped spaces: {', '.join(names)})")


def space_from_dict(doc: Any, source: str = "<space>") -> SearchSpace:
    if not isinstance(doc, dict):
        raise _fail(source, "expected a mapping with objective, budget_frames and params")
    known = {"objective", "direction", "budget_frames", "max_seconds", "params", "eval"}
    unknown = sorted(set(doc) - known)
    if unknown:
        raise _fail(source, f"unknown key {unknown[0]!r}; valid keys: {', '.join(sorted(known))}")
    objective = doc.get("objective", "val_loss")
    if objective not in OBJECTIVES:
        raise _fail(source, f"objective {objective!r}: use val_loss or eval")
    direction = doc.get("direction", OBJECTIVES[objective])
    if direction not in ("minimize", "maximize"):
        raise _fail(source, f"direction {direction!r}: use minimize or maximize")
    budget = doc.get("budget_frames")
    if not isinstance(budget, int) or budget <= 0:
        raise _fail(source, f"budget_frames: a positive whole number of frames is required, got {budget!r}")
    max_seconds = doc.get("max_seconds", 0.0)
    if not isinstance(max_seconds, (int, float)) or max_seconds < 0 or not math.isfinite(max_seconds):
        raise _fail(source, f"max_seconds: expected seconds >= 0, got {max_seconds!r}")
    params = doc.get("params")
    if not isinstance(params, dict) or not params:
        raise _fail(source, "params: give at least one key to search, e.g. optim.lr: {log_uniform: [1.0e-5, 1.0e-3]}")
    ev = doc.get("eval") or {}
    if not isinstance(ev, dict):
        raise _fail(source, "eval: expected a mapping")
    fields = set(EvalObjective.__dataclass_fields__)
    if set(ev) - fields:
        raise _fail(source, f"eval: unknown key {sorted(set(ev) - fields)[0]!r}; valid keys: {', '.join(sorted(fields))}")
    eval_cfg = EvalObjective(**ev)
    if eval_cfg.metric not in ("success", "lift"):
        raise _fail(source, f"eval.metric {eval_cfg.metric!r}: use success or lift")
    if objective == "eval" and eval_cfg.episodes < 1:
        raise _fail(source, "eval.episodes must be at least 1")
    return SearchSpace(
        objective=objective, direction=direction, budget_frames=budget, max_seconds=float(max_seconds),
        params=[parse_param(str(k), v, source) for k, v in params.items()], eval=eval_cfg, source=source,
    )
