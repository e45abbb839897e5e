"""Run directories describe themselves.

    RUN_DIR/
        config.yaml        the fully resolved TrainConfig (``aimc train --resume RUN_DIR`` reads it)
        README.md          experiment log, filled in automatically: command, git revision,
                           config highlights, data, and the final metrics when the run ends
        metrics.jsonl      one JSON record per logging interval
        tb/                TensorBoard event files
        evals/             frames_<N>/: the evaluation at N frames (``eval.every_frames``), an
                           ``aimc eval`` folder with a sample video
        checkpoints/       latest/ (resumable), best/, snapshot_<frames>/
        final.weights      exported weights (official layout) + final.safetensors (+ .yaml)
        best.weights       the lowest-validation-loss weights, both formats
"""

from __future__ import annotations

import datetime
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

from aimc.config import ConfigError, load_config, save_config, to_dict
from aimc.errors import UserError
from aimc.train.checkpoint import Progress
from aimc.train.config import TrainConfig
from aimc.utils.io import atomic_write_text

CONFIG_NAME = "config.yaml"


def default_run_dir(cfg: TrainConfig, preset: str | None, root: Path = Path("runs")) -> Path:
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    name = cfg.name or (Path(preset).stem if preset else "train")
    return root / f"{name}-{stamp}"


def git_revision() -> str:
    """``<commit>[+dirty]`` of the aimc source tree, or ``unknown`` outside a checkout."""
    src = Path(__file__).resolve().parent
    try:
        rev = subprocess.run(["git", "rev-parse", "HEAD"], cwd=src, capture_output=True, text=True, timeout=10)
        if rev.returncode != 0:
            return "unknown"
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=src,
                               capture_output=True, text=True, timeout=10)
        return rev.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def open_session(state: dict, run: Path, command: str, **extra: Any) -> str:
    """Record in a resumable run's ``state`` that a command starts (or continues) it: when and from
    which commit it first started, and one ``sessions`` entry per command. Returns the time."""
    import time

    now = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())
    state.setdefault("started", now)
    state.setdefault("git", git_revision())
    state["run"] = str(run)
    state.setdefault("sessions", []).append({"started": now, "command": command, **extra})
    return now


def load_run_config(run_dir: str | Path, overrides: list[str] | None = None) -> TrainConfig:
    """The config a run was started with (for ``--resume``)."""
    path = Path(run_dir) / CONFIG_NAME
    if not path.is_file():
        raise UserError(f"{run_dir}: not a training run directory ({CONFIG_NAME} missing)")
    try:
        return load_config(TrainConfig, path, overrides)
    except ConfigError as e:
        if str(path) in str(e):
            raise
        raise ConfigError(f"{path}: {e} (the run's saved config, or an override given with --resume; "
                          "a config.yaml cut short by a copy can be restored from a backup)") from None


def prepare(run_dir: Path, cfg: TrainConfig, *, resume: bool) -> None:
    """Create the run directory, save the resolved config and start the README."""
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "checkpoints").mkdir(exist_ok=True)
    if resume:
        _append(run_dir, f"\n## Resumed {_now()}\n\n- command: `{_command()}`\n- git: `{git_revision()}`\n")
        return
    save_config(cfg, run_dir / CONFIG_NAME)
    atomic_write_text(run_dir / "README.md", _readme_start(cfg))


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")


def _command() -> str:
    """The command line that started this process, if it was the ``aimc`` CLI."""
    prog = Path(sys.argv[0]).name if sys.argv and sys.argv[0] else ""
    if prog in ("aimc", "cli.py", "__main__.py"):
        return " ".join(["aimc", *sys.argv[1:]])
    return f"train_policy() called from {prog or 'Python'}"


def _readme_start(cfg: TrainConfig) -> str:
    d, m, o, s = cfg.data, cfg.model, cfg.optim, cfg.schedule
    mixture = ", ".join(
        f"`{st}`" + (f" (weight {w})" if d.weights else "") for st, w in zip(d.stores, d.weights or [None] * len(d.stores))
    ) or "(given in code)"
    lines = [
        f"# Training run{': ' + cfg.name if cfg.name else ''}",
        "",
        f"- started: {_now()}",
        f"- command: `{_command()}`",
        f"- git: `{git_revision()}`",
        "",
        "## Model",
        "",
        f"- architecture: {m.arch if not m.init else 'from ' + m.init}, goal dim {m.goal_dim}",
        f"- frozen groups: {', '.join(m.freeze) or 'none'}; LoRA rank: {m.lora.rank or 'off'}",
        "",
        "## Data",
        "",
        f"- stores: {mixture}; split `{d.split}`, validation "
        + (f"`{d.val_split}`" if cfg.validation.enabled else "off (validation.enabled=false)"),
        f"- T {d.T}, p_uncond {d.p_uncond}, goals every {d.min_btwn_goals}-{d.max_btwn_goals} steps, augmentation "
        + (f"on (brightness {d.augment.brightness:g}, contrast {d.augment.contrast:g}, saturation "
           f"{d.augment.saturation:g}, hue {d.augment.hue:g}, grayscale_p {d.augment.grayscale_p:g})"
           if d.augment.enabled else "off"),
        "",
        "## Optimisation",
        "",
        f"- AdamW lr {o.lr:g}, weight decay {o.weight_decay:g}, batch {o.batch_size} x trunc_t {o.trunc_t} "
        f"x grad_accum {o.grad_accum} per process",
        f"- {s.n_frames:,} frames, warm-up {s.warmup_frames:,}, cosine to {s.min_lr:g} at {s.decay_end} x n_frames",
        f"- precision {cfg.runtime.precision}, seed {cfg.runtime.seed}",
        "",
        "Full configuration: [config.yaml](config.yaml). Metrics: `metrics.jsonl`, "
        "`tensorboard --logdir tb`.",
        "",
    ]
    return "\n".join(lines)


def _duration(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds < 120 else f"{seconds / 60:.1f} min" if seconds < 7200 else f"{seconds / 3600:.2f} h"


def append_readme(run_dir: str | Path, text: str) -> None:
    """Append ``text`` to the run's README (the run only ever appends to it)."""
    _append(Path(run_dir), text)


def _append(run_dir: Path, text: str) -> None:
    path = run_dir / "README.md"
    old = path.read_text(encoding="utf-8") if path.exists() else ""
    atomic_write_text(path, old + text)


def note_data(run_dir: Path, described: dict[str, Any], has_val: bool) -> None:
    """Record what the loader found in the stores (episodes, usable frames, mixture shares)."""
    lines = ["", "## Data as loaded", ""]
    for src in described.get("sources", []):
        lines.append(f"- `{src['store']}`: {src['episodes']} episodes ({src['eligible']} long enough), "
                     f"share of frames {src['p']:.2f}")
    lines.append(f"- {described.get('usable_frames', 0):,} usable frames, goal dim {described.get('goal_dim')}, "
                 f"action heads {', '.join(described.get('action_keys', []))}")
    lines.append(f"- validation: {'yes' if has_val else 'off (validation.enabled=false)'}")
    _append(run_dir, "\n".join(lines) + "\n")


def finish(run_dir: Path, cfg: TrainConfig, progress: Progress, last: dict[str, Any], exported: list[str],
           stopped: str = "") -> None:
    """Add the final numbers to the README and a machine-readable ``summary.json``.

    ``stopped``: why the run ended before ``schedule.n_frames`` (e.g. pruned by a search).
    """
    hours = progress.wall_seconds / 3600
    eval_hours = progress.periodic_seconds.get("eval", 0.0) / 3600
    best = progress.best_val_loss
    text = [
        "",
        f"## Result ({_now()})",
        "",
        f"- {progress.step:,} optimizer steps, {progress.frames:,} frames, {hours:.2f} h of training"
        + (f" (+ {_duration(progress.periodic_seconds['eval'])} of evaluation, not counted in it)"
           if "eval" in progress.periodic_seconds else ""),
    ]
    if "train/loss" in last:
        text.append(f"- final train loss {last['train/loss']:.4f}")
    if best != float("inf"):
        text.append(f"- best validation loss {best:.4f}")
    if "train/frames_per_s" in last:
        text.append(f"- last measured speed {last['train/frames_per_s']:,.0f} frames/s")
    if stopped:
        text.append(f"- {stopped}")
    text.append(f"- exported: {', '.join(f'`{Path(p).name}`' for p in exported)}")
    text.append("")
    _append(run_dir, "\n".join(text))
    summary = {"step": progress.step, "frames": progress.frames, "hours": hours, "eval_hours": eval_hours,
               "periodic_seconds": dict(progress.periodic_seconds),
               "best_val_loss": None if best == float("inf") else best, "last": last,
               "exported": exported, "stopped": stopped or None, "config": to_dict(cfg)}
    atomic_write_text(run_dir / "summary.json", json.dumps(summary, indent=1, default=str) + "\n")
