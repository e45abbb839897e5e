"""Typed plan of ``aimc continual``: stages of fine-tuning in turn, each evaluated on every stage's tasks.

    plan = load_plan("src/aimc/configs/plans/crafter_three_skills.yaml", ["replay=0.5"])

A plan names the weights it starts from (``init``), the original data (``base_stores``), how every stage
trains (``preset`` + ``overrides``, ``frames``), how the runs are evaluated (``evaluate``) and the
``stages``. Each stage has a ``name``, its data (``stores`` with optional mixture ``weights``, or
``record`` on the built-in world: fresh demonstrator episodes of one skill), ``tasks`` (suite task
ids this stage teaches; after every stage all stages' tasks are evaluated), and may set its own
``replay``, ``l2sp``, ``frames`` and ``overrides`` (otherwise the plan's).

World seeds: recordings are made on training worlds (below 1,000,000); evaluation worlds are the
suite's own (``crafter-core``: 1,000,000 +); 2,000,000 + and 3,000,000 + are reserved test worlds
and are refused.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

from aimc.config import load_config
from aimc.errors import ConfigError
from aimc.online.config import OnlineAgentConfig

TRAIN_WORLDS_END = 1_000_000
RESERVED_WORLDS_START = 2_000_000  # 2,000,000+ and 3,000,000+: test worlds, never evaluated on here
RECORD_SEED_START = 600_000  # stage j records on worlds 600,000 + 10,000 x (j - 1) + i by default
# TrainConfig keys that aimc continual sets itself for every stage (and what sets each)
STAGE_KEYS = {
    "model.init": "init (later stages start from the previous stage's weights)",
    "model.goal_dim": "the init weights (their goal size)",
    "model.policy": "the init weights (their architecture)",
    "data.stores": "the stage's stores / record, base and replay",
    "data.weights": "the stage's weights and replay",
    "schedule.n_frames": "frames (of the plan or the stage)",
    "optim.l2sp": "l2sp (of the plan or the stage)",
    "optim.l2sp_anchor": "init (L2-SP always pulls toward the weights the plan started from)",
    "runtime.seed": "seed (stage j trains with seed + j)",
}


def _check(cond: bool, msg: str) -> None:
    if not cond:
        raise ConfigError(msg)


def _check_overrides(overrides: list[str], where: str) -> None:
    for o in overrides:
        _check(isinstance(o, str) and re.match(r"^[A-Za-z_][\w.]*=", o.strip()) is not None,
               f"{where}: {o!r} is not KEY=VALUE (e.g. optim.lr=1e-4); on the command line quote an override whose "
               "value has brackets or commas: 'overrides=[\"checkpoint.export=[.safetensors,.weights]\"]'")
        key = o.split("=", 1)[0].strip()
        for k, knob in STAGE_KEYS.items():
            _check(not (key == k or key.startswith(k + ".")),
                   f"{where}: {key} is set by aimc continual for every stage; set it with {knob}")


@dataclass
class RecordConfig:
    """Fresh demonstrator episodes of one skill on the built-in world (as ``aimc quickstart
    --finetune`` records them): the scripted demonstrator pinned to ``task``, embedded with the
    plan's MineCLIP, 20 % of the episodes set aside for validation."""

    task: str = ""
    """The skill (a demonstrator goal = a crafter-core task id, e.g. collect_stone)."""
    episodes: int = 16
    """Episodes to record."""
    max_steps: int = 300
    """Steps per episode."""
    seed: int = 0
    """First training world; 0 = 600,000 + 10,000 x (stage number - 1). Below 1,000,000."""
    workers: int = 2
    """Recording processes."""

    def __post_init__(self) -> None:
        _check(self.episodes >= 1, f"record.episodes must be >= 1, got {self.episodes}")
        _check(self.max_steps >= 16, f"record.max_steps must be >= 16, got {self.max_steps}")
        _check(self.workers >= 1, f"record.workers must be >= 1, got {self.workers}")
        _check(0 <= self.seed and self.seed + self.episodes <= TRAIN_WORLDS_END,
               f"record.seed: recordings are made on training worlds below {TRAIN_WORLDS_END:,}, got seeds "
               f"{self.seed:,}-{self.seed + self.episodes - 1:,}")


@dataclass
class StageConfig:
    """One stage of a plan: what it trains on, how, and which tasks it teaches."""

    name: str = ""
    """Short name (a folder name: letters, digits, - and _)."""
    stores: list[str] = field(default_factory=list)
    """Episode stores of this stage's data (embedded, with a val split)."""
    weights: list[float] = field(default_factory=list)
    """Mixture weights of ``stores`` by frames (empty = by their sizes)."""
    record: RecordConfig | None = None
    """Built-in world only: record this stage's data instead of ``stores``."""
    tasks: list[str] = field(default_factory=list)
    """Suite task ids this stage teaches (evaluated after every stage)."""
    replay: float | None = None
    """Share of every batch drawn from earlier data (null = the plan's ``replay``)."""
    l2sp: float | None = None
    """L2-SP strength alpha (null = the plan's ``l2sp``)."""
    frames: int = 0
    """Frames this stage trains on (0 = the plan's ``frames``)."""
    overrides: list[str] = field(default_factory=list)
    """TrainConfig overrides of this stage, after the plan's."""

    def __post_init__(self) -> None:
        _check(re.fullmatch(r"[A-Za-z0-9][\w-]*", self.name or "") is not None,
               f"stages[].name must be a short name of letters, digits, - and _, got {self.name!r}")
        _check(bool(self.stores) != (self.record is not None),
               f"stage {self.name}: give its data as stores: [...] or as record: {{task: ..., episodes: N}}, one of the two")
        _check(not self.weights or len(self.weights) == len(self.stores),
               f"stage {self.name}: weights has {len(self.weights)} entries but stores has {len(self.stores)}")
        _check(all(w >= 0 for w in self.weights) and (not self.weights or sum(self.weights) > 0),
               f"stage {self.name}: weights must be >= 0 and not all 0, got {self.weights}")
        _check(bool(self.tasks), f"stage {self.name}: tasks is empty; name the suite tasks this stage teaches")
        _check(self.replay is None or 0.0 <= self.replay < 1.0, f"stage {self.name}: replay must be in [0, 1), got {self.replay}")
        _check(self.l2sp is None or self.l2sp >= 0, f"stage {self.name}: l2sp must be >= 0, got {self.l2sp}")
        _check(self.frames >= 0, f"stage {self.name}: frames must be >= 0 (0 = the plan's), got {self.frames}")
        _check_overrides(self.overrides, f"stage {self.name}: overrides")


@dataclass
class ContinualEvalConfig:
    """The evaluation after every stage (and of ``init``, stage 0)."""

    suite: str = "crafter-core"
    """Suite of the tasks (instructions, success rules, env, evaluation worlds)."""
    episodes: int = 8
    """Episodes per task and condition (instructed, unconditioned)."""
    seed: int = 0
    """First evaluation world (0 = the suite's own, 1,000,000 for crafter-core). Never 2,000,000 or above."""
    max_steps: int = 0
    """Horizon cap (0 = each task's in the suite)."""
    num_envs: int = 8
    """Episodes played at once."""
    workers: int = 2
    """Env processes (0 = in this process)."""

    def __post_init__(self) -> None:
        _check(self.episodes >= 1, f"evaluate.episodes must be >= 1, got {self.episodes}")
        _check(self.seed >= 0, f"evaluate.seed must be >= 0, got {self.seed}")
        _check(self.max_steps >= 0, f"evaluate.max_steps must be >= 0, got {self.max_steps}")
        _check(self.num_envs >= 1 and self.workers >= 0,
               f"evaluate.num_envs must be >= 1 and evaluate.workers >= 0, got {self.num_envs}, {self.workers}")


@dataclass
class ContinualConfig:
    """A whole ``aimc continual`` plan."""

    init: str = ""
    """Weights the plan starts from (aimc .safetensors + .yaml); MineCLIP and prior found beside them."""
    base_stores: list[str] = field(default_factory=list)
    """The original data (e.g. the quickstart's store): replayed like an earlier stage. (Not
    ``base``: that key of a YAML config names a preset to start from.)"""
    stages: list[StageConfig] = field(default_factory=list)
    """The stages, trained in turn."""
    preset: str = "crafter_finetune"
    """TrainConfig preset of every stage."""
    overrides: list[str] = field(default_factory=list)
    """TrainConfig overrides of every stage (KEY=VALUE)."""
    frames: int = 51_200
    """Frames each stage trains on (a stage's ``frames`` wins)."""
    warmup_fraction: float = 0.05
    """Linear learning-rate warm-up over this fraction of a stage's frames."""
    replay: float = 0.0
    """Share of every batch drawn from earlier data (``base_stores`` and the earlier stages', equal parts),
    exact per batch; 0 = each stage trains on its own data only."""
    l2sp: float = 0.0
    """L2-SP alpha: pull toward ``init``'s weights (0 = off)."""
    seed: int = 0
    """Seed of training (stage j: seed + j) and of the agent's action sampling."""
    threads: int = 0
    """torch threads of training (0 = torch's default); acting on a CPU uses one."""
    name: str = ""
    """Short name of the run (the README's title)."""
    agent: OnlineAgentConfig = field(default_factory=OnlineAgentConfig)
    evaluate: ContinualEvalConfig = field(default_factory=ContinualEvalConfig)

    def __post_init__(self) -> None:
        names = [s.name for s in self.stages]
        dup = sorted({n for n in names if names.count(n) > 1})
        _check(not dup, f"stages: the name {dup[0] if dup else ''!r} is used twice; give every stage its own name")
        _check(self.frames > 0, f"frames must be > 0, got {self.frames}")
        _check(0.0 <= self.warmup_fraction < 1.0, f"warmup_fraction must be in [0, 1), got {self.warmup_fraction}")
        _check(0.0 <= self.replay < 1.0, f"replay must be in [0, 1) (a share of every batch), got {self.replay}")
        _check(self.l2sp >= 0, f"l2sp must be >= 0 (0 = off), got {self.l2sp}")
        _check(self.seed >= 0 and self.threads >= 0, f"seed and threads must be >= 0, got {self.seed}, {self.threads}")
        _check_overrides(self.overrides, "overrides")

    def stage_replay(self, j: int) -> float:
        """Replay share of stage ``j`` (1-based)."""
        s = self.stages[j - 1]
        return self.replay if s.replay is None else s.replay

    def stage_l2sp(self, j: int) -> float:
        s = self.stages[j - 1]
        return self.l2sp if s.l2sp is None else s.l2sp

    def stage_frames(self, j: int) -> int:
        return self.stages[j - 1].frames or self.frames

    def record_seed(self, j: int) -> int:
        rec = self.stages[j - 1].record
        return (rec.seed if rec and rec.seed else RECORD_SEED_START + 10_000 * (j - 1))

    def task_ids(self) -> list[str]:
        """Every stage's tasks, in plan order, each once (the rows of the forgetting matrix)."""
        return list(dict.fromkeys(t for s in self.stages for t in s.tasks))


def load_plan(path: str | Path, overrides: list[str] | None = None) -> ContinualConfig:
    """Read a plan file (name of a shipped plan or a path) with KEY=VALUE overrides; relative
    paths inside the file (init, base, stores) are taken from the file's folder. Errors name the
    file and the field."""
    from importlib import resources

    p = Path(path)
    if not p.is_file():
        shipped = Path(str(resources.files("aimc") / "configs" / "plans" / f"{path}.yaml"))
        if shipped.is_file() and p.suffix == "":
            p = shipped
        else:
            names = sorted(q.name[:-5] for q in (resources.files("aimc") / "configs" / "plans").iterdir()
                           if q.name.endswith(".yaml"))
            raise ConfigError(f"plan {path}: no such file (shipped plans: {', '.join(names)})")
    plan = load_config(ContinualConfig, p, overrides)
    if not plan.stages:
        raise ConfigError(f"{p}: stages is empty: a plan needs at least one stage (name, stores or record, tasks)")
    if plan.evaluate.seed >= RESERVED_WORLDS_START:
        raise ConfigError(f"{p}: evaluate.seed={plan.evaluate.seed:,}: worlds from 2,000,000 are reserved test worlds; "
                          "evaluate on the suite's own worlds (evaluate.seed=0) or below 2,000,000")
    root = p.resolve().parent

    def rel(x: str) -> str:
        return x if not x or Path(x).is_absolute() else str((root / x).resolve()) if (root / x).exists() else x

    plan.init = rel(plan.init)
    plan.base_stores = [rel(b) for b in plan.base_stores]
    for s in plan.stages:
        s.stores = [rel(x) for x in s.stores]
    return plan
