"""STEVE-1 episode folders -> episodes.

A STEVE-1 episode folder (written by its ``EpisodeStorage``) holds:

* ``frames.mp4``: the 128x128 agent frames (written from BGR with OpenCV; decoded here to RGB);
* ``actions.pkl``: a pickled list of MineRL env-action dicts, one per frame;
* ``embeds_attn.pkl``: a pickled list, one entry per frame: ``None`` for the first 15 frames,
  else a float32 (1, 512) MineCLIP embedding of the 16 frames ending at that frame;
* ``len.txt``: the episode length (min of the three lengths when written);
* ``metadata.json``: free-form information.

The pickles are read with :func:`aimc.checkpoints.safe_load.load_plain_pickle` (plain data only,
nothing from the file is executed). Actions become policy joint indices (``buttons``,
``camera``) plus ``env_buttons`` (N, 23) and ``env_camera`` (N, 2); embeddings and their
validity mask are kept as they are.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from aimc.data.converters.base import Job, JobResult
from aimc.data.store import EpisodeStore
from aimc.errors import UserError

CONVERTER_VERSION = 1
EPISODE_FILES = ("frames.mp4", "actions.pkl", "embeds_attn.pkl")


def find_episodes(folder: str | Path) -> tuple[list[Job], list[JobResult]]:
    """Every folder at or below ``folder`` that holds any STEVE-1 episode file."""
    folder = Path(folder)
    if not folder.is_dir():
        raise UserError(f"{folder}: not a folder of STEVE-1 episodes")
    dirs = sorted({p.parent for name in EPISODE_FILES for p in folder.rglob(name)})
    if not dirs:
        raise UserError(f"{folder}: no STEVE-1 episodes found in this folder or below (episode folders hold "
                        f"{', '.join(EPISODE_FILES)})")
    jobs, failed = [], []
    for d in dirs:
        missing = [f for f in EPISODE_FILES if not (d / f).is_file()]
        if missing:
            failed.append(JobResult(d.name, "failed", f"missing file(s) {', '.join(missing)}", sources={"dir": str(d)}))
        else:
            jobs.append(Job(d.name, {"dir": str(d)}))
    return jobs, failed


def decode_rgb(path: Path, max_frames: int | None = None) -> np.ndarray:
    """All frames of an mp4 as RGB uint8 (N, H, W, 3); raises UserError if it cannot be read."""
    import av

    frames = []
    try:
        with av.open(str(path)) as c:
            for f in c.decode(video=0):
                frames.append(f.to_ndarray(format="rgb24"))
                if max_frames is not None and len(frames) >= max_frames:
                    break
    except (av.FFmpegError, OSError) as e:  # type: ignore[attr-defined]
        raise UserError(f"{path}: video is corrupt or truncated ({e})") from None
    if not frames:
        raise UserError(f"{path}: video holds no frames")
    return np.stack(frames)


def env_action_arrays(actions: list, where: str) -> tuple[np.ndarray, np.ndarray]:
    """MineRL env-action dicts -> (buttons (N, 23) int64 in ENV_BUTTONS order, camera (N, 2) float64)."""
    from aimc.actions.minecraft import ENV_BUTTONS

    n = len(actions)
    buttons = np.zeros((n, len(ENV_BUTTONS)), dtype=np.int64)
    camera = np.zeros((n, 2), dtype=np.float64)
    for i, a in enumerate(actions):
        if not isinstance(a, dict):
            raise UserError(f"{where}: action {i} is a {type(a).__name__}, expected a MineRL action dict")
        for j, k in enumerate(ENV_BUTTONS):
            if k in a:
                buttons[i, j] = int(np.asarray(a[k]).reshape(-1)[0])
        if "camera" in a:
            cam = np.asarray(a["camera"], dtype=np.float64).reshape(-1)
            if cam.shape != (2,):
                raise UserError(f"{where}: action {i} camera has shape {np.shape(a['camera'])}, expected (2,)")
            camera[i] = cam
    return buttons, camera


def embeddings_from_list(embeds: list, n: int, where: str) -> tuple[np.ndarray, np.ndarray] | None:
    """STEVE-1's list of None / (1, D) arrays -> (emb float32 (n, D), valid (n,)); None if all None."""
    valid = np.array([e is not None for e in embeds[:n]], dtype=bool)
    if not valid.any():
        return None
    first = next(e for e in embeds[:n] if e is not None)
    d = int(np.asarray(first).size)
    emb = np.zeros((n, d), dtype=np.float32)
    for i in np.nonzero(valid)[0]:
        row = np.asarray(embeds[i], dtype=np.float32).reshape(-1)
        if row.size != d:
            raise UserError(f"{where}: embedding {i} has {row.size} values, the first has {d}")
        emb[i] = row
    return emb, valid


def convert_episode_folder(job: Job, store: EpisodeStore) -> int:
    """Convert one STEVE-1 episode folder; returns its number of frames."""
    from aimc.actions.minecraft import ENV_BUTTONS, env_to_policy
    from aimc.checkpoints.safe_load import load_plain_pickle

    d = Path(job.sources["dir"])
    actions = load_plain_pickle(d / "actions.pkl")
    embeds = load_plain_pickle(d / "embeds_attn.pkl")
    if not isinstance(actions, list) or not isinstance(embeds, list):
        raise UserError(f"{d}: actions.pkl and embeds_attn.pkl must each hold a list (one entry per frame)")
    n = None
    if (d / "len.txt").is_file():
        try:
            n = int((d / "len.txt").read_text().strip())
        except ValueError:
            raise UserError(f"{d / 'len.txt'}: not an integer") from None
    frames = decode_rgb(d / "frames.mp4", max_frames=n)
    if n is None:
        n = min(len(frames), len(actions), len(embeds))
    if not (len(frames) >= n and len(actions) >= n and len(embeds) >= n) or n <= 0:
        raise UserError(
            f"frame/action count mismatch: len.txt says {n}, frames.mp4 has {len(frames)}, actions.pkl "
            f"{len(actions)}, embeds_attn.pkl {len(embeds)}"
        )
    buttons, camera = env_action_arrays(actions[:n], str(d / "actions.pkl"))
    policy = env_to_policy(buttons, camera)
    emb = embeddings_from_list(embeds, n, str(d / "embeds_attn.pkl"))
    meta_src: dict = {"kind": "steve1", "dir": d.name}
    if (d / "metadata.json").is_file():
        try:
            meta_src["metadata"] = json.loads((d / "metadata.json").read_text(encoding="utf-8"))
        except ValueError:
            meta_src["metadata_error"] = "metadata.json is not valid JSON"
    meta = {
        "source": meta_src,
        "converter": "steve1",
        "converter_version": CONVERTER_VERSION,
        "fps": 20.0,
        "policy_heads": ["buttons", "camera"],
        "env_buttons_keys": list(ENV_BUTTONS),
        "embeddings_info": {"model": "mineclip", "source": "embeds_attn.pkl", "window": 16},
    }
    acts = {
        "buttons": policy["buttons"].astype(np.int64),
        "camera": policy["camera"].astype(np.int64),
        "env_buttons": buttons.astype(np.int8),
        "env_camera": camera,
    }
    store.write_episode(
        job.episode_id, frames[:n], acts, meta, embeddings=None if emb is None else emb[0], embed_valid=None if emb is None else emb[1]
    )
    return n
