"""``aimc online``: DAgger-style rounds (play, label, store, train, validate), resumable."""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from pathlib import Path


def _online(args: argparse.Namespace) -> int:
    from aimc.config import load_config
    from aimc.online.config import OnlineConfig
    from aimc.eval.metrics import rate_text
    from aimc.online.rounds import eval_command, run_online

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
    state = run_online(cfg, args.out, progress=not args.quiet, command=shlex.join(["aimc", *sys.argv[1:]]))
    out = Path(args.out)
    best, final = state.get("best"), state.get("final")
    if best:
        print(f"best round: {best['round']} (validation success {rate_text(best.get('success'))}): {best['files'][0]}")
    if final:
        print(f"last round: {final['round']}: {final['files'][0]}")
    print(f"log: {out / 'README.md'}  (tensorboard --logdir {out / 'tb'})")
    print(f"evaluate: {eval_command(cfg, state, str(out / 'eval'))}")
    return 0


def _continual(args: argparse.Namespace) -> int:
    from aimc.online.continual import run_continual
    from aimc.online.plan import load_plan

    overrides = list(args.overrides or [])
    if args.init:
        overrides.append(f"init={json.dumps(args.init)}")
    plan = load_plan(args.plan, overrides)
    out = Path(args.out)
    state = run_continual(plan, out, progress=not args.quiet, command=shlex.join(["aimc", *sys.argv[1:]]))
    print((out / "forgetting.md").read_text(encoding="utf-8"))
    print(f"last stage's weights: {state['final']['files'][0]}")
    print(f"log: {out / 'README.md'}  (compare runs as heatmaps: aimc compare {out} OTHER_RUN --out REPORT)")
    return 0


class _IntermixedParser(argparse.ArgumentParser):
    """``aimc continual PLAN.yaml --out RUN KEY=VALUE ...``: KEY=VALUE after the options too (plain
    argparse takes the positionals in one go, so overrides after --out would be refused)."""

    _inside = False

    def parse_known_args(self, args=None, namespace=None):
        if self._inside:
            return super().parse_known_args(args, namespace)
        self._inside = True
        try:
            return self.parse_known_intermixed_args(args, namespace)
        finally:
            self._inside = False


def register(cli) -> None:
    """Add ``aimc online`` and ``aimc continual`` to ``cli`` (an ``aimc.cli.CommandLine``)."""
    p = cli.command("continual", help="continual fine-tuning from a plan: stages in turn (optional replay and L2-SP), "
                    "every stage's tasks evaluated after each, the forgetting matrix; resumable", run=_continual)
    p.__class__ = _IntermixedParser
    p.add_argument("plan", metavar="PLAN.yaml",
                   help="the plan: a YAML file, or a shipped plan's name (crafter_three_skills)")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE",
                   help="plan overrides, e.g. replay=0.5 l2sp=0.01 frames=20480 evaluate.episodes=16 base_stores=[STORE]")
    p.add_argument("--out", required=True, help="run directory; the same command again continues it")
    p.add_argument("--init", default=None, help="weights to start from, instead of the plan's init (aimc .safetensors + .yaml)")
    p.add_argument("--quiet", action="store_true", help="no progress display")

    p = cli.command("online", help="online learning (DAgger): the agent plays, a labeller corrects every step, "
                    "training continues on the corrections; resumable rounds", run=_online)
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE",
                   help="OnlineConfig overrides, e.g. rounds=6 collect.episodes=8 mix.online_share=0.3 tasks=[collect_stone]")
    p.add_argument("--init", required=True, help="weights to start from: aimc .safetensors (+ .yaml), e.g. RUN/final.safetensors")
    p.add_argument("--store", action="append", default=None,
                   help="earlier data mixed into every round's training, e.g. the demonstrations (repeatable)")
    p.add_argument("--out", required=True, help="run directory; the same command again continues it (raise rounds=N for more)")
    p.add_argument("--preset", default="online_crafter", help="OnlineConfig preset name or YAML file (default online_crafter; online_crafter_skill: one weak skill, docs/online.md)")
    p.add_argument("--mineclip", default=None, help="MineCLIP checkpoint (default: found beside the --init weights)")
    p.add_argument("--prior", default=None, help="prior checkpoint (default: found beside the --init weights)")
    p.add_argument("--quiet", action="store_true", help="no progress display")
