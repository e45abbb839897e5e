"""Record scripted Crafter play into an episode store: the built-in world's dataset.

    summary = generate_crafter_store("runs/qs/store", episodes=200, max_steps=500, workers=2)

Each episode is one world seed played by the :class:`~aimc.envs.demonstrator.Demonstrator`
and written with :meth:`aimc.data.store.EpisodeStore.write_episode`:

- frames: uint8 (N, 64, 64, 3), frame ``i`` is what the player saw before action ``i``;
- actions: ``{"action": int64 (N,)}`` indices into :data:`aimc.envs.crafter.ACTIONS`;
- annotations: captions of every event, English and Chinese (:mod:`aimc.envs.captions`);
- meta: world seed, the demonstrator's goal segments ``[[start, end, goal], ...]`` and the
  achievement counts at the end.

Episodes are named ``crafter-<world seed>``; an episode already in the store is skipped, so
an interrupted run continues where it stopped. Workers are separate processes, each writing
whole episodes atomically.
"""

from __future__ import annotations

import multiprocessing as mp
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import asdict
from pathlib import Path

import numpy as np

from aimc.envs.captions import caption_events, events_from_unlocked
from aimc.envs.crafter import CrafterEnv, CrafterEnvConfig
from aimc.envs.demonstrator import GOALS, Demonstrator, DemonstratorConfig

RECORDER_VERSION = 1


def episode_id_for(world_seed: int) -> str:
    return f"crafter-{world_seed:08d}"


def play_episode(env: CrafterEnv, demo: Demonstrator, world_seed: int, max_steps: int, goal: str | None = None) -> dict:
    """Play one episode; returns frames (N,H,W,3), actions (N,), goal labels (N,), events."""
    obs, info = env.reset(seed=world_seed)
    demo.reset(goal=goal)
    frames, actions, goals, unlocked = [], [], [], []
    died = False
    for _ in range(max_steps):
        a = demo.act(info)
        frames.append(obs)
        actions.append(a)
        goals.append(GOALS.index(demo.goal))
        obs, _, terminated, truncated, info = env.step(a)
        demo.observe(info)
        unlocked.append(list(info["unlocked"]))
        if terminated or truncated:
            died = terminated
            break
    return {
        "frames": np.stack(frames).astype(np.uint8),  # (N, H, W, 3)
        "actions": np.asarray(actions, dtype=np.int64),  # (N,)
        "goals": np.asarray(goals, dtype=np.int64),  # (N,)
        "unlocked": unlocked,
        "achievements": dict(info["achievements"]),
        "died": died,
    }


def _segments(labels: np.ndarray) -> list[list]:
    """Run-length goal labels -> [[start, end (exclusive), goal name], ...]."""
    out: list[list] = []
    start = 0
    for i in range(1, len(labels) + 1):
        if i == len(labels) or labels[i] != labels[start]:
            out.append([start, i, GOALS[int(labels[start])]])
            start = i
    return out


def record_episode(store_root: str | Path, world_seed: int, max_steps: int, size: int = 64, demo_config: DemonstratorConfig | None = None, goal: str | None = None) -> tuple[str, int, bool]:
    """Play world ``world_seed`` and write it into the store; returns (id, frames, written)."""
    from aimc.data.store import EpisodeStore

    store = EpisodeStore(store_root)
    eid = episode_id_for(world_seed)
    if eid in store:
        return eid, store.open(eid).num_frames, False
    env = CrafterEnv(CrafterEnvConfig(size=size, max_steps=max(max_steps, 1)))
    demo_config = demo_config or DemonstratorConfig()
    demo = Demonstrator(env, demo_config, seed=world_seed)
    ep = play_episode(env, demo, world_seed, max_steps, goal=goal)
    n = len(ep["actions"])
    rng = np.random.default_rng(world_seed)
    anns = caption_events(events_from_unlocked(ep["unlocked"]), n, rng)
    meta = {
        "source": "crafter",
        "converter": "aimc.envs.record",
        "converter_version": RECORDER_VERSION,
        "fps": 10.0,
        "world_seed": int(world_seed),
        "env": asdict(env.config),
        "demonstrator": {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(demo_config).items()},
        "goal_segments": _segments(ep["goals"]),
        "achievements": ep["achievements"],
        "died": bool(ep["died"]),
    }
    store.write_episode(eid, ep["frames"], {"action": ep["actions"]}, meta, annotations=anns)
    return eid, n, True


def generate_crafter_store(
    store_root: str | Path,
    episodes: int,
    max_steps: int = 500,
    workers: int = 2,
    seed: int = 0,
    size: int = 64,
    demo_config: DemonstratorConfig | None = None,
    goal: str | None = None,
    on_episode: Callable[[str, int], None] | None = None,
    time_limit_s: float = 0.0,
) -> dict:
    """Record ``episodes`` episodes (world seeds ``seed .. seed + episodes - 1``) in parallel.

    ``on_episode(episode_id, frames)`` is called in this process as each one finishes.
    ``time_limit_s`` > 0 stops starting new episodes after that many seconds (a time budget).
    Returns {"episodes" (finished), "frames", "written", "skipped", "seconds"}.
    """
    if episodes < 1:
        raise ValueError(f"episodes must be positive, got {episodes}")
    if workers < 1:
        raise ValueError(f"workers must be positive, got {workers}")
    from aimc.data.store import EpisodeStore

    EpisodeStore(store_root).create()  # here, not in a worker: a wrong --out is one clear error
    t0 = time.time()
    seeds = [seed + i for i in range(episodes)]
    written = skipped = frames = 0
    args = [(str(store_root), s, max_steps, size, demo_config, goal) for s in seeds]
    def out_of_time() -> bool:
        return bool(time_limit_s) and time.time() - t0 > time_limit_s

    if workers == 1:
        for a in args:
            if out_of_time():
                break
            eid, n, w = record_episode(*a)
            frames += n
            written += int(w)
            skipped += int(not w)
            if on_episode:
                on_episode(eid, n)
    else:
        # spawn: the parent may already hold torch threads, which fork would copy half-way
        with ProcessPoolExecutor(max_workers=workers, mp_context=mp.get_context("spawn")) as pool:
            futures = [pool.submit(record_episode, *a) for a in args]
            for fut in as_completed(futures):
                if fut.cancelled():
                    continue
                eid, n, w = fut.result()
                frames += n
                written += int(w)
                skipped += int(not w)
                if on_episode:
                    on_episode(eid, n)
                if out_of_time():
                    for f in futures:
                        f.cancel()  # episodes not started yet; running ones finish
    return {"episodes": written + skipped, "frames": frames, "written": written, "skipped": skipped, "seconds": time.time() - t0}
