"""AdamW with STEVE-1's weight-decay groups, the frames-driven LR schedule, and freezing.

Decay groups (the rule of STEVE-1's ``configure_optimizers``, after nanoGPT): every
parameter is decayed except biases and the weights of LayerNorm and Embedding modules.
That puts linear and convolution kernels, GroupNorm/BatchNorm scales and any free
parameter tensors (e.g. positional tables) in the decayed group.

Schedule (STEVE-1 ``train.py`` ``get_lr``), ``f`` = frames seen so far:

    1. f < warmup:               lr * f / warmup                  (linear from 0)
    2. f > decay_end * n_frames: min_lr
    3. otherwise:                min_lr + 0.5 (1 + cos(pi r)) (lr - min_lr),
                                 r = (f - warmup) / (decay_end * n_frames - warmup)
"""

from __future__ import annotations

import fnmatch
import math

import torch
from torch import nn

from aimc.errors import UserError
from aimc.train.config import OptimConfig, ScheduleConfig

# Parameter-name patterns (globs over ``named_parameters`` names, official VPT naming)
# of the groups that can be frozen.
GROUP_PATTERNS: dict[str, tuple[str, ...]] = {
    "cnn": ("net.img_process.*", "net.img_preprocess.*"),
    "recurrent": ("net.recurrent_layer.*", "net.pre_lstm_ln.*", "net.lastlayer.*", "net.final_ln.*"),
    "heads": ("pi_head.*", "value_head.*"),
    "goal": ("net.mineclip_embed_linear.*", "net.goal_*"),
}

_NO_DECAY_MODULES = (nn.LayerNorm, nn.Embedding)


def lr_at(frames: int | float, lr: float, sched: ScheduleConfig) -> float:
    """Learning rate after ``frames`` frames (the original formula, see module docstring)."""
    end = sched.decay_end * sched.n_frames
    if frames < sched.warmup_frames:
        return lr * frames / sched.warmup_frames
    if frames > end:
        return sched.min_lr
    ratio = (frames - sched.warmup_frames) / (end - sched.warmup_frames)
    coeff = 0.5 * (1.0 + math.cos(math.pi * ratio))  # 1 -> 0
    return sched.min_lr + coeff * (lr - sched.min_lr)


def decay_split(model: nn.Module) -> tuple[list[str], list[str]]:
    """Names of trainable parameters (decayed, not decayed)."""
    no_decay: set[str] = set()
    for mname, module in model.named_modules():
        for pname, _ in module.named_parameters(recurse=False):
            full = f"{mname}.{pname}" if mname else pname
            if pname.endswith("bias") or isinstance(module, _NO_DECAY_MODULES):
                no_decay.add(full)
    decay, keep = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        (keep if name in no_decay else decay).append(name)
    return decay, keep


def make_optimizer(model: nn.Module, cfg: OptimConfig, device: torch.device) -> torch.optim.AdamW:
    """AdamW over the trainable parameters, in the two decay groups."""
    params = dict(model.named_parameters())
    decay, keep = decay_split(model)
    if not decay and not keep:
        raise UserError("nothing to train: every parameter is frozen (check model.freeze / model.lora)")
    groups = [
        {"params": [params[n] for n in decay], "weight_decay": cfg.weight_decay},
        {"params": [params[n] for n in keep], "weight_decay": 0.0},
    ]
    fused = cfg.fused and device.type == "cuda"
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=tuple(cfg.betas), eps=cfg.eps, fused=fused or None)


def group_parameter_names(model: nn.Module, group: str) -> list[str]:
    """Names of the parameters in a freeze group (``cnn``, ``recurrent``, ``heads``, ``goal``)."""
    pats = GROUP_PATTERNS[group]
    return [n for n, _ in model.named_parameters() if any(fnmatch.fnmatchcase(n, p) for p in pats)]


def freeze_groups(model: nn.Module, groups: list[str]) -> list[str]:
    """Set ``requires_grad=False`` on the named groups; returns the frozen names.

    A group that matches nothing is an error (the architecture has no such part, or its
    parameters are named differently), so a typo never trains what was meant to stay fixed.
    """
    frozen: list[str] = []
    params = dict(model.named_parameters())
    for g in groups:
        names = group_parameter_names(model, g)
        if not names:
            raise UserError(
                f"model.freeze: group {g!r} matches no parameter of this policy "
                f"(patterns {list(GROUP_PATTERNS[g])})"
            )
        for n in names:
            params[n].requires_grad_(False)
        frozen += names
    return frozen


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for g in optimizer.param_groups:
        g["lr"] = lr


def grad_norm(params: list[torch.Tensor]) -> torch.Tensor:
    """Global L2 norm of the gradients (0-dim tensor, no host sync)."""
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return torch.zeros(())
    return torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g.float()) for g in grads]))


def weight_norm(params: list[torch.Tensor]) -> torch.Tensor:
    """Global L2 norm of the given (trainable) parameters (0-dim tensor)."""
    return torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(p.detach().float()) for p in params]))


# ---------------------------------------------------------------------------- L2-SP


def l2sp_anchor(policy: nn.Module, anchor_state: dict[str, torch.Tensor], source: str) -> dict[str, torch.Tensor]:
    """The anchor theta0 of L2-SP for each trainable parameter of ``policy``, from the state dict
    ``anchor_state`` (the weights training started from, or ``optim.l2sp_anchor``'s), on the
    parameter's device and dtype. Parameters the anchor does not hold (LoRA adapters, a goal layer
    new to these weights) are left out; a shape that differs is an error naming ``source``."""
    out: dict[str, torch.Tensor] = {}
    for name, p in policy.named_parameters():
        if not p.requires_grad or name not in anchor_state:
            continue
        a = anchor_state[name]
        if tuple(a.shape) != tuple(p.shape):
            raise UserError(f"optim.l2sp: {source} holds {name} of shape {tuple(a.shape)} but the policy's is "
                            f"{tuple(p.shape)}: anchor with weights of the same architecture")
        out[name] = a.detach().to(device=p.device, dtype=p.dtype).clone()
    if not out:
        raise UserError(f"optim.l2sp: {source} holds none of the policy's trainable parameters: anchor with weights of "
                        "the same architecture, or optim.l2sp=0")
    return out


@torch.no_grad()
def add_l2sp_grad(policy: nn.Module, anchor: dict[str, torch.Tensor], alpha: float) -> None:
    """Add the gradient of alpha/2 x ||theta - theta0||^2, i.e. alpha x (theta - theta0), to every
    anchored parameter's ``.grad`` (after the data loss's backward, before clipping)."""
    for name, p in policy.named_parameters():
        a = anchor.get(name)
        if a is None or not p.requires_grad:
            continue
        g = (p.detach() - a).mul_(alpha)
        if p.grad is None:
            p.grad = g.to(p.dtype)
        else:
            p.grad.add_(g.to(p.grad.dtype))


@torch.no_grad()
def l2sp_distance(policy: nn.Module, anchor: dict[str, torch.Tensor]) -> torch.Tensor:
    """||theta - theta0|| over the anchored parameters (0-dim tensor, for the log)."""
    params = dict(policy.named_parameters())
    return torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm((params[n].detach() - a).float())
                                                 for n, a in anchor.items()]))
