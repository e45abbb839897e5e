"""``aimc checkpoint ...``: look into and convert policy files."""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def _inspect(args: argparse.Namespace) -> int:
    from aimc.checkpoints.vpt import inspect_file

    print(json.dumps(inspect_file(args.file), indent=1))
    return 0


def _convert(args: argparse.Namespace) -> int:
    from aimc.checkpoints.vpt import load_policy, save_policy

    src, dst = Path(args.input), Path(args.output)
    policy = load_policy(src, model_path=args.model, allow_missing_goal=args.allow_missing_goal)
    model_out = None
    if dst.suffix != ".safetensors" and not args.no_model_file:
        model_out = dst.with_suffix(".model")
    save_policy(policy, dst, model_path=model_out)
    n = sum(p.numel() for p in policy.parameters())
    print(f"wrote {dst} ({n:,} parameters)" + (f" and {model_out}" if model_out else ""))
    if dst.suffix == ".safetensors":
        print(f"config: {dst.with_suffix('.yaml')}")
    return 0


def register(cli) -> None:
    """Add this package's commands to ``cli`` (an ``aimc.cli.CommandLine``)."""
    cli.group("checkpoint", help="inspect and convert policy files (.model, .weights, .safetensors)")
    p = cli.command("checkpoint inspect", help="summarise a .model, .weights/.pt or .safetensors file", run=_inspect)
    p.add_argument("file", help="the file to inspect (read safely; nothing in it is executed)")
    p = cli.command(
        "checkpoint convert",
        help="convert a policy between official .weights (+ .model) and aimc .safetensors (+ .yaml)",
        run=_convert,
    )
    p.add_argument("input", help="policy weights: .weights/.pt (official) or .safetensors (aimc)")
    p.add_argument("output", help="output file; the suffix picks the format (.weights or .safetensors)")
    p.add_argument("--model", default=None, help="the .model file of official input weights (e.g. 2x.model)")
    p.add_argument(
        "--allow-missing-goal",
        action="store_true",
        help="accept unconditioned VPT weights: the goal layer is freshly initialised",
    )
    p.add_argument("--no-model-file", action="store_true", help="with .weights output, do not write <stem>.model")
