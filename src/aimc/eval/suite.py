"""Evaluation suites: tasks described as data (YAML).

A suite is an environment config, a list of tasks and how many episodes to run::

    name: crafter-core
    env: {name: crafter, size: 64}     # passed to aimc.agent.envs.make_env
    episodes: 30                       # per task and per condition
    max_steps: 300                     # default episode length
    seed: 10000                        # world seeds seed, seed+1, ... (same for every model)
    matrix: true                       # also run unconditioned; score every task in every episode
    tasks:
      - id: place_plant
        instructions: [place a sapling, plant a tree, {text: 种一棵树苗, lang: zh}]
        success: {achievement: place_plant}
        max_steps: 300                 # this task's horizon (optional)

A phrasing's language is its ``lang``, else ``zh`` when it has Chinese characters, else ``en``.
Which phrasings are played is chosen per run (:func:`choose_phrasings`, ``aimc eval --lang``):
by default those in the languages the embedder was trained on.

Success rules (``success:``), each true from the first step it holds:

* ``{achievement: NAME}`` - the achievement counter went up (built-in world);
* ``{inventory: {ITEM: N}}`` - the item count rose by at least N since the start
  (``ITEM`` may be ``a|b`` to count several items together, e.g. ``oak_log|birch_log``);
* ``{stat: {NAME: {delta: N}}}`` / ``{drop: N}`` / ``{min: V}`` / ``{max: V}`` - a numeric measure
  rose by N, fell by N, or reached at least / at most V (``stat: {pitch: {max: -60}}`` looks at
  the sky, ``stat: {ypos: {drop: 5}}`` dug 5 blocks down);
* ``{travel: D}`` - the horizontal distance from the start position reached D blocks;
* ``{all: [rule, ...]}`` / ``{any: [rule, ...]}`` - combinations.

Measures come from the environment adapter as a flat dict (``inventory.wood``,
``achievement.collect_wood``, ``stat.pitch``, ``pos.x``/``pos.z``); see ``aimc.agent.envs``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from aimc.errors import UserError

UNCONDITIONED = "_unconditioned"


class SuiteError(UserError, ValueError):
    """A suite file is wrong; the message names the file, the task and the field."""


# ---------------------------------------------------------------------------- success rules


@dataclass(frozen=True)
class Rule:
    """One success condition (see the module docstring for the YAML forms).

    kind: "achievement" | "inventory" | "stat" | "travel" | "all" | "any".
    keys: measure names summed for achievement/inventory/stat (e.g. ("inventory.oak_log",)).
    op: "delta" (rise since start >= value), "drop" (fall since start >= value),
      "min" (value >= threshold), "max" (value <= threshold).
    value: the threshold. children: sub-rules of all/any.
    """

    kind: str
    keys: tuple[str, ...] = ()
    op: str = "delta"
    value: float = 1.0
    children: tuple[Rule, ...] = ()

    def measures(self) -> set[str]:
        """Every measure name the rule reads."""
        if self.kind in ("all", "any"):
            return set().union(*(c.measures() for c in self.children)) if self.children else set()
        if self.kind == "travel":
            return {"pos.x", "pos.z"}
        return set(self.keys)

    def holds(self, start: dict[str, float], now: dict[str, float], max_travel: float) -> bool:
        """True if the rule holds at ``now`` given the episode's ``start`` measures."""
        if self.kind == "all":
            return all(c.holds(start, now, max_travel) for c in self.children)
        if self.kind == "any":
            return any(c.holds(start, now, max_travel) for c in self.children)
        if self.kind == "travel":
            return max_travel >= self.value
        cur = sum(float(now.get(k, 0.0)) for k in self.keys)
        if self.op in ("delta", "drop"):
            rise = cur - sum(float(start.get(k, 0.0)) for k in self.keys)
            return (rise if self.op == "delta" else -rise) >= self.value
        if self.op == "min":
            return cur >= self.value
        return cur <= self.value

    def describe(self) -> str:
        if self.kind in ("all", "any"):
            return f" {'and' if self.kind == 'all' else 'or'} ".join(f"({c.describe()})" for c in self.children)
        if self.kind == "travel":
            return f"travel >= {self.value:g}"
        name = "+".join(k.split(".", 1)[1] for k in self.keys)
        if self.kind == "achievement":
            return f"achievement {name}"
        sym = {"delta": "+>=", "drop": "->=", "min": ">=", "max": "<="}[self.op]
        return f"{self.kind} {name} {sym} {self.value:g}"


def parse_rule(raw: Any, where: str) -> Rule:
    """Parse a YAML success rule; errors name ``where`` (file and task)."""
    if not isinstance(raw, dict) or len(raw) != 1:
        raise SuiteError(
            f"{where}: 'success' must be a mapping with exactly one key out of achievement, inventory, "
            f"stat, travel, all, any (got {raw!r})"
        )
    (kind, body), = raw.items()
    if kind in ("all", "any"):
        if not isinstance(body, list) or not body:
            raise SuiteError(f"{where}: '{kind}' needs a non-empty list of rules")
        return Rule(kind, children=tuple(parse_rule(b, where) for b in body))
    if kind == "achievement":
        names = body if isinstance(body, list) else [body]
        if not all(isinstance(n, str) and n for n in names):
            raise SuiteError(f"{where}: 'achievement' must name an achievement, e.g. collect_wood")
        return Rule("achievement", keys=tuple(f"achievement.{n}" for n in names), op="delta", value=1.0)
    if kind == "travel":
        value = body.get("distance") if isinstance(body, dict) else body
        if not isinstance(value, (int, float)) or isinstance(value, bool) or value <= 0:
            raise SuiteError(f"{where}: 'travel' must be a positive distance in blocks, got {body!r}")
        return Rule("travel", value=float(value))
    if kind == "inventory":
        if not isinstance(body, dict) or len(body) != 1:
            raise SuiteError(f"{where}: 'inventory' must be one ITEM: COUNT pair, e.g. {{wood: 1}} (use all: for several)")
        (item, count), = body.items()
        if not isinstance(count, (int, float)) or isinstance(count, bool) or count <= 0:
            raise SuiteError(f"{where}: inventory count for {item!r} must be a positive number, got {count!r}")
        keys = tuple(f"inventory.{i.strip()}" for i in str(item).split("|") if i.strip())
        return Rule("inventory", keys=keys, op="delta", value=float(count))
    if kind == "stat":
        if not isinstance(body, dict) or len(body) != 1:
            raise SuiteError(f"{where}: 'stat' must be one NAME: {{delta|drop|min|max: V}} pair")
        (name, spec), = body.items()
        if not isinstance(spec, dict) or len(spec) != 1 or next(iter(spec)) not in ("delta", "drop", "min", "max"):
            raise SuiteError(f"{where}: stat {name!r} needs exactly one of delta, drop, min, max (got {spec!r})")
        (op, value), = spec.items()
        if not isinstance(value, (int, float)) or isinstance(value, bool):
            raise SuiteError(f"{where}: stat {name!r} {op} must be a number, got {value!r}")
        keys = tuple(f"stat.{n.strip()}" for n in str(name).split("|") if n.strip())
        return Rule("stat", keys=keys, op=op, value=float(value))
    raise SuiteError(f"{where}: unknown success rule {kind!r}; use achievement, inventory, stat, travel, all or any")


class SuccessTracker:
    """Follows one episode and remembers the first step at which the rule held."""

    def __init__(self, rule: Rule, horizon: int) -> None:
        self.rule = rule
        self.horizon = horizon
        self.start: dict[str, float] | None = None
        self.first_step: int | None = None
        self.max_travel = 0.0

    def update(self, step: int, measures: dict[str, float]) -> None:
        """``step`` = number of actions taken so far (0 at reset)."""
        if self.start is None:
            self.start = dict(measures)
        for k, v in measures.items():  # measures an env reports only after its first step
            self.start.setdefault(k, v)
        if "pos.x" in measures and "pos.z" in measures:
            d = math.hypot(measures["pos.x"] - self.start["pos.x"], measures["pos.z"] - self.start["pos.z"])
            self.max_travel = max(self.max_travel, d)
        if self.first_step is None and step <= self.horizon and self.rule.holds(self.start, measures, self.max_travel):
            self.first_step = step


# ---------------------------------------------------------------------------- suite


@dataclass(frozen=True)
class Instruction:
    """One phrasing of a task's instruction. ``lang`` is a BCP-47-ish tag (en, zh)."""

    text: str
    lang: str = "en"


@dataclass(frozen=True)
class Task:
    """A task: instruction variants, a success rule, its horizon and env overrides.

    id: unique name (letters, digits, _ -). instructions: phrasings, at least one.
    success: the rule. max_steps: horizon for this task's success.
    env: overrides merged onto the suite's env config (not allowed in matrix suites).
    description: free text for reports. tags: labels such as harvest / combat / techtree.
    """

    id: str
    instructions: tuple[Instruction, ...]
    success: Rule
    max_steps: int
    env: dict = field(default_factory=dict)
    description: str = ""
    tags: tuple[str, ...] = ()


@dataclass(frozen=True)
class Suite:
    """A named set of tasks with shared env config, episode count and seeds.

    env: config for ``aimc.agent.envs.make_env`` (``name`` picks the adapter).
    episodes: episodes per (task, condition). max_steps: default horizon.
    seed: first world seed; episode k uses ``seed + k`` for every model (paired comparison).
    matrix: built-in-world mode; every episode is scored on every task, and each task's goal is
      also run unconditioned, giving the instruction matrix and lifts.
    unconditioned: also run each task once more without instruction (implied by matrix).
    """

    name: str
    tasks: tuple[Task, ...]
    env: dict
    episodes: int = 10
    max_steps: int = 300
    seed: int = 10_000
    matrix: bool = False
    unconditioned: bool = False
    description: str = ""
    source: str = ""

    def task(self, task_id: str) -> Task:
        for t in self.tasks:
            if t.id == task_id:
                return t
        raise SuiteError(f"suite {self.name!r} has no task {task_id!r}; tasks: {', '.join(t.id for t in self.tasks)}")

    @property
    def episode_steps(self) -> int:
        """Episode length in matrix mode: the longest task horizon."""
        return max(t.max_steps for t in self.tasks)

    def select(self, task_ids: list[str]) -> Suite:
        """A copy with only the named tasks (in the given order)."""
        return Suite(**{**self.__dict__, "tasks": tuple(self.task(t) for t in task_ids)})


_SUITE_KEYS = {"name", "description", "env", "episodes", "max_steps", "seed", "matrix", "unconditioned", "tasks"}
_TASK_KEYS = {"id", "instructions", "success", "max_steps", "env", "description", "tags"}


def _positive_int(value: Any, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise SuiteError(f"{where} must be a positive integer, got {value!r}")
    return value


def _guess_lang(text: str) -> str:
    from aimc.checkpoints.mineclip import guess_lang

    return guess_lang(text)


def parse_suite(data: Any, source: str = "<suite>") -> Suite:
    """Build a :class:`Suite` from parsed YAML, validating every field."""
    if not isinstance(data, dict):
        raise SuiteError(f"{source}: a suite must be a mapping with name, env and tasks")
    unknown = sorted(set(data) - _SUITE_KEYS)
    if unknown:
        raise SuiteError(f"{source}: unknown key {unknown[0]!r}; valid keys: {', '.join(sorted(_SUITE_KEYS))}")
    name = data.get("name") or Path(source).stem
    env = data.get("env") or {}
    if not isinstance(env, dict) or not env.get("name"):
        raise SuiteError(f"{source}: 'env' must be a mapping with at least 'name' (crafter, minerl, ...)")
    episodes = _positive_int(data.get("episodes", 10), f"{source}: episodes")
    max_steps = _positive_int(data.get("max_steps", 300), f"{source}: max_steps")
    seed = data.get("seed", 10_000)
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise SuiteError(f"{source}: seed must be a non-negative integer, got {seed!r}")
    matrix = bool(data.get("matrix", False))
    raw_tasks = data.get("tasks")
    if not isinstance(raw_tasks, list) or not raw_tasks:
        raise SuiteError(f"{source}: 'tasks' must be a non-empty list")
    tasks = []
    seen = set()
    for i, rt in enumerate(raw_tasks):
        where = f"{source}: task #{i + 1}"
        if not isinstance(rt, dict):
            raise SuiteError(f"{where}: each task must be a mapping with id, instructions, success")
        tid = rt.get("id")
        if not isinstance(tid, str) or not tid or not all(c.isalnum() or c in "_-" for c in tid):
            raise SuiteError(f"{where}: 'id' must be a name of letters, digits, _ or - (got {tid!r})")
        where = f"{source}: task {tid!r}"
        if tid in seen or tid == UNCONDITIONED:
            raise SuiteError(f"{where}: duplicate or reserved task id")
        seen.add(tid)
        unknown = sorted(set(rt) - _TASK_KEYS)
        if unknown:
            raise SuiteError(f"{where}: unknown key {unknown[0]!r}; valid keys: {', '.join(sorted(_TASK_KEYS))}")
        raw_ins = rt.get("instructions")
        if isinstance(raw_ins, str):
            raw_ins = [raw_ins]
        if not isinstance(raw_ins, list) or not raw_ins:
            raise SuiteError(f"{where}: 'instructions' must be a non-empty list of phrasings")
        ins = []
        for r in raw_ins:
            if isinstance(r, str) and r.strip():
                ins.append(Instruction(r.strip(), _guess_lang(r)))
            elif isinstance(r, dict) and isinstance(r.get("text"), str) and r["text"].strip():
                lang = str(r.get("lang") or _guess_lang(r["text"]))
                if not all(part.isalnum() for part in lang.split("-")) or not 2 <= len(lang.split("-")[0]) <= 3:
                    raise SuiteError(f"{where}: instruction {r['text']!r} has lang {lang!r}; use a language code such as en or zh")
                ins.append(Instruction(r["text"].strip(), lang))
            else:
                raise SuiteError(f"{where}: instruction {r!r} must be a string or {{text: ..., lang: ...}}")
        if "success" not in rt:
            raise SuiteError(f"{where}: missing 'success' rule")
        rule = parse_rule(rt["success"], where)
        tmax = _positive_int(rt.get("max_steps", max_steps), f"{where}: max_steps")
        tenv = rt.get("env") or {}
        if not isinstance(tenv, dict):
            raise SuiteError(f"{where}: 'env' must be a mapping of overrides")
        if matrix and tenv:
            raise SuiteError(f"{where}: matrix suites score every task in the same episodes, so tasks may not override 'env'")
        tags = rt.get("tags") or []
        tasks.append(Task(tid, tuple(ins), rule, tmax, dict(tenv), str(rt.get("description", "")),
                          tuple(str(t) for t in (tags if isinstance(tags, list) else [tags]))))
    return Suite(
        name=str(name), tasks=tuple(tasks), env=dict(env), episodes=episodes, max_steps=max_steps, seed=seed,
        matrix=matrix, unconditioned=matrix or bool(data.get("unconditioned", False)),
        description=str(data.get("description", "")), source=source,
    )


# ---------------------------------------------------------------------------- phrasings


def phrasing_langs(suite: Suite) -> list[str]:
    """Every language the suite's phrasings are in, sorted."""
    return sorted({i.lang for t in suite.tasks for i in t.instructions})


def choose_phrasings(suite: Suite, lang: str = "auto", embedder_langs: tuple[str, ...] | list[str] | None = None) -> tuple[Suite, list[str]]:
    """The suite with the phrasings to play, and messages worth printing (``note: ...``, ``warning: ...``).

    lang: ``auto`` - the phrasings in the embedder's languages (``embedder_langs``, e.g. ``("en",)``
    for the official MineCLIP); every phrasing when those are unknown or a task has none in them.
    ``all`` - every phrasing. ``en``, ``zh``, ``en,zh`` ... - only those (a task without one is an
    error). Asking for a language the embedder was not trained on gives a warning.
    """
    from aimc.checkpoints.mineclip import check_lang_code, language_warning

    have = phrasing_langs(suite)
    where = suite.source or suite.name
    lang = (lang or "auto").strip()
    notes: list[str] = []
    if lang == "all":
        wanted = None
    elif lang == "auto":
        if embedder_langs is None:
            return suite, notes
        wanted = [x for x in have if x in embedder_langs]
        if wanted == have:
            return suite, notes
        if not wanted:
            notes.append(f"note: {where}: no phrasing is in the embedder's languages ({'/'.join(embedder_langs)}); playing all "
                         f"of them ({'/'.join(have)})")
            wanted = None
    else:
        wanted = [check_lang_code(x.strip(), "--lang") for x in lang.split(",") if x.strip()]
        if not wanted:
            raise SuiteError(f"--lang {lang!r}: name languages such as en, zh or en,zh (or auto, all)")
        absent = [x for x in wanted if x not in have]
        if absent:
            raise SuiteError(f"{where} has no {'/'.join(absent)} phrasings; its phrasings are in {', '.join(have)}")
    tasks = []
    kept_all = []
    for t in suite.tasks:
        ins = tuple(i for i in t.instructions if wanted is None or i.lang in wanted)
        if not ins:
            if lang != "auto":
                raise SuiteError(
                    f"{where}: task {t.id!r} has no {'/'.join(wanted or [])} phrasing (it has "
                    f"{', '.join(sorted({i.lang for i in t.instructions}))}); add one to the suite or choose another --lang"
                )
            ins = t.instructions
            kept_all.append(t.id)
        tasks.append(Task(t.id, ins, t.success, t.max_steps, dict(t.env), t.description, t.tags))
    if kept_all:
        notes.append(f"note: {where}: task(s) {', '.join(kept_all)} have no phrasing in {'/'.join(wanted or [])}; playing all their phrasings")
    played = sorted({i.lang for t in tasks for i in t.instructions})
    if lang == "auto":
        notes.append(f"note: playing the {'/'.join(played)} phrasings of {suite.name} (the embedder knows "
                     f"{'/'.join(embedder_langs or [])}); --lang all or --lang {','.join(x for x in have if x not in played) or 'LANG'} "
                     "plays the others")
    if warning := language_warning(played, embedder_langs):
        notes.append(f"warning: {warning}")
    return Suite(**{**suite.__dict__, "tasks": tuple(tasks)}), notes


def builtin_suites() -> list[str]:
    root = resources.files("aimc") / "eval" / "suites"
    return sorted(p.name[:-5] for p in root.iterdir() if p.name.endswith(".yaml"))


def load_suite(name_or_path: str | Path) -> Suite:
    """Load a suite from a YAML file or by the name of a shipped suite (``crafter-core``)."""
    p = Path(name_or_path)
    if not p.is_file():
        f = resources.files("aimc") / "eval" / "suites" / f"{name_or_path}.yaml"
        if not f.is_file():
            raise SuiteError(
                f"suite {str(name_or_path)!r} is neither a file nor a shipped suite ({', '.join(builtin_suites())})"
            )
        p = Path(str(f))
    try:
        data = yaml.safe_load(p.read_text(encoding="utf-8"))
    except yaml.YAMLError as e:
        raise SuiteError(f"{p}: not valid YAML: {e}") from e
    return parse_suite(data, str(p))
