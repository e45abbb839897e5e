"""Rewards of ``aimc rl``, one object per episode (pluggable: ``collect.reward``).

A reward is made for each episode by a factory ``factory(task, instruction, **options)`` and
then sees the episode's frames and measures as they come::

    r = make_reward("task-success", {})(task, "collect wood")
    r.reset(frame, measures)              # the frame and measures the env's reset returned
    reward = r.step(frame, measures)      # after every action: the step's reward (a float)

``task`` is the suite's task (``aimc.eval.suite.Task``: its ``success`` rule, ``max_steps``),
None for an unconditioned episode (its reward is always 0: nothing was asked). Built in:

* ``task-success`` - 1.0 on the step where the task's success rule (the one ``aimc eval``
  scores with, :class:`aimc.eval.suite.SuccessTracker`) first holds, 0 otherwise. On the
  built-in world this is the instructed achievement; on Minecraft the suite's programmatic
  rules (inventory deltas, kills as stat deltas, travel).
* ``mineclip`` - MineDojo's dense MineCLIP reward: every step, the MineCLIP embedding of the
  last ``window`` (16) frames is scored against the instruction and ``negatives`` prompts; p is
  the softmax probability of the instruction; the reward is how far p raised its running
  maximum over the episode (``max(0, p - max_before)``, the maximum starting at chance,
  1 / (1 + len(negatives))). Options: ``negatives`` (list of prompts), ``window``,
  ``success_bonus`` (added when the task's rule first holds, default 0).

Your own: ``collect.reward=mypackage.rewards:make`` with ``collect.reward_options={...}``; ``make``
is called as the built-in factories are and returns an object with ``reset`` and ``step``.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from typing import Any, Protocol

import numpy as np

from aimc.errors import UserError
from aimc.eval.suite import SuccessTracker
from aimc.utils.plugins import find_factory


class EpisodeReward(Protocol):
    def reset(self, frame: np.ndarray, measures: dict[str, float]) -> None: ...

    def step(self, frame: np.ndarray, measures: dict[str, float]) -> float: ...


class TaskSuccessReward:
    """1 when the task's success rule first holds (the suite's rule, as ``aimc eval`` scores)."""

    def __init__(self, task: Any, instruction: str | None = None) -> None:
        self.tracker = SuccessTracker(task.success, task.max_steps) if task is not None else None
        self.t = 0

    @property
    def succeeded(self) -> bool:
        return self.tracker is not None and self.tracker.first_step is not None

    def reset(self, frame: np.ndarray, measures: dict[str, float]) -> None:
        self.t = 0
        if self.tracker is not None:
            self.tracker.update(0, measures)

    def step(self, frame: np.ndarray, measures: dict[str, float]) -> float:
        self.t += 1
        if self.tracker is None:
            return 0.0
        before = self.succeeded
        self.tracker.update(self.t, measures)
        return 1.0 if self.succeeded and not before else 0.0


class MineCLIPReward:
    """MineDojo's MineCLIP reward (see the module doc). ``mineclip``: an
    ``aimc.models.mineclip.MineCLIP``; texts are embedded once per instruction."""

    DEFAULT_NEGATIVES = ("stand still", "look at the sky", "walk around", "open the inventory", "swim in water")

    def __init__(self, task: Any, instruction: str | None, *, mineclip: Any, negatives: list[str] | None = None,
                 window: int = 16, success_bonus: float = 0.0, cache: dict | None = None) -> None:
        if mineclip is None:
            raise UserError("collect.reward=mineclip needs a MineCLIP checkpoint: pass --mineclip PATH or set agent.mineclip")
        negs = list(negatives) if negatives is not None else list(self.DEFAULT_NEGATIVES)
        if not negs:
            raise UserError("collect.reward_options.negatives: the MineCLIP reward needs at least one negative prompt")
        if window < 1:
            raise UserError(f"collect.reward_options.window must be >= 1, got {window}")
        self.mineclip, self.instruction, self.window = mineclip, instruction, int(window)
        self.success = TaskSuccessReward(task, instruction)
        self.bonus = float(success_bonus)
        self.frames: deque = deque(maxlen=self.window)
        self.chance = 1.0 / (1 + len(negs))
        self.best = self.chance
        self.texts = None
        if instruction is not None:
            cache = cache if cache is not None else {}
            key = (instruction, tuple(negs))
            if key not in cache:
                import torch

                with torch.no_grad():
                    cache[key] = mineclip.encode_text([instruction, *negs]).float()
            self.texts = cache[key]

    def probability(self) -> float:
        """The instruction's softmax probability against the negatives for the frames so far."""
        import torch

        from aimc.models.mineclip import preprocess_frames

        frames = np.stack(list(self.frames))
        clip = preprocess_frames(frames, tuple(self.mineclip.cfg.resolution))  # (L, 3, h, w)
        device = next(self.mineclip.parameters()).device
        with torch.no_grad():
            video = self.mineclip.encode_video(torch.from_numpy(clip)[None].to(device)).float()  # (1, D)
            logits, _ = self.mineclip.forward_reward_head(video, self.texts.to(device))  # (1, 1 + N)
            return float(torch.softmax(logits.float(), dim=-1)[0, 0])

    def reset(self, frame: np.ndarray, measures: dict[str, float]) -> None:
        self.frames.clear()
        self.frames.append(np.asarray(frame))
        self.best = self.chance
        self.success.reset(frame, measures)

    def step(self, frame: np.ndarray, measures: dict[str, float]) -> float:
        self.frames.append(np.asarray(frame))
        bonus = self.bonus * self.success.step(frame, measures)
        if self.texts is None:
            return 0.0
        p = self.probability()
        gain = max(0.0, p - self.best)
        self.best = max(self.best, p)
        return gain + bonus


REWARDS: dict[str, Callable[..., Any]] = {"task-success": TaskSuccessReward, "mineclip": MineCLIPReward}


def make_reward(name: str, options: dict, *, mineclip: Any = None) -> Callable[[Any, str | None], EpisodeReward]:
    """The per-episode factory ``(task, instruction) -> reward`` for ``collect.reward`` = ``name``."""
    factory = find_factory(name, REWARDS, "reward (collect.reward)")
    opts = dict(options or {})
    if factory is MineCLIPReward:
        cache: dict = {}
        return lambda task, instruction: MineCLIPReward(task, instruction, mineclip=mineclip, cache=cache, **opts)
    try:
        factory(None, None, **opts)  # a wrong option fails before any episode is played
    except TypeError as e:
        raise UserError(f"collect.reward={name!r} does not take the options {sorted(opts)} ({e})") from e
    return lambda task, instruction: factory(task, instruction, **opts)
