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

import importlib
from collections.abc import Callable
from typing import Any, Protocol

import numpy as np

from aimc.errors import UserError


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

    def __init__(self, size: int = 64, max_steps: int = 10_000, **kwargs: Any) -> None:
        from aimc.envs.crafter import CrafterEnv, CrafterEnvConfig

        self.env = CrafterEnv(CrafterEnvConfig(size=size, max_steps=max_steps, **kwargs))
        self.action_heads = {"action": int(self.env.action_space.n)}

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


# ---------------------------------------------------------------------------- MineRL


def minerl_measures(obs: dict, info: dict | None = None) -> dict[str, float]:
    """MineRL observation dict -> flat measures (inventory, location and life stats)."""
    m: dict[str, float] = {}
    for k, v in (obs.get("inventory") or {}).items():
        m[f"inventory.{k}"] = float(np.asarray(v).sum())
    loc = obs.get("location_stats") or {}
    for k, v in loc.items():
        m[f"stat.{k}"] = float(np.asarray(v).reshape(-1)[0])
    for k, v in (obs.get("life_stats") or {}).items():
        m[f"stat.{k}"] = float(np.asarray(v).reshape(-1)[0])
    if "xpos" in loc and "zpos" in loc:
        m["pos.x"], m["pos.z"] = m["stat.xpos"], m["stat.zpos"]
    return m


class MineRLEvalEnv:
    """MineRL 1.0 (HumanSurvival, as STEVE-1 uses) behind the common interface.

    Actions arrive as the policy's joint indices ``{"buttons", "camera"}`` and are converted
    with ``aimc.actions.minecraft.policy_to_env``; the pov frame is returned as-is (the agent
    resizes it to its input size). ``fake: true`` plays the offline stand-in
    ``aimc.envs.fake_minerl`` instead (tests, CI). Other keys go to the adapter.
    """

    known_measures = None  # MineRL has hundreds of item names
    action_heads = {"buttons": 8641, "camera": 121}

    def __init__(self, fake: bool = False, **kwargs: Any) -> None:
        from aimc.envs import minerl as adapter

        self.env = adapter.make_minerl_env(fake=fake, **kwargs)

    def reset(self, seed: int) -> tuple[np.ndarray, dict[str, float]]:
        obs = self.env.reset(seed=int(seed))
        if isinstance(obs, tuple):
            obs = obs[0]
        return np.asarray(obs["pov"], dtype=np.uint8), minerl_measures(obs)

    def step(self, action: dict[str, int]) -> tuple[np.ndarray, dict[str, float], bool]:
        from aimc.actions.minecraft import policy_to_env

        env_buttons, camera = policy_to_env(np.array([action["buttons"]]), np.array([action["camera"]]))
        env_action = {k: int(v[0]) for k, v in env_buttons.items()}
        env_action["camera"] = camera[0]
        out = self.env.step(env_action)
        obs, done = out[0], bool(out[2]) or (len(out) == 5 and bool(out[3]))
        return np.asarray(obs["pov"], dtype=np.uint8), minerl_measures(obs), done

    def close(self) -> None:
        self.env.close()


ENVS: dict[str, Callable[..., EvalEnv]] = {
    "crafter": CrafterEvalEnv,
    "minerl": MineRLEvalEnv,
}


def known_measures(cfg: dict) -> frozenset[str] | None:
    """The measure names the adapter named in ``cfg`` can produce (None = not listed)."""
    factory = ENVS.get(str(cfg.get("name", "")))
    return getattr(factory, "known_measures", None) if factory is not None else None


def make_env(cfg: dict) -> EvalEnv:
    """Build an environment from a config dict: ``{"name": ..., **adapter_kwargs}``."""
    cfg = dict(cfg)
    name = str(cfg.pop("name", ""))
    if name in ENVS:
        factory = ENVS[name]
    elif ":" in name:
        mod_name, attr = name.split(":", 1)
        try:
            factory = getattr(importlib.import_module(mod_name), attr)
        except (ImportError, AttributeError) as e:
            raise UserError(f"env {name!r}: cannot import {attr} from {mod_name} ({e})") from e
    else:
        raise UserError(f"unknown env {name!r}; use one of {', '.join(ENVS)} or 'package.module:callable'")
    try:
        return factory(**cfg)
    except TypeError as e:
        raise UserError(f"env {name!r}: bad settings {cfg} ({e})") from e
