"""The rollout collector: an agent acting in vectorised environments, one batched step at a time.

Every use of acting goes through it: ``aimc eval`` (:func:`aimc.eval.runner.run_suite`),
``aimc run`` (:func:`aimc.agent.play.play`), and what learns from its own play (RL, online
learning). It drives the slots of a :mod:`aimc.agent.vec_env`: a free slot asks
``next_episode(slot)`` for what to play (env config, world seed, goal, horizon), resets its env
with that seed, and plays it until the env ends the episode, the horizon cuts it or the caller
ends it; then the slot takes its next episode. A crashed env (at reset or at a step) is recorded
in :attr:`RolloutCollector.crashes`, rebuilt by the vector env, and its slot asks for a new
episode (the caller decides whether that replays the same world). All slots act in one batched
``agent.act`` per step; what the agent computed for a step is kept:

    collector = RolloutCollector(agent, 4, lambda slot: Episode({"name": "crafter"}, seed=slot,
                                                                instruction="collect wood", horizon=100))
    with collector:
        for r in collector.run(max_steps=50):   # StepRecord per slot and step
            r.slot, r.t, r.action, r.log_prob, r.value, r.goal, r.measures, r.done, r.truncated

``t`` is the index, within its episode, of the frame the action was chosen on (0 = the frame
the reset returned); ``frame`` is the frame that followed (index t + 1). ``log_prob`` is the
log-probability of the sampled action under the (guided, normalised) distribution it was
drawn from and ``value`` the value head's estimate, when the agent reports them
(``Agent.act(..., return_info=True)``; NaN for agents that do not). ``reward`` comes from an
optional ``reward_fn(previous measures, measures)``. Callbacks see events as they happen, in
slot order: ``on_start(slot, episode, frame, measures)``, ``on_step(record)`` and
``on_crash(crash)``.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from aimc.agent.vec_env import EnvCrash, SubprocVecEnv, SyncVecEnv, make_vec_env


class ActingAgent(Protocol):
    """What the collector needs from an agent (``aimc.agent.Agent`` implements it; its ``act``
    also takes ``return_info=True`` and then returns ``(actions, info)``)."""

    def reset(self, batch_size: int) -> None: ...

    def goal(self, instruction: str | None, seed: int) -> np.ndarray: ...  # (D,); zeros = no goal

    def act(self, frames: np.ndarray, goals: np.ndarray, first: np.ndarray) -> dict[str, np.ndarray]: ...


@dataclass
class Episode:
    """What a slot plays. ``goal`` (D,): None = ``agent.goal(instruction, seed)``, asked once the
    env has started. ``horizon``: steps after which the episode is cut (None: until the env ends
    it). ``tag``: anything the caller wants back with the episode's records (e.g. an eval job)."""

    env: dict
    seed: int
    instruction: str | None = None
    goal: np.ndarray | None = None
    horizon: int | None = None
    tag: Any = None


@dataclass
class Crash:
    """An env crash: at reset (``step`` None) or while taking the action chosen on frame ``step``."""

    slot: int
    episode: Episode
    step: int | None
    message: str


@dataclass
class StepRecord:
    """One slot's step. ``frame``/``measures`` are None (and ``crash`` the error) if the env crashed."""

    slot: int
    episode: Episode
    t: int
    action: dict[str, int]
    log_prob: float
    value: float
    goal: np.ndarray
    frame: np.ndarray | None
    measures: dict[str, float] | None
    reward: float | None
    done: bool
    truncated: bool
    crash: str | None = None

    @property
    def last(self) -> bool:
        """The episode ended with this step (env done, horizon reached, or crash)."""
        return self.done or self.truncated or self.crash is not None


def _takes_return_info(agent: Any) -> bool:
    try:
        return "return_info" in inspect.signature(agent.act).parameters
    except (TypeError, ValueError):
        return False


def fit_frame(frame: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """Envs may give different frame sizes; the batch holds the first size (the agent resizes anyway)."""
    if frame.shape == tuple(shape):
        return frame
    from aimc.actions.image import _resize_frames

    return _resize_frames(frame[None], shape[0], shape[1])[0]


class RolloutCollector:
    """``num_envs`` slots played by ``agent`` in one batched forward per step (see the module doc).

    next_episode(slot) -> Episode, or None to leave the slot idle for now. workers: env
    processes (0 = in this process); or pass a ready ``vec``. reward_fn(previous measures,
    measures) -> float fills :attr:`StepRecord.reward`. The collector owns the vector env:
    :meth:`close` (or leaving ``with``) closes it.
    """

    def __init__(
        self,
        agent: ActingAgent,
        num_envs: int,
        next_episode: Callable[[int], Episode | None],
        *,
        workers: int = 0,
        vec: SyncVecEnv | SubprocVecEnv | None = None,
        on_start: Callable[[int, Episode, np.ndarray, dict], None] | None = None,
        on_step: Callable[[StepRecord], None] | None = None,
        on_crash: Callable[[Crash], None] | None = None,
        reward_fn: Callable[[dict, dict], float] | None = None,
    ) -> None:
        self.agent, self.num_envs, self.next_episode = agent, num_envs, next_episode
        self.on_start, self.on_step, self.on_crash, self.reward_fn = on_start, on_step, on_crash, reward_fn
        self.vec = vec if vec is not None else make_vec_env(num_envs, workers)
        self.episodes: list[Episode | None] = [None] * num_envs  # what each slot plays (None: free)
        self.t = [0] * num_envs  # index of each slot's current frame in its episode
        self.measures: list[dict | None] = [None] * num_envs
        self.frames: np.ndarray | None = None  # (B, H, W, 3) uint8: the frame each slot acts on next
        self.goals: np.ndarray | None = None  # (B, D) float32: the goal each slot acts towards
        self.first = np.ones(num_envs, dtype=bool)
        self.crashes: list[Crash] = []
        self.steps = 0  # batched steps taken
        self._with_info = _takes_return_info(agent)
        agent.reset(num_envs)

    # ------------------------------------------------------------------ slots
    def active(self) -> list[int]:
        return [s for s in range(self.num_envs) if self.episodes[s] is not None]

    def fill(self) -> None:
        """Start an episode in every free slot (in slot order) that ``next_episode`` gives one for."""
        for s in range(self.num_envs):
            while self.episodes[s] is None:
                ep = self.next_episode(s)
                if ep is None:
                    break
                r = self.vec.reset(s, ep.env, ep.seed)
                if isinstance(r, EnvCrash):
                    self._crashed(Crash(s, ep, None, r.message))
                    continue
                self._start(s, ep, *r)

    def end_episode(self, slot: int) -> None:
        """End the slot's episode now (e.g. its task is settled); it takes its next one at the next step."""
        self.episodes[slot] = None

    def set_goal(self, slot: int, goal: np.ndarray) -> None:
        """Act towards ``goal`` (D,) in ``slot`` from the next step on (e.g. a new prompt)."""
        goal = np.asarray(goal, dtype=np.float32)
        if self.goals is None:
            self.goals = np.zeros((self.num_envs, goal.shape[0]), dtype=np.float32)
        self.goals[slot] = goal

    def _start(self, s: int, ep: Episode, frame: np.ndarray, measures: dict) -> None:
        if self.frames is None:
            self.frames = np.zeros((self.num_envs, *frame.shape), dtype=np.uint8)
        self.frames[s] = fit_frame(frame, self.frames.shape[1:])
        self.set_goal(s, ep.goal if ep.goal is not None else self.agent.goal(ep.instruction, ep.seed))
        if hasattr(self.agent, "begin_episode"):
            self.agent.begin_episode(s, ep.seed)  # the episode's own sampling stream
        self.first[s] = True
        self.t[s] = 0
        self.measures[s] = measures
        self.episodes[s] = ep
        if self.on_start is not None:
            self.on_start(s, ep, frame, measures)

    def _crashed(self, crash: Crash) -> None:
        self.episodes[crash.slot] = None
        self.crashes.append(crash)
        if self.on_crash is not None:
            self.on_crash(crash)

    # ------------------------------------------------------------------ stepping
    def step(self) -> list[StepRecord]:
        """Fill free slots, act once for all slots, step the active envs: their records, in slot
        order ([] when no slot has an episode to play)."""
        self.fill()
        active = self.active()
        if not active:
            return []
        if self._with_info:
            actions, info = self.agent.act(self.frames, self.goals, self.first, return_info=True)
        else:
            actions, info = self.agent.act(self.frames, self.goals, self.first), {}
        self.first[:] = False
        out = self.vec.step({s: {k: int(v[s]) for k, v in actions.items()} for s in active})
        log_prob, value = info.get("log_prob"), info.get("value")
        records = []
        for s in sorted(out):
            ep, t = self.episodes[s], self.t[s]
            common = {
                "slot": s, "episode": ep, "t": t, "action": {k: int(v[s]) for k, v in actions.items()},
                "log_prob": float(log_prob[s]) if log_prob is not None else math.nan,
                "value": float(value[s]) if value is not None else math.nan,
                "goal": self.goals[s].copy(),
            }
            r = out[s]
            if isinstance(r, EnvCrash):
                rec = StepRecord(**common, frame=None, measures=None, reward=None, done=False, truncated=False,
                                 crash=r.message)
                records.append(rec)
                self._crashed(Crash(s, ep, t, r.message))
                continue
            frame, measures, done = r
            self.t[s] = t + 1
            self.frames[s] = fit_frame(frame, self.frames.shape[1:])
            reward = self.reward_fn(self.measures[s], measures) if self.reward_fn is not None else None
            self.measures[s] = measures
            truncated = not done and ep.horizon is not None and t + 1 >= ep.horizon
            rec = StepRecord(**common, frame=frame, measures=measures, reward=reward, done=bool(done),
                             truncated=truncated)
            if rec.last:
                self.episodes[s] = None
            records.append(rec)
            if self.on_step is not None:
                self.on_step(rec)
        self.steps += 1
        return records

    def run(self, max_steps: int | None = None) -> Iterator[StepRecord]:
        """Step until no slot has an episode to play (or ``max_steps`` batched steps); every record."""
        taken = 0
        while max_steps is None or taken < max_steps:
            records = self.step()
            if not records:
                return
            taken += 1
            yield from records

    def close(self) -> None:
        self.vec.close()

    def __enter__(self) -> RolloutCollector:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
