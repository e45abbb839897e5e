"""``aimc online``: DAgger-style rounds (play, label, store, train, validate), resumable."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def _online(args: argparse.Namespace) -> int:
    from aimc.config import load_config
    from aimc.online.config import OnlineConfig
    from aimc.online.rounds import eval_command, rate_text, run_online

    overrides = list(args.overrides or [])
    # JSON strings are YAML too: paths with spaces or colons stay strings
    if args.init:
        overrides.append(f"init={json.dumps(args.init)}")
    if args.store:
        overrides.append(f"stores={json.dumps(args.store)}")
    if args.mineclip:
        overrides.append(f"agent.mineclip={json.dumps(args.mineclip)}")
    if args.prior:
        overrides.append(f"agent.prior={json.dumps(args.prior)}")
    cfg = load_config(OnlineConfig, args.preset, overrides)
    state = run_online(cfg, args.out, progress=not args.quiet, command=" ".join(["aimc", *sys.argv[1:]]))
    out = Path(args.out)
    best, final = state.get("best"), state.get("final")
    if best:
        print(f"best round: {best['round']} (validation success {rate_text(best.get('success'))}): {best['files'][0]}")
    if final:
        print(f"last round: {final['round']}: {final['files'][0]}")
    print(f"log: {out / 'README.md'}  (tensorboard --logdir {out / 'tb'})")
    print(f"evaluate: {eval_command(cfg, state, str(out / 'eval'))}")
    return 0


def register(cli) -> None:
    """Add ``aimc online`` to ``cli`` (an ``aimc.cli.CommandLine``)."""
    p = cli.command("online", help="online learning (DAgger): the agent plays, a labeller corrects every step, "
                    "training continues on the corrections; resumable rounds", run=_online)
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE",
                   help="OnlineConfig overrides, e.g. rounds=6 collect.episodes=8 mix.online_share=0.3 tasks=[collect_stone]")
    p.add_argument("--init", required=True, help="weights to start from: aimc .safetensors (+ .yaml), e.g. RUN/final.safetensors")
    p.add_argument("--store", action="append", default=None,
                   help="earlier data mixed into every round's training, e.g. the demonstrations (repeatable)")
    p.add_argument("--out", required=True, help="run directory; the same command again continues it (raise rounds=N for more)")
    p.add_argument("--preset", default="online_crafter", help="OnlineConfig preset name or YAML file (default online_crafter)")
    p.add_argument("--mineclip", default=None, help="MineCLIP checkpoint (default: found beside the --init weights)")
    p.add_argument("--prior", default=None, help="prior checkpoint (default: found beside the --init weights)")
    p.add_argument("--quiet", action="store_true", help="no progress display")
