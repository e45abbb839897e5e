"""Integrity checks and statistics of a store (``aimc data check``, ``aimc data stats``)."""

from __future__ import annotations

import json
import os
from collections import Counter

import numpy as np

from aimc.data.converters.base import QUARANTINE_FILE
from aimc.data.relabel import NONE_EMBED_OFFSET
from aimc.data.split import SPLIT_FILE, load_split
from aimc.data.store import EpisodeStore, StoreError


def check_store(store: EpisodeStore, deep: bool = False, min_frames: int = 0, require_embeddings: bool = False) -> dict[str, list[str]]:
    """{episode id: problems} for every episode with a problem (empty dict = all fine).

    Checks files against meta.json (sizes; with ``deep`` sha256 and a full video decode), array
    lengths, the embedding validity mask (the first 15 frames invalid, the rest valid), episodes
    shorter than ``min_frames``, missing embeddings if required, split entries that do not exist,
    and leftovers of interrupted writes.
    """
    store.require_exists()
    bad: dict[str, list[str]] = {}
    for eid in store.episode_ids():
        try:
            ep = store.open(eid)
            problems = ep.verify(deep=deep)
            if not problems:
                if ep.num_frames < min_frames:
                    problems.append(f"only {ep.num_frames} frames (< {min_frames})")
                emb = ep.embeddings()
                if emb is None:
                    if require_embeddings:
                        problems.append("no embeddings (run `aimc data embed`)")
                else:
                    valid = emb[1]
                    k = min(NONE_EMBED_OFFSET, len(valid))
                    if valid[k:].size and not valid[k:].all():
                        problems.append(f"{int((~valid[k:]).sum())} frames after the first 15 have no valid embedding")
        except (StoreError, ValueError, OSError) as e:
            problems = [str(e)]
        if problems:
            bad[eid] = problems
    leftovers = [p.name for p in store.root.iterdir() if p.name.startswith((".tmp-", ".old-"))]
    if leftovers:
        bad["(store)"] = [f"{len(leftovers)} leftover(s) of interrupted writes, e.g. {leftovers[0]} (removed by the next convert)"]
    if (store.root / SPLIT_FILE).is_file():
        import yaml

        doc = yaml.safe_load((store.root / SPLIT_FILE).read_text(encoding="utf-8")) or {}
        have = set(store.episode_ids())
        for name, ids in (doc.get("splits") or {}).items():
            gone = [e for e in ids or [] if e not in have]
            if gone:
                bad.setdefault("(store)", []).append(f"split {name!r} names {len(gone)} missing episode(s), e.g. {gone[0]}")
    return bad


def _dir_bytes(path) -> int:
    total = 0
    for root, _dirs, files in os.walk(path):
        total += sum(os.path.getsize(os.path.join(root, f)) for f in files)
    return total


def store_stats(store: EpisodeStore, top_actions: int = 5) -> dict:
    """Episodes, frames, hours, bytes per frame (video / actions / embeddings), sources, splits, annotations."""
    store.require_exists()
    ids = store.episode_ids()
    lengths, embedded, annotations = [], 0, 0
    by_part = Counter()
    sources: Counter = Counter()
    fps = Counter()
    heads: Counter = Counter()
    button_counts: Counter = Counter()
    for eid in ids:
        ep = store.open(eid)
        lengths.append(ep.num_frames)
        embedded += ep.has_embeddings
        annotations += int(ep.meta.get("num_annotations", 0))
        sources[str(ep.meta.get("converter", "?"))] += 1
        fps[ep.fps] += 1
        for rel, rec in ep.meta.get("files", {}).items():
            part = rel.split("/")[0].split(".")[0]
            by_part[part] += rec["bytes"]
        for h in ep.meta.get("policy_heads", [a for a in ep.meta["actions"] if not a.startswith("env_")]):
            heads[h] += 1
        acts = ep.actions()
        key = "buttons" if "buttons" in acts else ("action" if "action" in acts else None)
        if key is not None and len(button_counts) < 100_000:
            vals, cnt = np.unique(np.asarray(acts[key]), return_counts=True)
            button_counts.update({f"{key}={int(v)}": int(c) for v, c in zip(vals, cnt)})
    frames = int(sum(lengths))
    main_fps = fps.most_common(1)[0][0] if fps else 20.0
    splits = {}
    if (store.root / SPLIT_FILE).is_file():
        import yaml

        doc = yaml.safe_load((store.root / SPLIT_FILE).read_text(encoding="utf-8")) or {}
        for name in doc.get("splits") or {}:
            sid = load_split(store, name)
            splits[name] = {"episodes": len(sid), "frames": int(sum(store.open(e).num_frames for e in sid))}
    quarantined = 0
    if (store.root / QUARANTINE_FILE).is_file():
        try:
            quarantined = len(json.loads((store.root / QUARANTINE_FILE).read_text(encoding="utf-8")))
        except ValueError:
            quarantined = -1
    return {
        "store": str(store.root),
        "episodes": len(ids),
        "frames": frames,
        "hours": frames / main_fps / 3600.0 if frames else 0.0,
        "episode_frames": {
            "min": int(min(lengths)) if lengths else 0,
            "median": float(np.median(lengths)) if lengths else 0.0,
            "max": int(max(lengths)) if lengths else 0,
        },
        "embedded_episodes": embedded,
        "annotations": annotations,
        "converters": dict(sources),
        "policy_heads": dict(heads),
        "bytes_per_frame": {k: round(v / max(frames, 1), 1) for k, v in sorted(by_part.items())},
        "total_bytes": _dir_bytes(store.root),
        "most_common_actions": [f"{k} ({c / max(frames, 1):.1%})" for k, c in button_counts.most_common(top_actions)],
        "splits": splits,
        "quarantined": quarantined,
    }
