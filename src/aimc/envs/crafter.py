"""The built-in world: Crafter (a 2-D Minecraft-like survival game) behind a Gymnasium API.

Crafter is small enough to play thousands of frames per second on a laptop CPU, which is
what lets ``aimc quickstart`` run the whole STEVE-1 recipe without Minecraft.

    env = CrafterEnv()                      # 64x64 RGB frames, the 17 discrete actions
    obs, info = env.reset(seed=3)           # the same seed always builds the same world
    obs, reward, terminated, truncated, info = env.step(ACTION_INDEX["do"])
    info["inventory"]["wood"], info["achievements"]["collect_wood"], info["unlocked"]

``info`` holds copies of the inventory and the achievement counters, the achievements
whose counter went up on this step (``unlocked``, in Crafter's sorted order), the player's
position and facing, and the step number.

World generation dominates ``reset`` (about 0.2 s with ``opensimplex==0.3``; five times
that with later releases, which build the same worlds), so the package pins it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import gymnasium as gym
import numpy as np

from aimc.errors import ConfigError, UserError

# Crafter's 17 actions in its own order; a policy's "action" head indexes this tuple.
ACTIONS: tuple[str, ...] = (
    "noop",
    "move_left",
    "move_right",
    "move_up",
    "move_down",
    "do",
    "sleep",
    "place_stone",
    "place_table",
    "place_furnace",
    "place_plant",
    "make_wood_pickaxe",
    "make_stone_pickaxe",
    "make_iron_pickaxe",
    "make_wood_sword",
    "make_stone_sword",
    "make_iron_sword",
)
ACTION_INDEX: dict[str, int] = {name: i for i, name in enumerate(ACTIONS)}

# Crafter's 22 achievements (sorted, as in its data.yaml).
ACHIEVEMENTS: tuple[str, ...] = (
    "collect_coal",
    "collect_diamond",
    "collect_drink",
    "collect_iron",
    "collect_sapling",
    "collect_stone",
    "collect_wood",
    "defeat_skeleton",
    "defeat_zombie",
    "eat_cow",
    "eat_plant",
    "make_iron_pickaxe",
    "make_iron_sword",
    "make_stone_pickaxe",
    "make_stone_sword",
    "make_wood_pickaxe",
    "make_wood_sword",
    "place_furnace",
    "place_plant",
    "place_stone",
    "place_table",
    "wake_up",
)


@dataclass
class CrafterEnvConfig:
    """How the built-in world is built.

    size: side of the square RGB observation in pixels (64 = Crafter's default; the
        crafter policy presets expect this).
    area: side of the square world map in tiles (Crafter's default 64).
    view: side of the square local view in tiles (Crafter's default 9; the bottom rows
        show the inventory).
    max_steps: an episode is truncated after this many steps (Crafter's default 10000).
    """

    size: int = 64
    area: int = 64
    view: int = 9
    max_steps: int = 10000

    def __post_init__(self) -> None:
        if self.size < 9:
            raise ConfigError(f"CrafterEnvConfig.size must be at least 9 pixels, got {self.size}")
        if self.area < 16:
            raise ConfigError(f"CrafterEnvConfig.area must be at least 16 tiles, got {self.area}")
        if self.view < 3:
            raise ConfigError(f"CrafterEnvConfig.view must be at least 3 tiles, got {self.view}")
        if self.max_steps < 1:
            raise ConfigError(f"CrafterEnvConfig.max_steps must be positive, got {self.max_steps}")


class _OrderedSet(dict):
    """The set operations Crafter uses on a map chunk's creatures (add, remove, iterate, in, len),
    iterating in insertion order."""

    def add(self, item: Any) -> None:
        self[item] = None

    def remove(self, item: Any) -> None:
        del self[item]


def _ordered_chunks(world: Any) -> None:
    """Make ``world``'s creature bookkeeping deterministic. Crafter keeps each map chunk's
    creatures in a plain set, which iterates in memory-address order, and picks the creature to
    despawn by its position in that order: the same seed and the same actions then gave other
    worlds in another process (or another run) once a cow or zombie despawned. With insertion
    order they do not."""
    import collections

    reset = world.reset

    def ordered_reset(seed: Any = None) -> None:
        reset(seed=seed)
        world._chunks = collections.defaultdict(_OrderedSet)

    world.reset = ordered_reset


class CrafterEnv(gym.Env):
    """Gymnasium adapter for ``crafter.Env``: seeded worlds, uint8 (size, size, 3) frames.

    ``reset(seed=s)`` always builds the same world for the same ``s``; ``reset()`` with no
    seed continues the env's own seed sequence (seeded by the constructor's ``seed``). The same
    seed and the same actions give the same episode in any process (Crafter's despawning is made
    deterministic, see ``_ordered_chunks``).
    """

    metadata = {"render_modes": ["rgb_array"], "render_fps": 10}

    def __init__(self, config: CrafterEnvConfig | None = None, seed: int | None = None) -> None:
        import crafter  # imported here so that importing aimc never loads the game

        self.config = config or CrafterEnvConfig()
        c = self.config
        self._env = crafter.Env(area=(c.area, c.area), view=(c.view, c.view), size=(c.size, c.size), length=c.max_steps, seed=0)
        # The semantic map is recomputed on every step and we never use it.
        self._env._sem_view = lambda: None
        _ordered_chunks(self._env._world)
        self.observation_space = gym.spaces.Box(0, 255, (c.size, c.size, 3), np.uint8)
        self.action_space = gym.spaces.Discrete(len(ACTIONS))
        self.render_mode = "rgb_array"
        self._seeds = np.random.default_rng(seed)
        self._last_obs: np.ndarray | None = None
        self._prev_counts: dict[str, int] = {}
        self.world_seed: int | None = None

    # -- the game's internals, for the scripted demonstrator ------------------------------
    @property
    def world(self) -> Any:
        """The underlying ``crafter.engine.World`` (materials, objects)."""
        return self._env._world

    @property
    def player(self) -> Any:
        """The underlying ``crafter.objects.Player``."""
        return self._env._player

    # -- Gymnasium API ---------------------------------------------------------------------
    def reset(self, *, seed: int | None = None, options: dict | None = None) -> tuple[np.ndarray, dict]:
        if seed is None:
            seed = int(self._seeds.integers(0, 2**31 - 1))
        if not isinstance(seed, (int, np.integer)) or seed < 0:
            raise UserError(f"CrafterEnv.reset: seed must be a non-negative integer, got {seed!r}")
        # crafter seeds each world with hash((seed, episode)); pin the episode to 0 so that
        # the world depends on the seed alone.
        self._env._seed = int(seed)
        self._env._episode = 0
        self.world_seed = int(seed)
        obs = self._env.reset()
        self._last_obs = obs
        self._prev_counts = dict(self.player.achievements)
        return obs, self._info([])

    def step(self, action: int) -> tuple[np.ndarray, float, bool, bool, dict]:
        if self._last_obs is None:
            raise UserError("CrafterEnv.step called before reset()")
        a = int(action)
        if not 0 <= a < len(ACTIONS):
            raise UserError(f"CrafterEnv.step: action must be in 0..{len(ACTIONS) - 1}, got {action!r}")
        obs, reward, done, info = self._env.step(a)
        counts = info["achievements"]
        unlocked = [k for k in ACHIEVEMENTS if counts.get(k, 0) > self._prev_counts.get(k, 0)]
        self._prev_counts = dict(counts)
        self._last_obs = obs
        terminated = bool(info["discount"] == 0.0)
        truncated = bool(done and not terminated)
        return obs, float(reward), terminated, truncated, self._info(unlocked)

    def render(self) -> np.ndarray:
        if self._last_obs is None:
            raise UserError("CrafterEnv.render called before reset()")
        return self._last_obs

    def close(self) -> None:
        self._last_obs = None

    def _info(self, unlocked: list[str]) -> dict:
        p = self.player
        return {
            "inventory": dict(p.inventory),
            "achievements": dict(p.achievements),
            "unlocked": unlocked,
            "player_pos": (int(p.pos[0]), int(p.pos[1])),
            "facing": (int(p.facing[0]), int(p.facing[1])),
            "step": int(self._env._step),
            "world_seed": self.world_seed,
        }
