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
import warnings
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
    batches (None = no validation)."""
    if cfg.data.relabel == "events":
        return event_sources(cfg, rank)
    from aimc.data.loader import dataset_from_config

    d, B = cfg.data, cfg.optim.batch_size
    pin = torch.cuda.is_available() if pin_memory is None else pin_memory
    train = dataset_from_config(d, seed=cfg.runtime.seed, rank=rank, world_size=world_size,
                                num_items=batches_needed(cfg, world_size) * B, goal_dim=cfg.model.goal_dim)
    _check_goal_dim(cfg, train.goal_dim)
    source = LoaderBatches(train, B, d.num_workers, pin)
    if not d.val_split:
        return source, None
    try:
        val = dataset_from_config(d, split=d.val_split, seed=cfg.runtime.seed + 1, rank=rank,
                                  world_size=world_size, window="chunks", augment=False, goal_dim=cfg.model.goal_dim)
    except UserError as e:
        warnings.warn(f"no validation: {e}", RuntimeWarning, stacklevel=2)
        return source, None
    nth = cfg.validation.every_nth
    n_val = len(val) // B
    if cfg.validation.max_batches:
        n_val = min(n_val, cfg.validation.max_batches)

    def val_batches() -> Iterable[dict[str, Any]]:
        idx = [i * nth for i in range(len(val)) if i * nth < len(val)][: n_val * B]
        return DataLoader(val, batch_size=B, sampler=idx, num_workers=min(d.num_workers, 2), drop_last=True)

    return source, val_batches


def event_sources(cfg: TrainConfig, rank: int = 0) -> tuple[Any, Callable[[], Iterable[dict[str, Any]]] | None]:
    """``data.relabel=events``: event-anchored batches of the stores, and validation batches
    (``validation.max_batches`` of them, default 4) from their ``data.val_split``."""
    from aimc.data.events import EventGoalBatches

    d = cfg.data
    kw = dict(weights=list(d.weights) or None, T=d.T, batch_size=cfg.optim.batch_size, p_uncond=d.p_uncond,
              min_btwn_goals=d.min_btwn_goals, max_btwn_goals=d.max_btwn_goals, jitter=d.jitter,
              rarity_power=d.rarity_power, standardize=d.standardize, switch_start=d.switch_start, rank=rank)
    train = EventGoalBatches(list(d.stores), split=d.split, seed=cfg.runtime.seed, **kw)
    _check_goal_dim(cfg, train.goal_dim)
    if not d.val_split:
        return train, None
    try:
        val = EventGoalBatches(list(d.stores), split=d.val_split, seed=cfg.runtime.seed + 1, **kw)
    except UserError as e:
        warnings.warn(f"no validation: {e}", RuntimeWarning, stacklevel=2)
        return train, None
    n_val = max(1, cfg.validation.max_batches or 4)
    return train, (lambda: (val.batch(k) for k in range(n_val)))


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
