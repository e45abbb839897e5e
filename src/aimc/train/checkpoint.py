"""Resumable training checkpoints, written so that a kill at any moment is harmless.

Layout under ``RUN_DIR/checkpoints``::

    latest/                 resumable: the newest state (replaced atomically)
        state.pt            model, optimizer, scaler, RNG states, carried recurrent state
        progress.json       step, frames, position in the data, best val loss (readable)
    best/                   the same for the lowest validation loss
    snapshot_<frames>/      weights only (model.safetensors), every N frames

Each folder is built under a temporary name and renamed into place
(:func:`aimc.utils.io.atomic_dir`), so a reader always finds either the previous complete
checkpoint or the new complete one. ``state.pt`` holds only tensors and plain Python
data and is read back with ``weights_only=True``.
"""

from __future__ import annotations

import json
import os
import random
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import save_file

from aimc.checkpoints.safe_load import load_torch_file
from aimc.errors import UserError
from aimc.utils.device import tree_to
from aimc.utils.io import atomic_dir, clean_tmp_dirs


@dataclass
class Progress:
    """Where training stands; enough (with the data being stateless by index) to resume."""

    step: int = 0
    """Optimizer steps done."""
    frames: int = 0
    """Frames trained on, over all processes."""
    micro: int = 0
    """Micro-steps (chunks) done; (micro // chunks_per_sequence) is the batch index."""
    best_val_loss: float = float("inf")
    next_snapshot_frames: int = 0
    wall_seconds: float = 0.0
    """Training time accumulated over all sessions of this run (periodic work such as
    evaluation not included)."""
    periodic_seconds: dict[str, float] = field(default_factory=dict)
    """Time spent in each periodic callback (``eval``: evaluation), over all sessions."""


def rng_state() -> dict[str, Any]:
    """All RNG states as tensors / plain data (safe to reload with weights_only)."""
    np_state = np.random.get_state()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": {
            "keys": torch.from_numpy(np_state[1].astype(np.int64)),
            "pos": int(np_state[2]),
            "has_gauss": int(np_state[3]),
            "gauss": float(np_state[4]),
        },
        "python": random.getstate(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state(("MT19937", n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"]))
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(
    path: Path,
    *,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler | None,
    progress: Progress,
    carried_state: Any = None,
) -> Path:
    """Write a resumable checkpoint folder atomically."""
    payload = {
        "model": tree_to(model.state_dict(), "cpu", detach=True),
        "optimizer": tree_to(optimizer.state_dict(), "cpu", detach=True),
        "scaler": scaler.state_dict() if scaler is not None else None,
        "rng": rng_state(),
        "carried_state": tree_to(carried_state, "cpu", detach=True),
        "progress": asdict(progress),
    }
    with atomic_dir(path) as tmp:
        torch.save(payload, tmp / "state.pt")
        (tmp / "progress.json").write_text(json.dumps(asdict(progress), indent=1) + "\n", encoding="utf-8")
    return path


def load_checkpoint(path: Path) -> dict[str, Any]:
    """Read a checkpoint folder written by :func:`save_checkpoint`."""
    f = Path(path) / "state.pt"
    if not f.is_file():
        raise UserError(f"{path}: no resumable checkpoint here (state.pt missing); was the run started?")
    payload = load_torch_file(f)
    payload["progress"] = Progress(**payload["progress"])
    return payload


def save_weights_snapshot(path: Path, state_dict: dict[str, torch.Tensor]) -> Path:
    """Weights only, as ``path/model.safetensors`` (atomic)."""
    with atomic_dir(path) as tmp:
        save_file({k: v.detach().cpu().contiguous() for k, v in state_dict.items()}, str(tmp / "model.safetensors"))
    return path


def clean_checkpoint_dir(ckpt_dir: Path) -> int:
    """Repair and tidy after a checkpoint write that was killed half-way.

    Replacing ``latest`` moves the old folder aside (``.old-latest.<pid>``) and then renames the
    new one into place; a kill between the two renames leaves no ``latest``. The old complete
    checkpoint is then put back. Other leftovers (``.tmp-*`` builds, ``.old-*`` copies that were
    replaced) are removed. Returns how many leftovers were removed.
    """
    ckpt_dir = Path(ckpt_dir)
    if not ckpt_dir.is_dir():
        return 0
    for old in sorted(ckpt_dir.glob(".old-*")):
        name = old.name[len(".old-"):].rsplit(".", 1)[0]
        target = ckpt_dir / name
        if old.is_dir() and name and not target.exists():
            os.replace(old, target)
    return clean_tmp_dirs(ckpt_dir)
