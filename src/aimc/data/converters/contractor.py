"""VPT contractor recordings (``<name>.mp4`` + ``<name>.jsonl``) -> episodes.

The line conversion and the episode rules (null lines dropped, stuck attack, hotbar field,
cursor on GUI frames, 128x128 agent frames) are :func:`aimc.actions.contractor.load_contractor_episode`,
i.e. the data the official STEVE-1 weights were trained on. Each episode stores:

* ``buttons``, ``camera``: policy joint indices (N,) int64 - what the loader feeds the policy;
* ``env_buttons`` (N, 23) int8 in ``ENV_BUTTONS`` order and ``env_camera`` (N, 2) degrees;
* ``env_line_index`` (N,): the jsonl line (record index) each frame came from.

Recordings can come from a local folder or be downloaded from an official index file
(``{"basedir": URL prefix, "relpaths": ["data/6.13/x.mp4", ...]}``, listed in the VPT README).
"""

from __future__ import annotations

import json
import shutil
import urllib.parse
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from aimc.data.converters.base import Job, JobResult
from aimc.data.store import EpisodeStore
from aimc.errors import UserError
from aimc.utils.io import atomic_path

CONVERTER_VERSION = 1
INDEX_BASE = "https://openaipublic.blob.core.windows.net/minecraft-rl/snapshots/"
OFFICIAL_INDEXES = {  # the index files named in the VPT README
    "6xx": INDEX_BASE + "all_6xx_Jun_29.json",
    "7xx": INDEX_BASE + "all_7xx_Apr_6.json",
    "8xx": INDEX_BASE + "all_8xx_Jun_29.json",
    "9xx": INDEX_BASE + "all_9xx_Jun_29.json",
    "10xx": INDEX_BASE + "all_10xx_Jun_29.json",
}


def find_recordings(folder: str | Path) -> tuple[list[Job], list[JobResult]]:
    """Pair every ``x.mp4`` with ``x.jsonl`` below ``folder``; a file without its partner is reported."""
    folder = Path(folder)
    if not folder.is_dir():
        raise UserError(f"{folder}: not a folder of contractor recordings (.mp4 + .jsonl pairs)")
    videos = {p.with_suffix(""): p for p in folder.rglob("*.mp4")}
    logs = {p.with_suffix(""): p for p in folder.rglob("*.jsonl")}
    if not videos and not logs:
        raise UserError(f"{folder}: no contractor recordings found in this folder or below (x.mp4 + x.jsonl pairs)")
    jobs, failed = [], []
    for stem in sorted(set(videos) | set(logs)):
        eid = stem.name
        if stem not in logs:
            failed.append(JobResult(eid, "failed", f"missing file {stem.name}.jsonl beside the video", sources={"video": str(videos[stem])}))
        elif stem not in videos:
            failed.append(JobResult(eid, "failed", f"missing file {stem.name}.mp4 beside the jsonl", sources={"jsonl": str(logs[stem])}))
        else:
            jobs.append(Job(eid, {"video": str(videos[stem]), "jsonl": str(logs[stem])}))
    return sorted(jobs, key=lambda j: j.episode_id), failed


def convert_recording(job: Job, store: EpisodeStore) -> int:
    """Convert one recording pair into the store; returns the number of frames kept."""
    from aimc.actions.contractor import load_contractor_episode
    from aimc.actions.minecraft import ENV_BUTTONS

    fix_quirks = bool(job.options.get("fix_quirks", False))
    max_missing = int(job.options.get("max_missing_frames", 0))
    model = None
    if job.options.get("mineclip"):
        model = _mineclip(job.options["mineclip"], job.options.get("device"))
    ep = load_contractor_episode(
        job.sources["video"], job.sources["jsonl"], fix_quirks=fix_quirks,
        mineclip_size=tuple(model.cfg.resolution) if model is not None else None,
    )
    stats = dict(ep.stats)
    if stats.get("missing_frames", 0) > max_missing:
        raise UserError(
            f"frame/action count mismatch: the video has {stats['lines'] - stats['missing_frames']} frames for "
            f"{stats['lines']} jsonl lines (truncated video?); allow with --max-missing-frames"
        )
    n = len(ep.frames)
    if n == 0:
        raise UserError(f"no frames kept: all {stats.get('lines', 0)} lines are null actions or the video is empty")
    env_buttons = np.stack([ep.env_actions[k] for k in ENV_BUTTONS], axis=1).astype(np.int8)  # (N, 23)
    actions = {
        "buttons": ep.policy_actions["buttons"].astype(np.int64),
        "camera": ep.policy_actions["camera"].astype(np.int64),
        "env_buttons": env_buttons,
        "env_camera": np.asarray(ep.env_actions["camera"]),
        "env_line_index": ep.line_index.astype(np.int64),
    }
    meta = {
        "source": {"kind": "contractor", "video": Path(job.sources["video"]).name, "jsonl": Path(job.sources["jsonl"]).name},
        "converter": "contractor",
        "converter_version": CONVERTER_VERSION,
        "fps": 20.0,
        "fix_quirks": fix_quirks,
        "contractor_stats": stats,
        "policy_heads": ["buttons", "camera"],
        "env_buttons_keys": list(ENV_BUTTONS),
    }
    emb = valid = None
    if model is not None:
        from aimc.models.mineclip import embed_episode

        # the original's way: MineCLIP sees the full-resolution frames (cursor drawn), resized to 160x256
        emb, valid = embed_episode(model, ep.frames_mineclip, batch_size=int(job.options.get("batch_size", 64)),
                                   device=job.options.get("device"))
        meta["embeddings_info"] = {"model": "mineclip", "window": 16, "from": "source frames",
                                   "weights": Path(job.options["mineclip"]).name}
    store.write_episode(job.episode_id, ep.frames, actions, meta, embeddings=emb, embed_valid=valid)
    return n


_MODELS: dict[tuple[str, str | None], object] = {}  # one MineCLIP per worker process


def _mineclip(path: str, device: str | None):
    key = (str(path), device)
    if key not in _MODELS:
        from aimc.checkpoints.mineclip import load_mineclip

        model = load_mineclip(path, map_location="cpu").eval()
        _MODELS[key] = model.to(device) if device else model
    return _MODELS[key]


# --------------------------------------------------------------------------- download


def read_index(index: str) -> tuple[str, list[str]]:
    """An index file (local path, URL or one of OFFICIAL_INDEXES' names) -> (basedir, mp4 relpaths)."""
    src = OFFICIAL_INDEXES.get(index, index)
    try:
        if urllib.parse.urlparse(src).scheme in ("http", "https"):
            with urllib.request.urlopen(src, timeout=60) as r:
                doc = json.loads(r.read().decode("utf-8"))
        else:
            doc = json.loads(Path(src).read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise UserError(f"{src}: cannot read the index file ({e}); is the network up / the path right?") from e
    if not isinstance(doc, dict) or "basedir" not in doc or "relpaths" not in doc:
        raise UserError(f"{src}: not a VPT index file (expected {{'basedir': ..., 'relpaths': [...]}})")
    return str(doc["basedir"]), [str(p) for p in doc["relpaths"] if str(p).endswith(".mp4")]


def download_file(url: str, dest: Path, timeout: float = 120.0) -> Path:
    """Download ``url`` to ``dest`` atomically; an existing ``dest`` is kept (resume)."""
    if dest.is_file() and dest.stat().st_size > 0:
        return dest
    with atomic_path(dest) as tmp:
        with urllib.request.urlopen(url, timeout=timeout) as r, open(tmp, "wb") as f:
            shutil.copyfileobj(r, f, 1 << 20)
    return dest


def download_recordings(
    index: str, out_dir: str | Path, limit: int | None = None, offset: int = 0, threads: int = 4
) -> tuple[list[Job], list[JobResult]]:
    """Download ``limit`` recordings (mp4 + jsonl) of an index into ``out_dir``; returns jobs + failures."""
    basedir, relpaths = read_index(index)
    relpaths = relpaths[offset : None if limit is None else offset + limit]
    out_dir = Path(out_dir)
    base = basedir if basedir.endswith("/") else basedir + "/"

    def fetch(rel: str) -> Job | JobResult:
        eid = Path(rel).stem
        video = out_dir / Path(rel).name
        jsonl = video.with_suffix(".jsonl")
        try:
            download_file(urllib.parse.urljoin(base, rel), video)
            download_file(urllib.parse.urljoin(base, rel[: -len(".mp4")] + ".jsonl"), jsonl)
        except OSError as e:
            return JobResult(eid, "failed", f"download failed: {e}", sources={"url": base + rel})
        return Job(eid, {"video": str(video), "jsonl": str(jsonl)})

    with ThreadPoolExecutor(max_workers=max(1, threads)) as pool:
        got = list(pool.map(fetch, relpaths))
    return [g for g in got if isinstance(g, Job)], [g for g in got if isinstance(g, JobResult)]
