"""Training mixtures: several stores (or splits of them) sampled with weights by frames.

``weights=[0.8, 0.2]`` means that 80 % of the training frames come from the first source and
20 % from the second, whatever their sizes (the fine-tuning recipe: keep seeing the original
data so the policy does not forget it while it learns the new data). Without weights every
frame of every source is equally likely (sources weighted by their sizes).

A source is written ``path`` or ``path:split`` (``data/contractor:train``).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from aimc.data.split import load_split
from aimc.data.store import EpisodeStore
from aimc.errors import ConfigError, UserError


@dataclasses.dataclass
class MixtureSource:
    """One part of a mixture."""

    store: str  # episode store folder
    split: str | None = "train"  # split name in the store's splits.yaml (None/"all" = every episode)
    weight: float | None = None  # share of the training frames (None = proportional to size)

    def __post_init__(self) -> None:
        if self.weight is not None and self.weight < 0:
            raise ConfigError(f"mixture weight of {self.store} must be >= 0, got {self.weight}")


@dataclasses.dataclass
class ResolvedSource:
    store: EpisodeStore
    episode_ids: list[str]
    lengths: np.ndarray  # (E,) frames per episode
    weight: float | None


def parse_source(spec: str | MixtureSource, default_split: str | None = "train", weight: float | None = None) -> MixtureSource:
    """``"path"`` or ``"path:split"`` -> MixtureSource (a real folder named ``a:b`` wins)."""
    if isinstance(spec, MixtureSource):
        return spec
    spec = str(spec)
    if ":" in spec and not Path(spec).exists():
        path, split = spec.rsplit(":", 1)
        return MixtureSource(path, split or default_split, weight)
    return MixtureSource(spec, default_split, weight)


def recipe_finetune(original: str, new: str, original_share: float = 0.8, split: str = "train") -> list[MixtureSource]:
    """The 80/20 fine-tuning mixture: ``original_share`` of the frames from the original data."""
    if not 0.0 <= original_share <= 1.0:
        raise UserError(f"original_share must be in [0, 1], got {original_share}")
    return [MixtureSource(original, split, original_share), MixtureSource(new, split, 1.0 - original_share)]


def resolve_sources(
    sources: Sequence[str | MixtureSource], weights: Sequence[float] | None = None, split: str | None = "train"
) -> list[ResolvedSource]:
    """Open every source and list its episodes. ``weights`` (one per source) override the sources' own."""
    if weights is not None and len(weights) and len(weights) != len(sources):
        raise UserError(f"{len(weights)} mixture weights for {len(sources)} sources: give one per source")
    out = []
    for i, s in enumerate(sources):
        src = parse_source(s, split)
        if weights is not None and len(weights):
            src = dataclasses.replace(src, weight=float(weights[i]))
        store = EpisodeStore(src.store)
        store.require_exists()
        ids = load_split(store, src.split)
        lengths = np.array([store.open(e).num_frames for e in ids], dtype=np.int64)
        out.append(ResolvedSource(store, ids, lengths, src.weight))
    return out


def source_probabilities(usable_frames: Sequence[float], weights: Sequence[float | None]) -> np.ndarray:
    """Probability of drawing each source: its weight, or its share of usable frames if no weights."""
    usable = np.asarray(usable_frames, dtype=np.float64)
    if all(w is None for w in weights):
        p = usable.copy()
    elif any(w is None for w in weights):
        raise UserError("give a weight to every mixture source or to none")
    else:
        p = np.asarray(weights, dtype=np.float64) * (usable > 0)
    if p.sum() <= 0:
        raise UserError("the mixture has no usable frames (episodes too short or all weights 0)")
    return p / p.sum()
