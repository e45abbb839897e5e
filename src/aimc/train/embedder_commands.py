"""``aimc mineclip train`` and ``aimc prior train``: train the embedder and the prior.

(``aimc mineclip inspect|embed-text`` are in ``aimc.checkpoints.commands``; ``aimc train`` in
``aimc.train.commands``.)
"""

from __future__ import annotations

import argparse


def _mineclip_train(args: argparse.Namespace) -> int:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    from aimc.config import load_config
    from aimc.train.mineclip import MineCLIPTrainConfig, train_mineclip

    overrides = list(args.overrides)
    if args.store:
        overrides.append(f"store={args.store}")
    if args.init:
        overrides.append(f"init={args.init}")
    cfg = load_config(MineCLIPTrainConfig, args.config, overrides)
    with Progress(TextColumn("mineclip"), BarColumn(), MofNCompleteColumn(), TextColumn("loss {task.fields[loss]:.3f}"), TimeRemainingColumn()) as prog:
        task = prog.add_task("train", total=cfg.steps, loss=float("nan"))
        path = train_mineclip(cfg, args.out, on_step=lambda s, loss: prog.update(task, completed=s + 1, loss=loss),
                              on_note=lambda text: prog.console.print(f"note: {text}", markup=False, highlight=False))
    from aimc.checkpoints.mineclip import describe_langs, read_mineclip_file

    print(f"embedder written to {path} (languages: {describe_langs(read_mineclip_file(path).langs)})")
    return 0


def _prior_train(args: argparse.Namespace) -> int:
    from aimc.config import load_config
    from aimc.train.prior import PriorTrainConfig, load_pairs, train_prior

    overrides = list(args.overrides)
    text, visual = load_pairs(args.data)
    overrides = [f"prior.input_dim={text.shape[1]}"] + overrides
    if args.fast:
        overrides = ["epochs=2", "prior.hidden_dim=64", "prior.latent_dim=64", "device=cpu"] + overrides
    cfg = load_config(PriorTrainConfig, args.config, overrides)
    best = train_prior((text, visual), cfg, args.out)
    print(f"best prior: {best}")
    return 0


def register(cli) -> None:
    """Add this package's commands to ``cli`` (an ``aimc.cli.CommandLine``)."""
    cli.group("prior", help="the STEVE-1 prior (text embedding -> visual goal embedding)")
    p = cli.command("mineclip train", help="train a small MineCLIP contrastively on annotated episodes, or fine-tune one (--init)", run=_mineclip_train)
    p.add_argument("--store", default="", help="episode store with text annotations")
    p.add_argument("--init", default="", metavar="EMBEDDER",
                   help="fine-tune this embedder (official attn.pth or a mineclip.safetensors) instead of a new model")
    p.add_argument("--out", required=True, help="run directory (config, metrics, tb/, mineclip.safetensors)")
    p.add_argument("--config", default=None, help="preset name or YAML file (MineCLIPTrainConfig)")
    p.add_argument("overrides", nargs="*", help="dotted overrides, e.g. steps=2000 batch_size=128")

    p = cli.command("prior train", help="train the prior on paired text/visual embeddings", run=_prior_train)
    p.add_argument("--data", required=True, help=".npz with text_embeddings and visual_embeddings (N, D), or STEVE-1's data.pkl")
    p.add_argument("--out", required=True, help="run directory (config, metrics.jsonl, tb/, checkpoints/)")
    p.add_argument("--config", default=None, help="YAML file with PriorTrainConfig fields")
    p.add_argument("--fast", action="store_true", help="tiny smoke run: 2 epochs, hidden/latent 64, CPU")
    p.add_argument("overrides", nargs="*", help="dotted overrides, e.g. epochs=10 prior.latent_dim=256")
