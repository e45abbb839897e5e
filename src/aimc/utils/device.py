"""Devices, autocast and nested tensors: one helper each, used everywhere in aimc."""

from __future__ import annotations

import contextlib
from typing import Any

import torch

from aimc.errors import UserError

PRECISION_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": None}


def resolve_device(name: str | torch.device | None = "auto") -> torch.device:
    """``auto`` (or None): CUDA when available, else CPU; a CUDA name without CUDA is a clear error."""
    if isinstance(name, torch.device):
        return name
    if name in (None, "", "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if str(name).startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"device {name!r} requested but CUDA is not available here; use cpu (or auto)")
    try:
        return torch.device(name)
    except RuntimeError as e:
        raise UserError(f"device {name!r} is not a device name (cpu, cuda, cuda:1, auto): {e}") from None


def autocast(device: torch.device | str, dtype: torch.dtype | None, **kwargs: Any):
    """``torch.autocast`` to ``dtype`` on ``device``; a no-op for None or float32."""
    if dtype is None or dtype == torch.float32:
        return contextlib.nullcontext()
    device_type = device.type if isinstance(device, torch.device) else torch.device(device).type
    return torch.autocast(device_type=device_type, dtype=dtype, **kwargs)


def tree_to(tree: Any, device: torch.device | str, detach: bool = False) -> Any:
    """Every tensor in nested dicts / lists / tuples moved to ``device`` (detached if asked)."""
    if isinstance(tree, torch.Tensor):
        return (tree.detach() if detach else tree).to(device)
    if isinstance(tree, dict):
        return {k: tree_to(v, device, detach) for k, v in tree.items()}
    if isinstance(tree, (list, tuple)):
        return type(tree)(tree_to(v, device, detach) for v in tree)
    return tree
