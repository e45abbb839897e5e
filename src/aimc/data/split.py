"""Train/val splits of a store: by episode, by frame budgets, seeded; a small readable YAML file.

The file ``<store>/splits.yaml`` looks like::

    # aimc data split <store> --val-frames 20000 --seed 0
    seed: 0
    budgets: {train_frames: null, val_frames: 20000}
    frames: {train: 1180000, val: 20160}
    episodes: {train: 130, val: 3}
    splits:
      train: [episode-a, episode-c, ...]
      val: [episode-b, ...]

A store without the file has one implicit split, ``train`` = every episode (and ``all`` always
means every episode).
"""

from __future__ import annotations

import numpy as np
import yaml

from aimc.data.store import EpisodeStore
from aimc.errors import UserError
from aimc.utils.io import atomic_write_text

SPLIT_FILE = "splits.yaml"


def episode_lengths(store: EpisodeStore, ids: list[str] | None = None) -> dict[str, int]:
    """{episode id: num_frames} read from each meta.json (no video is opened)."""
    ids = store.episode_ids() if ids is None else ids
    return {e: store.open(e).num_frames for e in ids}


def make_split(
    store: EpisodeStore,
    val_frames: int | None = None,
    val_fraction: float | None = None,
    train_frames: int | None = None,
    seed: int = 0,
    min_frames: int = 0,
    command: str | None = None,
) -> dict:
    """Shuffle the episodes with ``seed``; fill val up to its frame budget, then train up to its own.

    val budget: ``val_frames`` (frames) or ``val_fraction`` (of all frames), not both; an episode is
    never cut, so val ends with the first episode that reaches the budget. ``train_frames`` caps
    train (None = every remaining episode). Episodes shorter than ``min_frames`` are left out.
    Writes ``<store>/splits.yaml`` and returns its content.
    """
    store.require_exists()
    if val_frames is not None and val_fraction is not None:
        raise UserError("give either --val-frames or --val-fraction, not both")
    if val_fraction is not None and not 0.0 <= val_fraction < 1.0:
        raise UserError(f"val_fraction must be in [0, 1), got {val_fraction}")
    lengths = {e: n for e, n in episode_lengths(store).items() if n >= min_frames}
    if not lengths:
        raise UserError(f"{store.root}: no episodes with >= {min_frames} frames to split")
    total = sum(lengths.values())
    if val_fraction is not None:
        val_budget = int(round(val_fraction * total))
    else:
        val_budget = int(val_frames or 0)
    ids = sorted(lengths)
    order = np.random.default_rng(seed).permutation(len(ids))
    val: list[str] = []
    train: list[str] = []
    n_val = n_train = 0
    for i in order:
        e = ids[i]
        if n_val < val_budget:
            val.append(e)
            n_val += lengths[e]
        elif train_frames is None or n_train < train_frames:
            train.append(e)
            n_train += lengths[e]
    if not train:
        raise UserError(f"{store.root}: the val budget ({val_budget} frames) leaves no episode for train")
    doc = {
        "seed": seed,
        "budgets": {"train_frames": train_frames, "val_frames": val_budget},
        "frames": {"train": n_train, "val": n_val},
        "episodes": {"train": len(train), "val": len(val)},
        "splits": {"train": sorted(train), "val": sorted(val)},
    }
    header = f"# {command}\n" if command else "# written by aimc data split\n"
    atomic_write_text(store.root / SPLIT_FILE, header + yaml.safe_dump(doc, sort_keys=False, default_flow_style=None, width=100))
    return doc


def load_split(store: EpisodeStore, name: str | None) -> list[str]:
    """Episode ids of split ``name`` (None or ``all`` = every episode), only those present in the store."""
    present = store.episode_ids()
    if name in (None, "", "all"):
        return present
    path = store.root / SPLIT_FILE
    if not path.is_file():
        if name == "train":
            return present
        raise UserError(f"{store.root}: no {SPLIT_FILE}, so there is no split {name!r}; run `aimc data split {store.root}`")
    doc = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    splits = doc.get("splits", {})
    if name not in splits:
        raise UserError(f"{path}: no split {name!r} (has: {', '.join(splits) or 'none'})")
    have = set(present)
    return [e for e in splits[name] or [] if e in have]
