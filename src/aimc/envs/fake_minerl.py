"""A stand-in for MineRL 1.0's ``HumanSurvival`` env with the same dict interface, for tests.

MineRL cannot be installed in CI (it builds Minecraft from the network). This fake speaks
its interface (MineRL 1.0.2, old gym API), from MineRL's docs and source:

* ``reset() -> obs``; ``step(action) -> (obs, reward, done, info)``; ``seed(seed)`` before
  ``reset``; ``close()``.
* ``obs = {"pov": uint8 (360, 640, 3) RGB, "inventory": {item: int32 ()}}``
  (``POVObservation`` + ``FlatInventoryObservation``).
* ``info`` holds the monitors: ``{"isGuiOpen": bool, "location_stats": {"xpos", "ypos",
  "zpos", "pitch", "yaw", ...}}``; on a connection failure MineRL returns a random
  observation, ``done=True`` and ``info = {"error": "Connection timed out!"}``.
* ``action`` = dict of ``ESC, attack, back, camera (2,) float32 degrees [-180, 180], drop,
  forward, hotbar.1-9, inventory, jump, left, pickItem, right, sneak, sprint, swapHands,
  use``; keys may be left out (MineRL only sends the keys it finds).

The world is a fixed random texture that scrolls with the camera, so frames change with
actions. Every action received is kept in ``actions`` for inspection, and a crash can be
injected at a given step to test restart handling.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from aimc.actions.minecraft import ENV_BUTTONS

POV_SHAPE = (360, 640, 3)  # MineRL HumanSurvival with resolution=[640, 360]
INVENTORY_ITEMS = ("air", "dirt", "oak_log", "oak_planks", "stick", "wheat_seeds")  # real MineRL: every item


class FakeMinecraftCrash(ConnectionError):
    """Raised by :class:`FakeMineRLEnv` when a crash is injected with ``crash_mode="raise"``."""


class FakeMineRLEnv:
    """Fake ``HumanSurvival(...).make()``.

    Args:
        crash_at_step: step number (1-based, counted from the last reset) at which the env crashes.
        crash_mode: ``"raise"`` (an exception, like a dead Java process) or ``"error_info"``
            (MineRL's own "Connection timed out!" reply).
        crash_on_reset: the next ``reset`` raises (a Minecraft that fails to start).
        episode_length: steps until ``done`` (real HumanSurvival never ends on its own: None).
        strict: reject unknown keys and malformed values instead of ignoring them.
    """

    def __init__(
        self,
        crash_at_step: int | None = None,
        crash_mode: str = "raise",
        crash_on_reset: bool = False,
        episode_length: int | None = None,
        strict: bool = True,
    ) -> None:
        if crash_mode not in ("raise", "error_info"):
            raise ValueError(f"crash_mode must be 'raise' or 'error_info', got {crash_mode!r}")
        self.crash_at_step = crash_at_step
        self.crash_mode = crash_mode
        self.crash_on_reset = crash_on_reset
        self.episode_length = episode_length
        self.strict = strict
        self.actions: list[dict[str, Any]] = []  # every action received
        self.num_resets = 0
        self.closed = False
        self._seed: int | None = None
        self._steps = 0
        self._done = True

    # -- MineRL's interface -------------------------------------------------------------

    def seed(self, seed: int | None = None, seed_spaces: bool = True) -> None:
        self._seed = seed

    def reset(self) -> dict[str, Any]:
        if self.closed:
            raise RuntimeError("reset on a closed env")
        if self.crash_on_reset:
            raise FakeMinecraftCrash("Minecraft process failed to start")
        self.num_resets += 1
        rng = np.random.default_rng(self._seed if self._seed is not None else 0)
        self._texture = rng.integers(0, 256, size=(POV_SHAPE[0] * 2, POV_SHAPE[1] * 2, 3), dtype=np.uint8)
        self._pitch, self._yaw = 0.0, 0.0
        self._pos = np.zeros(3)
        self._gui_open = False
        self._inventory = {k: 0 for k in INVENTORY_ITEMS}
        self._steps = 0
        self._done = False
        return self._obs()

    def step(self, action: dict[str, Any]) -> tuple[dict[str, Any], float, bool, dict[str, Any]]:
        if self.closed:
            raise RuntimeError("step on a closed env")
        if self._done:
            raise RuntimeError("Attempted to step an environment server with done=True")  # as MineRL
        self._check(action)
        self.actions.append({k: (np.array(v, copy=True) if k == "camera" else v) for k, v in action.items()})
        self._steps += 1
        if self.crash_at_step is not None and self._steps == self.crash_at_step:
            if self.crash_mode == "raise":
                raise FakeMinecraftCrash("Connection reset by peer")
            self._done = True
            noise = np.random.default_rng(self._steps).integers(0, 256, size=POV_SHAPE, dtype=np.uint8)
            return {"pov": noise, "inventory": self._inventory_obs()}, 0.0, True, {"error": "Connection timed out!"}
        camera = np.asarray(action.get("camera", np.zeros(2)), dtype=np.float64)
        self._pitch = float(np.clip(self._pitch + camera[0], -90.0, 90.0))
        self._yaw = float((self._yaw + camera[1] + 180.0) % 360.0 - 180.0)
        if action.get("inventory", 0):
            self._gui_open = not self._gui_open
        if action.get("ESC", 0):
            self._gui_open = False
        if action.get("forward", 0) and not self._gui_open:
            self._pos[2] += 0.2
        if action.get("attack", 0) and not self._gui_open and self._steps % 10 == 0:
            self._inventory["oak_log"] += 1  # something for success rules to count
        done = self.episode_length is not None and self._steps >= self.episode_length
        self._done = done
        return self._obs(), 0.0, done, self._monitors()

    def close(self) -> None:
        self.closed = True

    def render(self, mode: str = "human") -> np.ndarray:
        return self._obs()["pov"]

    # -- internals ----------------------------------------------------------------------

    def _obs(self) -> dict[str, Any]:
        h, w = POV_SHAPE[:2]
        dy = int(round(self._pitch * 2)) % h
        dx = int(round(self._yaw * 2)) % w
        pov = self._texture[dy : dy + h, dx : dx + w].copy()  # (360, 640, 3)
        if self._gui_open:
            pov[90:270, 160:480] = 198  # a grey inventory window
        return {"pov": pov, "inventory": self._inventory_obs()}

    def _inventory_obs(self) -> dict[str, np.ndarray]:
        return {k: np.array(v, dtype=np.int32) for k, v in self._inventory.items()}

    def _monitors(self) -> dict[str, Any]:
        x, y, z = (float(v) for v in self._pos)
        return {
            "isGuiOpen": self._gui_open,
            "location_stats": {"xpos": x, "ypos": 64.0 + y, "zpos": z, "pitch": self._pitch, "yaw": self._yaw},
        }

    def _check(self, action: dict[str, Any]) -> None:
        if not self.strict:
            return
        unknown = set(action) - set(ENV_BUTTONS) - {"camera"}
        if unknown:
            raise ValueError(f"unknown MineRL action keys: {sorted(unknown)}")
        for k in ENV_BUTTONS:
            if k in action and (np.ndim(action[k]) != 0 or int(action[k]) not in (0, 1)):
                raise ValueError(f"action[{k!r}] must be 0 or 1, got {action[k]!r}")
        if "camera" in action:
            cam = np.asarray(action["camera"])
            if cam.shape != (2,) or not np.all(np.abs(cam) <= 180):
                raise ValueError(f"action['camera'] must be (2,) degrees in [-180, 180], got {action['camera']!r}")
