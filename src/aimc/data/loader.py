"""Training sequences from episode stores, hindsight-relabeled (see ``relabel.py``).

Item ``k`` of rank ``r`` is a pure function of ``(seed, r, k)``: its source, episode, window
start, goal time steps, unconditioned flag and augmentation are all drawn from
``np.random.default_rng([seed, r, k])``. So the stream does not depend on the number of
workers, a resumed run continues at item k with ``start_item=k``, and each rank of a
distributed run draws its own items.

One item costs: decoding only the video chunks the window lies in (from the chunk's keyframe
up to the window's last frame), slicing memory-mapped action arrays, and reading the few
embedding rows that are goals. Nothing per-frame happens in Python.

Batch (after the DataLoader's collation)::

    {"img": uint8 (B, T, H, W, 3), "goal": float32 (B, T, D),
     "actions": {head: int64 (B, T)}, "first": bool (B, T)}
"""

from __future__ import annotations

import collections
import dataclasses
import random
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from aimc.data.mixture import MixtureSource, ResolvedSource, resolve_sources, source_probabilities
from aimc.data.relabel import NONE_EMBED_OFFSET, check_sequence_args, has_acted_goals, relabel_window
from aimc.data.store import Episode, StoreError
from aimc.errors import ConfigError, UserError

_LUMA = np.array([0.299, 0.587, 0.114])  # ITU-R 601 luminance weights (RGB)


@dataclasses.dataclass
class AugmentConfig:
    """Colour augmentation, consistent over time: one random colour transform per sequence,
    applied to all its frames (the ``data.augment`` section of a training config). Each strength
    draws its factor uniformly from the range given; 0 turns that part off."""

    enabled: bool = False
    """Master switch (off: the frames are used as recorded, whatever the strengths)."""
    brightness: float = 0.2
    """Multiply every channel by U[1 - b, 1 + b]; in [0, 1)."""
    contrast: float = 0.2
    """Scale each pixel's distance to the sequence's mean luminance by U[1 - c, 1 + c]; in [0, 1)."""
    saturation: float = 0.2
    """Scale each pixel's distance to its own gray by U[1 - s, 1 + s]; in [0, 1)."""
    hue: float = 0.03
    """Rotate colours around the gray axis by U[-h, h] of a full turn; in [0, 0.5]."""
    grayscale_p: float = 0.1
    """Probability that the whole sequence is turned gray; in [0, 1]."""

    def __post_init__(self) -> None:
        for name in ("brightness", "contrast", "saturation"):
            v = getattr(self, name)
            if not 0.0 <= v < 1.0:
                raise ConfigError(f"data.augment.{name} must be in [0, 1), got {v} (0 = no {name} change)")
        if not 0.0 <= self.hue <= 0.5:
            raise ConfigError(f"data.augment.hue must be in [0, 0.5] (a fraction of a full colour turn), got {self.hue}")
        if not 0.0 <= self.grayscale_p <= 1.0:
            raise ConfigError(f"data.augment.grayscale_p must be in [0, 1] (a probability), got {self.grayscale_p}")


def colour_transform(rng: np.random.Generator, cfg: AugmentConfig, mean_luma: float) -> np.ndarray:
    """A random affine colour map as a (3, 4) matrix [A | b]: rgb' = A @ rgb + b."""
    eye = np.eye(3)
    gray = np.outer(np.ones(3), _LUMA)  # rgb -> (y, y, y)
    A = eye * rng.uniform(1 - cfg.brightness, 1 + cfg.brightness)
    c = rng.uniform(1 - cfg.contrast, 1 + cfg.contrast)
    b = np.full(3, (1 - c) * mean_luma)
    A = c * A
    s = rng.uniform(1 - cfg.saturation, 1 + cfg.saturation)
    S = s * eye + (1 - s) * gray
    theta = 2 * np.pi * rng.uniform(-cfg.hue, cfg.hue)
    k = np.ones(3) / np.sqrt(3)  # rotation about the gray axis (Rodrigues)
    K = np.array([[0, -k[2], k[1]], [k[2], 0, -k[0]], [-k[1], k[0], 0]])
    R = eye + np.sin(theta) * K + (1 - np.cos(theta)) * K @ K
    M = R @ S
    if rng.random() < cfg.grayscale_p:
        M = gray @ M
    return np.hstack([M @ A, (M @ b)[:, None]])


def augment_sequence(frames: np.ndarray, rng: np.random.Generator, cfg: AugmentConfig) -> np.ndarray:
    """Apply one random colour transform to every frame of (T, H, W, 3) uint8 RGB."""
    import cv2

    t, h, w, _ = frames.shape
    mean_luma = float(frames[:: max(1, t // 8), ::4, ::4].reshape(-1, 3).mean(0) @ _LUMA)
    m = colour_transform(rng, cfg, mean_luma).astype(np.float32)
    out = cv2.transform(frames.reshape(t * h, w, 3), m)  # saturating uint8
    return out.reshape(t, h, w, 3)


class SequenceDataset(Dataset):
    """T-frame windows of one or several stores, relabeled with hindsight goals.

    stores: store folders / ``"path:split"`` strings / :class:`MixtureSource`; weights: share of
    frames per source (None = by size); split: default split name; T: frames per item;
    min_btwn_goals / max_btwn_goals / p_uncond: relabeling (``relabel.py``); seed, rank,
    world_size: the item stream (item k of rank r from rng(seed, r, k)); num_items: length
    (default: one pass over the usable frames, divided among ranks); start_item: item k that
    index 0 maps to (resume); window: ``"random"`` (any start >= 15) or ``"chunks"`` (the
    original's fixed windows 15, 15+T, ... with the last one moved to the episode end);
    action_keys: heads to return (default: the episodes' ``policy_heads``, else every stored
    action not named ``env_*``);
    require_embeddings: episodes without embeddings are an error (else their goals are zeros of
    size goal_dim); augment: colour augmentation; cache_episodes: open episodes kept per worker;
    min_episode_frames: shortest usable episode (default, as the original: max(T, min_btwn_goals) + 15;
    never below T + 15); shard: ``"stream"`` (every rank samples all episodes, from its own random
    stream) or ``"episodes"`` (rank r also keeps only every world_size-th eligible episode of each
    source, so ranks never share an episode).

    Episodes with acted goals (``relabel.has_acted_goals``: ``aimc online``'s labelled play) are
    not relabeled: step t's goal is the stored goal of frame t, windows may start at frame 0 (an
    episode needs only T frames), and ``p_uncond`` does not apply to them.
    """

    def __init__(
        self,
        stores: Sequence[str | Path | MixtureSource],
        weights: Sequence[float] | None = None,
        split: str | None = "train",
        T: int = 640,
        min_btwn_goals: int = 15,
        max_btwn_goals: int = 200,
        p_uncond: float = 0.1,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        num_items: int | None = None,
        start_item: int = 0,
        window: str = "random",
        action_keys: Sequence[str] | None = None,
        require_embeddings: bool = True,
        goal_dim: int = 512,
        augment: AugmentConfig | bool | None = None,
        cache_episodes: int = 64,
        min_episode_frames: int | None = None,
        shard: str = "stream",
    ) -> None:
        check_sequence_args(T, p_uncond, min_btwn_goals, max_btwn_goals)
        if not 0 <= rank < world_size:
            raise UserError(f"rank {rank} outside world_size {world_size}")
        if shard not in ("stream", "episodes"):
            raise UserError(f"shard must be 'stream' or 'episodes', got {shard!r}")
        if window not in ("random", "chunks"):
            raise UserError(f"window must be 'random' or 'chunks', got {window!r}")
        if not stores:
            raise UserError("no episode store given")
        self.T, self.min_btwn_goals, self.max_btwn_goals, self.p_uncond = T, min_btwn_goals, max_btwn_goals, p_uncond
        self.seed, self.rank, self.world_size, self.start_item, self.window = seed, rank, world_size, start_item, window
        if isinstance(augment, bool):
            augment = AugmentConfig(enabled=augment)
        self.augment = augment if augment is not None else AugmentConfig()
        self.cache_episodes = cache_episodes

        self.sources: list[ResolvedSource] = resolve_sources(list(stores), weights, split)
        min_len = max(min_btwn_goals + NONE_EMBED_OFFSET, T + NONE_EMBED_OFFSET)  # the original's rule
        if min_episode_frames is not None:
            min_len = max(min_episode_frames, T + NONE_EMBED_OFFSET)
        acted_min_len = T if min_episode_frames is None else max(min_episode_frames, T)
        # per source: eligible episode positions, where their windows may start, cumulative window counts
        self._eligible: list[np.ndarray] = []
        self._offsets: list[np.ndarray] = []
        self._acted: list[set[int]] = []  # positions of episodes with acted goals (never relabeled)
        self._cum: list[np.ndarray] = []
        usable = []
        dims = set()
        missing = []
        for s in self.sources:
            acted: set[int] = set()
            metas: dict[int, dict] = {}
            for i in np.nonzero(s.lengths >= min(min_len, acted_min_len))[0].tolist():
                metas[i] = s.store.open(s.episode_ids[i]).meta
                if has_acted_goals(metas[i]):
                    acted.add(i)
            ok = np.asarray([i for i in metas if s.lengths[i] >= (acted_min_len if i in acted else min_len)], dtype=np.int64)
            if shard == "episodes":  # rank r keeps every world_size-th eligible episode
                ok = ok[rank::world_size]
            for i in ok:
                meta = metas[int(i)]
                if meta.get("embeddings"):
                    dims.add(int(meta["embeddings"]["dim"]))
                elif require_embeddings:
                    missing.append(f"{s.store.root}/{s.episode_ids[i]}")
            n = s.lengths[ok]
            off = np.asarray([0 if int(i) in acted else NONE_EMBED_OFFSET for i in ok], dtype=np.int64)
            counts = n - T - off + 1 if window == "random" else np.ceil((n - off) / T).astype(np.int64)
            self._eligible.append(ok)
            self._offsets.append(off)
            self._acted.append(acted)
            self._cum.append(np.cumsum(counts))
            usable.append(float((n - off).sum()))
        if missing:
            raise UserError(
                f"{len(missing)} episode(s) have no goal embeddings (e.g. {missing[0]}); run `aimc data embed` "
                "on the store first"
            )
        if len(dims) > 1:
            raise UserError(f"the stores mix goal-embedding sizes {sorted(dims)}; use stores embedded with one model")
        self.goal_dim = dims.pop() if dims else goal_dim
        if not any(len(ok) for ok in self._eligible):
            raise UserError(
                f"no episode is long enough: each needs >= {min_len} frames (T + 15 and min_btwn_goals + 15); "
                f"the longest has {max((int(s.lengths.max()) for s in self.sources if len(s.lengths)), default=0)}"
            )
        self._probs = source_probabilities(usable, [s.weight for s in self.sources])
        self.usable_frames = int(sum(usable))
        if num_items is None:
            # usable_frames is already this rank's share when episodes are sharded
            num_items = max(1, self.usable_frames // (T * (1 if shard == "episodes" else world_size)))
        self.num_items = num_items
        first = next(i for i, ok in enumerate(self._eligible) if len(ok))
        src0 = self.sources[first]
        meta0 = src0.store.open(src0.episode_ids[self._eligible[first][0]]).meta
        stored = meta0.get("policy_heads") or [a for a in meta0["actions"] if not a.startswith("env_")]
        self.action_keys = list(action_keys) if action_keys is not None else list(stored)
        self._cache: collections.OrderedDict[tuple[int, int], Episode] = collections.OrderedDict()

    def __len__(self) -> int:
        return self.num_items

    @property
    def num_windows(self) -> int:
        """Distinct T-frame windows the items are drawn from (any start >= 15 with
        ``window="random"``, the fixed windows with ``"chunks"``), over this dataset's episodes."""
        return int(sum(int(c[-1]) for c in self._cum if len(c)))

    def __getstate__(self) -> dict:
        # workers (spawned or forked) open their own episodes and memory maps
        state = dict(self.__dict__)
        state["_cache"] = collections.OrderedDict()
        return state

    def _episode(self, src: int, pos: int) -> Episode:
        key = (src, pos)
        ep = self._cache.get(key)
        if ep is None:
            s = self.sources[src]
            ep = s.store.open(s.episode_ids[pos])
            self._cache[key] = ep
            if len(self._cache) > self.cache_episodes:
                self._cache.popitem(last=False)  # drops its memory maps too
        else:
            self._cache.move_to_end(key)
        return ep

    def locate(self, k: int) -> tuple[int, int, int, np.random.Generator]:
        """Item k -> (source, episode position in that source, window start, rng for the rest)."""
        rng = np.random.default_rng([self.seed, self.rank, k])
        src = int(rng.choice(len(self.sources), p=self._probs)) if len(self.sources) > 1 else 0
        cum = self._cum[src]
        j = int(rng.integers(cum[-1]))
        e = int(np.searchsorted(cum, j, side="right"))
        within = j - (cum[e - 1] if e else 0)
        pos = int(self._eligible[src][e])
        n = int(self.sources[src].lengths[pos])
        off = int(self._offsets[src][e])  # 15 (no embedding before), 0 for acted goals
        if self.window == "random":
            start = off + int(within)
        else:
            start = min(off + int(within) * self.T, n - self.T)
        return src, pos, start, rng

    def __getitem__(self, i: int) -> dict:
        return self._item(i, None)

    def __getitems__(self, indices: list[int]) -> list[dict]:
        """Items decoded straight into one (B, T, H, W, 3) buffer, in shared memory inside a
        worker: :func:`collate_sequences` then hands that buffer on without copying it
        (the default collate still works, with one copy)."""
        if not indices:
            return []
        first = self._item(indices[0], None)
        shape = (len(indices), *first["img"].shape)
        buf = _empty_uint8(shape, shared=torch.utils.data.get_worker_info() is not None)  # (B, T, H, W, 3)
        buf[0].copy_(first["img"])
        first["img"] = buf[0]
        return [first] + [self._item(i, buf[j]) for j, i in enumerate(indices[1:], start=1)]

    def _item(self, i: int, img_out: torch.Tensor | None) -> dict:
        if not 0 <= i < self.num_items:
            raise IndexError(i)
        k = self.start_item + i
        src, pos, start, rng = self.locate(k)
        ep = self._episode(src, pos)
        stop = start + self.T
        if img_out is not None and tuple(img_out.shape) == (self.T, *ep.frame_shape):
            frames = ep.frames(start, stop, out=img_out.numpy())  # (T, H, W, 3), decoded in place
        else:
            frames = ep.frames(start, stop)  # (T, H, W, 3)
            if img_out is not None:
                raise StoreError(f"{ep.path}: frames are {ep.frame_shape}, other episodes in the batch {tuple(img_out.shape[1:])}")
        all_actions = ep.actions()
        try:
            actions = {name: torch.from_numpy(np.array(all_actions[name][start:stop], dtype=np.int64)) for name in self.action_keys}
        except KeyError as e:
            raise StoreError(f"{ep.path}: no action head {e.args[0]!r} (has {list(all_actions)})") from None
        goal = np.zeros((self.T, self.goal_dim), dtype=np.float32)  # (T, D)
        if pos in self._acted[src]:  # the goals the player acted on, as stored: never relabeled
            _emb, valid = ep.embeddings()  # type: ignore[misc]
            if not valid[start:stop].all():
                raise StoreError(f"{ep.path}: its acted goals have invalid rows in frames [{start}, {stop})")
            goal = ep.embedding_rows(np.arange(start, stop))
        else:
            goal_idx, uncond = relabel_window(rng, ep.num_frames, start, stop, self.min_btwn_goals,
                                              self.max_btwn_goals, self.p_uncond)
            if not uncond and ep.has_embeddings:
                uniq, inv = np.unique(goal_idx, return_inverse=True)
                _emb, valid = ep.embeddings()  # type: ignore[misc]
                if not valid[uniq].all():
                    bad = int(uniq[~valid[uniq]][0])
                    raise StoreError(f"{ep.path}: frame {bad} was drawn as a goal but has no valid embedding")
                goal = ep.embedding_rows(uniq)[inv]
        if self.augment.enabled:
            frames = augment_sequence(frames, rng, self.augment)
            if img_out is not None:  # decoded in place: the batch buffer must hold the augmented frames
                img_out.numpy()[...] = frames
        first = np.zeros(self.T, dtype=bool)
        first[0] = True
        return {
            "img": img_out if img_out is not None else torch.from_numpy(frames),
            "goal": torch.from_numpy(np.ascontiguousarray(goal)),
            "actions": actions,
            "first": torch.from_numpy(first),
        }

    def describe(self) -> dict:
        """Sizes and probabilities, for logs."""
        return {
            "sources": [
                {"store": str(s.store.root), "episodes": len(s.episode_ids), "eligible": int(len(ok)), "p": float(p)}
                for s, ok, p in zip(self.sources, self._eligible, self._probs)
            ],
            "usable_frames": self.usable_frames,
            "acted_goal_episodes": int(sum(len(a & set(ok.tolist())) for a, ok in zip(self._acted, self._eligible))),
            "num_items": self.num_items,
            "goal_dim": self.goal_dim,
            "action_keys": self.action_keys,
        }


def _empty_uint8(shape: tuple[int, ...], shared: bool) -> torch.Tensor:
    if not shared:
        return torch.empty(shape, dtype=torch.uint8)
    storage = torch.UntypedStorage._new_shared(int(np.prod(shape)))
    strides = tuple(int(np.prod(shape[d + 1 :])) for d in range(len(shape)))
    return torch.empty(0, dtype=torch.uint8).set_(storage, 0, shape, strides)


def collate_sequences(batch: list[dict]) -> dict:
    """Items (tensors or numpy arrays) -> a batch. Like the default collate, but reuses the
    (B, T, H, W, 3) buffer that ``SequenceDataset.__getitems__`` decoded into instead of copying
    the frames again."""
    imgs = [torch.as_tensor(b["img"]) for b in batch]
    base = imgs[0]
    per = base.numel()
    whole = base.untyped_storage()
    if (
        all(x.untyped_storage().data_ptr() == whole.data_ptr() and x.storage_offset() == j * per and x.is_contiguous() for j, x in enumerate(imgs))
        and whole.nbytes() == per * len(imgs)
    ):
        img = torch.empty(0, dtype=torch.uint8).set_(whole, 0, (len(imgs), *base.shape))
    else:
        img = torch.stack(imgs)
    return {
        "img": img,
        "goal": torch.stack([torch.as_tensor(b["goal"]) for b in batch]),  # (B, T, D)
        "actions": {k: torch.stack([torch.as_tensor(b["actions"][k]) for b in batch]) for k in batch[0]["actions"]},
        "first": torch.stack([torch.as_tensor(b["first"]) for b in batch]),  # (B, T)
    }


def _worker_init(worker_id: int) -> None:
    # Items draw from their own rng(seed, rank, k); this only seeds library-level randomness
    # (torch / numpy / random) differently in each worker, reproducibly.
    info = torch.utils.data.get_worker_info()
    ds = info.dataset  # type: ignore[union-attr]
    seq = np.random.SeedSequence([ds.seed, ds.rank, 1_000_003, worker_id])
    s = int(seq.generate_state(1)[0])
    np.random.seed(s)
    random.seed(s)
    torch.manual_seed(s)


def make_loader(
    dataset: SequenceDataset,
    batch_size: int,
    num_workers: int = 0,
    pin_memory: bool = False,
    prefetch_factor: int | None = 2,
    persistent_workers: bool = False,
    drop_last: bool = True,
) -> DataLoader:
    """A DataLoader over ``dataset`` in item order (randomness lives in the items, not the order)."""
    if batch_size < 1:
        raise UserError(f"batch_size must be >= 1, got {batch_size}")
    kw = {}
    if num_workers > 0:
        kw = {"prefetch_factor": prefetch_factor, "persistent_workers": persistent_workers, "worker_init_fn": _worker_init}
    return DataLoader(
        dataset, batch_size=batch_size, shuffle=False, num_workers=num_workers, pin_memory=pin_memory, drop_last=drop_last,
        collate_fn=collate_sequences, **kw,
    )


def dataset_from_config(
    cfg, split: str | None = None, seed: int = 0, rank: int = 0, world_size: int = 1, start_item: int = 0,
    num_items: int | None = None, **overrides,
) -> SequenceDataset:
    """Build a dataset from a ``DataConfig``-like object (stores, weights, split, T, p_uncond,
    min_btwn_goals, max_btwn_goals, augment)."""
    kwargs = dict(
        stores=list(cfg.stores),
        weights=list(cfg.weights) or None,
        split=split if split is not None else cfg.split,
        T=cfg.T,
        min_btwn_goals=cfg.min_btwn_goals,
        max_btwn_goals=cfg.max_btwn_goals,
        p_uncond=cfg.p_uncond,
        seed=seed,
        rank=rank,
        world_size=world_size,
        start_item=start_item,
        num_items=num_items,
        augment=getattr(cfg, "augment", None),
    )
    kwargs.update(overrides)
    return SequenceDataset(**kwargs)
