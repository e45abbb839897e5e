"""MineRL 1.0 (``HumanSurvival``, as STEVE-1 uses) behind a Gymnasium API in policy terms.

    env = make_minerl_env(seed=7)                     # needs `pip install 'aimc[minerl]'`
    obs, info = env.reset()                           # obs["img"] (128,128,3), obs["pov"] (360,640,3)
    obs, reward, terminated, truncated, info = env.step({"buttons": 288, "camera": 60})

* Actions are the policy's joint indices ``{"buttons": 0..8640, "camera": 0..120}`` (scalars
  or size-1 arrays/tensors), converted with :func:`aimc.actions.minecraft.policy_to_env`
  into a full MineRL action dict (ESC, pickItem, swapHands = 0; camera float32 degrees).
  A dict without ``"buttons"`` is taken as a MineRL action dict and passed through.
* Observations: ``img`` = the agent's 128x128 RGB frame (``cv2.resize`` INTER_LINEAR, as
  the original agent), ``pov`` = MineRL's frame, ``inventory`` = item -> count,
  ``location_stats`` = MineRL's location monitor (xpos, ypos, zpos, pitch, yaw, ...; empty
  right after a reset, which MineRL returns without monitors).
* ``info``: ``inventory``, ``is_gui_open``, ``location_stats`` (MineRL's monitors),
  ``env_action`` (the dict sent), ``crashes`` (count so far).
* MineRL crashes often (Java dies, sockets time out). A step that raises, or returns
  MineRL's ``{"error": ...}`` info, closes the env, builds a fresh one and resets it; the
  step returns the new episode's first observation with ``truncated=True`` and
  ``info["env_crash"]`` describing the crash. Crashes are kept in ``env.crashes``. Only
  ``max_restarts`` failures in a row (no successful step between) are fatal.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import time
import traceback
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from typing import Any

import gymnasium as gym
import numpy as np

from aimc.actions.image import resize_to_agent
from aimc.actions.minecraft import ENV_BUTTONS, N_JOINT_BUTTONS, N_JOINT_CAMERA, policy_to_env
from aimc.errors import ConfigError, UserError

log = logging.getLogger(__name__)

INSTALL_HINT = (
    "MineRL is not installed. Install the optional extra with `pip install 'aimc[minerl]'` "
    "(MineRL 1.0.2 needs Java 8 (JDK) and builds Minecraft from the network on first install); "
    "see docs/minerl.md. The built-in world needs none of this: use --env crafter."
)


class EnvCrashError(UserError):
    """The environment kept crashing: ``max_restarts`` failures in a row."""


@dataclass
class MineRLConfig:
    """How the MineRL env is built (defaults = STEVE-1's / VPT's ``ENV_KWARGS``).

    Fields:
        resolution: (width, height) of MineRL's frames.
        fov_range, gamma_range, guiscale_range, cursor_size_range: MineRL's sampling
            ranges for field of view, brightness, GUI scale and cursor size (fixed values here).
        frameskip: MineRL ticks per step.
        agent_size: side of the square frame the policy sees (``obs["img"]``).
        max_restarts: consecutive crashes (no successful step between) before giving up.
    """

    resolution: tuple[int, int] = (640, 360)
    fov_range: tuple[float, float] = (70.0, 70.0)
    gamma_range: tuple[float, float] = (2.0, 2.0)
    guiscale_range: tuple[float, float] = (1.0, 1.0)
    cursor_size_range: tuple[float, float] = (16.0, 16.0)
    frameskip: int = 1
    agent_size: int = 128
    max_restarts: int = 5

    def __post_init__(self) -> None:
        for name in ("resolution", "fov_range", "gamma_range", "guiscale_range", "cursor_size_range"):
            value = tuple(getattr(self, name))
            if len(value) != 2:
                raise ConfigError(f"MineRLConfig.{name} must have 2 values, got {value}")
            setattr(self, name, value)
        if self.frameskip < 1:
            raise ConfigError(f"MineRLConfig.frameskip must be >= 1, got {self.frameskip}")
        if self.agent_size < 1:
            raise ConfigError(f"MineRLConfig.agent_size must be >= 1, got {self.agent_size}")
        if self.max_restarts < 0:
            raise ConfigError(f"MineRLConfig.max_restarts must be >= 0, got {self.max_restarts}")

    def env_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for MineRL's ``HumanSurvival``."""
        kw = asdict(self)
        del kw["agent_size"], kw["max_restarts"]
        return {k: list(v) if isinstance(v, tuple) else v for k, v in kw.items()}


def human_survival_factory(config: MineRLConfig) -> Callable[[], Any]:
    """A function that builds MineRL's ``HumanSurvival`` env (imports MineRL when called)."""

    def make() -> Any:
        try:
            from minerl.herobraine.env_specs.human_survival_specs import HumanSurvival
        except ImportError as e:
            raise UserError(f"{INSTALL_HINT} (import failed: {e})") from None
        return HumanSurvival(**config.env_kwargs()).make()

    return make


def policy_action_to_minerl(action: Mapping[str, Any]) -> dict[str, Any]:
    """Policy action ``{"buttons", "camera"}`` (one env) -> a full MineRL action dict."""
    buttons = _scalar_index(action["buttons"], N_JOINT_BUTTONS, "buttons")
    camera = _scalar_index(action["camera"], N_JOINT_CAMERA, "camera")
    env_buttons, degrees = policy_to_env(np.array(buttons), np.array(camera))
    out: dict[str, Any] = {k: int(env_buttons[k]) for k in ENV_BUTTONS}
    out["camera"] = degrees.astype(np.float32)  # (2,) MineRL's Box(-180, 180, (2,), float32)
    return out


def _scalar_index(value: Any, n: int, name: str) -> int:
    if hasattr(value, "detach"):  # torch tensor
        value = value.detach().cpu().numpy()
    arr = np.asarray(value)
    if arr.size != 1 or not np.issubdtype(arr.dtype, np.integer):
        raise UserError(f"policy action '{name}' must be one integer index for one env, got {value!r}")
    idx = int(arr.reshape(()))
    if not 0 <= idx < n:
        raise UserError(f"policy action '{name}' must be in 0..{n - 1}, got {idx}")
    return idx


class MineRLEnv(gym.Env):
    """Gymnasium wrapper around one MineRL env built by ``env_factory`` (restarted on crashes)."""

    metadata = {"render_modes": ["rgb_array"]}

    def __init__(self, env_factory: Callable[[], Any], config: MineRLConfig | None = None, seed: int | None = None):
        self.config = config or MineRLConfig()
        self._factory = env_factory
        self._env: Any = None
        self._seed = seed
        self._last_pov: np.ndarray | None = None
        self._last_inventory: dict[str, int] = {}
        self._last_location: dict[str, float] = {}
        self.crashes: list[dict[str, Any]] = []  # one record per crash: when, where, what
        self._crashes_in_a_row = 0
        self.episode = -1
        self.step_count = 0
        s = self.config.agent_size
        w, h = self.config.resolution
        self.action_space = gym.spaces.Dict(
            {"buttons": gym.spaces.Discrete(N_JOINT_BUTTONS), "camera": gym.spaces.Discrete(N_JOINT_CAMERA)}
        )
        self.observation_space = gym.spaces.Dict(
            {
                "img": gym.spaces.Box(0, 255, (s, s, 3), np.uint8),
                "pov": gym.spaces.Box(0, 255, (h, w, 3), np.uint8),
            }
        )

    @property
    def num_crashes(self) -> int:
        return len(self.crashes)

    # -- Gymnasium API ------------------------------------------------------------------

    def reset(self, *, seed: int | None = None, options: dict | None = None) -> tuple[dict[str, Any], dict[str, Any]]:
        if seed is not None:
            self._seed = seed
        while True:
            try:
                obs = self._reset_inner()
                break
            except Exception as e:  # MineRL's failures come as many exception types
                self._record_crash("reset", e)
        self.episode += 1
        self.step_count = 0
        self._last_location = {}  # MineRL's reset returns no monitors
        return self._agent_obs(obs), self._info({}, env_action=None)

    def step(self, action: Mapping[str, Any]) -> tuple[dict[str, Any], float, bool, bool, dict[str, Any]]:
        if self._env is None:
            raise UserError("MineRLEnv.step called before reset(): call env.reset() first")
        env_action = policy_action_to_minerl(action) if "buttons" in action else dict(action)
        try:
            out = self._env.step(env_action)
            if len(out) == 5:  # a MineRL build on the newer gym API
                obs, reward, terminated, truncated, info = out
            else:
                obs, reward, done, info = out
                terminated, truncated = bool(done), False
            if isinstance(info, Mapping) and "error" in info:
                raise RuntimeError(f"MineRL reported: {info['error']}")
        except Exception as e:
            crash = self._record_crash("step", e)
            obs, info = self.reset()
            info["env_crash"] = crash
            return obs, 0.0, False, True, info
        self._crashes_in_a_row = 0
        self.step_count += 1
        self._last_location = _plain_floats(info.get("location_stats", {}))
        return self._agent_obs(obs), float(reward), bool(terminated), bool(truncated), self._info(info, env_action)

    def render(self) -> np.ndarray | None:
        return None if self._last_pov is None else self._last_pov.copy()

    def close(self) -> None:
        if self._env is not None:
            with contextlib.suppress(Exception):
                self._env.close()
            self._env = None

    # -- internals ----------------------------------------------------------------------

    def _reset_inner(self) -> Any:
        if self._env is None:
            self._env = self._factory()
        if self._seed is not None and hasattr(self._env, "seed"):
            self._env.seed(self._seed)  # MineRL: must come before reset
        out = self._env.reset()
        if isinstance(out, tuple) and len(out) == 2 and isinstance(out[1], Mapping):  # newer gym API
            out = out[0]
        return out

    def _record_crash(self, where: str, error: BaseException) -> dict[str, Any]:
        """Record a crash and drop the broken env (the next reset builds a fresh one)."""
        if isinstance(error, UserError):
            raise error
        self._crashes_in_a_row += 1
        crash = {
            "where": where,
            "episode": self.episode,
            "step": self.step_count,
            "time": time.time(),
            "error": f"{type(error).__name__}: {error}",
            "traceback": "".join(traceback.format_exception(type(error), error, error.__traceback__))[-4000:],
        }
        self.crashes.append(crash)
        log.warning("MineRL %s crashed (episode %d, step %d): %s", where, self.episode, self.step_count, crash["error"])
        self.close()
        if self._crashes_in_a_row > self.config.max_restarts:
            raise EnvCrashError(
                f"MineRL failed {self._crashes_in_a_row} times in a row (last: {crash['error']}); check that "
                "Java 8 and MineRL run on their own (docs/minerl.md), or raise MineRLConfig.max_restarts"
            )
        return crash

    def _agent_obs(self, obs: Mapping[str, Any]) -> dict[str, Any]:
        pov = np.asarray(obs["pov"], dtype=np.uint8)  # (H, W, 3) RGB
        self._last_pov = pov
        self._last_inventory = {k: int(v) for k, v in obs.get("inventory", {}).items()}
        return {
            "img": resize_to_agent(pov, self.config.agent_size),  # (S, S, 3)
            "pov": pov,
            "inventory": self._last_inventory,
            "location_stats": self._last_location,
        }

    def _info(self, monitors: Mapping[str, Any], env_action: dict[str, Any] | None) -> dict[str, Any]:
        return {
            "inventory": dict(self._last_inventory),
            "is_gui_open": bool(monitors.get("isGuiOpen", False)),
            "location_stats": dict(self._last_location),
            "env_action": env_action,
            "crashes": self.num_crashes,
        }


def _plain_floats(stats: Mapping[str, Any]) -> dict[str, float]:
    out = {}
    for k, v in stats.items():
        with contextlib.suppress(TypeError, ValueError):
            out[k] = float(np.asarray(v).reshape(-1)[0])
    return out


def make_minerl_env(
    config: MineRLConfig | None = None,
    seed: int | None = None,
    env_factory: Callable[[], Any] | None = None,
    fake: bool = False,
    **overrides: Any,
) -> MineRLEnv:
    """Build the wrapped env. Nothing starts until the first ``reset``.

    ``env_factory`` replaces MineRL (tests pass :class:`~aimc.envs.fake_minerl.FakeMineRLEnv`);
    ``fake=True`` is a shortcut for that. ``overrides`` set :class:`MineRLConfig` fields
    (e.g. ``max_restarts=10``). Without a factory MineRL must be importable; otherwise a
    :class:`UserError` says how to install it.
    """
    config = config or MineRLConfig()
    if overrides:
        names = {f.name for f in dataclasses.fields(MineRLConfig)}
        unknown = sorted(set(overrides) - names)
        if unknown:
            raise UserError(f"unknown MineRL env settings {unknown}; known: {sorted(names)}")
        config = dataclasses.replace(config, **overrides)
    if env_factory is None and fake:
        from aimc.envs.fake_minerl import FakeMineRLEnv

        env_factory = FakeMineRLEnv
    if env_factory is None:
        try:
            import minerl  # noqa: F401
        except ImportError as e:
            raise UserError(f"{INSTALL_HINT} (import failed: {e})") from None
        env_factory = human_survival_factory(config)
    return MineRLEnv(env_factory, config=config, seed=seed)
