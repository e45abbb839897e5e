"""``aimc data ...``: convert, embed, split, check, stats (the logic lives in aimc.data)."""

from __future__ import annotations

import argparse
import json
import shlex
import sys


def _store_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("out", help="episode store folder to write into (created if missing)")
    p.add_argument("--workers", type=int, default=None, help="parallel conversion processes (default: CPUs - 1, at most 8)")
    p.add_argument("--no-resume", action="store_true", help="convert again even episodes already in the store")
    p.add_argument("--crf", type=int, default=10, help="x264 quality: 0 = lossless, 10 = near-lossless (default)")
    p.add_argument("--chunk-frames", type=int, default=256, help="frames per video chunk (random access granularity)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def _store(args):
    from aimc.data.store import EpisodeStore, VideoSettings

    return EpisodeStore(args.out, video=VideoSettings(chunk_frames=args.chunk_frames, crf=args.crf))


def _finish(summary, store) -> int:
    from aimc.data.converters.base import print_summary

    print_summary(summary, store)
    return 1 if summary.failed and not (summary.converted or summary.skipped) else 0


def _workers(args) -> int:
    from aimc.data.converters.base import default_workers

    return args.workers if args.workers else default_workers()


def _convert(args, store, jobs, failed, convert_fn, description: str) -> int:
    """Run one converter over its jobs in parallel, print the summary, return the exit code."""
    from aimc.data.converters.base import run_jobs

    summary = run_jobs(jobs, convert_fn, store, workers=_workers(args), resume=not args.no_resume,
                       progress=not args.quiet, pre_failed=failed, description=description)
    return _finish(summary, store)


def _run_contractor(args) -> int:
    from pathlib import Path

    from aimc.data.converters.contractor import convert_recording, download_recordings, find_recordings
    from aimc.errors import UserError

    if not args.src and not args.index:
        raise UserError("give a folder of .mp4 + .jsonl recordings, or --index (6xx, 7xx, 8xx, 9xx, 10xx, a URL or a file)")
    if args.mineclip:  # read once here: a wrong file is one clear error, not a failure per recording
        from aimc.checkpoints.mineclip import load_mineclip

        load_mineclip(args.mineclip)
    store = _store(args)
    jobs, failed = [], []
    if args.index:
        dl = Path(args.download_dir or (Path(args.out).parent / (Path(args.out).name + "-downloads")))
        j, f = download_recordings(args.index, dl, limit=args.limit, offset=args.offset, threads=args.download_threads)
        jobs += j
        failed += f
    if args.src:
        j, f = find_recordings(args.src)
        jobs += j
        failed += f
    for job in jobs:
        job.options.update(fix_quirks=args.fix_quirks, max_missing_frames=args.max_missing_frames)
        if args.mineclip:
            job.options.update(mineclip=args.mineclip, device=args.device)
    return _convert(args, store, jobs, failed, convert_recording, "contractor")


def _run_steve1(args) -> int:
    from aimc.data.converters.steve1 import convert_episode_folder, find_episodes

    store = _store(args)
    jobs, failed = find_episodes(args.src)
    return _convert(args, store, jobs, failed, convert_episode_folder, "steve1")


def _run_custom(args) -> int:
    from aimc.data.converters.custom import convert_custom_episode, find_custom_episodes

    store = _store(args)
    jobs, failed = find_custom_episodes(args.src)
    for job in jobs:
        job.options["fps"] = args.fps
        if args.size is not None:
            job.options["size"] = args.size or None
    return _convert(args, store, jobs, failed, convert_custom_episode, "custom")


def _run_embed(args) -> int:
    from aimc.checkpoints.mineclip import load_mineclip
    from aimc.data.embed import embed_store
    from aimc.data.store import EpisodeStore

    from aimc.utils.device import resolve_device

    device = resolve_device(args.device)
    model = load_mineclip(args.mineclip, map_location="cpu").to(device).eval()
    res = embed_store(EpisodeStore(args.store), model, batch_size=args.batch_size, device=device,
                      amp_dtype=args.amp, force=args.force, info={"weights": str(args.mineclip)}, progress=not args.quiet)
    print(f"embedded {res['embedded']} episode(s) ({res['frames']:,} frames, {res['seconds']:.1f} s on {device}), "
          f"skipped {res['skipped']} already embedded")
    return 0


def _run_split(args) -> int:
    from aimc.data.split import SPLIT_FILE, make_split
    from aimc.data.store import EpisodeStore

    store = EpisodeStore(args.store)
    cmd = "aimc data split " + " ".join(shlex.quote(a) for a in sys.argv[3:]) if len(sys.argv) > 3 else None
    doc = make_split(store, val_frames=args.val_frames, val_fraction=args.val_fraction, train_frames=args.train_frames,
                     seed=args.seed, min_frames=args.min_frames, command=cmd)
    print(f"train: {doc['episodes']['train']} episodes, {doc['frames']['train']:,} frames; "
          f"val: {doc['episodes']['val']} episodes, {doc['frames']['val']:,} frames -> {store.root / SPLIT_FILE}")
    return 0


def _run_check(args) -> int:
    from aimc.data.check import check_store
    from aimc.data.store import EpisodeStore

    store = EpisodeStore(args.store)
    bad = check_store(store, deep=args.deep, min_frames=args.min_frames, require_embeddings=args.require_embeddings)
    n = len(store.episode_ids())
    for eid, problems in sorted(bad.items()):
        for p in problems:
            print(f"{eid}: {p}")
    print(f"{n} episode(s) checked{' (deep)' if args.deep else ''}: "
          + ("all fine" if not bad else f"{len([k for k in bad if not k.startswith('(')])} with problems"))
    return 1 if bad else 0


def _run_stats(args) -> int:
    from aimc.data.check import store_stats
    from aimc.data.store import EpisodeStore

    s = store_stats(EpisodeStore(args.store))
    if args.json:
        print(json.dumps(s, indent=1))
        return 0
    print(f"{s['store']}: {s['episodes']} episodes, {s['frames']:,} frames ({s['hours']:.2f} h), "
          f"{s['embedded_episodes']} embedded, {s['annotations']} annotations, {s['quarantined']} quarantined")
    ef = s["episode_frames"]
    print(f"episode length: min {ef['min']}, median {ef['median']:.0f}, max {ef['max']}")
    print("bytes/frame: " + ", ".join(f"{k} {v}" for k, v in s["bytes_per_frame"].items())
          + f" (total {s['total_bytes'] / 1e6:.1f} MB)")
    print("converters: " + ", ".join(f"{k} {v}" for k, v in s["converters"].items()))
    if s["most_common_actions"]:
        print("most common actions: " + ", ".join(s["most_common_actions"]))
    for name, sp in s["splits"].items():
        print(f"split {name}: {sp['episodes']} episodes, {sp['frames']:,} frames")
    return 0


def register(cli) -> None:
    """Add this package's commands to ``cli`` (an ``aimc.cli.CommandLine``)."""
    cli.group("data", help="prepare training data: convert, embed, split, check, stats")
    cli.group("data convert", help="convert recordings into an episode store")

    p = cli.command("data convert contractor", help="VPT contractor recordings (.mp4 + .jsonl), local or downloaded", run=_run_contractor)
    p.add_argument("src", nargs="?", default=None, help="folder with <name>.mp4 + <name>.jsonl pairs")
    _store_args(p)
    p.add_argument("--index", default=None, help="download from an index: 6xx, 7xx, 8xx, 9xx, 10xx, a URL or a local index file")
    p.add_argument("--limit", type=int, default=None, help="download at most this many recordings of the index")
    p.add_argument("--offset", type=int, default=0, help="skip this many recordings of the index first")
    p.add_argument("--download-dir", default=None, help="where downloads go (default: <out>-downloads beside the store)")
    p.add_argument("--download-threads", type=int, default=4, help="parallel downloads")
    p.add_argument("--fix-quirks", action="store_true", help="corrected line conversion instead of the original's (see docs)")
    p.add_argument("--max-missing-frames", type=int, default=0,
                   help="accept videos this many frames shorter than their jsonl (the original silently accepts any)")
    p.add_argument("--mineclip", default=None,
                   help="also embed while converting, from the full-resolution frames as the original did (attn.pth or .safetensors)")
    p.add_argument("--device", default=None, help="device for --mineclip (default: cpu; with cuda use --workers 1)")

    p = cli.command("data convert steve1", help="STEVE-1 episode folders (frames.mp4, actions.pkl, embeds_attn.pkl)", run=_run_steve1)
    p.add_argument("src", help="folder holding STEVE-1 episode folders")
    _store_args(p)

    p = cli.command("data convert custom", help="your own recordings: video or frames/ + actions.jsonl|npz (+ annotations.json)", run=_run_custom)
    p.add_argument("src", help="folder of episode folders (or one episode folder); see docs/data.md")
    _store_args(p)
    p.add_argument("--size", type=int, default=None, help="resize frames to SIZExSIZE (default 128 for Minecraft actions, 0 = keep)")
    p.add_argument("--fps", type=float, default=20.0, help="frame rate of the recordings")

    p = cli.command("data embed", help="add MineCLIP goal embeddings to every episode (resumable)", run=_run_embed)
    p.add_argument("store", help="episode store folder")
    p.add_argument("--mineclip", required=True, help="MineCLIP weights: official attn.pth or aimc .safetensors")
    p.add_argument("--device", default=None, help="cuda / cpu (default: cuda if available)")
    p.add_argument("--batch-size", type=int, default=64, help="frames per ViT batch")
    p.add_argument("--amp", default=None, help="autocast dtype fp16 / bf16 / fp32 (default: fp16 on CUDA as the original)")
    p.add_argument("--force", action="store_true", help="embed again episodes that already have embeddings")
    p.add_argument("--quiet", action="store_true", help="no progress bar")

    p = cli.command("data split", help="train/val split by episode and frame budgets, seeded (writes <store>/splits.yaml)", run=_run_split)
    p.add_argument("store", help="episode store folder")
    p.add_argument("--val-frames", type=int, default=None, help="frames for val (whole episodes, at least this many)")
    p.add_argument("--val-fraction", type=float, default=None, help="fraction of all frames for val (instead of --val-frames)")
    p.add_argument("--train-frames", type=int, default=None, help="cap train at this many frames (default: all the rest)")
    p.add_argument("--seed", type=int, default=0, help="shuffle seed")
    p.add_argument("--min-frames", type=int, default=0, help="leave out episodes shorter than this")

    p = cli.command("data check", help="verify a store: files, checksums, lengths, embeddings, splits", run=_run_check)
    p.add_argument("store", help="episode store folder")
    p.add_argument("--deep", action="store_true", help="also check sha256 checksums and decode every video")
    p.add_argument("--min-frames", type=int, default=0, help="report episodes shorter than this")
    p.add_argument("--require-embeddings", action="store_true", help="report episodes without goal embeddings")

    p = cli.command("data stats", help="size, lengths, bytes per frame, actions, splits of a store", run=_run_stats)
    p.add_argument("store", help="episode store folder")
    p.add_argument("--json", action="store_true", help="print JSON")
