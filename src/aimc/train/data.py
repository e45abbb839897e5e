"""Batches for the training loop, stateless by batch index, as ``data.relabel`` chooses.

``steve1``: batch ``k`` of rank ``r`` holds items ``k*B ... k*B+B-1`` of that rank's
:class:`~aimc.data.loader.SequenceDataset` (item ``i`` of rank ``r`` is drawn from
``rng(seed, r, i)``), so resuming at batch ``k`` only means starting the loader there.
Batches are read ahead by the loader's worker processes in order; asking for another
index than the next one restarts the workers at that index.

``events``: batch ``k`` of rank ``r`` is drawn from ``rng(seed, r, k)`` by
:class:`~aimc.data.events.EventGoalBatches` over episodes held in memory.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Iterable, Iterator
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
