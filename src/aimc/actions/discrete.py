"""A plain discrete action space (one policy head), e.g. the built-in Crafter world's 17 actions."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from aimc.errors import ConfigError, UserError


@dataclass(frozen=True)
class DiscreteActions:
    """``n`` actions with optional names; the policy sees them as one head ``{head: index}``.

    Fields:
        n: number of actions (> 0).
        names: one name per action (unique), or empty for ``action_0 .. action_{n-1}``.
        head: the policy head name the index travels under (``"action"``).
    """

    n: int
    names: Sequence[str] = ()
    head: str = "action"

    def __post_init__(self) -> None:
        if not isinstance(self.n, (int, np.integer)) or self.n <= 0:
            raise ConfigError(f"DiscreteActions.n must be a positive integer, got {self.n!r}")
        names = tuple(self.names) if self.names else tuple(f"action_{i}" for i in range(self.n))
        if len(names) != self.n:
            raise ConfigError(f"DiscreteActions.names has {len(names)} names for n={self.n} actions")
        if len(set(names)) != len(names):
            raise ConfigError(f"DiscreteActions.names must be unique, got {list(names)}")
        object.__setattr__(self, "names", names)

    @property
    def action_heads(self) -> dict[str, int]:
        """The policy's ``action_heads`` for this space, e.g. ``{"action": 17}``."""
        return {self.head: int(self.n)}

    def index(self, name: str) -> int:
        """Index of the action called ``name``."""
        try:
            return self.names.index(name)  # type: ignore[union-attr]
        except ValueError:
            raise UserError(f"unknown action {name!r}; known: {list(self.names)}") from None

    def to_policy(self, actions: int | Sequence[int] | np.ndarray) -> dict[str, np.ndarray]:
        """Env action indices (...) -> policy action ``{head: int64 (...)}``."""
        return {self.head: self._check(actions)}

    def from_policy(self, policy_actions: Mapping[str, np.ndarray]) -> np.ndarray:
        """Policy action ``{head: (...)}`` -> env action indices int64 (...)."""
        if self.head not in policy_actions:
            raise UserError(f"policy action has no '{self.head}' head (got {sorted(policy_actions)})")
        return self._check(policy_actions[self.head])

    def _check(self, actions: int | Sequence[int] | np.ndarray) -> np.ndarray:
        if hasattr(actions, "detach"):  # a torch tensor
            actions = actions.detach().cpu().numpy()  # type: ignore[union-attr]
        arr = np.asarray(actions)
        if not np.issubdtype(arr.dtype, np.integer):
            raise UserError(f"actions must be integer indices, got dtype {arr.dtype}")
        if arr.size and (arr.min() < 0 or arr.max() >= self.n):
            raise UserError(f"actions must be in 0..{self.n - 1}, got {arr.min()}..{arr.max()}")
        return arr.astype(np.int64)
