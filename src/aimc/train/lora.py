"""Low-rank adapters (LoRA) for ``nn.Linear`` layers, and merging them back.

``y = W x + b + (alpha / r) * B (A dropout(x))`` with ``A (r, in)`` random and
``B (out, r)`` zero, so an adapted model starts out computing exactly what the base
model does. Only ``A`` and ``B`` train; ``W`` and ``b`` stay frozen. :func:`merge_lora`
folds ``(alpha / r) B A`` into ``W`` and puts plain ``nn.Linear`` layers back, so the
exported weights load anywhere (official ``.weights`` included).

Small enough to keep here rather than pull in PEFT (which depends on transformers).
"""

from __future__ import annotations

import fnmatch
import math

import torch
from torch import nn

from aimc.errors import UserError


class LoRALinear(nn.Module):
    """An ``nn.Linear`` with a trainable low-rank update beside its frozen weight."""

    def __init__(self, base: nn.Linear, rank: int, alpha: float, dropout: float = 0.0) -> None:
        super().__init__()
        self.base = base
        self.rank = rank
        self.scale = alpha / rank
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        w = base.weight
        self.lora_A = nn.Parameter(torch.empty(rank, base.in_features, device=w.device, dtype=w.dtype))
        self.lora_B = nn.Parameter(torch.zeros(base.out_features, rank, device=w.device, dtype=w.dtype))
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))
        for p in base.parameters():
            p.requires_grad_(False)

    @property
    def weight(self) -> torch.Tensor:  # lets code that reads .weight (dtype, device) keep working
        return self.base.weight

    @property
    def bias(self) -> torch.Tensor | None:
        return self.base.bias

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (..., in) -> (..., out)
        update = (self.dropout(x) @ self.lora_A.t()) @ self.lora_B.t()
        return self.base(x) + self.scale * update

    def merged(self) -> nn.Linear:
        """A plain ``nn.Linear`` computing the same function."""
        base = self.base
        out = nn.Linear(base.in_features, base.out_features, bias=base.bias is not None,
                        device=base.weight.device, dtype=base.weight.dtype)
        with torch.no_grad():
            out.weight.copy_(base.weight + self.scale * (self.lora_B @ self.lora_A))
            if base.bias is not None:
                out.bias.copy_(base.bias)
        return out


def _set_child(root: nn.Module, name: str, module: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = root.get_submodule(parent_name) if parent_name else root
    setattr(parent, child, module)


def apply_lora(model: nn.Module, targets: list[str], rank: int, alpha: float, dropout: float = 0.0) -> list[str]:
    """Wrap every ``nn.Linear`` whose module name matches a glob in ``targets``.

    Freezes all parameters of ``model`` first (callers unfreeze what else should train).
    Returns the names of the wrapped modules; matching none is an error.
    """
    for p in model.parameters():
        p.requires_grad_(False)
    names = [
        n for n, m in model.named_modules()
        if isinstance(m, nn.Linear) and any(fnmatch.fnmatchcase(n, t) for t in targets)
    ]
    if not names:
        raise UserError(f"model.lora.targets {targets} match no linear layer of this policy")
    for n in names:
        _set_child(model, n, LoRALinear(model.get_submodule(n), rank, alpha, dropout))
    return names


def merge_lora(model: nn.Module) -> nn.Module:
    """Replace every :class:`LoRALinear` in ``model`` (in place) by its merged ``nn.Linear``."""
    names = [n for n, m in model.named_modules() if isinstance(m, LoRALinear)]
    for n in names:
        _set_child(model, n, model.get_submodule(n).merged())
    return model


def has_lora(model: nn.Module) -> bool:
    return any(isinstance(m, LoRALinear) for m in model.modules())
