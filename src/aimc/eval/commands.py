"""``aimc eval`` (run a suite), ``aimc compare`` (HTML/markdown report of several evaluations,
or of several training runs) and ``aimc mineclip search`` (find the windows of a store that match a text)."""

from __future__ import annotations

import argparse
from pathlib import Path

from aimc.errors import UserError


def _eval(args: argparse.Namespace) -> int:
    from aimc.agent.commands import build_agent, env_config
    from aimc.eval.report import summary_markdown, write_summary
    from aimc.eval.runner import run_suite
    from aimc.eval.suite import load_suite

    suite = load_suite(args.suite)
    if args.tasks:
        suite = suite.select([t.strip() for t in args.tasks.split(",") if t.strip()])
    if args.env_opt:
        from dataclasses import replace

        suite = replace(suite, env={**suite.env, **{k: v for k, v in env_config(suite.env["name"], args.env_opt).items() if k != "name"}})
    if args.max_steps:
        from dataclasses import replace

        suite = replace(suite, max_steps=args.max_steps,
                        tasks=tuple(replace(t, max_steps=min(t.max_steps, args.max_steps)) for t in suite.tasks))
    if args.lang not in ("auto", "all"):  # a wrong --lang fails before any model is loaded
        _phrasings(suite, args.lang, None)
    if args.baseline == "expert":
        from dataclasses import replace

        from aimc.agent.agent import ExpertAgent
        from aimc.envs.demonstrator import GOALS

        if suite.env.get("name") != "crafter":
            raise UserError("--baseline expert plays the built-in world's scripted demonstrator (crafter suites only)")
        suite = replace(suite, env={**suite.env, "name": "crafter-expert"})
        agent = ExpertAgent({i.text: t.id for t in suite.tasks for i in t.instructions}, GOALS)
    elif args.baseline == "random":
        from aimc.agent.agent import RandomAgent
        from aimc.agent.envs import action_heads

        agent = RandomAgent(action_heads(suite.env), seed=args.seed)
    else:
        if not args.weights:
            raise UserError("aimc eval needs --weights (or --baseline random)")
        agent = build_agent(args, need_text=True)
    suite = _phrasings(suite, args.lang, getattr(getattr(agent, "mineclip", None), "langs", None))
    out = Path(args.out)
    run_suite(suite, agent, out, episodes=args.episodes, num_envs=args.num_envs, workers=args.workers,
              videos=args.videos, progress=not args.quiet)
    summary = write_summary(out, suite)
    print(summary_markdown(summary))
    print(f"results: {out / 'results.jsonl'}\nsummary: {out / 'summary.md'}")
    return 0


def _phrasings(suite, lang: str, embedder_langs):
    """The suite with the phrasings ``--lang`` picks for this embedder; warnings go to stderr."""
    import sys

    from aimc.eval.suite import choose_phrasings

    suite, notes = choose_phrasings(suite, lang, embedder_langs)
    for text in notes:
        print(text, file=sys.stderr)
    return suite


def _compare(args: argparse.Namespace) -> int:
    from aimc.eval.report import compare

    names = [n.strip() for n in args.names.split(",")] if args.names else None
    html_path, md_path = compare(args.runs, args.out, names)
    print(md_path.read_text(encoding="utf-8"))
    print(f"report: {html_path}\nmarkdown: {md_path}")
    return 0


def _search(args: argparse.Namespace) -> int:
    from aimc.checkpoints.mineclip import load_mineclip
    from aimc.eval.search import search_store, write_search

    if args.label is not None and not args.label.strip():
        raise UserError("--label is empty; leave it out to label the hits with the search text")
    model = load_mineclip(args.mineclip)
    prior = None
    if args.prior:
        from aimc.checkpoints.prior import load_prior

        prior = load_prior(args.prior)
    result = search_store(args.store, model, args.text, top=args.top, min_gap=args.min_gap, label=args.label,
                          embedder_name=args.mineclip, progress=not args.quiet, prior=prior, prior_name=args.prior)
    paths = write_search(result, args.store, args.out, args.mineclip, args.min_gap)
    print(f"{len(result.hits)} hits among {result.windows:,} windows of {result.episodes:,} episodes"
          + (f" ({result.unembedded} episodes without goal embeddings not searched)" if result.unembedded else ""))
    for h in result.hits[:10]:
        print(f"  {h.rank:>3}. {h.episode} frames {h.start}..{h.end - 1}  score {h.score:.4f}")
    print(f"embedder check: {result.embedder_check}")
    print(f"look at the hits: {paths['html']}\nannotations (label {result.label!r}): {paths['csv']}\nhits: {paths['json']}")
    return 0


def register(cli) -> None:
    """Add ``aimc eval``, ``aimc compare`` and ``aimc mineclip search`` to ``cli`` (an ``aimc.cli.CommandLine``)."""
    from aimc.agent.commands import add_agent_arguments

    p = cli.command("eval", help="run an evaluation suite (N episodes per task on fixed seeds; resumable)", run=_eval)
    add_agent_arguments(p)
    for a in p._actions:  # --weights is optional here (a random baseline needs none)
        if a.dest == "weights":
            a.required = False
    p.add_argument("--suite", default="crafter-core", help="shipped suite name (crafter-core, steve1-early-game) or a YAML file")
    p.add_argument("--out", required=True, help="output folder; run again with the same folder to resume")
    p.add_argument("--episodes", type=int, default=None, help="episodes per task and condition (default: the suite's)")
    p.add_argument("--tasks", default=None, help="comma-separated task ids to run (default: all)")
    p.add_argument("--lang", default="auto", metavar="LANGS",
                   help="phrasings to play: auto (those in the embedder's languages, e.g. English for the official "
                        "MineCLIP; default), all, or languages such as en, zh, en,zh")
    p.add_argument("--max-steps", type=int, default=None, help="cap every task's horizon (quick checks)")
    p.add_argument("--env-opt", action="append", default=None, metavar="KEY=VALUE", help="override an env setting (repeatable)")
    p.add_argument("--num-envs", type=int, default=8, help="episodes played at once (the policy's batch; default 8)")
    p.add_argument("--workers", type=int, default=0, help="env processes (0 = in this process)")
    p.add_argument("--videos", type=int, default=0, help="record the first N episodes of every condition")
    p.add_argument("--baseline", choices=["random", "expert"], default=None,
                   help="evaluate uniformly random play, or the built-in world's scripted demonstrator (the ceiling)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")

    c = cli.command("compare", help="compare evaluations (e.g. before/after fine-tuning) or training runs in an HTML + "
                                    "markdown report", run=_compare)
    c.add_argument("runs", nargs="+", help="evaluation folders written by aimc eval --out (the first is the baseline), "
                                           "or training run folders written by aimc train; all of one kind")
    c.add_argument("--out", default="compare", help="folder for report.html and report.md (default ./compare)")
    c.add_argument("--names", default=None, help="comma-separated display names for the runs")

    s = cli.command("mineclip search", help="find the 16-frame windows of a store that best match a text (HTML + annotations.csv)",
                    run=_search)
    s.add_argument("store", help="episode store with goal embeddings (aimc data embed)")
    s.add_argument("text", help="what to look for, in words the embedder knows")
    s.add_argument("--mineclip", required=True, help="the MineCLIP the store was embedded with (attn.pth or .safetensors)")
    s.add_argument("--top", type=int, default=20, help="number of hits (default 20)")
    s.add_argument("--out", required=True, help="folder for index.html, annotations.csv and hits.json")
    s.add_argument("--label", default=None, help="text written into annotations.csv (default: the search text)")
    s.add_argument("--min-gap", type=int, default=16, help="frames between two hits of one episode, at least (default 16)")
    s.add_argument("--prior", default=None,
                   help="rank against this prior's goal for the text (z = 0) instead: what an agent is asked for")
    s.add_argument("--quiet", action="store_true", help="no progress bar")
