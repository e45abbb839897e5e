"""``aimc run``: watch an agent follow a prompt (video with the prompt overlaid)."""

from __future__ import annotations

import argparse

from aimc.errors import UserError


def add_agent_arguments(p: argparse.ArgumentParser) -> None:
    """Flags shared by ``aimc run`` and ``aimc eval`` that build an :class:`~aimc.agent.Agent`."""
    g = p.add_argument_group("agent")
    g.add_argument("--weights", required=True, help="policy weights: .safetensors (+ .yaml beside it) or official .weights")
    g.add_argument("--model", default=None, help="official .model file for .weights (e.g. 2x.model)")
    g.add_argument("--mineclip", default=None,
                   help="MineCLIP checkpoint (attn.pth or .safetensors); default: found next to the weights' run folder")
    g.add_argument("--prior", default=None,
                   help="prior checkpoint (steve1_prior.pt or .safetensors); default: found next to the weights' run folder")
    g.add_argument("--cond-scale", type=float, default=6.0, help="classifier-free guidance scale (0 = none; default 6)")
    g.add_argument("--greedy", action="store_true", help="take the most likely action instead of sampling")
    g.add_argument("--deterministic-prior", action="store_true", help="use the prior's mean instead of one sample per episode")
    g.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: cuda if available)")
    g.add_argument("--bf16", action="store_true", help="run the networks under bfloat16 autocast (GPU)")
    g.add_argument("--cuda-graph", action="store_true", help="capture each guided acting step in a CUDA graph (GPU)")
    g.add_argument("--seed", type=int, default=0, help="seed for action sampling and world seeds")


def build_agent(args: argparse.Namespace, need_text: bool = True):
    """An :class:`~aimc.agent.Agent` from the flags of :func:`add_agent_arguments` (see ``Agent.load``)."""
    import torch

    from aimc.agent.agent import Agent

    return Agent.load(args.weights, args.mineclip, args.prior, args.device, model=args.model, need_text=need_text,
                      cond_scale=args.cond_scale, stochastic=not args.greedy,
                      deterministic_prior=args.deterministic_prior, amp_dtype=torch.bfloat16 if args.bf16 else None,
                      seed=args.seed, cuda_graph=args.cuda_graph)


def env_config(name: str, opts: list[str] | None) -> dict:
    """``--env crafter --env-opt size=96`` -> ``{"name": "crafter", "size": 96}`` (values parsed as YAML)."""
    from aimc.config import parse_overrides

    cfg = {"name": "minerl" if name == "minerl" else name}
    cfg.update(parse_overrides(opts or []))
    return cfg


def _run(args: argparse.Namespace) -> int:
    from aimc.agent.agent import PromptSchedule
    from aimc.agent.play import play

    sources = sum(x is not None for x in (args.prompt, args.prompts, args.goal_video))
    if sources > 1:
        raise UserError("give only one of --prompt, --prompts, --goal-video")
    if sources == 0 and not args.interactive:
        raise UserError("give a goal: --prompt 'chop a tree', --prompts 'a;b' --switch-every N, --goal-video clip.mp4, or --interactive")
    schedule = None
    if args.prompt is not None:
        schedule = PromptSchedule([args.prompt], 1 << 62)
    elif args.prompts is not None:
        if args.switch_every is None:
            raise UserError("--prompts needs --switch-every N (steps per prompt)")
        schedule = PromptSchedule(args.prompts.split(";"), args.switch_every)
    goal_frames = None
    if args.goal_video is not None:
        from aimc.agent.video import read_video
        from aimc.checkpoints.safe_load import check_readable_file

        goal_frames = read_video(check_readable_file(args.goal_video, "goal video (an mp4 clip)"))
    agent = build_agent(args, need_text=goal_frames is not None or schedule is not None or args.interactive)
    if schedule is not None and agent.mineclip is not None:
        import sys

        from aimc.checkpoints.mineclip import guess_lang, language_warning

        if warning := language_warning({guess_lang(p) for p in schedule.prompts}, agent.mineclip.langs, "prompts"):
            print(f"warning: {warning}", file=sys.stderr)
    result = play(agent, env_config(args.env, args.env_opt), steps=args.steps, prompts=schedule, goal_frames=goal_frames,
                  video=args.video, seed=args.seed, num_envs=args.num_envs, workers=args.workers,
                  interactive=args.interactive, fps=args.fps, scale=args.scale)
    print(f"played {result.steps} steps in {args.num_envs} env(s), {result.episodes} episode(s), "
          f"{len(result.crashes)} env crash(es)")
    firsts: dict[str, int] = {}
    for e in result.events:
        if e["env"] == 0 and e["event"].startswith("achievement."):
            firsts.setdefault(e["event"].split(".", 1)[1], e["step"])
    if firsts:
        print("achievements (env 0, first step): " + ", ".join(f"{k}@{v}" for k, v in firsts.items()))
    for v in result.videos:
        print(f"video: {v}")
    return 0


def register(cli) -> None:
    """Add ``aimc run`` to ``cli`` (an ``aimc.cli.CommandLine``)."""
    p = cli.command("run", help="play a prompt (or a goal video) with a trained agent and record an mp4", run=_run)
    add_agent_arguments(p)
    g = p.add_argument_group("goal (one of)")
    g.add_argument("--prompt", default=None, help="text instruction, e.g. 'chop a tree' (goes through MineCLIP + prior)")
    g.add_argument("--prompts", default=None, help="several prompts separated by ';', switched every --switch-every steps")
    g.add_argument("--switch-every", type=int, default=None, help="steps per prompt with --prompts")
    g.add_argument("--goal-video", default=None, help="mp4 clip of the wanted behaviour (its MineCLIP embedding is the goal)")
    g.add_argument("--interactive", action="store_true",
                   help="type new prompts in the terminal while the agent plays ('quit' stops); window if a display exists")
    p.add_argument("--env", default="crafter", help="crafter (built-in world) or minerl (needs aimc[minerl])")
    p.add_argument("--env-opt", action="append", default=None, metavar="KEY=VALUE", help="env setting, e.g. size=96 (repeatable)")
    p.add_argument("--steps", type=int, default=500, help="steps to play (default 500)")
    p.add_argument("--video", default="run.mp4", help="output mp4 (env k>0 -> NAME_envk.mp4; a NAME.json sidecar lists events)")
    p.add_argument("--num-envs", type=int, default=1, help="environments played at once, one batched forward (default 1)")
    p.add_argument("--workers", type=int, default=0, help="env processes (0 = in this process)")
    p.add_argument("--fps", type=int, default=20, help="video frame rate, and play speed in interactive mode")
    p.add_argument("--scale", type=int, default=4, help="video upscaling factor (default 4)")
