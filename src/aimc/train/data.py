"""Batches for the training loop, stateless by batch index, as ``data.relabel`` chooses.

``steve1``: batch ``k`` of rank ``r`` holds items ``k*B ... k*B+B-1`` of that rank's
:class:`~aimc.data.loader.SequenceDataset` (item ``i`` of rank ``r`` is drawn from
``rng(seed, r, i)``), so resuming at batch ``k`` only means starting the loader there.
Batches are read ahead by the loader's worker processes in order; asking for another
index than the next one restarts the workers at that index.

``events``: batch ``k`` of rank ``r`` is drawn from ``rng(seed, r, k)`` by
:class:`~aimc.data.events.EventGoalBatches` over episodes held in memory.

:class:`SplitBatches` joins sources in fixed numbers of sequences per batch (``aimc online``:
its labelled play beside the earlier data, by an exact frame share).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

import torch
from torch.utils.data import DataLoader

from aimc.errors import UserError
from aimc.train.config import TrainConfig


def batches_needed(cfg: TrainConfig, world_size: int) -> int:
    """Batches each rank consumes in the whole run."""
    steps = math.ceil(cfg.schedule.n_frames / cfg.frames_per_step(world_size))
    micro = steps * cfg.optim.grad_accum
    return math.ceil(micro / cfg.chunks_per_sequence) + 1


class LoaderBatches:
    """``batch(k)`` = the k-th batch of this rank, read ahead by worker processes."""

    def __init__(self, dataset, batch_size: int, num_workers: int, pin_memory: bool) -> None:
        self.dataset = dataset
        self.B = batch_size
        self.num_workers = num_workers
        self.pin_memory = pin_memory
        self._it: Iterator[dict[str, Any]] | None = None
        self._next = -1

    def _start(self, index: int) -> None:
        from aimc.data import loader as L

        n_batches = len(self.dataset) // self.B
        if index >= n_batches:
            raise UserError(f"batch {index} is beyond the {n_batches} batches the dataset was sized for")
        kw: dict[str, Any] = {}
        if self.num_workers > 0:
            kw = {"prefetch_factor": 4, "worker_init_fn": L._worker_init, "persistent_workers": False}
        dl = DataLoader(self.dataset, batch_size=self.B, sampler=range(index * self.B, n_batches * self.B),
                        num_workers=self.num_workers, pin_memory=self.pin_memory, drop_last=True, **kw)
        with torch.random.fork_rng(devices=[]):  # starting workers draws a seed: keep training's RNG as is
            self._it = iter(dl)
        self._next = index

    def batch(self, index: int) -> dict[str, Any]:
        if self._it is None or index != self._next:
            self._start(index)
        b = next(self._it)  # type: ignore[arg-type]
        self._next += 1
        return b

    def describe(self) -> dict[str, Any]:
        return self.dataset.describe()


def make_sources(cfg: TrainConfig, rank: int = 0, world_size: int = 1, *, pin_memory: bool | None = None
                 ) -> tuple[Any, Callable[[], Iterable[dict[str, Any]]] | None]:
    """The training batch source (``batch(k)``, ``describe()``) and a factory of validation
    batches (None when ``validation.enabled`` is false; then no val split is read).

    Checked here, before any training: the train split and (validation on) the val split exist
    and each holds at least one batch, ``optim.batch_size`` sequences of ``data.T`` frames per
    process; otherwise a :class:`~aimc.errors.UserError` names the split, the stores and the sizes."""
    if cfg.data.relabel == "events":
        return event_sources(cfg, rank, world_size)
    from aimc.data.loader import dataset_from_config

    d, B = cfg.data, cfg.optim.batch_size
    pin = torch.cuda.is_available() if pin_memory is None else pin_memory
    try:
        train = dataset_from_config(d, seed=cfg.runtime.seed, rank=rank, world_size=world_size,
                                    num_items=batches_needed(cfg, world_size) * B, goal_dim=cfg.model.goal_dim)
    except UserError as e:
        raise UserError(f"training split {d.split!r} of {_stores(cfg)}: {e}") from None
    _check_goal_dim(cfg, train.goal_dim)
    n = train.num_windows
    _check_batch(cfg, "training", d.split, n, world_size, train.describe(), f"{n} distinct window(s)", _ANY_START)
    source = LoaderBatches(train, B, d.num_workers, pin)
    if not cfg.validation.enabled:
        return source, None
    try:
        val = dataset_from_config(d, split=d.val_split, seed=cfg.runtime.seed + 1, rank=rank,
                                  world_size=world_size, window="chunks", augment=False, goal_dim=cfg.model.goal_dim)
    except UserError as e:
        raise _no_val_split(cfg, e) from None
    nth = cfg.validation.every_nth
    idx = list(range(0, len(val), nth))  # this process's val sequences (len(val) is its share)
    total = val.usable_frames // d.T
    used = min(-(-total // nth), len(idx) * world_size)  # every nth-th, and what each process gets
    _check_batch(cfg, "validation", d.val_split, used, world_size, val.describe(),
                 f"{total} sequence(s)", " (validation cuts its episodes into fixed windows"
                 + (f"; validation.every_nth={nth} keeps {used} of them)" if nth > 1 else ")"))
    n_val = len(idx) // B
    if cfg.validation.max_batches:
        n_val = min(n_val, cfg.validation.max_batches)
    idx = idx[: n_val * B]

    def val_batches() -> Iterable[dict[str, Any]]:
        return DataLoader(val, batch_size=B, sampler=idx, num_workers=min(d.num_workers, 2), drop_last=True)

    return source, val_batches


def event_sources(cfg: TrainConfig, rank: int = 0, world_size: int = 1
                  ) -> tuple[Any, Callable[[], Iterable[dict[str, Any]]] | None]:
    """``data.relabel=events``: event-anchored batches of the stores, and validation batches
    (``validation.max_batches`` of them, default 4) from their ``data.val_split`` (None when
    ``validation.enabled`` is false). Each split must hold ``optim.batch_size x world_size``
    non-overlapping ``data.T``-frame sequences."""
    from aimc.data.events import EventGoalBatches

    d = cfg.data
    kw = dict(weights=list(d.weights) or None, T=d.T, batch_size=cfg.optim.batch_size, p_uncond=d.p_uncond,
              min_btwn_goals=d.min_btwn_goals, max_btwn_goals=d.max_btwn_goals, jitter=d.jitter,
              rarity_power=d.rarity_power, standardize=d.standardize, switch_start=d.switch_start, rank=rank)
    try:
        train = EventGoalBatches(list(d.stores), split=d.split, seed=cfg.runtime.seed, **kw)
    except UserError as e:
        raise UserError(f"training split {d.split!r} of {_stores(cfg)}: {e}") from None
    _check_goal_dim(cfg, train.goal_dim)
    n = _event_windows(train, d.T)
    _check_batch(cfg, "training", d.split, n, world_size, train.describe(), f"{n} distinct window(s)", _ANY_START)
    if not cfg.validation.enabled:
        return train, None
    try:
        val = EventGoalBatches(list(d.stores), split=d.val_split, seed=cfg.runtime.seed + 1, **kw)
    except UserError as e:
        raise _no_val_split(cfg, e) from None
    n = _event_windows(val, d.T)
    _check_batch(cfg, "validation", d.val_split, n, world_size, val.describe(), f"{n} distinct window(s)", _ANY_START)
    n_val = max(1, cfg.validation.max_batches or 4)
    return train, (lambda: (val.batch(k) for k in range(n_val)))


_ANY_START = " (a sequence may start at any frame)"


def _event_windows(batches: Any, T: int) -> int:
    """Distinct T-frame windows (one per start frame) of the episodes an EventGoalBatches holds."""
    return int(sum(max(0, len(f) - T + 1) for f in batches.frames))


def _stores(cfg: TrainConfig) -> str:
    return ", ".join(str(s) for s in cfg.data.stores) or "(no store given: data.stores)"


def _no_val_split(cfg: TrainConfig, err: Exception) -> UserError:
    """A missing / unusable validation split: an error (not a warning), with the ways out."""
    d = cfg.data
    why = (" A fine-tune (model.init is set) needs it most: without validation nothing tells when it starts "
           "to over-fit your recordings, and no best weights are kept.") if cfg.model.init else ""
    first = d.stores[0] if d.stores else "STORE"
    return UserError(
        f"validation split {d.val_split!r} of {_stores(cfg)}: {err}.{why} Set one aside with "
        f"`aimc data split {first} --val-fraction 0.1`, name another split with data.val_split=NAME, or "
        "train without validation: validation.enabled=false"
    )


def _check_batch(cfg: TrainConfig, role: str, split: str, sequences: int, world_size: int,
                 described: dict[str, Any], counted: str, how: str) -> None:
    """A batch holds optim.batch_size different sequences on each process: the split must offer
    ``sequences`` >= optim.batch_size x world_size of them (counted as this relabeler and role cut
    them: any start frame for training and event batches, fixed windows for steve1 validation;
    ``counted`` and ``how`` say so in the message)."""
    B, T = cfg.optim.batch_size, cfg.data.T
    need = B * world_size
    if sequences >= need:
        return
    per_store = "; ".join(f"{s['store']}: {s['eligible']} of {s['episodes']} episodes long enough" for s in
                          described.get("sources", []))
    procs = f" x {world_size} processes" if world_size > 1 else ""
    fixes = [f"add episodes to the {split!r} split (`aimc data split`, e.g. a larger --val-fraction)"
             if role == "validation" else "record or convert more episodes"]
    if B > 1 and sequences >= world_size:
        fixes.append(f"a smaller optim.batch_size (optim.batch_size={sequences // world_size} fits; "
                     "raise optim.grad_accum to keep the frames per step)")
    if role == "validation" and cfg.validation.every_nth > 1:
        fixes.append("validation.every_nth=1")
    fixes.append("a shorter data.T")
    if role == "validation":
        fixes.append("or validation.enabled=false")
    raise UserError(
        f"the {role} split {split!r} is too small for one batch: {per_store or _stores(cfg)}; "
        f"{described.get('usable_frames', 0):,} usable frames make {counted} of data.T={T} frames{how} "
        f"with data.relabel={cfg.data.relabel}, but one batch needs optim.batch_size={B}{procs} = {need}. "
        f"Try: {'; '.join(fixes)}"
    )


def _check_goal_dim(cfg: TrainConfig, data_dim: int) -> None:
    if cfg.model.goal_dim and data_dim != cfg.model.goal_dim:
        raise UserError(
            f"the data's goal embeddings have {data_dim} dimensions but model.goal_dim is "
            f"{cfg.model.goal_dim}: set model.goal_dim={data_dim} or re-embed the data"
        )


def split_counts(batch_size: int, shares: Sequence[float], names: Sequence[str] | None = None) -> list[int]:
    """Sequences per part in a batch of ``batch_size``, by ``shares`` (summing to 1): rounded so
    that they sum to ``batch_size`` (largest remainders first). A part with a positive share
    that would get no sequence at all is an error (raise the batch size or the share)."""
    names = list(names) if names is not None else [f"part {i}" for i in range(len(shares))]
    if not shares or any(x < 0 for x in shares) or abs(sum(shares) - 1.0) > 1e-6:
        raise UserError(f"the shares of a split batch must be >= 0 and sum to 1, got {list(shares)}")
    exact = [batch_size * x for x in shares]
    counts = [int(math.floor(e)) for e in exact]
    for i in sorted(range(len(shares)), key=lambda i: (counts[i] - exact[i], i))[: batch_size - sum(counts)]:
        counts[i] += 1
    for name, x, n in zip(names, shares, counts):
        if x > 0 and n == 0:
            raise UserError(f"{name} has a share of {x:g} but gets no sequence of a batch of {batch_size}: "
                            f"raise optim.batch_size (to at least {math.ceil(1 / x)}) or its share")
    return counts


class SplitBatches:
    """Batches made of parts from separate sources, a fixed number of sequences each: batch
    ``k`` is part 0's batch ``k``, then part 1's batch ``k``, ... joined along the batch axis,
    so part i holds exactly ``n_i / B`` of the frames of every batch (a mixture by
    ``data.weights`` draws each sequence's source at random instead).

    parts: ``(name, source, n)``; each source yields batches of its ``n`` sequences (build it
    with ``optim.batch_size = n``) and is stateless by index, so this is too.
    """

    def __init__(self, parts: Sequence[tuple[str, Any, int]]) -> None:
        self.parts = [(str(name), src, int(n)) for name, src, n in parts if int(n) > 0]
        if not self.parts:
            raise UserError("a split batch needs at least one part with sequences")
        self.batch_size = sum(n for _, _, n in self.parts)
        self._checked = False

    def batch(self, index: int) -> dict[str, Any]:
        got = [(name, src.batch(index), n) for name, src, n in self.parts]
        if not self._checked:
            self._check(got)
        return {
            "img": torch.cat([torch.as_tensor(b["img"]) for _, b, _ in got]),
            "goal": torch.cat([torch.as_tensor(b["goal"], dtype=torch.float32) for _, b, _ in got]),
            "actions": {k: torch.cat([torch.as_tensor(b["actions"][k]) for _, b, _ in got]) for k in got[0][1]["actions"]},
            "first": torch.cat([torch.as_tensor(b["first"]) for _, b, _ in got]),
        }

    def _check(self, got: list[tuple[str, dict[str, Any], int]]) -> None:
        name0, b0, _ = got[0]
        for name, b, n in got:
            if tuple(b["first"].shape) != (n, b0["first"].shape[1]):
                raise UserError(f"{name} gave {tuple(b['first'].shape)} sequences x frames, expected ({n}, "
                                f"{b0['first'].shape[1]}): build each part with its own batch size and the same T")
            for key in ("img", "goal"):
                if tuple(b[key].shape[2:]) != tuple(b0[key].shape[2:]):
                    what = "frames" if key == "img" else "goal embeddings"
                    raise UserError(f"{name} has {what} of shape {tuple(b[key].shape[2:])} but {name0} has "
                                    f"{tuple(b0[key].shape[2:])}; record or embed them alike")
            if set(b["actions"]) != set(b0["actions"]):
                raise UserError(f"{name} has action heads {sorted(b['actions'])} but {name0} has {sorted(b0['actions'])}")
        self._checked = True

    def describe(self) -> dict[str, Any]:
        """The parts' sources with their share of the frames (``p``), for the run's README."""
        sources, usable, first = [], 0, None
        for name, src, n in self.parts:
            d = src.describe() if hasattr(src, "describe") else {"sources": [], "usable_frames": 0}
            first = first or d
            share = n / self.batch_size
            sources += [{**s, "p": float(s.get("p", 1.0)) * share, "part": name} for s in d.get("sources", [])]
            usable += int(d.get("usable_frames", 0))
        return {"sources": sources, "usable_frames": usable, "goal_dim": (first or {}).get("goal_dim"),
                "action_keys": (first or {}).get("action_keys", []),
                "parts": [{"name": name, "sequences": n, "share": n / self.batch_size} for name, _, n in self.parts]}
