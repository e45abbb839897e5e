"""Environments as the agent and the evaluator see them.

Every adapter turns its game into the same small interface, so that ``aimc run`` and
``aimc eval`` do not care which game they play:

    env = make_env({"name": "crafter", "size": 64})
    frame, measures = env.reset(seed=3)            # frame: uint8 (H, W, 3) RGB
    frame, measures, done = env.step({"action": 5})  # one policy action (ints per head)

``measures`` is a flat dict of numbers that success rules read (``aimc.eval.suite``):
``inventory.<item>``, ``achievement.<name>`` (counters), ``stat.<name>`` and the horizontal
position ``pos.x`` / ``pos.z`` in blocks. ``known_measures`` (or None) lists the names an
adapter can produce, so that a typo in a suite fails before any episode runs.

``name`` picks an adapter from :data:`ENVS`; ``name: package.module:callable`` builds any
other environment with the same interface (the callable receives the remaining config keys).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

import numpy as np

from aimc.errors import UserError
from aimc.utils.plugins import find_factory


class EvalEnv(Protocol):
    """What the agent and evaluator need from an environment."""

    action_heads: dict[str, int]  # policy head name -> number of discrete choices
    known_measures: frozenset[str] | None

    def reset(self, seed: int) -> tuple[np.ndarray, dict[str, float]]: ...

    def step(self, action: dict[str, int]) -> tuple[np.ndarray, dict[str, float], bool]: ...

    def close(self) -> None: ...


# ---------------------------------------------------------------------------- Crafter

CRAFTER_ITEMS = (
    "health", "food", "drink", "energy", "sapling", "wood", "stone", "coal", "iron", "diamond",
    "wood_pickaxe", "stone_pickaxe", "iron_pickaxe", "wood_sword", "stone_sword", "iron_sword",
)
CRAFTER_ACHIEVEMENTS = (
    "collect_coal", "collect_diamond", "collect_drink", "collect_iron", "collect_sapling", "collect_stone",
    "collect_wood", "defeat_skeleton", "defeat_zombie", "eat_cow", "eat_plant", "make_iron_pickaxe",
    "make_iron_sword", "make_stone_pickaxe", "make_stone_sword", "make_wood_pickaxe", "make_wood_sword",
    "place_furnace", "place_plant", "place_stone", "place_table", "wake_up",
)


def crafter_measures(info: dict) -> dict[str, float]:
    """Crafter ``info`` (inventory, achievements, player_pos) -> flat measures."""
    m: dict[str, float] = {}
    for k, v in (info.get("inventory") or {}).items():
        m[f"inventory.{k}"] = float(v)
        if k in ("health", "food", "drink", "energy"):
            m[f"stat.{k}"] = float(v)
    for k, v in (info.get("achievements") or {}).items():
        m[f"achievement.{k}"] = float(v)
    pos = info.get("player_pos")
    if pos is not None:
        m["pos.x"], m["pos.z"] = float(pos[0]), float(pos[1])
    return m


class CrafterEvalEnv:
    """The built-in world (Crafter) behind the common interface.

    Uses the project's ``aimc.envs.crafter.CrafterEnv`` (Gymnasium API), so frames are
    rendered exactly as in the recorded demonstrations.
    size: frame side in pixels. max_steps: Crafter's own episode cap (the evaluator stops
    earlier). ``area`` and ``view`` go to ``CrafterEnvConfig`` unchanged.
    """

    known_measures = frozenset(
        [f"inventory.{k}" for k in CRAFTER_ITEMS]
        + [f"stat.{k}" for k in ("health", "food", "drink", "energy")]
        + [f"achievement.{k}" for k in CRAFTER_ACHIEVEMENTS]
        + ["pos.x", "pos.z"]
    )

    action_heads = {"action": 17}  # Crafter's 17 discrete actions

    def __init__(self, size: int = 64, max_steps: int = 10_000, **kwargs: Any) -> None:
        from aimc.envs.crafter import CrafterEnv, CrafterEnvConfig

        self.env = CrafterEnv(CrafterEnvConfig(size=size, max_steps=max_steps, **kwargs))
        assert self.env.action_space.n == CrafterEvalEnv.action_heads["action"]

    def reset(self, seed: int) -> tuple[np.ndarray, dict[str, float]]:
        obs, info = self.env.reset(seed=int(seed))
        return np.asarray(obs, dtype=np.uint8), crafter_measures(info)

    def step(self, action: dict[str, int]) -> tuple[np.ndarray, dict[str, float], bool]:
        obs, _reward, terminated, truncated, info = self.env.step(int(action["action"]))
        return np.asarray(obs, dtype=np.uint8), crafter_measures(info), bool(terminated or truncated)

    def close(self) -> None:
        close = getattr(self.env, "close", None)
        if close is not None:
            close()


class CrafterExpertEnv(CrafterEvalEnv):
    """The built-in world played by the scripted demonstrator: the ceiling for evaluations.

    The policy's only head ``goal`` picks what the demonstrator pursues: 0 = no instruction
    (it plays as in the recorded demonstrations, switching goals by itself), k = its goal
    ``GOALS[k - 1]``. Used by ``aimc eval --baseline expert``. ``noise`` is its random-action
    rate (0 here: the best it can do).
    """

    action_heads = {"goal": 11}  # no instruction + the demonstrator's 10 goals

    def __init__(self, size: int = 64, max_steps: int = 10_000, noise: float = 0.0, **kwargs: Any) -> None:
        super().__init__(size=size, max_steps=max_steps, **kwargs)
        from aimc.envs.demonstrator import GOALS, DemonstratorConfig

        self.goals = GOALS
        assert len(GOALS) + 1 == self.action_heads["goal"]
        self.demo_config = DemonstratorConfig(noise=noise)
        self.demo = None
        self.info: dict = {}

    def reset(self, seed: int) -> tuple[np.ndarray, dict[str, float]]:
        from aimc.envs.demonstrator import Demonstrator

        obs, self.info = self.env.reset(seed=int(seed))
        self.demo = Demonstrator(self.env, self.demo_config, seed=int(seed))
        self.demo.reset(None)
        return np.asarray(obs, dtype=np.uint8), crafter_measures(self.info)

    def step(self, action: dict[str, int]) -> tuple[np.ndarray, dict[str, float], bool]:
        k = int(action["goal"])
        goal = self.goals[k - 1] if k > 0 else None
        if goal != self.demo.fixed_goal:
            self.demo.reset(goal)
        obs, _r, terminated, truncated, self.info = self.env.step(self.demo.act(self.info))
        self.demo.observe(self.info)
        return np.asarray(obs, dtype=np.uint8), crafter_measures(self.info), bool(terminated or truncated)


LABEL_MEASURE = "label.action"  # the labelling demonstrator's action for the frame just returned
EXPERT_MEASURE = "label.expert_acted"  # 1: the step that led to this frame executed the label, not the agent's action
TIES_MEASURE = "label.ties"  # bit k set: action k is as good as label.action in this frame (label.action's bit included)
CONTROL_MEASURE = "label.in_control"  # 1: the demonstrator has taken over; the action of this frame executes the label


def check_takeover(takeover: dict | None, where: str) -> tuple[int, int]:
    """``{after: K, steps: M}`` -> (K, M), checked; (0, 0) = no takeover. A clear error otherwise."""
    takeover = dict(takeover or {})
    if not takeover:
        return 0, 0
    after, steps = takeover.get("after"), takeover.get("steps", 0)
    ok = set(takeover) <= {"after", "steps"} and all(type(v) is int for v in (after, steps))
    if not ok or after < 1 or steps < 0:
        raise UserError(f"{where} must be {{after: K, steps: M}} with K >= 1 wrong actions in a row and M >= 0 steps "
                        f"(0 = to the episode's end), got {takeover}")
    return after, steps


class CrafterLabelledEnv(CrafterEvalEnv):
    """The built-in world played by the agent and watched by the scripted demonstrator pinned to
    ``goal``: the labeller of ``aimc online`` (DAgger), living in this env's worker process.

    The agent's action is what the world executes. The demonstrator (seeded with the world
    seed, pinned with ``Demonstrator.reset(goal)``) is asked at every state the agent reaches,
    the reset's included, which action it would take there; that answer is the measure
    ``label.action`` of the frame returned. Its planning state is one object kept for the whole
    episode and advanced exactly as when it plays itself: after each of the agent's steps it
    ``observe``s the step's info (goal age), then ``act``s once on the new state (its random
    stream, exploration heading and drink/eat hysteresis move on). So its labels follow the
    agent's path, not the path it would have taken itself. The measure ``label.ties`` holds, as
    bits, the actions as good as that answer (``Demonstrator.equally_good``).

    goal: a demonstrator goal (``aimc.envs.demonstrator.GOALS``). demonstrator:
    ``DemonstratorConfig`` fields (``noise`` defaults to 0: a label is the intended action).
    expert_share: DAgger's mixing (Ross et al.'s beta): at each step, with this chance, the world
    executes the demonstrator's action for the current frame instead of the agent's (drawn from
    a stream seeded by the world seed; the measure ``label.expert_acted`` of the next frame says
    which). 0 = the agent alone decides where the episode goes.
    takeover: ``{after: K, steps: M}``, the demonstrator stepping in where the agent goes wrong
    (gated DAgger, as a person watching would): after K of the agent's actions in a row that
    are not among the demonstrator's equally good ones, the demonstrator drives for the next M
    steps (0 = to the end of the episode), then hands back. The measure ``label.in_control`` of
    a frame says whether the demonstrator drives from it. None = it never takes over.
    """

    known_measures = CrafterEvalEnv.known_measures | {LABEL_MEASURE, EXPERT_MEASURE, TIES_MEASURE, CONTROL_MEASURE}

    def __init__(self, goal: str, demonstrator: dict | None = None, size: int = 64, max_steps: int = 10_000,
                 expert_share: float = 0.0, takeover: dict | None = None, **kwargs: Any) -> None:
        from aimc.envs.demonstrator import GOALS, DemonstratorConfig

        if goal not in GOALS:
            raise UserError(f"crafter-labelled: goal {goal!r} is not one the demonstrator pursues; use one of {', '.join(GOALS)}")
        opts = {"noise": 0.0, **(demonstrator or {})}
        bad = sorted(set(opts) & {"goals", "goal_weights"})
        if bad:
            raise UserError(f"crafter-labelled: demonstrator.{bad[0]} is set by the pinned goal, leave it out")
        if not 0.0 <= float(expert_share) <= 1.0:
            raise UserError(f"crafter-labelled: expert_share must be in [0, 1], got {expert_share}")
        self.takeover_after, self.takeover_steps = check_takeover(takeover, "crafter-labelled: takeover")
        super().__init__(size=size, max_steps=max_steps, **kwargs)
        self._wrong = 0  # the agent's wrong actions in a row
        self._control = 0  # steps the demonstrator still drives (-1: to the end)
        self.goal = goal
        self.demo_config = DemonstratorConfig(**opts)
        self.demo = None
        self.expert_share = float(expert_share)
        self._mixing = np.random.default_rng(0)
        self._label_now = 0

    def _label(self, measures: dict[str, float], info: dict) -> dict[str, float]:
        self._label_now = int(self.demo.act(info))
        self._ties_now = frozenset(self.demo.equally_good) | {self._label_now}
        measures[LABEL_MEASURE] = float(self._label_now)
        measures[TIES_MEASURE] = float(sum(1 << a for a in self._ties_now))  # 17 actions: exact in a float
        measures[CONTROL_MEASURE] = float(self._control != 0)
        return measures

    def reset(self, seed: int) -> tuple[np.ndarray, dict[str, float]]:
        from aimc.envs.demonstrator import Demonstrator

        obs, info = self.env.reset(seed=int(seed))
        self.demo = Demonstrator(self.env, self.demo_config, seed=int(seed))
        self.demo.reset(self.goal)
        self._mixing = np.random.default_rng([int(seed), 0x6DA6])  # the mixing draws: the world's own stream
        self._wrong, self._control = 0, 0
        measures = self._label(crafter_measures(info), info)
        measures[EXPERT_MEASURE] = 0.0
        return np.asarray(obs, dtype=np.uint8), measures

    def step(self, action: dict[str, int]) -> tuple[np.ndarray, dict[str, float], bool]:
        agent = int(action["action"])
        expert = self.expert_share > 0.0 and self._mixing.random() < self.expert_share
        if self._control != 0:  # the demonstrator drives this step
            expert = True
            if self._control > 0:  # -1 drives to the end
                self._control -= 1
        elif self.takeover_after:
            self._wrong = 0 if agent in self._ties_now else self._wrong + 1
            if self._wrong >= self.takeover_after:  # it steps in from the next frame on
                self._wrong = 0
                self._control = self.takeover_steps if self.takeover_steps else -1
        obs, _reward, terminated, truncated, info = self.env.step(self._label_now if expert else agent)
        self.demo.observe(info)
        measures = self._label(crafter_measures(info), info)
        measures[EXPERT_MEASURE] = float(expert)
        return np.asarray(obs, dtype=np.uint8), measures, bool(terminated or truncated)


# ---------------------------------------------------------------------------- MineRL


class EpisodeLost(RuntimeError):
    """The env crashed and restarted itself: the episode is lost but the env is usable."""


def minerl_measures(obs: dict, info: dict | None = None) -> dict[str, float]:
    """MineRL observation + info -> flat measures (inventory, location and life stats)."""
    info = info or {}
    m: dict[str, float] = {}
    inv = obs.get("inventory") or info.get("inventory") or {}
    for k, v in inv.items():
        m[f"inventory.{k}"] = float(np.asarray(v).sum())
    loc = obs.get("location_stats") or info.get("location_stats") or {}
    for k, v in loc.items():
        m[f"stat.{k}"] = float(np.asarray(v).reshape(-1)[0])
    for k, v in (obs.get("life_stats") or {}).items():
        m[f"stat.{k}"] = float(np.asarray(v).reshape(-1)[0])
    if "xpos" in loc and "zpos" in loc:
        m["pos.x"], m["pos.z"] = m["stat.xpos"], m["stat.zpos"]
    return m


def _human_survival_task_factory(config: Any, initial_inventory: dict | None, start_time: int | None,
                                  spawn_mobs: bool | None) -> Callable[[], Any]:
    """HumanSurvival with a starting inventory / time of day / mob spawning (needs MineRL)."""

    def make() -> Any:
        from minerl.herobraine.env_specs.human_survival_specs import HumanSurvival
        from minerl.herobraine.hero import handlers

        class TaskSurvival(HumanSurvival):
            def create_agent_start(self):
                start = list(super().create_agent_start())
                if initial_inventory:
                    start.append(handlers.SimpleInventoryAgentStart(
                        [{"type": k, "quantity": int(v)} for k, v in initial_inventory.items()]))
                return start

            def create_server_initial_conditions(self):
                conds = list(super().create_server_initial_conditions())
                if start_time is not None:
                    conds = [c for c in conds if type(c).__name__ != "TimeInitialCondition"]
                    conds.append(handlers.TimeInitialCondition(allow_passage_of_time=True, start_time=int(start_time)))
                if spawn_mobs is not None:
                    conds = [c for c in conds if type(c).__name__ != "SpawningInitialCondition"]
                    conds.append(handlers.SpawningInitialCondition(allow_spawning=bool(spawn_mobs)))
                return conds

        return TaskSurvival(**config.env_kwargs()).make()

    return make


class MineRLEvalEnv:
    """MineRL 1.0 (HumanSurvival, as STEVE-1 uses) behind the common interface.

    Wraps ``aimc.envs.minerl.MineRLEnv``: actions are the policy's joint indices
    ``{"buttons", "camera"}``; the frame is the agent's 128x128 ``img``. Task settings:
    initial_inventory ({item: count}), start_time (ticks, 6000 = noon, 18000 = midnight),
    spawn_mobs (bool) extend HumanSurvival's env spec. ``fake: true`` plays the offline stand-in
    ``aimc.envs.fake_minerl.FakeMineRLEnv`` (``fake_options`` go to it; it ignores task settings).
    Other keys go to ``MineRLConfig``. When MineRL crashes, the wrapped env restarts itself and
    this adapter raises :class:`EpisodeLost`, so the evaluator replays the episode.
    """

    known_measures = None  # MineRL has hundreds of item names
    action_heads = {"buttons": 8641, "camera": 121}

    def __init__(self, fake: bool = False, fake_options: dict | None = None, initial_inventory: dict | None = None,
                 start_time: int | None = None, spawn_mobs: bool | None = None, **config: Any) -> None:
        from aimc.envs.minerl import MineRLConfig, make_minerl_env

        cfg = MineRLConfig(**config)
        if fake:
            from aimc.envs.fake_minerl import FakeMineRLEnv

            options = dict(fake_options or {})
            factory = lambda: FakeMineRLEnv(**options)  # noqa: E731
        elif initial_inventory or start_time is not None or spawn_mobs is not None:
            factory = _human_survival_task_factory(cfg, initial_inventory, start_time, spawn_mobs)
        else:
            factory = None
        self.env = make_minerl_env(cfg, env_factory=factory)

    def reset(self, seed: int) -> tuple[np.ndarray, dict[str, float]]:
        obs, info = self.env.reset(seed=int(seed))
        return np.asarray(obs["img"], dtype=np.uint8), minerl_measures(obs, info)

    def step(self, action: dict[str, int]) -> tuple[np.ndarray, dict[str, float], bool]:
        obs, _reward, terminated, truncated, info = self.env.step(
            {"buttons": np.int64(action["buttons"]), "camera": np.int64(action["camera"])})
        if info.get("env_crash"):
            raise EpisodeLost(f"MineRL crashed and restarted: {info['env_crash'].get('error')}")
        return np.asarray(obs["img"], dtype=np.uint8), minerl_measures(obs, info), bool(terminated or truncated)

    def close(self) -> None:
        self.env.close()


ENVS: dict[str, Callable[..., EvalEnv]] = {
    "crafter": CrafterEvalEnv,
    "crafter-expert": CrafterExpertEnv,
    "crafter-labelled": CrafterLabelledEnv,
    "minerl": MineRLEvalEnv,
}


def action_heads(cfg: dict) -> dict[str, int]:
    """The policy heads (name -> choices) of the adapter named in ``cfg`` (builds it if needed)."""
    factory = ENVS.get(str(cfg.get("name", "")))
    heads = getattr(factory, "action_heads", None) if factory is not None else None
    if isinstance(heads, dict):
        return dict(heads)
    env = make_env(cfg)
    try:
        return dict(env.action_heads)
    finally:
        env.close()


def known_measures(cfg: dict) -> frozenset[str] | None:
    """The measure names the adapter named in ``cfg`` can produce (None = not listed)."""
    factory = ENVS.get(str(cfg.get("name", "")))
    return getattr(factory, "known_measures", None) if factory is not None else None


def make_env(cfg: dict) -> EvalEnv:
    """Build an environment from a config dict: ``{"name": ..., **adapter_kwargs}``."""
    cfg = dict(cfg)
    name = str(cfg.pop("name", ""))
    factory = find_factory(name, ENVS, "env")
    try:
        return factory(**cfg)
    except TypeError as e:
        raise UserError(f"env {name!r}: bad settings {cfg} ({e})") from e
