"""VPT contractor recordings (``.mp4`` + ``.jsonl``) -> env actions and agent frames.

Each jsonl line records the keyboard/mouse state during one video frame. The conversion
reproduces STEVE-1's ``json_action_to_env_action`` and ``load_episode`` (the data the
official weights were trained on), quirks included; ``fix_quirks=True`` gives the corrected
behaviour instead. The quirks (see docs/quirks.md, "Actions and contractor data"):

1. The camera is stored into an int64 array: ``[dy, dx] * 0.15`` degrees is truncated toward
   zero (moves under 7 px become 0, -1.8 deg becomes -1). Fixed: float degrees.
2. The ">180 deg -> 0" guard only runs when dx = dy = 0, so it never does anything.
   Fixed: applied to every line (a glitch jump of more than 180 deg becomes 0).
3. A hotbar change seen only in the ``hotbar`` field (scroll wheel) sets ``hotbar.N`` but
   does not make a null line non-null, so the line is dropped. Fixed: such a line is kept.

Frames are streamed: the video is decoded one frame at a time and only the resized
frames are kept, so an episode never needs its full-resolution video in memory.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any, NamedTuple

import cv2
import numpy as np

from aimc.actions.image import MINECLIP_RESOLUTION, resize_for_mineclip, resize_to_agent
from aimc.actions.minecraft import ENV_BUTTONS, env_to_policy
from aimc.errors import UserError

CAMERA_DEG_PER_PIXEL = 360.0 / 2400.0  # 0.15 deg per mouse pixel
RECORDING_HEIGHT_PX = 720  # mouse x/y are in the recorder's 1280x720 screen coordinates
KEYBOARD_TO_ENV: dict[str, str] = {
    "key.keyboard.escape": "ESC",
    "key.keyboard.s": "back",
    "key.keyboard.q": "drop",
    "key.keyboard.w": "forward",
    **{f"key.keyboard.{i}": f"hotbar.{i}" for i in range(1, 10)},
    "key.keyboard.e": "inventory",
    "key.keyboard.space": "jump",
    "key.keyboard.a": "left",
    "key.keyboard.d": "right",
    "key.keyboard.left.shift": "sneak",
    "key.keyboard.left.control": "sprint",
    "key.keyboard.f": "swapHands",
}
MOUSE_BUTTON_TO_ENV: dict[int, str] = {0: "attack", 1: "use", 2: "pickItem"}
_COL = {k: i for i, k in enumerate(ENV_BUTTONS)}
_CURSOR_FILE = "mouse_cursor_16x16_bgra.npy"


class ContractorDataError(UserError):
    """A contractor recording (jsonl line or video) cannot be read; the message names file and line."""


# ----------------------------------------------------------------------------- jsonl


def read_jsonl(source: str | Path | Iterable[str]) -> Iterator[tuple[int, dict[str, Any]]]:
    """Yield ``(line_number, record)`` (1-based numbers) from a jsonl path or an iterable of lines.

    Blank lines are skipped. A line that is not a JSON object raises
    :class:`ContractorDataError` naming the file and line.
    """
    name = str(source) if isinstance(source, (str, Path)) else "<jsonl lines>"
    if isinstance(source, (str, Path)):
        if not Path(source).is_file():
            raise ContractorDataError(f"{name}: no such jsonl file")
        try:
            lines: Iterable[str] = Path(source).read_text(encoding="utf-8").splitlines()
        except UnicodeDecodeError as e:
            raise ContractorDataError(f"{name}: not UTF-8 text ({e.reason} at byte {e.start}); not a jsonl file?") from None
    else:
        lines = source
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as e:
            raise ContractorDataError(
                f"{name}:{number}: not valid JSON ({e.msg} at column {e.colno}); the recording is "
                "corrupt or truncated: re-download it or leave this episode out"
            ) from None
        if not isinstance(record, dict):
            raise ContractorDataError(f"{name}:{number}: expected a JSON object, got {type(record).__name__}")
        yield number, record


def _field(record: dict[str, Any], path: str, where: str) -> Any:
    value: Any = record
    for key in path.split("."):
        if not isinstance(value, dict) or key not in value:
            raise ContractorDataError(f"{where}: missing field '{path}' (not a VPT contractor recording line?)")
        value = value[key]
    return value


# ----------------------------------------------------------------------------- one line


def env_action_from_record(
    record: dict[str, Any], fix_quirks: bool = False, where: str = "<record>"
) -> tuple[np.ndarray, np.ndarray, bool]:
    """One jsonl record -> (buttons (23,) int64 in ENV_BUTTONS order, camera (2,), is_null).

    The camera is (pitch, yaw) = (dy, dx) * 0.15 degrees: int64 truncated toward zero as
    the original, or float64 with ``fix_quirks``. The line is null unless a mapped key is
    down, the mouse moved, or mouse button 0/1/2 is down. The ``hotbar`` field is not used
    here (see :func:`iter_contractor_steps`).
    """
    keys = _field(record, "keyboard.keys", where)
    mouse = _field(record, "mouse", where)
    if not isinstance(keys, list):
        raise ContractorDataError(f"{where}: 'keyboard.keys' must be a list, got {type(keys).__name__}")
    buttons = np.zeros(len(ENV_BUTTONS), dtype=np.int64)
    is_null = True
    for key in keys:
        if key in KEYBOARD_TO_ENV:
            buttons[_COL[KEYBOARD_TO_ENV[key]]] = 1
            is_null = False
    try:
        dx, dy = float(_field(mouse, "dx", where)), float(_field(mouse, "dy", where))
        pressed = [int(b) for b in _field(mouse, "buttons", where)]
    except (TypeError, ValueError):
        raise ContractorDataError(f"{where}: mouse dx/dy/buttons are not numbers") from None
    degrees = np.array([dy * CAMERA_DEG_PER_PIXEL, dx * CAMERA_DEG_PER_PIXEL])
    if dx != 0 or dy != 0:
        is_null = False
    if fix_quirks:
        camera = np.where(np.abs(degrees) > 180, 0.0, degrees)
    else:
        # Quirk 1: stored into an int64 array (truncation toward zero); quirk 2: the >180
        # guard sits in the dx == dy == 0 branch where the camera is already 0.
        camera = degrees.astype(np.int64)
    for b, name in MOUSE_BUTTON_TO_ENV.items():
        if b in pressed:
            buttons[_COL[name]] = 1
            is_null = False
    return buttons, camera, is_null


def json_action_to_env_action(record: dict[str, Any], fix_quirks: bool = False) -> tuple[dict[str, Any], bool]:
    """One jsonl record -> (MineRL action dict with 23 keys + ``camera``, is_null)."""
    buttons, camera, is_null = env_action_from_record(record, fix_quirks)
    action: dict[str, Any] = {k: int(v) for k, v in zip(ENV_BUTTONS, buttons)}
    action["camera"] = camera
    return action, is_null


def records_to_env_actions(
    records: Iterable[dict[str, Any]], fix_quirks: bool = False
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-line conversion without the episode rules -> (buttons (N, 23), camera (N, 2), is_null (N,))."""
    rows = [env_action_from_record(r, fix_quirks, where=f"<record {i}>") for i, r in enumerate(records)]
    if not rows:
        cam_dtype = np.float64 if fix_quirks else np.int64
        return np.zeros((0, len(ENV_BUTTONS)), np.int64), np.zeros((0, 2), cam_dtype), np.zeros(0, bool)
    return (
        np.stack([r[0] for r in rows]),
        np.stack([r[1] for r in rows]),
        np.array([r[2] for r in rows], dtype=bool),
    )


# ----------------------------------------------------------------------------- cursor


def load_cursor() -> np.ndarray:
    """The 16x16 BGRA mouse cursor the original draws on GUI frames, (16, 16, 4) uint8."""
    with resources.as_file(resources.files("aimc") / "assets" / _CURSOR_FILE) as path:
        return np.load(path)


def overlay_cursor(frame_bgr: np.ndarray, x: int, y: int, cursor_bgra: np.ndarray) -> None:
    """Alpha-blend the cursor onto ``frame_bgr`` (H, W, 3) uint8 in place, top-left at (x, y).

    ``frame * (1 - a) + cursor * a`` in float64 with ``a = alpha / 255``, truncated to uint8,
    clipped at the frame's edges. (The original only clips at the right/bottom edges and
    fails for negative positions; here the visible part is drawn.)
    """
    h, w = frame_bgr.shape[:2]
    ch, cw = cursor_bgra.shape[:2]
    x0, y0 = max(x, 0), max(y, 0)
    x1, y1 = min(x + cw, w), min(y + ch, h)
    if x1 <= x0 or y1 <= y0:
        return
    patch = cursor_bgra[y0 - y : y1 - y, x0 - x : x1 - x]
    alpha = patch[:, :, 3:] / 255.0  # (h', w', 1) float64
    region = frame_bgr[y0:y1, x0:x1, :]
    frame_bgr[y0:y1, x0:x1, :] = (region * (1 - alpha) + patch[:, :, :3] * alpha).astype(np.uint8)


# ----------------------------------------------------------------------------- video


def iter_video_frames_bgr(path: str | Path) -> Iterator[np.ndarray]:
    """Decode an mp4 one frame at a time -> (H, W, 3) uint8 BGR (as ``cv2.VideoCapture.read``).

    PyAV's ``bgr24`` conversion gives the same bytes as OpenCV's reader on H.264 and MPEG-4
    (tests/test_actions_contractor.py checks this).
    """
    import av  # heavy import, only needed when decoding

    path = Path(path)
    if not path.is_file():
        raise ContractorDataError(f"{path}: no such video file")
    try:
        container = av.open(str(path))
    except av.FFmpegError as e:
        raise ContractorDataError(f"{path}: cannot open video ({e}); re-download it or leave it out") from None
    with container:
        try:
            if not container.streams.video:
                raise ContractorDataError(f"{path}: has no video stream")
            stream = container.streams.video[0]
            stream.thread_type = "AUTO"  # threaded decoding; the frames are the same bytes
            for frame in container.decode(stream):
                yield frame.to_ndarray(format="bgr24")
        except av.FFmpegError as e:
            raise ContractorDataError(f"{path}: video is corrupt or truncated ({e})") from None


# ----------------------------------------------------------------------------- episode


@dataclass
class ContractorStep:
    """One kept line of a recording."""

    line_index: int  # index of the record among the jsonl's (non-blank) lines
    frame_rgb: np.ndarray  # (H, W, 3) uint8, cursor drawn when the GUI is open
    env_buttons: np.ndarray  # (23,) int64 in ENV_BUTTONS order
    camera: np.ndarray  # (2,) (pitch, yaw) degrees: int64, or float64 with fix_quirks


def iter_contractor_steps(
    frames_bgr: Iterable[np.ndarray],
    records: Iterable[dict[str, Any]] | Iterable[tuple[int, dict[str, Any]]],
    fix_quirks: bool = False,
    cursor_bgra: np.ndarray | None = None,
    stats: dict[str, int] | None = None,
    source: str = "<jsonl>",
) -> Iterator[ContractorStep]:
    """Pair each record with its frame and yield the kept (non-null) steps, as ``load_episode``.

    Rules: if line 0 has ``newButtons == [0]`` attack is stuck and button 0 is removed from
    every line until a line has 0 in ``newButtons``; a change of the ``hotbar`` field
    (previous value starts at 0) sets ``hotbar.{h+1}``; a frame is consumed for every line
    and null lines are skipped; GUI frames get the cursor at ``(int(x * H/720), int(y * H/720))``.
    Records may be dicts or ``(line_number, dict)`` pairs from :func:`read_jsonl`.
    ``stats`` (if given) is filled with counts: lines, kept, null, missing_frames.
    """
    cursor = load_cursor() if cursor_bgra is None else cursor_bgra
    counts = stats if stats is not None else {}
    counts.update(lines=0, kept=0, null=0, missing_frames=0)
    frames = iter(frames_bgr)
    attack_stuck = False
    last_hotbar = 0
    for index, item in enumerate(records):
        number, record = item if isinstance(item, tuple) else (index + 1, item)
        where = f"{source}:{number}"
        counts["lines"] += 1
        try:
            mouse = _field(record, "mouse", where)
            if index == 0:
                attack_stuck = _field(mouse, "newButtons", where) == [0]
            elif attack_stuck and 0 in _field(mouse, "newButtons", where):
                attack_stuck = False
            if attack_stuck:  # copy: never edit the caller's records
                unstuck = [b for b in _field(mouse, "buttons", where) if b != 0]
                record = {**record, "mouse": {**mouse, "buttons": unstuck}}

            buttons, camera, is_null = env_action_from_record(record, fix_quirks, where)
            hotbar = _field(record, "hotbar", where)
            if not isinstance(hotbar, int) or not 0 <= hotbar <= 8:
                raise ContractorDataError(f"{where}: 'hotbar' must be an integer 0..8, got {hotbar!r}")
            if hotbar != last_hotbar:
                buttons[_COL[f"hotbar.{hotbar + 1}"]] = 1
                if fix_quirks:  # quirk 3: the original keeps is_null from before the hotbar update
                    is_null = False
            last_hotbar = hotbar
            gui_open = bool(_field(record, "isGuiOpen", where)) if not is_null else False
            if gui_open:
                cursor_xy = float(_field(record, "mouse.x", where)), float(_field(record, "mouse.y", where))
        except (TypeError, ValueError, AttributeError) as e:
            raise ContractorDataError(f"{where}: malformed line ({type(e).__name__}: {e})") from None

        frame = next(frames, None)  # read a frame even for null lines to stay in sync
        if frame is None:
            counts["missing_frames"] += 1  # the original skips such lines ("could not read frame")
            continue
        if is_null:
            counts["null"] += 1
            continue
        frame = np.array(frame, dtype=np.uint8, copy=True)
        if frame.ndim != 3 or frame.shape[2] != 3:
            raise ContractorDataError(f"{where}: video frame must be (H, W, 3), got {frame.shape}")
        if gui_open:
            scale = frame.shape[0] / RECORDING_HEIGHT_PX
            overlay_cursor(frame, int(cursor_xy[0] * scale), int(cursor_xy[1] * scale), cursor)
        counts["kept"] += 1
        yield ContractorStep(index, cv2.cvtColor(frame, cv2.COLOR_BGR2RGB), buttons, camera)


class ContractorEpisode(NamedTuple):
    """A converted recording; unpacks as ``frames, env_actions, policy_actions, ...``."""

    frames: np.ndarray  # (N, S, S, 3) uint8 RGB agent frames (S = 128)
    env_actions: dict[str, np.ndarray]  # 23 MineRL keys -> (N,) int64, "camera" -> (N, 2)
    policy_actions: dict[str, np.ndarray]  # {"buttons": (N,), "camera": (N,)} int64 joint indices
    line_index: np.ndarray  # (N,) int64 kept jsonl line (record) indices
    frames_mineclip: np.ndarray | None  # (N, 3, 160, 256) uint8 when requested
    stats: dict[str, int]  # lines, kept, null, missing_frames


def load_contractor_episode(
    video: str | Path | Iterable[np.ndarray],
    jsonl: str | Path | Iterable[str] | list[dict[str, Any]],
    fix_quirks: bool = False,
    agent_size: int = 128,
    mineclip_size: tuple[int, int] | None = None,
    cursor_bgra: np.ndarray | None = None,
) -> ContractorEpisode:
    """Convert one recording: ``video`` is an mp4 path or BGR frames, ``jsonl`` a path or lines/records.

    ``mineclip_size=(160, 256)`` also returns the MineCLIP frames (N, 3, h, w) as STEVE-1's
    ``load_episode`` does. Raises :class:`ContractorDataError` on broken input.
    """
    source = str(jsonl) if isinstance(jsonl, (str, Path)) else "<jsonl>"
    if isinstance(jsonl, (str, Path)):
        records: Iterable[Any] = read_jsonl(jsonl)
    else:
        items = list(jsonl)
        records = read_jsonl(items) if items and isinstance(items[0], str) else items
    frames_bgr = iter_video_frames_bgr(video) if isinstance(video, (str, Path)) else video

    agent, mineclip, buttons, cameras, lines = [], [], [], [], []
    stats: dict[str, int] = {}
    for step in iter_contractor_steps(frames_bgr, records, fix_quirks, cursor_bgra, stats, source):
        agent.append(resize_to_agent(step.frame_rgb, agent_size))
        if mineclip_size is not None:
            mineclip.append(resize_for_mineclip(step.frame_rgb, mineclip_size).transpose(2, 0, 1))
        buttons.append(step.env_buttons)
        cameras.append(step.camera)
        lines.append(step.line_index)

    n = len(lines)
    cam_dtype = np.float64 if fix_quirks else np.int64
    button_arr = np.stack(buttons) if n else np.zeros((0, len(ENV_BUTTONS)), np.int64)
    camera_arr = np.stack(cameras).astype(cam_dtype) if n else np.zeros((0, 2), cam_dtype)
    env_actions = {k: button_arr[:, i] for i, k in enumerate(ENV_BUTTONS)}
    env_actions["camera"] = camera_arr
    frames = np.stack(agent) if n else np.zeros((0, agent_size, agent_size, 3), np.uint8)
    frames_mc = None
    if mineclip_size is not None:
        h, w = mineclip_size
        frames_mc = np.stack(mineclip) if n else np.zeros((0, 3, h, w), np.uint8)
    return ContractorEpisode(
        frames=frames,
        env_actions=env_actions,
        policy_actions=env_to_policy(button_arr, camera_arr),
        line_index=np.asarray(lines, dtype=np.int64),
        frames_mineclip=frames_mc,
        stats=stats,
    )


__all__ = [
    "CAMERA_DEG_PER_PIXEL",
    "MINECLIP_RESOLUTION",
    "ContractorDataError",
    "ContractorEpisode",
    "ContractorStep",
    "env_action_from_record",
    "iter_contractor_steps",
    "iter_video_frames_bgr",
    "json_action_to_env_action",
    "load_contractor_episode",
    "load_cursor",
    "overlay_cursor",
    "read_jsonl",
    "records_to_env_actions",
]
