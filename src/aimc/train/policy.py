"""Behaviour cloning of a goal-conditioned policy: the whole ``aimc train`` loop.

Read :func:`train_policy` top to bottom. One optimizer step is:

    lr <- schedule(frames seen)
    repeat grad_accum times (a micro-step = one trunc_t chunk of a batch of sequences):
        take the next chunk; at a sequence start fetch batch k of this rank and reset
        the recurrent state, otherwise continue from the carried (detached) state
        loss = mean over (B, trunc_t) of -log p(expert action | frames, goal)
        backward(loss / grad_accum)   (DDP all-reduces only on the last micro-step)
    clip the gradient norm, AdamW step, log, validate, checkpoint

Batches come from a source that is stateless by index (batch ``k`` of rank ``r`` is
always the same), so a run resumes exactly from ``(step, micro-step, carried state,
RNG states)`` saved in its latest checkpoint.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable, Iterable
from contextlib import nullcontext
from pathlib import Path
from typing import Any, Protocol

import torch
from torch import nn

from aimc.errors import UserError
from aimc.train import checkpoint as ckpt
from aimc.train import distributed as D
from aimc.train.config import TrainConfig
from aimc.train.lora import apply_lora, has_lora, merge_lora
from aimc.train.optim import (
    freeze_groups,
    grad_norm,
    group_parameter_names,
    lr_at,
    make_optimizer,
    set_lr,
    weight_norm,
)
from aimc.utils.io import atomic_dir


class TrainingDiverged(UserError):
    """The loss became NaN/Inf; a checkpoint was written before stopping."""


class BatchSource(Protocol):
    """Training batches, stateless by index: ``batch(k)`` is this rank's k-th batch.

    A batch is ``{"img": uint8 (B,T,H,W,3), "goal": float (B,T,D),
    "actions": {head: int64 (B,T)}, "first": bool (B,T)}``.
    """

    def batch(self, index: int) -> dict[str, Any]: ...


# ----------------------------------------------------------------------------------
# pieces of the step


def autocast_for(precision: str, device: torch.device):
    """Autocast context and dtype for ``bf16`` / ``fp16``; a no-op for ``fp32``."""
    if precision == "fp32":
        return nullcontext()
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(device_type=device.type, dtype=dtype)


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


def micro_step(model: nn.Module, policy: nn.Module, c: dict[str, Any], state: Any, precision: str,
               device: torch.device, scale: float = 1.0,
               scaler: torch.amp.GradScaler | None = None) -> tuple[torch.Tensor, Any]:
    """Forward + backward of one chunk; gradients accumulate in ``.grad`` (times ``scale``).

    Returns the chunk's loss (detached) and the new recurrent state, detached so that
    the next chunk's backward stops here (truncated BPTT).
    """
    with autocast_for(precision, device):
        loss, new_state = bc_loss(model, policy, c, state)
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
            with autocast_for(precision, device):
                loss, state = bc_loss(policy, policy, c, state)
            total += loss
            n += 1
    policy.train(was_training)
    mean = total / max(n, 1)
    return float(D.mean_across(mean, info))


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
# the loop


def train_policy(
    cfg: TrainConfig,
    run_dir: str | Path,
    *,
    resume: bool = False,
    policy: nn.Module | None = None,
    train_data: BatchSource | None = None,
    val_data: Callable[[], Iterable[dict[str, Any]]] | None = None,
    skip_preflight: bool = False,
) -> Path:
    """Train (or resume) a run in ``run_dir``; returns the path of the exported final weights.

    ``policy`` / ``train_data`` / ``val_data`` default to what ``cfg`` describes; passing
    them lets benchmarks and tests feed their own model or synthetic batches.
    """
    from aimc.train import preflight, rundir
    from aimc.train.metrics import MetricsLogger

    run_dir = Path(run_dir)
    info, device = D.setup(cfg.runtime.device, cfg.runtime.dist_backend)
    try:
        # 1. checks before any compute, then the run directory
        ckpt_dir = run_dir / "checkpoints"
        if resume and info.is_main:
            ckpt.clean_checkpoint_dir(ckpt_dir)  # repairs a checkpoint write cut by a kill
        D.barrier(info)
        if not skip_preflight:
            preflight.check_static(cfg, run_dir, resume=resume, need_data=train_data is None)
        if info.is_main:
            rundir.prepare(run_dir, cfg, resume=resume)
        D.barrier(info)

        # 2. model: architecture + init weights, freezing / LoRA, device, precision
        torch.manual_seed(cfg.runtime.seed)
        if policy is None:
            policy = preflight.friendly_build(cfg, build_policy)
        changes = prepare_for_training(policy, cfg)
        policy.to(device)
        if cfg.model.channels_last and device.type == "cuda":
            policy.to(memory_format=torch.channels_last)
        precision = resolve_precision(cfg.runtime.precision, device)
        if not skip_preflight and not cfg.runtime.skip_preflight_memory:
            preflight.check_memory(cfg, policy, device, precision)
        optimizer = make_optimizer(policy, cfg.optim, device)
        scaler = torch.amp.GradScaler(device.type) if precision == "fp16" else None
        ddp = D.wrap_ddp(policy, info, device)  # = policy with one process
        model = torch.compile(ddp) if cfg.runtime.compile else ddp  # what runs the forward
        trainable = [p for p in policy.parameters() if p.requires_grad]

        # 3. data
        if train_data is None:
            from aimc.train.data import make_sources

            train_data, val_data = make_sources(cfg, info.rank, info.world_size)
            if info.is_main and not resume:
                rundir.note_data(run_dir, train_data.dataset.describe(), val_data is not None)

        # 4. where we are: fresh, or exactly where the latest checkpoint left off
        progress = ckpt.Progress(next_snapshot_frames=cfg.checkpoint.snapshot_every_frames)
        carried = None
        if resume:
            saved = ckpt.load_checkpoint(ckpt_dir / "latest")
            policy.load_state_dict(saved["model"])
            optimizer.load_state_dict(saved["optimizer"])
            if scaler is not None and saved["scaler"] is not None:
                scaler.load_state_dict(saved["scaler"])
            ckpt.set_rng_state(saved["rng"])
            progress = saved["progress"]
            carried = ckpt.to_device(saved["carried_state"], device)

        log = MetricsLogger(run_dir, cfg, enabled=info.is_main, total_frames=cfg.schedule.n_frames,
                            start_frames=progress.frames, resume_step=progress.step if resume else None)
        log.note(f"{_count(sum(p.numel() for p in policy.parameters()))} parameters, "
                 f"{_count(sum(p.numel() for p in trainable))} trainable"
                 + (f", {len(changes['frozen'])} frozen tensors" if changes["frozen"] else "")
                 + (f", LoRA on {len(changes['lora'])} layers" if changes["lora"] else "")
                 + f"; {info.world_size} process(es) on {device}, {precision}")

        def save_latest(state_to_carry: Any) -> None:
            if info.is_main:
                ckpt.save_checkpoint(ckpt_dir / "latest", model=policy, optimizer=optimizer, scaler=scaler,
                                     progress=progress, carried_state=state_to_carry)

        A = cfg.optim.grad_accum
        tt = cfg.optim.trunc_t
        chunks = cfg.chunks_per_sequence
        frames_per_step = cfg.frames_per_step(info.world_size)
        batch_index, batch = -1, None
        policy.train()
        session_start = time.perf_counter() - progress.wall_seconds
        t_log, frames_log = time.perf_counter(), progress.frames
        loss_acc, n_acc = torch.zeros((), device=device), 0  # train/loss = mean over the logging interval
        uncond: list[float] = []  # unconditioned fraction of each batch in the logging interval

        # 5. the loop: one iteration = one optimizer step
        limit = cfg.schedule.max_seconds
        t_session = time.perf_counter()
        while progress.frames < cfg.schedule.n_frames:
            if limit and D.any_across(time.perf_counter() - t_session >= limit, info, device):
                log.note(f"schedule.max_seconds={limit:g} reached at {progress.frames:,} of {cfg.schedule.n_frames:,} frames")
                break
            lr = lr_at(progress.frames, cfg.optim.lr, cfg.schedule)
            set_lr(optimizer, lr)
            loss_sum = torch.zeros((), device=device)
            for k in range(A):
                b, c_i = divmod(progress.micro, chunks)
                if b != batch_index:
                    batch_index, batch = b, train_data.batch(b)
                    uncond.append(unconditioned_fraction(torch.as_tensor(batch["goal"])))
                    batch = ckpt.to_device(batch, device)  # once per batch; chunks are views
                if c_i == 0 or carried is None:
                    carried = policy.initial_state(batch["first"].shape[0], device=device)
                c = chunk(batch, c_i * tt, (c_i + 1) * tt, device)
                with D.no_sync(ddp, skip=k < A - 1):
                    loss, carried = micro_step(model, policy, c, carried, precision, device, 1.0 / A, scaler)
                loss_sum += loss
                progress.micro += 1

            step_loss = D.mean_across(loss_sum / A, info)
            if scaler is not None:
                scaler.unscale_(optimizer)
            gnorm = grad_norm(trainable)
            bad = not bool(torch.isfinite(step_loss))
            if D.any_across(bad, info, device):
                save_latest(None)  # weights before the bad step; resuming skips the bad batch
                raise TrainingDiverged(
                    f"loss became {float(step_loss)} at step {progress.step + 1} "
                    f"({progress.frames:,} frames, lr {lr:.3g}, grad norm {float(gnorm):.3g}). "
                    f"Training stopped; the last good weights are in {ckpt_dir / 'latest'}. "
                    "Try a lower optim.lr, runtime.precision=fp32 (or bf16 instead of fp16), "
                    "a smaller optim.max_grad_norm, and check the data (aimc data check)."
                )
            if cfg.optim.max_grad_norm > 0:
                torch.nn.utils.clip_grad_norm_(trainable, cfg.optim.max_grad_norm)
            if scaler is not None:
                scaler.step(optimizer)
                scaler.update()
            else:
                optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            progress.step += 1
            progress.frames += frames_per_step
            loss_acc += step_loss
            n_acc += 1
            progress.wall_seconds = time.perf_counter() - session_start

            # logging (host syncs only here)
            if progress.step % cfg.logging.every == 0 or progress.frames >= cfg.schedule.n_frames:
                g = float(gnorm)
                if g > cfg.optim.warn_grad_norm:
                    log.warn(f"gradient norm {g:.1f} at step {progress.step} (healthy: 0.5-5); "
                             "if it keeps growing lower optim.lr or optim.max_grad_norm")
                log.scalars(progress, {
                    "train/loss": float(loss_acc) / n_acc,
                    "train/lr": lr,
                    "train/grad_norm": g,
                    "train/weight_norm": float(weight_norm(trainable)),
                    "train/frames_per_s": (progress.frames - frames_log) / max(time.perf_counter() - t_log, 1e-9),
                    # sequences start only at chunk 0 of T: an interval of later chunks has none
                    **({"train/uncond_fraction": sum(uncond) / len(uncond)} if uncond else {}),
                    **gpu_memory(device),
                })
                t_log, frames_log = time.perf_counter(), progress.frames
                loss_acc, n_acc, uncond = torch.zeros((), device=device), 0, []
            log.progress(progress)

            # validation and best weights
            if val_data is not None and cfg.validation.due(progress.step):
                _validate_and_keep_best(policy, val_data, cfg, device, precision, info, progress, log, ckpt_dir)

            # checkpoints (resumable latest; weights snapshots every N frames)
            if cfg.checkpoint.every and progress.step % cfg.checkpoint.every == 0:
                save_latest(carried)
            if cfg.checkpoint.snapshot_every_frames and progress.frames >= progress.next_snapshot_frames:
                if info.is_main:
                    with atomic_dir(ckpt_dir / f"snapshot_{progress.frames}") as tmp:
                        export_weights(policy, tmp / "policy", cfg.checkpoint.export)
                progress.next_snapshot_frames += cfg.checkpoint.snapshot_every_frames

        # 6. the end: final validation, latest checkpoint, exported weights
        if val_data is not None and not cfg.validation.due(progress.step):
            _validate_and_keep_best(policy, val_data, cfg, device, precision, info, progress, log, ckpt_dir)
        save_latest(carried)
        final = run_dir / "final.weights"
        if info.is_main:
            formats = cfg.checkpoint.export
            written = export_weights(policy, run_dir / "final", formats)
            final = written[0]
            best_dir = ckpt_dir / "best"
            if (best_dir / "model.safetensors").is_file():
                from safetensors.torch import load_file

                best = copy.deepcopy(policy)
                best.load_state_dict(load_file(str(best_dir / "model.safetensors")))
                export_weights(best.cpu(), run_dir / "best", formats)
            log.finish(progress)
            rundir.finish(run_dir, cfg, progress, log.last, [str(p) for p in written])
        D.barrier(info)
        return final
    finally:
        D.teardown(info)


def _validate_and_keep_best(policy, val_data, cfg, device, precision, info, progress, log, ckpt_dir) -> None:
    # a forked RNG: validation (and its loader's seeding) never changes the training's random stream
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        val_loss = validate(policy, val_data(), cfg, device, precision, info)
    log.scalars(progress, {"val/loss": val_loss})
    if math.isfinite(val_loss) and val_loss < progress.best_val_loss:
        progress.best_val_loss = val_loss
        if info.is_main and cfg.checkpoint.keep_best:
            ckpt.save_weights_snapshot(ckpt_dir / "best", policy.state_dict())
            from aimc.utils.io import atomic_write_text

            atomic_write_text(ckpt_dir / "best.json",
                              f'{{"val_loss": {val_loss}, "step": {progress.step}, "frames": {progress.frames}}}\n')


def _count(n: int) -> str:
    return f"{n / 1e6:.2f}M" if n >= 1e6 else f"{n / 1e3:.1f}k"


def gpu_memory(device: torch.device) -> dict[str, float]:
    if device.type != "cuda":
        return {}
    return {"sys/gpu_mem_gib": torch.cuda.max_memory_allocated(device) / 2**30}
