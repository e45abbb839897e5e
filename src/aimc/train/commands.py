"""``aimc train``: train or fine-tune a goal-conditioned policy (``aimc prior train`` and
``aimc mineclip train`` are registered by their own packages), with the evaluation during
training of its ``eval`` section (:class:`aimc.eval.periodic.PeriodicEvaluator`; command modules
may import any library layer below ``quickstart``, see tests/test_layers.py)."""

from __future__ import annotations

import argparse
from pathlib import Path


def _run_train(args: argparse.Namespace) -> int:
    from aimc.config import load_config
    from aimc.errors import UserError
    from aimc.train.config import TrainConfig
    from aimc.train.policy import train_policy
    from aimc.train.rundir import default_run_dir, load_run_config

    overrides = list(args.overrides or [])
    if args.init:
        overrides.append(f"model.init={args.init}")
    if args.model_file:
        overrides.append(f"model.model_file={args.model_file}")
    if args.resume:
        if args.preset or args.out:
            raise UserError("--resume continues a run in its own folder with its saved config; "
                            "leave out --preset and --out (overrides KEY=VALUE still apply)")
        run_dir = Path(args.resume)
        cfg = load_run_config(run_dir, overrides)
    else:
        cfg = load_config(TrainConfig, args.preset, overrides)
        run_dir = Path(args.out) if args.out else default_run_dir(cfg, args.preset)
    periodic = []
    if cfg.eval.every_frames:  # checked now (suite, embedder, prior files), before any training step
        from aimc.eval.periodic import PeriodicEvaluator

        periodic.append(PeriodicEvaluator(cfg, run_dir))
    result = train_policy(cfg, run_dir, resume=bool(args.resume), periodic=periodic)
    print(f"done: {result.weights}  (run directory {run_dir})")
    return 0


def register(cli) -> None:
    """Add this package's commands to ``cli`` (an ``aimc.cli.CommandLine``)."""
    p = cli.command(
        "train",
        help="train or fine-tune a goal-conditioned policy (presets: steve1_from_vpt, finetune, finetune_24gb, tiny, crafter)",
        run=_run_train,
    )
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE",
                   help="config overrides, e.g. optim.lr=1e-5 data.stores=[data/my_store]")
    p.add_argument("--preset", help="config preset name or YAML file (see src/aimc/configs/)")
    p.add_argument("--init", help="weights to start from: official .weights (with --model-file) or aimc .safetensors")
    p.add_argument("--model-file", help="official .model file describing --init's architecture")
    p.add_argument("--out", help="run directory (default: runs/<name>-<date>)")
    p.add_argument("--resume", metavar="RUN_DIR", help="continue the run in RUN_DIR exactly where it stopped")
