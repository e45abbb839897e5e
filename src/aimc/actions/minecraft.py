"""The Minecraft action space: MineRL env actions <-> factored policy actions <-> joint indices.

Three views of one action, all batched over any leading shape ``(...)``:

* **env** (MineRL 1.0 ``HumanSurvival``): 23 binary keys (:data:`ENV_BUTTONS`) plus
  ``camera`` = (pitch, yaw) in degrees.
* **factored**: the 20 buttons the policy knows (:data:`POLICY_BUTTONS`; ESC, pickItem
  and swapHands are dropped) and two camera bins in ``0..10`` (mu-law, 11 bins per axis).
* **joint** (what the policy heads predict): ``buttons`` in ``0..8640`` (a mixed-radix
  number over the button groups, 8640 = "inventory") and ``camera`` in ``0..120``
  (``11 * pitch_bin + yaw_bin``, 60 = no move).

Every rule reproduces VPT's ``ActionTransformer`` + ``CameraHierarchicalMapping`` exactly
(see the conformance README "Camera quantisation" and "Hierarchical joint action").
"""

from __future__ import annotations

import functools
import math
from collections.abc import Mapping

import numpy as np

from aimc.errors import UserError

# MineRL 1.0 action keys (besides "camera"), in MineRL's (sorted) order.
ENV_BUTTONS: tuple[str, ...] = (
    "ESC", "attack", "back", "drop", "forward",
    "hotbar.1", "hotbar.2", "hotbar.3", "hotbar.4", "hotbar.5",
    "hotbar.6", "hotbar.7", "hotbar.8", "hotbar.9",
    "inventory", "jump", "left", "pickItem", "right", "sneak", "sprint", "swapHands", "use",
)  # fmt: skip
# The policy's factored button order (VPT's ``Buttons.ALL``).
POLICY_BUTTONS: tuple[str, ...] = (
    "attack", "back", "forward", "jump", "left", "right", "sneak", "sprint", "use", "drop",
    "inventory", "hotbar.1", "hotbar.2", "hotbar.3", "hotbar.4", "hotbar.5", "hotbar.6",
    "hotbar.7", "hotbar.8", "hotbar.9",
)  # fmt: skip
# In MineRL but never seen nor produced by the policy.
DROPPED_ENV_BUTTONS: tuple[str, ...] = ("ESC", "pickItem", "swapHands")

# Camera quantisation (VPT's ACTION_TRANSFORMER_KWARGS).
CAMERA_MAXVAL = 10
CAMERA_BINSIZE = 2
CAMERA_MU = 10
N_CAMERA_BINS = 2 * CAMERA_MAXVAL // CAMERA_BINSIZE + 1  # 11
CAMERA_NULL_BIN = N_CAMERA_BINS // 2  # 5 = zero degrees

# Joint (hierarchical) action. Groups in mixed-radix order, most significant first;
# within a group, choice 0 is "none".
BUTTON_GROUPS: dict[str, tuple[str, ...]] = {
    "hotbar": ("none",) + tuple(f"hotbar.{i}" for i in range(1, 10)),
    "fore_back": ("none", "forward", "back"),
    "left_right": ("none", "left", "right"),
    "sprint_sneak": ("none", "sprint", "sneak"),
    "use": ("none", "use"),
    "drop": ("none", "drop"),
    "attack": ("none", "attack"),
    "jump": ("none", "jump"),
    "camera": ("none", "camera"),
}
GROUP_SIZES: tuple[int, ...] = tuple(len(g) for g in BUTTON_GROUPS.values())  # (10,3,3,3,2,2,2,2,2)
INVENTORY_JOINT = math.prod(GROUP_SIZES)  # 8640: "inventory" alone, appended after the combos
N_JOINT_BUTTONS = INVENTORY_JOINT + 1  # 8641
N_JOINT_CAMERA = N_CAMERA_BINS**2  # 121
NULL_JOINT_BUTTONS = 0
NULL_JOINT_CAMERA = CAMERA_NULL_BIN * N_CAMERA_BINS + CAMERA_NULL_BIN  # 60

_P = {name: i for i, name in enumerate(POLICY_BUTTONS)}
_RADIX_WEIGHTS = np.array([math.prod(GROUP_SIZES[i + 1 :]) for i in range(len(GROUP_SIZES))], dtype=np.int64)


class ActionError(UserError):
    """An action array has the wrong shape, keys or values."""


# ----------------------------------------------------------------------------- camera


def quantize_camera(degrees: np.ndarray) -> np.ndarray:
    """Camera degrees (..., 2) -> mu-law bins (..., 2) int64 in ``0..10``.

    Same operations, order and dtypes as VPT's ``CameraQuantizer.discretize``: a float32
    input is computed in float32 up to the log, then in float64 (numpy 2 promotion by the
    float64 ``log(1 + mu)``), which bins differently from float64 input near boundaries.
    Ties round half to even (``np.round``), so code -5 -> bin 2 and +5 -> bin 8.
    """
    x = np.asarray(degrees)
    if not np.issubdtype(x.dtype, np.floating):
        x = x.astype(np.float64)  # the original divides ints by maxval -> float64
    x = np.clip(x, -CAMERA_MAXVAL, CAMERA_MAXVAL)
    x = x / CAMERA_MAXVAL
    # Cast explicitly so numpy 1.x (value-based casting) promotes like numpy 2 did.
    log_ratio = np.log(1.0 + CAMERA_MU * np.abs(x)).astype(np.float64) / np.log(np.float64(1.0 + CAMERA_MU))
    v = np.sign(x).astype(np.float64) * log_ratio
    v = v * CAMERA_MAXVAL
    return np.round((v + CAMERA_MAXVAL) / CAMERA_BINSIZE).astype(np.int64)


def dequantize_camera(bins: np.ndarray) -> np.ndarray:
    """Camera bins (..., 2) -> degrees (..., 2) float64 at the bin centres (VPT ``undiscretize``)."""
    v = np.asarray(bins, dtype=np.int64) * CAMERA_BINSIZE - CAMERA_MAXVAL
    u = v / CAMERA_MAXVAL
    x = np.sign(u) * (1.0 / CAMERA_MU) * ((1.0 + CAMERA_MU) ** np.abs(u) - 1.0)
    return x * CAMERA_MAXVAL


# ----------------------------------------------------------------------------- joint


def factored_to_joint(buttons: np.ndarray, camera_bins: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Factored (buttons (..., 20), camera bins (..., 2)) -> joint (buttons (...), camera (...)) int64.

    Rules (VPT ``CameraHierarchicalMapping.from_factored``): forward+back together and
    left+right together mean neither; otherwise the later button of a group wins (sneak over
    sprint, hotbar.5 over hotbar.1); the camera group is "camera" unless both bins are the
    null bin; inventory overrides everything (joint 8640) and forces the camera to 60.
    """
    b = _check_buttons(buttons, len(POLICY_BUTTONS), "factored buttons") != 0  # (..., 20) bool
    cam = _check_bins(camera_bins)  # (..., 2)
    if b.shape[:-1] != cam.shape[:-1]:
        raise ActionError(f"buttons {b.shape} and camera bins {cam.shape} have different batch shapes")

    def later_wins(names: tuple[str, ...]) -> np.ndarray:  # choice index of the last pressed, 0 if none
        pressed = np.stack([b[..., _P[n]] for n in names], axis=-1)  # (..., k)
        return np.max(pressed * np.arange(1, len(names) + 1), axis=-1)

    def exclusive(a: str, c: str) -> np.ndarray:  # both pressed -> none
        pa, pc = b[..., _P[a]], b[..., _P[c]]
        return np.where(pa & pc, 0, pa * 1 + pc * 2)

    camera_on = ~((cam[..., 0] == CAMERA_NULL_BIN) & (cam[..., 1] == CAMERA_NULL_BIN))
    choices = np.stack(
        [
            later_wins(tuple(f"hotbar.{i}" for i in range(1, 10))),
            exclusive("forward", "back"),
            exclusive("left", "right"),
            later_wins(("sprint", "sneak")),
            b[..., _P["use"]],
            b[..., _P["drop"]],
            b[..., _P["attack"]],
            b[..., _P["jump"]],
            camera_on,
        ],
        axis=-1,
    ).astype(np.int64)  # (..., 9)
    joint_buttons = choices @ _RADIX_WEIGHTS
    joint_camera = cam[..., 0] * N_CAMERA_BINS + cam[..., 1]
    inventory = b[..., _P["inventory"]]
    joint_buttons = np.where(inventory, INVENTORY_JOINT, joint_buttons)
    joint_camera = np.where(inventory, NULL_JOINT_CAMERA, joint_camera)
    return joint_buttons.astype(np.int64), joint_camera.astype(np.int64)


@functools.lru_cache(maxsize=1)
def _button_tables() -> tuple[np.ndarray, np.ndarray]:
    idx = np.arange(INVENTORY_JOINT)
    digits = (idx[:, None] // _RADIX_WEIGHTS) % np.array(GROUP_SIZES)  # (8640, 9)
    table = np.zeros((N_JOINT_BUTTONS, len(POLICY_BUTTONS)), dtype=np.int8)
    for g, (group, names) in enumerate(BUTTON_GROUPS.items()):
        if group == "camera":
            continue
        for choice, name in enumerate(names[1:], start=1):
            table[:INVENTORY_JOINT, _P[name]] = digits[:, g] == choice
    table[INVENTORY_JOINT, _P["inventory"]] = 1
    camera_off = np.zeros(N_JOINT_BUTTONS, dtype=bool)
    camera_off[:INVENTORY_JOINT] = digits[:, -1] == 0  # 8640 keeps its camera (original behaviour)
    table.setflags(write=False)
    camera_off.setflags(write=False)
    return table, camera_off


def button_index_to_factored() -> np.ndarray:
    """The lookup table joint button index -> factored buttons, (8641, 20) int8 (read-only)."""
    return _button_tables()[0]


def button_index_to_camera_off() -> np.ndarray:
    """(8641,) bool: True where the button combo's camera group is "none" (bins become null)."""
    return _button_tables()[1]


def camera_index_to_factored() -> np.ndarray:
    """The lookup table joint camera index -> bins (pitch, yaw), (121, 2) int8."""
    idx = np.arange(N_JOINT_CAMERA)
    return np.stack([idx // N_CAMERA_BINS, idx % N_CAMERA_BINS], axis=-1).astype(np.int8)


def joint_to_factored(joint_buttons: np.ndarray, joint_camera: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Joint (buttons (...), camera (...)) -> factored (buttons (..., 20), camera bins (..., 2)) int64.

    If the button combo has camera "none", the bins become null (5, 5). For the inventory
    index 8640 the camera passes through unchanged, as in the original.
    """
    jb = _check_index(joint_buttons, N_JOINT_BUTTONS, "joint buttons")
    jc = _check_index(joint_camera, N_JOINT_CAMERA, "joint camera")
    if jb.shape != jc.shape:
        raise ActionError(f"joint buttons {jb.shape} and joint camera {jc.shape} have different shapes")
    table, camera_off = _button_tables()
    buttons = table[jb].astype(np.int64)
    bins = np.stack([jc // N_CAMERA_BINS, jc % N_CAMERA_BINS], axis=-1)
    bins = np.where(camera_off[jb][..., None], CAMERA_NULL_BIN, bins)
    return buttons, bins.astype(np.int64)


# ----------------------------------------------------------------------------- env


def env_to_factored(
    env_buttons: Mapping[str, np.ndarray] | np.ndarray, camera: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Env action -> factored (buttons (..., 20) int64, camera bins (..., 2) int64).

    ``env_buttons`` is a dict of MineRL keys -> (...) arrays (missing keys count as 0; a
    ``"camera"`` entry is used when ``camera`` is None) or an array (..., 23) in
    :data:`ENV_BUTTONS` order. ``camera`` is (..., 2) degrees (pitch, yaw).
    """
    if isinstance(env_buttons, Mapping):
        unknown = set(env_buttons) - set(ENV_BUTTONS) - {"camera"}
        if unknown:
            raise ActionError(f"unknown env action keys {sorted(unknown)}; expected MineRL keys {list(ENV_BUTTONS)}")
        if camera is None:
            if "camera" not in env_buttons:
                raise ActionError("env action has no 'camera': pass camera=(..., 2) degrees")
            camera = env_buttons["camera"]
        cam = np.asarray(camera)
        batch = cam.shape[:-1]
        cols = [np.broadcast_to(np.asarray(env_buttons.get(k, 0), dtype=np.int64), batch) for k in POLICY_BUTTONS]
        buttons = np.stack(cols, axis=-1) if cols else np.zeros(batch + (0,), np.int64)
    else:
        arr = _check_buttons(env_buttons, len(ENV_BUTTONS), "env buttons")
        if camera is None:
            raise ActionError("env buttons given as an array: pass camera=(..., 2) degrees too")
        cam = np.asarray(camera)
        buttons = arr[..., [ENV_BUTTONS.index(k) for k in POLICY_BUTTONS]]
    if cam.shape[-1:] != (2,) or cam.shape[:-1] != buttons.shape[:-1]:
        raise ActionError(f"camera must be (..., 2) matching the buttons' batch {buttons.shape[:-1]}, got {cam.shape}")
    return buttons.astype(np.int64), quantize_camera(cam)


def factored_to_env(
    buttons: np.ndarray, camera_bins: np.ndarray, include_dropped: bool = True
) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Factored -> env (dict key -> (...) int64, camera (..., 2) float64 degrees).

    With ``include_dropped`` the dict holds all 23 MineRL keys (ESC, pickItem, swapHands
    always 0) so it can be sent to MineRL as is; otherwise only the 20 policy buttons.
    """
    b = _check_buttons(buttons, len(POLICY_BUTTONS), "factored buttons").astype(np.int64)
    env = {k: b[..., i] for i, k in enumerate(POLICY_BUTTONS)}
    if include_dropped:
        zeros = np.zeros(b.shape[:-1], dtype=np.int64)
        env = {k: env.get(k, zeros) for k in ENV_BUTTONS}
    return env, dequantize_camera(_check_bins(camera_bins))


def env_to_policy(
    env_buttons: Mapping[str, np.ndarray] | np.ndarray, camera: np.ndarray | None = None
) -> dict[str, np.ndarray]:
    """Env action -> policy action ``{"buttons": int64 (...), "camera": int64 (...)}`` (joint indices)."""
    buttons, bins = env_to_factored(env_buttons, camera)
    jb, jc = factored_to_joint(buttons, bins)
    return {"buttons": jb, "camera": jc}


def policy_to_env(
    buttons: np.ndarray, camera: np.ndarray, include_dropped: bool = True
) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Policy joint indices (buttons (...), camera (...)) -> (env buttons dict, camera (..., 2) float64)."""
    fb, bins = joint_to_factored(buttons, camera)
    return factored_to_env(fb, bins, include_dropped=include_dropped)


def env_buttons_array(env_buttons: Mapping[str, np.ndarray], keys: tuple[str, ...] = ENV_BUTTONS) -> np.ndarray:
    """Stack a dict of env buttons into (..., len(keys)) int64 (missing keys = 0)."""
    first = next((np.asarray(env_buttons[k]) for k in keys if k in env_buttons), np.zeros(()))
    return np.stack([np.broadcast_to(np.asarray(env_buttons.get(k, 0), np.int64), first.shape) for k in keys], -1)


# ----------------------------------------------------------------------------- checks


def _check_buttons(buttons: np.ndarray, width: int, what: str) -> np.ndarray:
    arr = np.asarray(buttons)
    if arr.ndim == 0 or arr.shape[-1] != width:
        raise ActionError(f"{what} must have shape (..., {width}), got {arr.shape}")
    return arr


def _check_bins(bins: np.ndarray) -> np.ndarray:
    arr = np.asarray(bins)
    if arr.ndim == 0 or arr.shape[-1] != 2:
        raise ActionError(f"camera bins must have shape (..., 2), got {arr.shape}")
    if arr.size and (arr.min() < 0 or arr.max() >= N_CAMERA_BINS):
        raise ActionError(f"camera bins must be in 0..{N_CAMERA_BINS - 1}, got {arr.min()}..{arr.max()}")
    return arr.astype(np.int64, copy=False)


def _check_index(idx: np.ndarray, n: int, what: str) -> np.ndarray:
    arr = np.asarray(idx)
    if not np.issubdtype(arr.dtype, np.integer):
        raise ActionError(f"{what} must be integer indices, got dtype {arr.dtype}")
    if arr.size and (arr.min() < 0 or arr.max() >= n):
        raise ActionError(f"{what} must be in 0..{n - 1}, got {arr.min()}..{arr.max()}")
    return arr.astype(np.int64, copy=False)
