"""``aimc tune``: hyperparameter search over ``aimc train`` runs (Optuna)."""

from __future__ import annotations

import argparse
from pathlib import Path


def _tune(args: argparse.Namespace) -> int:
    from aimc.errors import UserError
    from aimc.tune.report import write_report
    from aimc.tune.space import check_against_schema, load_space
    from aimc.tune.study import TuneSettings, counts, open_study, run_workers

    if args.trials < 1 or args.jobs < 1:
        raise UserError("--trials and --jobs must be at least 1")
    space = load_space(args.space)
    overrides = list(args.overrides or [])
    check_against_schema(space, args.preset, overrides)
    out = Path(args.out)
    settings = TuneSettings(
        out_dir=str(out), study_name=args.study or out.resolve().name, n_trials=args.trials, storage=args.storage,
        preset=args.preset, overrides=overrides, seed=args.seed, pruner=args.pruner, heartbeat_s=args.heartbeat,
        grace_s=max(args.heartbeat * 3, args.heartbeat + 1), device=args.device,
    )
    study = open_study(settings, space.direction)
    before = counts(study)
    done = before.get("COMPLETE", 0) + before.get("PRUNED", 0)
    if done:
        print(f"study {settings.study_name!r}: continuing with {done} finished trial(s) of {args.trials}")
    run_workers(space, settings, args.jobs)
    summary = write_report(study, out, args.preset, str(args.space))
    states = ", ".join(f"{v} {k.lower()}" for k, v in sorted(summary["states"].items()))
    print(f"{len(summary['trials'])} trials ({states})")
    if summary["best"]:
        b = summary["best"]
        print(f"best: trial {b['number']}, {space.objective} {b['value']:.6g}: "
              + ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in b["params"].items()))
        print(f"best config: {b['preset_file']}  (aimc train --preset {b['preset_file']} --out RUN)")
    print(f"report: {out / 'report.html'}")
    return 0


def register(cli) -> None:
    """Add this package's commands to ``cli`` (an ``aimc.cli.CommandLine``)."""
    p = cli.command("tune", help="search hyperparameters of aimc train with Optuna (resumable, parallel, shared database)",
                    run=_tune)
    p.add_argument("--preset", default=None, help="training preset (name or YAML file) every trial starts from")
    p.add_argument("--space", required=True, help="search space YAML: objective, budget_frames, params (docs/tuning.md)")
    p.add_argument("--trials", type=int, required=True, help="finished (complete or pruned) trials the study should hold")
    p.add_argument("--out", required=True, help="folder for the study database, trial runs, plots and report")
    p.add_argument("--storage", default="", help="'' = SQLite in --out (default), 'journal' = journal file in --out, "
                   "a .journal path, or a SQLAlchemy URL (postgresql://...) shared by many machines")
    p.add_argument("--study", default=None, help="study name (default: the --out folder's name)")
    p.add_argument("--jobs", type=int, default=1, help="trials at once on this machine (processes; GPUs round-robin)")
    p.add_argument("--pruner", choices=("median", "none"), default="median", help="stop poor trials at a validation")
    p.add_argument("--seed", type=int, default=0, help="sampler seed")
    p.add_argument("--heartbeat", type=int, default=60,
                   help="seconds between a running trial's heartbeats; one silent for 3x this is failed and retried")
    p.add_argument("--device", default=None, help="runtime.device for every trial (default: GPUs round-robin, else the preset's)")
    p.add_argument("overrides", nargs="*", help="KEY=VALUE for every trial, e.g. data.stores=[runs/quickstart/store]")
