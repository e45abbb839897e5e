"""Commands of the built-in world: ``aimc data generate --env crafter``."""

from __future__ import annotations

import argparse


def _run_generate(args: argparse.Namespace) -> int:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    from aimc.envs.demonstrator import DemonstratorConfig
    from aimc.envs.record import generate_crafter_store
    from aimc.errors import UserError

    if args.env != "crafter":
        raise UserError(f"--env {args.env}: only the built-in world 'crafter' can be generated (Minecraft data is converted: aimc data convert ...)")
    demo = DemonstratorConfig(goal_steps=args.goal_steps, noise=args.noise, sight=args.sight)
    with Progress(TextColumn("recording"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[frames]} frames"), TimeRemainingColumn()) as prog:
        task = prog.add_task("episodes", total=args.episodes, frames=0)
        total = [0]

        def done(_eid: str, n: int) -> None:
            total[0] += n
            prog.update(task, advance=1, frames=total[0])

        s = generate_crafter_store(args.out, args.episodes, args.max_steps, args.workers, args.seed, args.size, demo, args.goal, done)
    print(f"{args.out}: {s['written']} episodes written, {s['skipped']} already there, {s['frames']} frames in {s['seconds']:.0f} s")
    return 0


def register(cli) -> None:
    """Add this package's commands to ``cli`` (an ``aimc.cli.CommandLine``)."""
    p = cli.command("data generate", help="record scripted play of the built-in world into an episode store", run=_run_generate)
    p.add_argument("--env", default="crafter", help="world to play (only 'crafter')")
    p.add_argument("--out", required=True, help="episode store folder (created; existing episodes are kept)")
    p.add_argument("--episodes", type=int, default=100, help="episodes (world seeds seed..seed+episodes-1)")
    p.add_argument("--max-steps", type=int, default=500, help="steps per episode (fewer if the player dies)")
    p.add_argument("--workers", type=int, default=2, help="parallel processes")
    p.add_argument("--seed", type=int, default=0, help="first world seed")
    p.add_argument("--size", type=int, default=64, help="frame size in pixels")
    p.add_argument("--goal-steps", type=int, default=150, help="switch goal after this many steps without success")
    p.add_argument("--noise", type=float, default=0.03, help="chance of a random action per step")
    p.add_argument("--sight", choices=("screen", "map"), default="screen",
                   help="screen: the player acts only on what its frame shows (imitable); map: it plans over 12 tiles of the map")
    p.add_argument("--goal", default=None, help="pin one goal for every episode (e.g. place_table) instead of switching")
