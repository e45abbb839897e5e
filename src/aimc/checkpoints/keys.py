"""Comparing a checkpoint's tensors with a model's: the one place mismatch reports are made."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch


def list_keys(keys: list[str], limit: int = 8) -> str:
    """``a, b, c, ... (+5 more)``."""
    shown = ", ".join(keys[:limit])
    return shown + (f", ... (+{len(keys) - limit} more)" if len(keys) > limit else "")


@dataclass
class KeyMismatch:
    """What a state dict lacks, has in excess, or has in the wrong shape for a model."""

    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    misshapen: list[str] = field(default_factory=list)  # "key (file shape) vs (model shape)"

    def __bool__(self) -> bool:
        return bool(self.missing or self.unexpected or self.misshapen)

    @property
    def misshapen_keys(self) -> set[str]:
        return {m.split(" ")[0] for m in self.misshapen}

    def describe(self) -> str:
        parts = []
        if self.missing:
            parts.append(f"{len(self.missing)} missing key(s): {list_keys(self.missing)}")
        if self.unexpected:
            parts.append(f"{len(self.unexpected)} unexpected key(s): {list_keys(self.unexpected)}")
        if self.misshapen:
            parts.append(f"{len(self.misshapen)} misshapen key(s) (file vs model): {list_keys(self.misshapen, 5)}")
        return "; ".join(parts)


def compare_state_dicts(model_sd: dict[str, torch.Tensor], sd: dict[str, torch.Tensor]) -> KeyMismatch:
    """Compare a loaded state dict ``sd`` against the model's own ``model_sd``."""
    return KeyMismatch(
        missing=[k for k in model_sd if k not in sd],
        unexpected=[k for k in sd if k not in model_sd],
        misshapen=[
            f"{k} {tuple(sd[k].shape)} vs {tuple(model_sd[k].shape)}"
            for k in model_sd
            if k in sd and tuple(sd[k].shape) != tuple(model_sd[k].shape)
        ],
    )
