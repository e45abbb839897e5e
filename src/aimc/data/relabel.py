"""Hindsight goal relabeling, as STEVE-1 trains it.

For a training window [start, stop) of an episode with N frames:

1. Goal time steps are drawn over the whole episode from its beginning:
   ``g = 0; while g < N - 1: g += U[min_btwn_goals, max_btwn_goals); if N - g < min_btwn_goals:
   g = N - 1`` (the last goal is always the episode's last frame).
2. Step t is conditioned on the embedding of the first goal g_i with ``t <= g_i + 1``: a goal is
   held up to and including the step *after* it, then the next goal takes over. So the goal of
   step t lies in ``[t - 1, t + max_btwn_goals)`` of the same episode, except the episode's
   final goal: moved to the last frame, it can be up to ``min_btwn_goals - 2`` further away.
3. With probability ``p_uncond`` the whole window's goals are zeroed (the unconditioned rows that
   classifier-free guidance needs).

Every goal index is >= min_btwn_goals >= 15, so the undefined embeddings of the first 15 frames
(a MineCLIP window needs 16 frames) are never used.

Episodes with *acted goals* are the exception to all of the above. Their embeddings are not
MineCLIP embeddings of their frames but the goal the player acted on at each step (``aimc
online`` writes them: the agent's own play, labelled with what it should have done, meta
``goal_source: acted``). Relabeling them would teach the label under a goal the player never
had, so every relabeler (``data.relabel=steve1`` in ``loader.py``, ``events`` in ``events.py``)
reads their goals as stored, frame by frame, from frame 0 on, and never zeroes them: their
labels are what the *instructed* player should do, which is not what an uninstructed one does.
"""

from __future__ import annotations

import numpy as np

NONE_EMBED_OFFSET = 15  # frames at the start of an episode without a MineCLIP embedding
GOAL_SOURCE_ACTED = "acted"  # meta["goal_source"] of an episode whose embeddings are the goals acted on


def has_acted_goals(meta: dict) -> bool:
    """True for an episode whose embeddings are the goals its player acted on, one per frame
    (``meta["goal_source"] == "acted"``): training reads them as stored, never relabels them."""
    return meta.get("goal_source") == GOAL_SOURCE_ACTED


def check_goal_spacing(min_btwn_goals: int, max_btwn_goals: int) -> None:
    from aimc.errors import UserError

    if min_btwn_goals < NONE_EMBED_OFFSET:
        raise UserError(
            f"min_btwn_goals={min_btwn_goals} must be >= {NONE_EMBED_OFFSET}: the first "
            f"{NONE_EMBED_OFFSET} frames of an episode have no goal embedding"
        )
    if max_btwn_goals <= min_btwn_goals:
        raise UserError(f"max_btwn_goals ({max_btwn_goals}) must be > min_btwn_goals ({min_btwn_goals})")


def check_sequence_args(T: int, p_uncond: float, min_btwn_goals: int, max_btwn_goals: int) -> None:
    """The arguments every relabeled sequence source takes: sequence length, p_uncond, goal spacing."""
    from aimc.errors import UserError

    check_goal_spacing(min_btwn_goals, max_btwn_goals)
    if T < 1:
        raise UserError(f"T must be >= 1, got {T}")
    if not 0.0 <= p_uncond <= 1.0:
        raise UserError(f"p_uncond must be in [0, 1], got {p_uncond}")


def draw_goal_timesteps(
    rng: np.random.Generator, num_frames: int, min_btwn_goals: int, max_btwn_goals: int, until: int | None = None
) -> np.ndarray:
    """Goal time steps (int64, increasing) for an episode of ``num_frames`` frames.

    With ``until`` the drawing stops once the goals cover every step < ``until`` (later goals
    cannot affect those steps), which keeps the cost proportional to the window, not the episode.
    """
    limit = num_frames - 1 if until is None else min(num_frames - 1, until)
    goals = []
    g = 0
    while g < num_frames - 1:
        g += int(rng.integers(min_btwn_goals, max_btwn_goals))
        if num_frames - g < min_btwn_goals:
            g = num_frames - 1
        goals.append(g)
        if g + 1 >= limit:
            break
    return np.asarray(goals, dtype=np.int64)


def goal_index_per_step(goal_timesteps: np.ndarray, start: int, stop: int) -> np.ndarray:
    """For steps t in [start, stop): the frame index whose embedding is step t's goal.  # (stop-start,)"""
    t = np.arange(start, stop)
    which = np.searchsorted(goal_timesteps + 1, t, side="left")  # number of goals already passed
    return goal_timesteps[which]


def relabel_window(
    rng: np.random.Generator,
    num_frames: int,
    start: int,
    stop: int,
    min_btwn_goals: int,
    max_btwn_goals: int,
    p_uncond: float,
) -> tuple[np.ndarray, bool]:
    """(goal frame index per step (stop-start,), whether the whole window is unconditioned)."""
    goals = draw_goal_timesteps(rng, num_frames, min_btwn_goals, max_btwn_goals, until=stop)
    idx = goal_index_per_step(goals, start, stop)
    uncond = bool(rng.random() < p_uncond)
    return idx, uncond
