"""Your own recordings -> episodes (``aimc data convert custom``).

Input: a folder with one sub-folder per episode (or a single episode folder)::

    my_recordings/
      chop_tree_01/
        video.mp4              # any one video file (.mp4/.mkv/.avi/.webm), RGB gameplay, any size
                               #   ... or frames/000000.png, 000001.png, ... (sorted by name)
        actions.jsonl          # one JSON object per frame (the action taken at that frame)
                               #   ... or actions.npz with one array per key
        annotations.json       # optional: [{"start": 0, "end": 120, "text": "chop a tree"}]

Actions come in one of two forms:

* MineRL env actions: keys from ``aimc.actions.minecraft.ENV_BUTTONS`` (``forward``, ``attack``,
  ``hotbar.1``, ...; missing keys count as 0) and ``camera`` = [pitch, yaw] in degrees, e.g.
  ``{"forward": 1, "attack": 1, "camera": [0.0, 2.5]}``. Stored as policy joint indices
  ``buttons``/``camera`` plus ``env_buttons``/``env_camera``; frames are resized to 128x128 as
  the agent sees them (``--size``).
* One discrete action per frame (the built-in world): ``{"action": 3}`` -> stored as ``action``.

There must be exactly one action per frame. Goal embeddings are added later with ``aimc data embed``.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from aimc.data.converters.base import Job, JobResult
from aimc.data.store import EpisodeStore
from aimc.errors import UserError

CONVERTER_VERSION = 1
VIDEO_SUFFIXES = (".mp4", ".mkv", ".avi", ".webm", ".mov")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp")
ACTION_FILES = ("actions.jsonl", "actions.npz")


def _is_episode_dir(d: Path) -> bool:
    return any((d / a).is_file() for a in ACTION_FILES) or (d / "frames").is_dir() or any(
        p.suffix.lower() in VIDEO_SUFFIXES for p in d.iterdir() if p.is_file()
    )


def find_custom_episodes(folder: str | Path) -> tuple[list[Job], list[JobResult]]:
    """Episode folders at ``folder`` (itself one) or directly below it."""
    folder = Path(folder)
    if not folder.is_dir():
        raise UserError(f"{folder}: not a folder (expected episode folders with a video + actions.jsonl)")
    dirs = [folder] if _is_episode_dir(folder) else sorted(d for d in folder.iterdir() if d.is_dir() and not d.name.startswith("."))
    if not any(_is_episode_dir(d) for d in dirs):
        raise UserError(f"{folder}: no episode folders found here or directly below (each holds a video or frames/ "
                        "and actions.jsonl; see docs/data.md)")
    jobs, failed = [], []
    for d in dirs:
        if not _is_episode_dir(d):
            continue
        videos = [p for p in sorted(d.iterdir()) if p.is_file() and p.suffix.lower() in VIDEO_SUFFIXES]
        action_files = [d / a for a in ACTION_FILES if (d / a).is_file()]
        has_frames = (d / "frames").is_dir()
        if not action_files:
            failed.append(JobResult(d.name, "failed", "missing file actions.jsonl (or actions.npz)", sources={"dir": str(d)}))
        elif not videos and not has_frames:
            failed.append(JobResult(d.name, "failed", "missing video file or frames/ folder", sources={"dir": str(d)}))
        elif len(videos) + has_frames > 1:
            failed.append(JobResult(d.name, "failed", "several videos/frames folders: keep exactly one", sources={"dir": str(d)}))
        else:
            src = {"dir": str(d), "actions": str(action_files[0])}
            src["video" if videos else "frames"] = str(videos[0] if videos else d / "frames")
            jobs.append(Job(d.name, src))
    return jobs, failed


def read_frames(job: Job) -> np.ndarray:
    """RGB uint8 (N, H, W, 3) from the episode's video or frames folder."""
    if "video" in job.sources:
        from aimc.data.converters.steve1 import decode_rgb

        return decode_rgb(Path(job.sources["video"]))
    from PIL import Image

    files = sorted(p for p in Path(job.sources["frames"]).iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise UserError(f"{job.sources['frames']}: no image files ({', '.join(IMAGE_SUFFIXES)})")
    out = []
    for p in files:
        try:
            with Image.open(p) as im:
                out.append(np.asarray(im.convert("RGB")))
        except OSError as e:
            raise UserError(f"{p}: cannot read image ({e})") from None
    if len({a.shape for a in out}) > 1:
        raise UserError(f"{job.sources['frames']}: images have different sizes")
    return np.stack(out)


def read_actions(path: Path) -> dict[str, np.ndarray]:
    """actions.jsonl / actions.npz -> {key: (N, ...) array} (missing MineRL keys = 0)."""
    from aimc.actions.minecraft import ENV_BUTTONS

    allowed = set(ENV_BUTTONS) | {"camera", "action"}
    if path.suffix == ".npz":
        with np.load(path, allow_pickle=False) as z:
            cols = {k: np.asarray(z[k]) for k in z.files}
    else:
        rows = []
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except ValueError as e:
                raise UserError(f"{path}:{number}: not valid JSON ({e}); fix or remove the line") from None
            if not isinstance(rec, dict):
                raise UserError(f"{path}:{number}: expected a JSON object per line")
            rows.append(rec)
        keys = sorted({k for r in rows for k in r})
        cols = {}
        for k in keys:
            if k == "camera":
                cols[k] = np.array([r.get("camera", [0.0, 0.0]) for r in rows], dtype=np.float64)
            else:
                cols[k] = np.array([r.get(k, 0) for r in rows])
    unknown = set(cols) - allowed
    if unknown:
        raise UserError(f"{path}: unknown action keys {sorted(unknown)}; use MineRL keys + camera, or 'action'")
    if "action" in cols and len(cols) > 1:
        raise UserError(f"{path}: give either 'action' (discrete) or MineRL keys, not both")
    if not cols:
        raise UserError(f"{path}: no actions")
    return cols


def convert_custom_episode(job: Job, store: EpisodeStore) -> int:
    from aimc.actions.image import resize_to_agent
    from aimc.actions.minecraft import ENV_BUTTONS, env_to_policy

    frames = read_frames(job)
    cols = read_actions(Path(job.sources["actions"]))
    n_act = len(next(iter(cols.values())))
    if len(frames) != n_act:
        raise UserError(f"frame/action count mismatch: {len(frames)} frames, {n_act} actions (need one action per frame)")
    discrete = "action" in cols
    size = job.options.get("size", None if discrete else 128)
    if size and frames.shape[1:3] != (size, size):
        frames = resize_to_agent(frames, size)
    if discrete:
        act = np.asarray(cols["action"])
        if not np.issubdtype(act.dtype, np.integer) or act.ndim != 1 or (act < 0).any():
            raise UserError(f"{job.sources['actions']}: 'action' must be one non-negative integer per frame")
        actions = {"action": act.astype(np.int64)}
        heads = ["action"]
    else:
        n = len(frames)
        buttons = np.stack([np.asarray(cols.get(k, np.zeros(n)), dtype=np.int64).reshape(n) for k in ENV_BUTTONS], 1)
        camera = np.asarray(cols.get("camera", np.zeros((n, 2))), dtype=np.float64)
        if camera.shape != (n, 2):
            raise UserError(f"{job.sources['actions']}: camera must be [pitch, yaw] per frame, got shape {camera.shape}")
        pol = env_to_policy(buttons, camera)
        actions = {"buttons": pol["buttons"], "camera": pol["camera"], "env_buttons": buttons.astype(np.int8), "env_camera": camera}
        heads = ["buttons", "camera"]
    annotations = None
    ann_path = Path(job.sources["dir"]) / "annotations.json"
    if ann_path.is_file():
        try:
            annotations = json.loads(ann_path.read_text(encoding="utf-8"))
        except ValueError as e:
            raise UserError(f"{ann_path}: not valid JSON ({e})") from None
        if not isinstance(annotations, list):
            raise UserError(f"{ann_path}: expected a list of {{start, end, text}} objects")
    meta = {
        "source": {"kind": "custom", "dir": Path(job.sources["dir"]).name},
        "converter": "custom",
        "converter_version": CONVERTER_VERSION,
        "fps": float(job.options.get("fps", 20.0)),
        "policy_heads": heads,
    }
    if not discrete:
        meta["env_buttons_keys"] = list(ENV_BUTTONS)
    store.write_episode(job.episode_id, frames, actions, meta, annotations=annotations)
    return len(frames)
