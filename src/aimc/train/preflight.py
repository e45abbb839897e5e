"""Checks that run before any compute, so a run fails in seconds with a useful message
rather than hours later (or never starts on a GPU it cannot fit).

* :func:`check_static` — files exist, the run directory is usable, the data is there and
  embedded;
* :func:`friendly_build` — the init weights fit the model config;
* :func:`check_memory` — a rough GPU-memory estimate against the free memory, with the
  concrete fix when it does not fit.

All problems found are reported together in one :class:`PreflightError`.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from aimc.errors import UserError
from aimc.train.config import TrainConfig

# Calibration of the activation estimate: the original STEVE-1 code with the VPT 2x policy
# (IMPALA width 8, 128x128 frames), bf16, batch 12 x trunc_t 64 = 768 frames per chunk,
# peaked at 40.8 GiB on an H100 (issue 5); the finetune preset (512 frames) at 28.5 GiB.
# Less ~3.7 GiB of weights + grads + AdamW state, that is ~49.4 MiB per frame, i.e.
# ~395 bytes per (IMPALA width x pixel) per frame.
BYTES_PER_WIDTH_PIXEL = 49.4 * 2**20 / (8 * 128 * 128)
# Measured with aimc's policy on the same H100 (benchmarks/train_step.py, docs/training.md):
# activation checkpointing keeps ~37 % of the activations (finetune_24gb: 8.3 GiB peak),
# fp32 needs ~1.29x the bf16 activations (steve1_from_vpt eager fp32: 51.3 GiB peak).
CHECKPOINTING_FACTOR = 0.37
FP32_FACTOR = 1.29


class PreflightError(UserError):
    """One or more problems found before training started."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        head = "cannot start training:" if len(problems) > 1 else "cannot start training: "
        body = "\n  - " + "\n  - ".join(problems) if len(problems) > 1 else problems[0]
        super().__init__(head + body)


def check_static(cfg: TrainConfig, run_dir: Path, *, resume: bool, need_data: bool = True) -> None:
    """Files, run directory and data; raises :class:`PreflightError` listing every problem."""
    problems: list[str] = []
    problems += _check_init(cfg)
    problems += _check_run_dir(Path(run_dir), resume)
    if need_data:
        problems += _check_data(cfg)
    if problems:
        raise PreflightError(problems)


def _check_init(cfg: TrainConfig) -> list[str]:
    m = cfg.model
    out = []
    if m.init:
        init = Path(m.init)
        if not init.is_file():
            out.append(f"model.init {init}: file not found (download it or fix the path)")
        elif init.stat().st_size == 0:
            out.append(f"model.init {init}: the file is empty (an interrupted download or copy?)")
        elif init.suffix == ".safetensors":
            if not m.model_file and not init.with_suffix(".yaml").is_file():
                out.append(f"model.init {init}: its config sidecar {init.with_suffix('.yaml').name} is missing "
                           "(aimc saves both; copy it next to the weights)")
        elif init.suffix in (".weights", ".pt", ".pth"):
            if not m.model_file:
                out.append(f"model.init {init}: official weights need their .model file: "
                           "set model.model_file=PATH/2x.model")
        else:
            out.append(f"model.init {init}: unknown weights format {init.suffix!r} (use .weights or .safetensors)")
    if m.model_file and not Path(m.model_file).is_file():
        out.append(f"model.model_file {m.model_file}: file not found")
    return out


def _check_run_dir(run_dir: Path, resume: bool) -> list[str]:
    if resume:
        if not (run_dir / "config.yaml").is_file():
            return [f"--resume {run_dir}: not a training run directory (config.yaml missing)"]
        if not (run_dir / "checkpoints" / "latest" / "state.pt").is_file():
            return [f"--resume {run_dir}: no checkpoint to resume from yet (checkpoints/latest missing); "
                    "start it again without --resume"]
    elif (run_dir / "checkpoints" / "latest").exists():
        return [f"{run_dir} already holds a run: continue it with `aimc train --resume {run_dir}` "
                "or choose another --out"]
    # writable?
    probe_parent = run_dir if run_dir.exists() else _existing_parent(run_dir)
    try:
        fd, name = tempfile.mkstemp(prefix=".aimc-write-test-", dir=probe_parent)
        os.close(fd)
        os.unlink(name)
    except OSError as e:
        return [f"output directory {run_dir}: cannot write there ({e.strerror}); choose another --out"]
    return []


def _existing_parent(p: Path) -> Path:
    p = p.absolute()
    while not p.exists():
        p = p.parent
    return p


def _check_data(cfg: TrainConfig) -> list[str]:
    d = cfg.data
    if not d.stores:
        return ["data.stores is empty: give the episode store(s) to train on, e.g. data.stores=[data/my_store]"]
    from aimc.data.mixture import parse_source
    from aimc.data.store import EpisodeStore

    out = []
    for spec in d.stores:
        root = parse_source(spec, d.split).store  # "path" or "path:split"
        path = Path(root)
        if not path.is_dir():
            out.append(f"data store {root}: folder not found (create it with `aimc data convert ...`)")
            continue
        try:
            store = EpisodeStore(path)
            ids = store.episode_ids()
        except UserError as e:
            out.append(f"data store {root}: {e}")
            continue
        if not ids:
            out.append(f"data store {root}: holds no episodes (convert some with `aimc data convert ...`)")
            continue
        if cfg.model.goal_dim > 0:
            missing = [i for i in ids if not store.open(i).has_embeddings]
            if missing:
                out.append(
                    f"data store {root}: {len(missing)} of {len(ids)} episodes have no goal embeddings "
                    f"(first: {missing[0]}); run `aimc data embed {root}`"
                )
    return out


def friendly_build(cfg: TrainConfig, build: Callable[[TrainConfig], nn.Module]) -> nn.Module:
    """Build the policy; a weights file that does not fit the config becomes a clear error."""
    try:
        return build(cfg)
    except UserError:
        raise
    except (RuntimeError, KeyError, ValueError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise PreflightError([
            f"model.init {cfg.model.init or '(none)'} does not fit the model config: {first}. "
            "Check model.model_file / the .yaml sidecar and model.goal_dim / model.policy overrides."
        ]) from e


def estimate_memory_gib(cfg: TrainConfig, policy: nn.Module, precision: str) -> dict[str, float]:
    """Rough peak GPU memory of training (GiB): weights, grads, AdamW state, activations."""
    n = sum(p.numel() for p in policy.parameters())
    n_train = sum(p.numel() for p in policy.parameters() if p.requires_grad)
    states = (4 * n + 4 * n_train + 8 * n_train) / 2**30
    pc = getattr(policy, "cfg", None)
    width = float(getattr(pc, "impala_width", 8))
    shape = getattr(pc, "img_shape", (128, 128, 3))
    pixels = float(shape[0] * shape[1])
    per_frame = BYTES_PER_WIDTH_PIXEL * width * pixels
    if cfg.model.activation_checkpointing:
        per_frame *= CHECKPOINTING_FACTOR
    if precision == "fp32":
        per_frame *= FP32_FACTOR
    frames = cfg.optim.batch_size * cfg.optim.trunc_t
    act = frames * per_frame / 2**30
    return {"states_gib": states, "activations_gib": act, "total_gib": states + act}


def check_memory(cfg: TrainConfig, policy: nn.Module, device: torch.device, precision: str,
                 free_bytes: int | None = None) -> dict[str, float]:
    """Compare the estimate to the free GPU memory; raise with the fix if it cannot fit."""
    est = estimate_memory_gib(cfg, policy, precision)
    if device.type != "cuda" and free_bytes is None:
        return est
    if free_bytes is None:
        free_bytes, _total = torch.cuda.mem_get_info(device)
    free = free_bytes / 2**30
    if est["total_gib"] > 0.95 * free:
        o = cfg.optim
        fixes = [f"optim.batch_size={max(1, o.batch_size // 2)} optim.grad_accum={o.grad_accum * 2} "
                 "(same frames per step)"]
        if not cfg.model.activation_checkpointing:
            fixes.append("model.activation_checkpointing=true")
        if o.trunc_t > 16:
            fixes.append(f"optim.trunc_t={o.trunc_t // 2} (shorter backprop window)")
        if precision == "fp32":
            fixes.append("runtime.precision=bf16")
        raise PreflightError([
            f"training needs about {est['total_gib']:.1f} GiB of GPU memory "
            f"({est['activations_gib']:.1f} GiB activations for {o.batch_size} x {o.trunc_t} frames per chunk, "
            f"{est['states_gib']:.1f} GiB weights/grads/optimizer) but only {free:.1f} GiB are free on {device}. "
            f"Try: {'; or '.join(fixes)}. (Set runtime.skip_preflight_memory=true to try anyway.)"
        ])
    return est


def describe(est: dict[str, Any]) -> str:
    return f"~{est['total_gib']:.1f} GiB (activations {est['activations_gib']:.1f}, states {est['states_gib']:.1f})"
