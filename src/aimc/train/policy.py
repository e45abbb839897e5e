"""Behaviour cloning of a goal-conditioned policy: the whole ``aimc train`` loop.

Read :func:`train_policy` top to bottom; its steps are functions of their own:
:func:`setup_learner` and :func:`restore` (fresh, or from the latest checkpoint),
:func:`optimizer_step`, :func:`validate_and_keep_best` and :func:`export`. One optimizer
step (:func:`optimizer_step` over :class:`SequenceChunks`) is:

    lr <- schedule(frames seen)
    repeat grad_accum times (a micro-step = one trunc_t chunk of a batch of sequences):
        take the next chunk; at a sequence start fetch batch k of this rank and reset
        the recurrent state, otherwise continue from the carried (detached) state
        loss = mean over (B, trunc_t) of -log p(expert action | frames, goal)
        backward(loss / grad_accum)   (DDP all-reduces only on the last micro-step)
    unscale (fp16), add the L2-SP pull alpha (theta - theta0) (optim.l2sp > 0),
    gradient norm, stop if the loss is not finite, clip, AdamW step
then the loop logs, validates, checkpoints: each after the step whose frames cross a multiple of
its interval (``logging.every_frames``, ``validation.*_frames``, ``checkpoint.*_frames``), and runs
its periodic work (:class:`Periodic`, e.g. the evaluation of ``aimc train``'s ``eval`` section),
whose time is kept apart.

Batches come from a source that is stateless by index (batch ``k`` of rank ``r`` is
always the same), so a run resumes exactly from ``(step, micro-step, carried state,
RNG states)`` saved in its latest checkpoint.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch
from torch import nn

from aimc.errors import UserError
from aimc.train import checkpoint as ckpt
from aimc.train import distributed as D
from aimc.train.config import TrainConfig, crossed
from aimc.train.lora import apply_lora, has_lora, merge_lora
from aimc.train.optim import (
    add_l2sp_grad,
    freeze_groups,
    grad_norm,
    group_parameter_names,
    l2sp_anchor,
    l2sp_distance,
    lr_at,
    make_optimizer,
    set_lr,
    weight_norm,
)
from aimc.utils.device import PRECISION_DTYPES, autocast, tree_to
from aimc.utils.io import atomic_dir


class TrainingDiverged(UserError):
    """The loss became NaN/Inf; a checkpoint was written before stopping."""

    def __init__(self, message: str, loss: float = math.nan, grad_norm: float = math.nan) -> None:
        super().__init__(message)
        self.loss, self.grad_norm = loss, grad_norm


class BatchSource(Protocol):
    """Training batches, stateless by index: ``batch(k)`` is this rank's k-th batch.

    A batch is ``{"img": uint8 (B,T,H,W,3), "goal": float (B,T,D),
    "actions": {head: int64 (B,T)}, "first": bool (B,T)}``.
    """

    def batch(self, index: int) -> dict[str, Any]: ...


# ----------------------------------------------------------------------------------
# pieces of the step


def resolve_precision(precision: str, device: torch.device) -> str:
    if precision != "auto":
        return precision
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    return "fp32"


def chunk(batch: dict[str, Any], t0: int, t1: int, device: torch.device) -> dict[str, Any]:
    """Frames ``t0:t1`` of every array in the batch, on ``device``."""

    def cut(x: Any) -> Any:
        if isinstance(x, dict):
            return {k: cut(v) for k, v in x.items()}
        t = x if isinstance(x, torch.Tensor) else torch.as_tensor(x)
        return t[:, t0:t1].to(device, non_blocking=True)

    return {k: cut(batch[k]) for k in ("img", "goal", "actions", "first")}


def detach_state(state: Any) -> Any:
    """Cut the graph between chunks (truncated BPTT); keeps the structure."""
    if isinstance(state, torch.Tensor):
        return state.detach()
    if isinstance(state, (list, tuple)):
        return type(state)(detach_state(s) for s in state)
    if isinstance(state, dict):
        return {k: detach_state(v) for k, v in state.items()}
    return state


def bc_loss(model: nn.Module, policy: nn.Module, c: dict[str, Any], state: Any) -> tuple[torch.Tensor, Any]:
    """Per-frame mean negative log-likelihood of the expert actions in chunk ``c``.

    ``model`` is what runs the forward (the policy, maybe DDP-wrapped or compiled);
    ``policy`` the plain module, whose ``log_prob`` scores actions given as (B, t) per head.
    """
    logits, _vpred, new_state = model(c["img"], c["goal"], c["first"], state)
    logp = policy.log_prob(logits, c["actions"])  # (B, t)
    return -logp.float().mean(), new_state


def kl_to_reference(logits: dict[str, torch.Tensor], ref_logits: dict[str, torch.Tensor]) -> torch.Tensor:
    """KL(pi || pi_ref) summed over heads: normalised log-probs {head: (..., n)} -> (...)."""
    return sum((lp.exp() * (lp - ref_logits[h].to(lp.dtype))).sum(-1) for h, lp in logits.items())


class UncondAnchoredLoss:
    """Behaviour cloning plus ``coef`` x KL(pi(.|s, 0) || pi_ref(.|s, 0)) (``optim.uncond_kl``).

    Every ``stride``-th sequence of the chunk is played again with its goal zeroed, in the same
    forward as the chunk (one pass, so DDP sees one forward per backward); ``reference`` (frozen)
    plays those sequences without a goal too. Needs whole sequences per chunk (trunc_t = T): both
    passes start from the initial state. ``kl_sum`` / ``count`` accumulate the KL for the log.
    """

    def __init__(self, reference: nn.Module, coef: float, share: float) -> None:
        self.reference, self.coef = reference, float(coef)
        self.stride = max(1, round(1.0 / share))
        self.kl_sum, self.count = 0.0, 0

    def __call__(self, model: nn.Module, policy: nn.Module, c: dict[str, Any], state: Any) -> tuple[torch.Tensor, Any]:
        B = c["first"].shape[0]
        idx = torch.arange(0, B, self.stride, device=c["first"].device)
        img_u, first_u = c["img"][idx], c["first"][idx]  # (n, t, H, W, 3), (n, t)
        goal_u = torch.zeros_like(c["goal"][idx])  # (n, t, D): no goal
        device = c["first"].device
        logits, _vpred, new_state = model(torch.cat([c["img"], img_u]), torch.cat([c["goal"], goal_u]),
                                          torch.cat([c["first"], first_u]), policy.initial_state(B + len(idx), device=device))
        cond = {h: lp[:B] for h, lp in logits.items()}
        uncond = {h: lp[B:] for h, lp in logits.items()}
        nll = -policy.log_prob(cond, c["actions"]).float().mean()
        with torch.no_grad():
            ref, _, _ = self.reference(img_u, goal_u, first_u, self.reference.initial_state(len(idx), device=device))
        kl = kl_to_reference(uncond, ref).float().mean()
        self.kl_sum = self.kl_sum + kl.detach()  # a tensor: no host sync on the hot path
        self.count += 1
        # the state is never carried on: trunc_t = T, so the next chunk starts a new sequence
        return nll + self.coef * kl, new_state

    def take_mean(self) -> float | None:
        """Mean KL since the last call (None when no chunk ran), and reset."""
        out = float(self.kl_sum) / self.count if self.count else None
        self.kl_sum, self.count = 0.0, 0
        return out


def micro_step(model: nn.Module, policy: nn.Module, c: dict[str, Any], state: Any, precision: str,
               device: torch.device, scale: float = 1.0, scaler: torch.amp.GradScaler | None = None,
               loss_fn: Callable = bc_loss) -> tuple[torch.Tensor, Any]:
    """Forward + backward of one chunk; gradients accumulate in ``.grad`` (times ``scale``).

    Returns the chunk's loss (detached) and the new recurrent state, detached so that
    the next chunk's backward stops here (truncated BPTT).
    """
    with autocast(device, PRECISION_DTYPES[precision]):
        loss, new_state = loss_fn(model, policy, c, state)
    scaled = loss * scale
    (scaler.scale(scaled) if scaler is not None else scaled).backward()
    return loss.detach(), detach_state(new_state)


def unconditioned_fraction(goal: torch.Tensor) -> float:
    """Fraction of sequences whose goal is zero everywhere (p_uncond at work)."""
    flat = goal.reshape(goal.shape[0], -1)
    return float((flat.abs().sum(dim=1) == 0).float().mean())


@torch.no_grad()
def validate(policy: nn.Module, batches: Iterable[dict[str, Any]], cfg: TrainConfig, device: torch.device,
             precision: str, info: D.DistInfo) -> float:
    """Mean per-frame NLL over the val batches (chunked like training, state carried)."""
    was_training = policy.training
    policy.eval()
    total = torch.zeros((), device=device)
    n = 0
    T, tt = cfg.data.T, cfg.optim.trunc_t
    for b, batch in enumerate(batches):
        if cfg.validation.max_batches and b >= cfg.validation.max_batches:
            break
        B = batch["first"].shape[0]
        state = policy.initial_state(B, device=device)
        for t0 in range(0, T, tt):
            c = chunk(batch, t0, t0 + tt, device)
            with autocast(device, PRECISION_DTYPES[precision]):
                loss, state = bc_loss(policy, policy, c, state)
            total += loss
            n += 1
    policy.train(was_training)
    if n == 0:  # a loss of 0 would look like a perfect model and fix "best" at once
        raise UserError("validation got no batch: the validation split holds fewer sequences than "
                        f"optim.batch_size={cfg.optim.batch_size}; add episodes to data.val_split "
                        f"({cfg.data.val_split!r}) or set validation.enabled=false")
    return float(D.mean_across(total / n, info))


# ----------------------------------------------------------------------------------
# model setup


def build_policy(cfg: TrainConfig) -> nn.Module:
    """The policy described by ``cfg.model``: an architecture, maybe initialised from weights."""
    from aimc.checkpoints.vpt import load_model_file, load_policy
    from aimc.models.vpt import PolicyConfig, STEVE1Policy

    m = cfg.model
    extra = {
        "mineclip_embed_dim": m.goal_dim,
        "activation_checkpointing": m.activation_checkpointing,
        "channels_last": m.channels_last,
        **m.policy,
    }
    if m.init:
        init = Path(m.init)
        if m.model_file:
            base = load_model_file(m.model_file)
        elif init.suffix == ".safetensors":
            base = None  # the sidecar .yaml describes it
        else:
            raise UserError(f"{init}: official .weights need the matching .model file: set model.model_file")
        if base is not None:
            pc = _with(base, extra)
            return load_policy(init, config=pc, strict=True, allow_missing_goal=True)
        policy = load_policy(init, strict=True, allow_missing_goal=True)
        return _reconfigure(policy, extra)
    if m.arch == "2x":
        pc = PolicyConfig.vpt_2x()
    elif m.arch == "tiny":
        pc = tiny_policy_config()
    else:
        raise UserError(f"model.arch {m.arch!r} is not known: use 2x or tiny, or set model.init")
    return STEVE1Policy(_with(pc, extra))


def tiny_policy_config():
    """A policy small enough for CPU tests (``PolicyConfig.tiny``: 64x64 frames, 2 blocks)."""
    from aimc.models.vpt import PolicyConfig

    return PolicyConfig.tiny()


def _with(pc: Any, changes: dict[str, Any]) -> Any:
    import dataclasses

    names = {f.name for f in dataclasses.fields(pc)}
    bad = [k for k in changes if k not in names]
    if bad:
        raise UserError(f"model.policy: {bad[0]!r} is not a PolicyConfig field ({', '.join(sorted(names))})")
    return dataclasses.replace(pc, **changes)


def _reconfigure(policy: nn.Module, extra: dict[str, Any]) -> nn.Module:
    """Apply runtime-only switches to a loaded policy (others must match its weights)."""
    pc = getattr(policy, "cfg", None)
    if pc is None:
        return policy
    for k, v in extra.items():
        if getattr(pc, k, v) != v and k not in ("activation_checkpointing", "channels_last"):
            raise UserError(
                f"model.init was saved with {k}={getattr(pc, k)!r} but the config asks for {v!r}; "
                f"remove the setting or start from weights with {k}={v!r}"
            )
    from aimc.models.vpt import STEVE1Policy

    new = STEVE1Policy(_with(pc, extra))
    new.load_state_dict(policy.state_dict(), strict=True)
    return new


def prepare_for_training(policy: nn.Module, cfg: TrainConfig) -> dict[str, list[str]]:
    """Freeze groups and/or attach LoRA adapters; returns what was done (for the log)."""
    m = cfg.model
    done: dict[str, list[str]] = {"frozen": [], "lora": []}
    if m.lora.rank > 0:
        done["lora"] = apply_lora(policy, m.lora.targets, m.lora.rank, m.lora.alpha, m.lora.dropout)
        params = dict(policy.named_parameters())
        for g in m.lora.train_groups:
            for n in group_parameter_names(policy, g):
                params[n].requires_grad_(True)
    if m.freeze:
        done["frozen"] = freeze_groups(policy, m.freeze)
    return done


def export_weights(policy: nn.Module, stem: Path, formats: list[str]) -> list[Path]:
    """Write ``policy`` (LoRA merged back into plain weights) as ``stem.weights`` (official
    torch.save layout) and/or ``stem.safetensors`` (+ ``stem.yaml`` config sidecar)."""
    model = merge_lora(copy.deepcopy(policy)) if has_lora(policy) else policy
    written = []
    try:
        from aimc.checkpoints.vpt import save_policy
        from aimc.models.vpt import STEVE1Policy
    except ImportError:  # policy package not installed: plain state-dict files
        save_policy, STEVE1Policy = None, None
    for fmt in formats:
        path = stem.with_suffix(fmt)
        if STEVE1Policy is not None and isinstance(model, STEVE1Policy):
            save_policy(model, path)
        elif fmt == ".safetensors":
            from safetensors.torch import save_file

            from aimc.utils.io import atomic_path

            with atomic_path(path) as tmp:
                save_file({k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}, str(tmp))
        else:
            from aimc.utils.io import atomic_path

            with atomic_path(path) as tmp:
                torch.save({k: v.detach().cpu() for k, v in model.state_dict().items()}, tmp)
        written.append(path)
    return written


# ----------------------------------------------------------------------------------
# the steps of a run: set up and restore, optimizer step, validate and keep the best, export


@dataclass
class Learner:
    """What an optimizer step acts on."""

    policy: nn.Module  # the plain module: log_prob, initial_state, state_dict
    model: nn.Module  # what runs the forward: the policy, maybe DDP-wrapped and/or compiled
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler | None  # fp16 only
    precision: str  # bf16, fp16 or fp32
    device: torch.device
    ddp: nn.Module | None = None  # the DDP wrapper: gradients are all-reduced on the last micro-step only
    anchor: dict[str, torch.Tensor] | None = None  # L2-SP's theta0 by parameter name (None: off)
    l2sp: float = 0.0  # L2-SP's alpha
    loss_fn: Callable = bc_loss  # the per-chunk loss (UncondAnchoredLoss with optim.uncond_kl)

    @property
    def trainable(self) -> list[nn.Parameter]:
        return [p for p in self.policy.parameters() if p.requires_grad]


@dataclass
class StepStats:
    """One optimizer step: mean micro-step loss (over ranks) and the gradient norm before clipping."""

    loss: torch.Tensor  # () on the device; reading it syncs
    grad_norm: torch.Tensor


class MicroBatches(Protocol):
    """The micro-step stream an optimizer step consumes: ``next()`` gives a chunk and the
    recurrent state to start it from, ``done(state)`` takes the state it ended in."""

    def next(self) -> tuple[dict[str, Any], Any]: ...

    def done(self, state: Any) -> None: ...


class SequenceChunks:
    """Behaviour cloning's micro-step stream: micro-step ``m`` is chunk ``m % chunks`` of batch
    ``m // chunks`` of ``source``; the recurrent state is carried from chunk to chunk of a
    sequence (truncated BPTT) and reset at its start. ``uncond`` collects the unconditioned
    fraction of each batch fetched (for the log)."""

    def __init__(self, source: BatchSource, policy: nn.Module, trunc_t: int, chunks: int, device: torch.device,
                 micro: int = 0, carried: Any = None) -> None:
        self.source, self.policy, self.trunc_t, self.chunks, self.device = source, policy, trunc_t, chunks, device
        self.micro, self.carried = micro, carried
        self.uncond: list[float] = []
        self._index, self._batch = -1, None

    def next(self) -> tuple[dict[str, Any], Any]:
        b, c_i = divmod(self.micro, self.chunks)
        if b != self._index:
            batch = self.source.batch(b)
            self.uncond.append(unconditioned_fraction(torch.as_tensor(batch["goal"])))
            self._index, self._batch = b, tree_to(batch, self.device)  # once per batch; chunks are views
        if c_i == 0 or self.carried is None:
            self.carried = self.policy.initial_state(self._batch["first"].shape[0], device=self.device)
        return chunk(self._batch, c_i * self.trunc_t, (c_i + 1) * self.trunc_t, self.device), self.carried

    def done(self, state: Any) -> None:
        self.carried = state
        self.micro += 1


def optimizer_step(learner: Learner, micro_batches: MicroBatches, grad_accum: int, max_grad_norm: float = 0.0,
                   info: D.DistInfo | None = None, loss_fn: Callable | None = None) -> StepStats:
    """One optimizer step: ``grad_accum`` micro-steps (forward + backward, gradients summed),
    unscale (fp16), L2-SP's gradient (``learner.anchor``), gradient norm, divergence check, clip, step.

    Raises :class:`TrainingDiverged` (weights untouched, gradients dropped) when the loss is not
    finite on any rank. ``loss_fn(model, policy, chunk, state) -> (loss, state)`` is the
    per-chunk loss (default: ``learner.loss_fn``, behaviour cloning unless ``optim.uncond_kl``).
    """
    info = info or D.DistInfo()
    L = learner
    loss_fn = loss_fn or L.loss_fn
    loss_sum = torch.zeros((), device=L.device)
    for k in range(grad_accum):
        c, state = micro_batches.next()
        with D.no_sync(L.ddp, skip=k < grad_accum - 1):
            loss, state = micro_step(L.model, L.policy, c, state, L.precision, L.device, 1.0 / grad_accum, L.scaler,
                                     loss_fn=loss_fn)
        micro_batches.done(state)
        loss_sum += loss
    step_loss = D.mean_across(loss_sum / grad_accum, info)
    if L.scaler is not None:
        L.scaler.unscale_(L.optimizer)
    if L.anchor is not None:  # the same on every rank, after the all-reduce: the ranks stay identical
        add_l2sp_grad(L.policy, L.anchor, L.l2sp)
    trainable = L.trainable
    gnorm = grad_norm(trainable)
    if D.any_across(not bool(torch.isfinite(step_loss)), info, L.device):
        L.optimizer.zero_grad(set_to_none=True)
        raise TrainingDiverged(f"loss became {float(step_loss)}", loss=float(step_loss), grad_norm=float(gnorm))
    if max_grad_norm > 0:
        torch.nn.utils.clip_grad_norm_(trainable, max_grad_norm)
    if L.scaler is not None:
        L.scaler.step(L.optimizer)
        L.scaler.update()
    else:
        L.optimizer.step()
    L.optimizer.zero_grad(set_to_none=True)
    return StepStats(step_loss, gnorm)


def setup_learner(cfg: TrainConfig, policy: nn.Module, info: D.DistInfo, device: torch.device,
                  check_memory: bool = False) -> tuple[Learner, dict[str, list[str]]]:
    """Freezing / LoRA, device, precision, optimizer, DDP and compile; returns the learner and
    what was frozen or adapted (for the log)."""
    from aimc.train import preflight

    start = ({k: v.detach().clone() for k, v in policy.state_dict().items()}
             if cfg.optim.l2sp and not cfg.optim.l2sp_anchor else None)  # the weights training starts from
    loss_fn: Callable = bc_loss
    if cfg.optim.uncond_kl:  # a frozen copy of the start weights (or the anchor's), before freezing / LoRA
        if cfg.optim.uncond_kl_anchor:
            from aimc.checkpoints.vpt import load_policy

            reference = load_policy(cfg.optim.uncond_kl_anchor)
            ours, theirs = policy.state_dict(), reference.state_dict()
            if theirs.keys() != ours.keys() or any(v.shape != ours[k].shape for k, v in theirs.items()):
                raise UserError(f"optim.uncond_kl_anchor {cfg.optim.uncond_kl_anchor} is not the policy's architecture: "
                                "anchor with weights of the same architecture (e.g. the ones training starts from)")
        else:
            reference = copy.deepcopy(policy)
        reference.to(device).eval().requires_grad_(False)
        loss_fn = UncondAnchoredLoss(reference, cfg.optim.uncond_kl, cfg.optim.uncond_kl_share)
    changes = prepare_for_training(policy, cfg)
    policy.to(device)
    if cfg.model.channels_last and device.type == "cuda":
        policy.to(memory_format=torch.channels_last)
    precision = resolve_precision(cfg.runtime.precision, device)
    if check_memory:
        preflight.check_memory(cfg, policy, device, precision)
    optimizer = make_optimizer(policy, cfg.optim, device)
    scaler = torch.amp.GradScaler(device.type) if precision == "fp16" else None
    ddp = D.wrap_ddp(policy, info, device)  # = policy with one process
    model = torch.compile(ddp) if cfg.runtime.compile else ddp  # what runs the forward
    anchor = None
    if cfg.optim.l2sp:
        if cfg.optim.l2sp_anchor:
            from aimc.checkpoints.vpt import load_policy

            source = f"optim.l2sp_anchor {cfg.optim.l2sp_anchor}"
            anchor = l2sp_anchor(policy, load_policy(cfg.optim.l2sp_anchor).state_dict(), source)
        else:
            anchor = l2sp_anchor(policy, start, f"model.init {cfg.model.init}")
    return Learner(policy, model, optimizer, scaler, precision, device, ddp, anchor, cfg.optim.l2sp, loss_fn), changes


def restore(learner: Learner, cfg: TrainConfig, latest: Path | None) -> tuple[ckpt.Progress, Any]:
    """Where the run stands: fresh (``latest`` None), or exactly where the checkpoint
    ``latest`` left off (weights, optimizer, scaler, RNG states, progress, carried state)."""
    if latest is None:
        return ckpt.Progress(next_snapshot_frames=cfg.checkpoint.snapshot_every_frames), None
    saved = ckpt.load_checkpoint(latest)
    learner.policy.load_state_dict(saved["model"])
    learner.optimizer.load_state_dict(saved["optimizer"])
    if learner.scaler is not None and saved["scaler"] is not None:
        learner.scaler.load_state_dict(saved["scaler"])
    ckpt.set_rng_state(saved["rng"])
    return saved["progress"], tree_to(saved["carried_state"], learner.device)


@dataclass
class Validation:
    """What ``on_validation`` sees after each validation."""

    step: int  # optimizer steps done
    frames: int  # frames trained on
    val_loss: float
    best_val_loss: float  # the lowest so far, this one included


class StopTraining(Exception):
    """Raise it from an ``on_validation`` callback to end the run cleanly (e.g. to prune a
    hyper-parameter trial): the latest checkpoint and the weights are written as at the end,
    and :func:`train_policy` returns with ``TrainResult.stopped`` set. Under DDP the callback
    sees the same numbers on every rank and must decide the same on every rank."""


class Periodic(Protocol):
    """Work done every ``every_frames`` frames of training and once at the end (``every_frames``
    0: only at the end), on rank 0 while the other ranks wait: e.g. the evaluation
    ``aimc train`` runs (:class:`aimc.eval.periodic.PeriodicEvaluator`). Its time is kept out of
    the training time (``TrainResult.seconds``, ``train/frames_per_s``, the ETA and
    ``schedule.max_seconds``) and logged as ``time/<name>_s`` (``time/<name>_total_s`` summed
    over the run, ``time/train_s`` the training time so far)."""

    name: str
    every_frames: int

    def start(self, policy: nn.Module, note: Callable[[str], None]) -> None:
        """Called once the policy is built, before any training step: check that it fits (and
        fail now, not hours later); ``note`` prints a line beside the training's output."""

    def __call__(self, policy: nn.Module, step: int, frames: int) -> dict[str, float]:
        """The work, given the plain policy in eval mode with gradients off and the training's
        random streams untouched; returns scalars to log at ``frames``. An exception is reported
        as a warning and training goes on."""

    def close(self) -> None:
        """Called when training ends (also after an error)."""


def run_periodic(periodic: Sequence[Periodic], learner: Learner, progress: ckpt.Progress, log, info: D.DistInfo,
                 frames_per_step: int, done: dict[str, int], final: bool = False) -> float:
    """Run the callbacks due after the step that brought training to ``progress.frames`` (with
    ``final``: every callback that has not run at this frame count); returns the seconds spent,
    which the caller keeps out of the training time. ``done``: name -> frames of its last run."""
    import random

    import numpy as np

    spent = 0.0
    for p in periodic:
        crossed = p.every_frames and progress.frames // p.every_frames > (progress.frames - frames_per_step) // p.every_frames
        if done.get(p.name) == progress.frames or not (crossed or final):
            continue
        t0 = time.perf_counter()
        scalars: dict[str, float] = {}
        if info.is_main:
            policy = learner.policy
            was_training, np_state, py_state = policy.training, np.random.get_state(), random.getstate()
            policy.eval()
            try:
                with torch.random.fork_rng(devices=[learner.device] if learner.device.type == "cuda" else []), \
                        torch.no_grad():
                    scalars = dict(p(policy, progress.step, progress.frames))
            except Exception as e:  # noqa: BLE001 - hours of training are not lost to a failed evaluation
                log.warn(f"{p.name} at {progress.frames:,} frames failed ({type(e).__name__}: {e}); training goes on")
            finally:
                policy.train(was_training)
                np.random.set_state(np_state)
                random.setstate(py_state)
        D.barrier(info)
        dt = time.perf_counter() - t0
        done[p.name] = progress.frames
        progress.periodic_seconds[p.name] = progress.periodic_seconds.get(p.name, 0.0) + dt
        spent += dt
        log.exclude(dt)  # before the line below prints an ETA
        log.scalars(progress, {**scalars, f"time/{p.name}_s": dt, f"time/{p.name}_total_s": progress.periodic_seconds[p.name],
                               "time/train_s": progress.wall_seconds})
    return spent


@dataclass
class TrainResult:
    """What :func:`train_policy` made."""

    weights: Path  # the exported final weights (the first of checkpoint.export)
    best_weights: Path | None  # the weights with the lowest validation loss, if kept
    best_val_loss: float  # inf when there was no validation
    frames: int  # frames trained on, over all processes and sessions
    steps: int  # optimizer steps
    seconds: float  # training time over all sessions (periodic work such as evaluation not included)
    last: dict[str, float] = field(default_factory=dict)  # the last logged scalars (rank 0), e.g. train/loss
    stopped: bool = False  # an on_validation callback raised StopTraining


def validate_and_keep_best(learner: Learner, val_data: Callable[[], Iterable[dict[str, Any]]], cfg: TrainConfig,
                           info: D.DistInfo, progress: ckpt.Progress, log, ckpt_dir: Path) -> Validation:
    """Validation loss; a new lowest one keeps the weights as ``checkpoints/best``."""
    device = learner.device
    # a forked RNG: validation (and its loader's seeding) never changes the training's random stream
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        val_loss = validate(learner.policy, val_data(), cfg, device, learner.precision, info)
    log.scalars(progress, {"val/loss": val_loss})
    if math.isfinite(val_loss) and val_loss < progress.best_val_loss:
        progress.best_val_loss = val_loss
        if info.is_main and cfg.checkpoint.keep_best:
            ckpt.save_weights_snapshot(ckpt_dir / "best", learner.policy.state_dict())
            from aimc.utils.io import atomic_write_text

            atomic_write_text(ckpt_dir / "best.json",
                              f'{{"val_loss": {val_loss}, "step": {progress.step}, "frames": {progress.frames}}}\n')
    return Validation(progress.step, progress.frames, val_loss, progress.best_val_loss)


def export(policy: nn.Module, run_dir: Path, formats: list[str]) -> tuple[Path, Path | None]:
    """``run_dir/final.*`` from ``policy`` and ``run_dir/best.*`` from ``checkpoints/best`` (if
    kept); returns (final weights, best weights or None), each in the first of ``formats``."""
    final = export_weights(policy, run_dir / "final", formats)[0]
    best_dir = run_dir / "checkpoints" / "best"
    if not (best_dir / "model.safetensors").is_file():
        return final, None
    from safetensors.torch import load_file

    best = copy.deepcopy(policy)
    best.load_state_dict(load_file(str(best_dir / "model.safetensors")))
    return final, export_weights(best.cpu(), run_dir / "best", formats)[0]


# ----------------------------------------------------------------------------------
# the run


def train_policy(
    cfg: TrainConfig,
    run_dir: str | Path,
    *,
    resume: bool = False,
    policy: nn.Module | None = None,
    train_data: BatchSource | None = None,
    val_data: Callable[[], Iterable[dict[str, Any]]] | None = None,
    skip_preflight: bool = False,
    on_validation: Callable[[Validation], None] | None = None,
    periodic: Sequence[Periodic] = (),
) -> TrainResult:
    """Train (or resume) a run in ``run_dir``; returns what it made (:class:`TrainResult`).

    ``policy`` / ``train_data`` / ``val_data`` default to what ``cfg`` describes; passing
    them lets benchmarks and tests feed their own model or synthetic batches. With
    ``validation.enabled`` (the default) validation batches are required: a missing or too small
    val split, or ``train_data`` given without ``val_data``, stops the run before it starts;
    ``validation.enabled=false`` trains without (``val_data`` is then not used).
    ``on_validation(Validation)`` is called after every validation (also the final one); it may
    raise :class:`StopTraining` to end the run early with its outputs written. ``periodic``:
    work done every N frames and at the end, its time kept apart (:class:`Periodic`; ``aimc
    train`` passes its evaluator when ``eval.every_frames`` is set).
    """
    from aimc.train import preflight, rundir
    from aimc.train.data import make_sources
    from aimc.train.metrics import MetricsLogger

    run_dir = Path(run_dir)
    ckpt_dir = run_dir / "checkpoints"
    info, device = D.setup(cfg.runtime.device, cfg.runtime.dist_backend)
    try:
        # 1. checks before any compute, then the run directory
        if resume and info.is_main:
            ckpt.clean_checkpoint_dir(ckpt_dir)  # repairs a checkpoint write cut by a kill
        D.barrier(info)
        if not skip_preflight:
            preflight.check_static(cfg, run_dir, resume=resume, need_data=train_data is None)
        if train_data is None:  # the splits are checked here: a missing or too small one stops the run now
            train_data, val_data = make_sources(cfg, info.rank, info.world_size)
        if not cfg.validation.enabled:
            val_data = None
        elif val_data is None:
            raise UserError("validation.enabled is true but no validation batches were given (train_policy(..., "
                            "val_data=...)): pass them, or set validation.enabled=false to train without validation")
        if info.is_main:
            rundir.prepare(run_dir, cfg, resume=resume)
        D.barrier(info)

        # 2. model, optimizer, data; where we are: fresh, or exactly where the latest checkpoint left off
        torch.manual_seed(cfg.runtime.seed)
        if policy is None:
            policy = preflight.friendly_build(cfg, build_policy)
        learner, changes = setup_learner(cfg, policy, info, device,
                                         check_memory=not skip_preflight and not cfg.runtime.skip_preflight_memory)
        if info.is_main and not resume and hasattr(train_data, "describe"):
            rundir.note_data(run_dir, train_data.describe(), val_data is not None)
        progress, carried = restore(learner, cfg, ckpt_dir / "latest" if resume else None)
        log = MetricsLogger(run_dir, cfg.logging, enabled=info.is_main, total_frames=cfg.schedule.n_frames,
                            start_frames=progress.frames, resume_step=progress.step if resume else None)
        trainable = learner.trainable
        log.note(f"{_count(sum(p.numel() for p in policy.parameters()))} parameters, "
                 f"{_count(sum(p.numel() for p in trainable))} trainable"
                 + (f", {len(changes['frozen'])} frozen tensors" if changes["frozen"] else "")
                 + (f", LoRA on {len(changes['lora'])} layers" if changes["lora"] else "")
                 + f"; {info.world_size} process(es) on {device}, {learner.precision}")
        frames_per_step = cfg.frames_per_step(info.world_size)
        for key, interval in cfg.intervals().items():
            if 0 < interval < frames_per_step and key != "logging.every_frames":
                log.warn(f"{key}={interval:,} is less than one optimizer step ({frames_per_step:,} frames): it is due "
                         f"after every step. Intervals count frames, not steps ({interval} steps would be "
                         f"{key}={interval * frames_per_step})")
        if info.is_main:
            for p in periodic:
                p.start(policy, log.note)
        if cfg.eval.every_frames and not any(p.name == "eval" for p in periodic):
            log.warn("eval.every_frames is set but no evaluator was given: `aimc train` runs the evaluation; from "
                     "Python pass periodic=[aimc.eval.periodic.PeriodicEvaluator(cfg, run_dir)] to train_policy")
        periodic_done: dict[str, int] = {}

        def save_latest(state_to_carry: Any) -> None:
            if info.is_main:
                ckpt.save_checkpoint(ckpt_dir / "latest", model=policy, optimizer=learner.optimizer,
                                     scaler=learner.scaler, progress=progress, carried_state=state_to_carry)

        stop_reason: list[str] = []  # why an on_validation callback ended the run, for the run's README

        def validation() -> bool:
            """Validate; True when the callback asks to stop."""
            v = validate_and_keep_best(learner, val_data, cfg, info, progress, log, ckpt_dir)
            try:
                if on_validation is not None:
                    on_validation(v)
            except StopTraining as e:
                stop_reason.append(f"stopped after the validation at step {progress.step}" + (f": {e}" if str(e) else ""))
                log.note(stop_reason[-1])
                return True
            return False

        stream = SequenceChunks(train_data, policy, cfg.optim.trunc_t, cfg.chunks_per_sequence, device,
                                micro=progress.micro, carried=carried)
        policy.train()
        session_start = time.perf_counter() - progress.wall_seconds
        t_log, frames_log = time.perf_counter(), progress.frames
        loss_acc, n_acc = torch.zeros((), device=device), 0  # train/loss = mean over the logging interval

        # 3. the loop: one iteration = one optimizer step
        limit = cfg.schedule.max_seconds
        t_session = time.perf_counter()
        stopped = False
        validated_at = -1  # the step of the last validation
        while progress.frames < cfg.schedule.n_frames and not stopped:
            if limit and D.any_across(time.perf_counter() - t_session >= limit, info, device):
                log.note(f"schedule.max_seconds={limit:g} reached at {progress.frames:,} of {cfg.schedule.n_frames:,} frames")
                break
            lr = lr_at(progress.frames, cfg.optim.lr, cfg.schedule)
            set_lr(learner.optimizer, lr)
            try:
                stats = optimizer_step(learner, stream, cfg.optim.grad_accum, cfg.optim.max_grad_norm, info)
            except TrainingDiverged as e:
                save_latest(None)  # weights before the bad step; resuming skips the bad batch
                raise TrainingDiverged(
                    f"loss became {e.loss} at step {progress.step + 1} "
                    f"({progress.frames:,} frames, lr {lr:.3g}, grad norm {e.grad_norm:.3g}). "
                    f"Training stopped; the last good weights are in {ckpt_dir / 'latest'}. "
                    "Try a lower optim.lr, runtime.precision=fp32 (or bf16 instead of fp16), "
                    "a smaller optim.max_grad_norm, and check the data (aimc data check)."
                ) from None
            before = progress.frames  # intervals are due when a step's frames cross a multiple of them
            progress.step += 1
            progress.frames += frames_per_step
            progress.micro = stream.micro
            loss_acc += stats.loss
            n_acc += 1
            progress.wall_seconds = time.perf_counter() - session_start

            # logging (host syncs only here)
            if crossed(before, progress.frames, cfg.logging.every_frames) or progress.frames >= cfg.schedule.n_frames:
                g = float(stats.grad_norm)
                if g > cfg.optim.warn_grad_norm:
                    log.warn(f"gradient norm {g:.1f} at step {progress.step} (healthy: 0.5-5); "
                             "if it keeps growing lower optim.lr or optim.max_grad_norm")
                uncond = stream.uncond
                kl = learner.loss_fn.take_mean() if isinstance(learner.loss_fn, UncondAnchoredLoss) else None
                log.scalars(progress, {
                    # train/loss is behaviour cloning's NLL alone; the KL of optim.uncond_kl is logged apart
                    "train/loss": float(loss_acc) / n_acc - (learner.loss_fn.coef * kl if kl is not None else 0.0),
                    **({"train/uncond_kl": kl} if kl is not None else {}),
                    "train/lr": lr,
                    "train/grad_norm": g,
                    "train/weight_norm": float(weight_norm(trainable)),
                    **({"train/l2sp_distance": float(l2sp_distance(policy, learner.anchor))} if learner.anchor else {}),
                    "train/frames_per_s": (progress.frames - frames_log) / max(time.perf_counter() - t_log, 1e-9),
                    # sequences start only at chunk 0 of T: an interval of later chunks has none
                    **({"train/uncond_fraction": sum(uncond) / len(uncond)} if uncond else {}),
                    **gpu_memory(device),
                })
                t_log, frames_log = time.perf_counter(), progress.frames
                loss_acc, n_acc, stream.uncond = torch.zeros((), device=device), 0, []
            log.progress(progress)

            # validation and best weights
            if val_data is not None and cfg.validation.due(before, progress.frames):
                stopped = validation()
                validated_at = progress.step

            # checkpoints (resumable latest; weights snapshots), by frames
            snap = cfg.checkpoint.snapshot_every_frames
            if crossed(before, progress.frames, snap):
                if info.is_main:
                    with atomic_dir(ckpt_dir / f"snapshot_{progress.frames}") as tmp:
                        export_weights(policy, tmp / "policy", cfg.checkpoint.export)
                progress.next_snapshot_frames = (progress.frames // snap + 1) * snap
            if crossed(before, progress.frames, cfg.checkpoint.every_frames):
                save_latest(stream.carried)

            # periodic work (evaluation), its time kept out of the training time
            shift = run_periodic(periodic, learner, progress, log, info, frames_per_step, periodic_done)
            session_start, t_log, t_session = session_start + shift, t_log + shift, t_session + shift

        # 4. the end: final validation, latest checkpoint, last periodic work, exported weights
        if val_data is not None and not stopped and validated_at != progress.step:
            stopped = validation()
        save_latest(stream.carried)
        run_periodic(periodic, learner, progress, log, info, frames_per_step, periodic_done, final=True)
        formats = cfg.checkpoint.export
        final, best = run_dir / f"final{formats[0]}", None
        if info.is_main:
            final, best = export(policy, run_dir, formats)
            log.finish(progress)
            rundir.finish(run_dir, cfg, progress, log.last, [str(run_dir / f"final{f}") for f in formats],
                          stopped="".join(stop_reason[-1:]))
        D.barrier(info)
        if not info.is_main and (run_dir / f"best{formats[0]}").is_file():
            best = run_dir / f"best{formats[0]}"
        return TrainResult(final, best, progress.best_val_loss, progress.frames, progress.step, progress.wall_seconds,
                           dict(log.last), stopped)
    finally:
        for p in periodic:
            p.close()
        D.teardown(info)


def _count(n: int) -> str:
    return f"{n / 1e6:.2f}M" if n >= 1e6 else f"{n / 1e3:.1f}k"


def gpu_memory(device: torch.device) -> dict[str, float]:
    if device.type != "cuda":
        return {}
    return {"sys/gpu_mem_gib": torch.cuda.max_memory_allocated(device) / 2**30}
