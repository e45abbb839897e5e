"""Labellers: who says which action the agent should have taken in each state it reached.

DAgger trains on the states the *agent* visits, labelled by an expert. A labeller has two
duties, both small:

* ``bind(env, task)`` -> the env config the agent plays ``task`` in. A labeller that must watch
  the game from inside (the built-in world's demonstrator reads the game's internals) returns an
  env that carries it; one that only needs what was recorded returns ``env`` unchanged.
* ``label(episode)`` -> :class:`Labels`: for every step t of a played episode, the action it
  should have taken in the state of frame t, and optionally a mask of the steps it labelled
  (an unlabelled stretch splits the episode; only labelled steps are trained on).

A labeller that can also act (``mixing(env, share) -> env``: the env config in which its own
action is executed instead of the agent's with chance ``share``) supports DAgger's mixing,
``collect.expert_share``.

It gets the whole episode as played (:class:`PlayedEpisode`: frames, the agent's actions, the
goals it acted on, the measures of every frame), so a labeller may work step by step or after the
fact, e.g. a person correcting a replay. Register one with :func:`register` or name it as
``package.module:callable`` in ``labeller.name``; ``labeller.options`` are its keyword arguments.

    class MyLabeller:
        name = "mine"
        def bind(self, env, task): return env
        def label(self, episode): return Labels({"action": np.zeros(len(episode), np.int64)})
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from aimc.errors import UserError
from aimc.utils.plugins import find_factory


@dataclass
class PlayedEpisode:
    """One episode as the agent played it; index t is the t-th state (frame) it acted in.

    frames (N, H, W, 3) uint8: frame t is what the agent saw when it chose action t.
    actions {head: (N,) int64}: what it did. goals (N, D) float32: the goal it acted towards at
    step t (from the instruction, through the prior). measures: N dicts, the env's measures of
    frame t. success_step: the step count at which the task's success rule first held (None:
    never). task / instruction / lang / seed / env: what was played, where.
    """

    task: str
    instruction: str
    lang: str
    seed: int
    env: dict
    frames: np.ndarray
    actions: dict[str, np.ndarray]
    goals: np.ndarray
    measures: list[dict[str, float]]
    success_step: int | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def __len__(self) -> int:
        return int(self.frames.shape[0])


@dataclass
class Labels:
    """What a labeller returns: ``actions`` {head: (N,) int64}, the action to take in the state of
    frame t; ``mask`` (N,) bool, the steps it labelled (None = every step)."""

    actions: dict[str, np.ndarray]
    mask: np.ndarray | None = None


class Labeller(Protocol):
    """The interface of a labeller (see the module docstring)."""

    name: str

    def bind(self, env: dict, task: Any) -> dict: ...

    def label(self, episode: PlayedEpisode) -> Labels: ...


def check_labels(labels: Labels, episode: PlayedEpisode, heads: dict[str, int], who: str) -> Labels:
    """``labels`` checked against the episode and the policy's heads (name -> choices); clear errors."""
    if not isinstance(labels, Labels):
        raise UserError(f"labeller {who} returned {type(labels).__name__}, not aimc.online.labellers.Labels")
    n = len(episode)
    if set(labels.actions) != set(heads):
        raise UserError(f"labeller {who} labelled heads {sorted(labels.actions)}, the policy has {sorted(heads)}")
    out = {}
    for k, v in labels.actions.items():
        a = np.asarray(v)
        if a.shape != (n,) or not np.issubdtype(a.dtype, np.integer):
            raise UserError(f"labeller {who}: actions[{k!r}] must be ({n},) integers, got {a.dtype} {a.shape}")
        if a.size and (a.min() < 0 or a.max() >= heads[k]):
            raise UserError(f"labeller {who}: actions[{k!r}] outside 0..{heads[k] - 1}")
        out[k] = a.astype(np.int64)
    mask = None
    if labels.mask is not None:
        mask = np.asarray(labels.mask, dtype=bool)
        if mask.shape != (n,):
            raise UserError(f"labeller {who}: mask must be ({n},) bool, got {mask.shape}")
    return Labels(out, mask)


def labelled_segments(mask: np.ndarray | None, n: int) -> list[tuple[int, int]]:
    """Runs [start, end) of labelled steps (the whole episode without a mask)."""
    if mask is None:
        return [(0, n)] if n else []
    out, start = [], None
    for t in range(n + 1):
        on = t < n and bool(mask[t])
        if on and start is None:
            start = t
        elif not on and start is not None:
            out.append((start, t))
            start = None
    return out


# ---------------------------------------------------------------------------- the built-in world


def demonstrator_goal(task: Any, goals: dict[str, str] | None = None) -> str:
    """The demonstrator goal of a suite task: ``goals[task.id]``, else the task id, else the one
    achievement its success rule asks for; an error naming the task otherwise."""
    from aimc.envs.demonstrator import GOALS

    goals = goals or {}
    if task.id in goals:
        g = goals[task.id]
    elif task.id in GOALS:
        g = task.id
    elif task.success.kind == "achievement" and len(task.success.keys) == 1:
        g = task.success.keys[0].split(".", 1)[1]
    else:
        g = ""
    if g not in GOALS:
        raise UserError(f"the demonstrator cannot label task {task.id!r}: it pursues {', '.join(GOALS)}; "
                        f"map the task with labeller.options.goals={{{task.id}: GOAL}}")
    return g


class CrafterDemonstratorLabeller:
    """The built-in world's labeller: the scripted demonstrator pinned to the task's goal,
    running inside the agent's own env (``crafter-labelled`` in ``aimc.agent.envs``).

    Its planning state follows the agent's episode step by step: one ``Demonstrator`` per
    episode, seeded with the world seed and pinned with ``reset(goal)``, is asked for its action
    at every state the agent reaches (the reset's included), then ``observe``s the agent's step,
    so its random stream, exploration heading and drink/eat hysteresis evolve along the agent's
    path. Its answer at frame t is the measure ``label.action`` of that frame, which
    :meth:`label` reads back; the agent's action is what the world executed.

    goals: task id -> demonstrator goal, for tasks whose id or success rule does not name one.
    demonstrator: ``DemonstratorConfig`` fields (``noise`` defaults to 0; ``reflexes``,
    ``sight``, ``turn_chance``, ``tie_break`` ...).
    ties: whose action a step is labelled with when the agent's action is as good as the
        demonstrator's (another first move of a shortest path, another free way to explore:
        ``Demonstrator.equally_good``): "demonstrator" = always the demonstrator's; "agent" =
        the agent's own, so that only real mistakes are corrected.
    takeover: ``{after: K, steps: M}``: the demonstrator steps in after K wrong actions of the
        agent in a row and drives M steps (0 = to the end), as a person watching would
        (``crafter-labelled``'s ``takeover``). None = it only labels.
    train_on: "all" = every step is labelled (DAgger); "takeover" = only the steps the
        demonstrator drove after stepping in (gated DAgger: its recoveries from the states the
        agent led it into, whose actions follow one another as in its own demonstrations).
    """

    name = "crafter-demonstrator"

    def __init__(self, goals: dict[str, str] | None = None, demonstrator: dict[str, Any] | None = None,
                 ties: str = "demonstrator", takeover: dict[str, int] | None = None, train_on: str = "all") -> None:
        from aimc.agent.envs import check_takeover
        from aimc.envs.demonstrator import DemonstratorConfig

        check_takeover(takeover, "labeller.options.takeover")
        if ties not in ("demonstrator", "agent"):
            raise UserError(f"labeller.options.ties must be 'demonstrator' or 'agent', got {ties!r}")
        if train_on not in ("all", "takeover"):
            raise UserError(f"labeller.options.train_on must be 'all' or 'takeover', got {train_on!r}")
        if train_on == "takeover" and not takeover:
            raise UserError("labeller.options.train_on=takeover needs labeller.options.takeover={after: K, steps: M} "
                            "(when the demonstrator steps in)")
        self.ties = ties
        self.train_on = train_on
        self.takeover = dict(takeover or {})
        self.goals = dict(goals or {})
        self.demonstrator = dict(demonstrator or {})
        try:
            DemonstratorConfig(**{"noise": 0.0, **self.demonstrator})
        except TypeError as e:
            raise UserError(f"labeller.options.demonstrator: {e}") from e

    def bind(self, env: dict, task: Any) -> dict:
        if env.get("name") not in ("crafter", "crafter-labelled"):
            raise UserError(f"the crafter-demonstrator labeller labels the built-in world (env crafter), "
                            f"not env {env.get('name')!r}; pick another labeller.name")
        out = {**env, "name": "crafter-labelled", "goal": demonstrator_goal(task, self.goals),
               "demonstrator": self.demonstrator}
        return {**out, "takeover": self.takeover} if self.takeover else out

    def mixing(self, env: dict, share: float) -> dict:
        """The bound env in which the demonstrator's action is executed with chance ``share``."""
        return {**env, "expert_share": float(share)} if share > 0 else env

    def label(self, episode: PlayedEpisode) -> Labels:
        from aimc.agent.envs import CONTROL_MEASURE, LABEL_MEASURE, TIES_MEASURE

        need = (LABEL_MEASURE,) + ((TIES_MEASURE,) if self.ties == "agent" else ()) \
            + ((CONTROL_MEASURE,) if self.train_on == "takeover" else ())
        missing = [(t, k) for t, m in enumerate(episode.measures) for k in need if k not in m]
        if missing:
            raise UserError(f"episode on world {episode.seed}: frame {missing[0][0]} has no {missing[0][1]} measure; "
                            "it was not played in the env this labeller binds (crafter-labelled)")
        label = np.asarray([int(m[LABEL_MEASURE]) for m in episode.measures], dtype=np.int64)
        driven = np.asarray([m.get(CONTROL_MEASURE, 0.0) == 1.0 for m in episode.measures], dtype=bool)
        if self.ties == "agent":  # not where the demonstrator drove: there the label is what was executed
            agent = np.asarray(episode.actions["action"], dtype=np.int64)
            ties = np.asarray([int(m[TIES_MEASURE]) for m in episode.measures], dtype=np.int64)
            label = np.where(((ties >> agent) & 1 == 1) & ~driven, agent, label)
        return Labels({"action": label}, driven if self.train_on == "takeover" else None)


# ---------------------------------------------------------------------------- any world


class OwnSuccessesLabeller:
    """Keep what worked: in an episode whose task succeeded, the agent's own actions up to the
    success are the labels; every other step is left unlabelled (not trained on).

    It needs no expert and watches nothing (``bind`` returns the env as it is), so it labels any
    world with a success rule, Minecraft included. Trained on round after round, it is
    self-imitation: behaviour cloning of the agent's successful episodes (a cross-entropy-method
    step on the policy), with the goals it acted on.

    max_steps: keep only successes reached within this many steps (0 = any).
    """

    name = "own-successes"

    def __init__(self, max_steps: int = 0) -> None:
        if int(max_steps) < 0:
            raise UserError(f"labeller.options.max_steps must be 0 (any) or positive, got {max_steps}")
        self.max_steps = int(max_steps)

    def bind(self, env: dict, task: Any) -> dict:
        return env

    def label(self, episode: PlayedEpisode) -> Labels:
        n = len(episode)
        mask = np.zeros(n, dtype=bool)
        k = episode.success_step
        if k is not None and (self.max_steps == 0 or k <= self.max_steps):
            mask[:min(int(k), n)] = True  # the actions taken before the success rule held
        return Labels({h: np.asarray(a, dtype=np.int64).copy() for h, a in episode.actions.items()}, mask)


LABELLERS: dict[str, Callable[..., Labeller]] = {
    "crafter-demonstrator": CrafterDemonstratorLabeller,
    "own-successes": OwnSuccessesLabeller,
}


def register(name: str, factory: Callable[..., Labeller]) -> None:
    """Make ``labeller.name=NAME`` build ``factory(**labeller.options)``."""
    LABELLERS[name] = factory


def make_labeller(name: str, options: dict[str, Any] | None = None) -> Labeller:
    """The labeller ``name`` (registered, or ``package.module:callable``) built with ``options``."""
    factory = find_factory(name, LABELLERS, "labeller")
    try:
        labeller = factory(**(options or {}))
    except TypeError as e:
        raise UserError(f"labeller {name!r}: bad labeller.options {options} ({e})") from e
    for attr in ("bind", "label"):
        if not callable(getattr(labeller, attr, None)):
            raise UserError(f"labeller {name!r} has no {attr}() method (see aimc.online.labellers.Labeller)")
    return labeller
