"""``aimc mineclip train``, ``aimc prior pairs`` and ``aimc prior train``: train the embedder,
build the prior's training pairs, train the prior.

(``aimc mineclip inspect|embed-text`` are in ``aimc.checkpoints.commands``; ``aimc train`` in
``aimc.train.commands``.)
"""

from __future__ import annotations

import argparse
import re
from pathlib import Path

_OVERRIDE = re.compile(r"^[A-Za-z_][A-Za-z0-9_.]*=")


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


def _prior_pairs(args: argparse.Namespace) -> int:
    from aimc.checkpoints.mineclip import load_mineclip
    from aimc.data.pairs import build_pairs, read_annotations, save_pairs, summary_lines
    from aimc.errors import UserError

    if not args.annotations and args.no_store_annotations:
        raise UserError("nothing to pair: --no-store-annotations leaves out the store's annotations, so give --annotations FILE")
    if Path(args.out).suffix != ".npz":
        raise UserError(f"--out {args.out}: the pairs file must end in .npz")
    if Path(args.out).is_dir():
        raise UserError(f"--out {args.out}: is a folder; give a file name ending in .npz")
    rows = read_annotations(args.annotations) if args.annotations else []
    mineclip = load_mineclip(args.mineclip)
    pairs = build_pairs(args.store, mineclip, rows, use_store_annotations=not args.no_store_annotations,
                        embedder_name=args.mineclip)
    print("\n".join(summary_lines(pairs, top=args.show)))
    print(f"embedder check: {pairs.embedder_check}")
    print("window: each pair's goal is the embedding of frames end-16..end-1 (row end-1) of its episode")
    path = save_pairs(pairs, args.out)
    print(f"wrote {len(pairs):,} pairs to {path}")
    return 0


def _prior_train(args: argparse.Namespace) -> int:
    from aimc.config import load_config
    from aimc.train.prior import PriorTrainConfig, load_pair_files, train_prior

    # `--data a.npz b.npz epochs=5`: argparse hands the override to --data; give it back
    files = [d for d in args.data if not (_OVERRIDE.match(d) and not Path(d).exists())]
    overrides = [d for d in args.data if d not in files] + list(args.overrides)
    text, visual = load_pair_files(files)
    if len(files) > 1:
        print(f"{len(text):,} pairs from {len(files)} files")
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

    p = cli.command("prior pairs", help="build the prior's training pairs from annotations of an embedded store",
                    run=_prior_pairs)
    p.add_argument("store", help="episode store with goal embeddings (aimc data embed)")
    p.add_argument("--annotations", default=None,
                   help="CSV (header episode,start,end,text[,lang]) or JSONL with the same keys; each row [start, end) "
                        "gives one pair, from the window of frames end-16..end-1")
    p.add_argument("--mineclip", required=True, help="the MineCLIP the store was embedded with (attn.pth or .safetensors)")
    p.add_argument("--out", required=True, help="pairs file to write (.npz), for aimc prior train --data")
    p.add_argument("--no-store-annotations", action="store_true",
                   help="leave out the store's own annotations (annotations.json of each episode)")
    p.add_argument("--show", type=int, default=40, help="texts listed in the per-text count summary (default 40)")

    p = cli.command("prior train", help="train the prior on paired text/visual embeddings", run=_prior_train)
    p.add_argument("--data", required=True, nargs="+", action="extend", metavar="FILE",
                   help="one or more .npz files with text_embeddings and visual_embeddings (N, D), or STEVE-1's "
                        "data.pkl; several are concatenated (e.g. the quickstart's pairs plus new ones)")
    p.add_argument("--out", required=True, help="run directory (config, metrics.jsonl, tb/, checkpoints/)")
    p.add_argument("--config", default=None, help="YAML file with PriorTrainConfig fields")
    p.add_argument("--fast", action="store_true", help="tiny smoke run: 2 epochs, hidden/latent 64, CPU")
    p.add_argument("overrides", nargs="*", help="dotted overrides, e.g. epochs=10 prior.latent_dim=256")
