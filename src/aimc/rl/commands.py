"""``aimc rl``: PPO fine-tuning with a KL leash to the starting weights, resumable."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def _rl(args: argparse.Namespace) -> int:
    from aimc.config import load_config
    from aimc.rl.config import RLConfig
    from aimc.rl.loop import eval_commands, run_rl

    overrides = list(args.overrides or [])
    # JSON strings are YAML too: paths with spaces or colons stay strings
    if args.init:
        overrides.append(f"init={json.dumps(args.init)}")
    if args.mineclip:
        overrides.append(f"agent.mineclip={json.dumps(args.mineclip)}")
    if args.prior:
        overrides.append(f"agent.prior={json.dumps(args.prior)}")
    cfg = load_config(RLConfig, args.preset, overrides)
    if args.preflight:
        from aimc.rl.preflight import memory_report

        print(memory_report(cfg))
        return 0
    out = Path(args.out)
    result = run_rl(cfg, out, progress=not args.quiet, command=" ".join(["aimc", *sys.argv[1:]]))
    if result.get("best"):
        print(f"best: {result['best']}")
    if result.get("final"):
        print(f"last: {result['final']}")
    print(f"log: {out / 'README.md'}  (tensorboard --logdir {out / 'tb'}); learning curve: {out / 'curve.svg'}")
    print(f"evaluate: {eval_commands(cfg, out).replace('`', '')}")
    return 0


def register(cli) -> None:
    """Add ``aimc rl`` to ``cli`` (an ``aimc.cli.CommandLine``)."""
    p = cli.command("rl", help="RL fine-tuning: PPO on the agent's own episodes, rewarded by the task's success, with a "
                    "KL leash to the starting weights; resumable", run=_rl)
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE",
                   help="RLConfig overrides, e.g. schedule.updates=30 ppo.kl_coef=0.2 collect.tasks=[collect_stone]")
    p.add_argument("--init", required=True, help="weights to start from (also the KL reference): aimc .safetensors (+ .yaml)")
    p.add_argument("--out", required=True, help="run directory; the same command again continues it (raise schedule.updates=N for more)")
    p.add_argument("--preset", default="rl_crafter", help="RLConfig preset name or YAML file (default rl_crafter; rl_minecraft)")
    p.add_argument("--mineclip", default=None, help="MineCLIP checkpoint (default: found beside the --init weights)")
    p.add_argument("--prior", default=None, help="prior checkpoint (default: found beside the --init weights)")
    p.add_argument("--preflight", action="store_true",
                   help="print the memory the run needs (policy + reference + optimizer state) against a 24 GB card, and stop")
    p.add_argument("--quiet", action="store_true", help="no progress lines")
