#!/usr/bin/env python3
"""Plot a training run's ``metrics.jsonl`` as one PNG (the figure in docs/monitoring.md).

    python scripts/plot_metrics.py RUN_DIR docs/img/monitoring-crafter.png [--title TEXT]

Panels: training and validation loss, gradient norm (with the clipping threshold and the warning
level from the run's config.yaml), learning rate, weight norm, frames/s. The x axis is frames
seen, as in TensorBoard.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import yaml


def read_metrics(path: Path) -> list[dict]:
    records = []
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError as e:
            print(f"{path}:{n}: skipped a broken line ({e})", file=sys.stderr)
    return records


def series(records: list[dict], key: str) -> tuple[list[float], list[float]]:
    xs, ys = [], []
    for r in records:
        if key in r and r[key] is not None:
            xs.append(r["frames"])
            ys.append(r[key])
    return xs, ys


def plot(run_dir: Path, out: Path, title: str | None = None) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    records = read_metrics(run_dir / "metrics.jsonl")
    if not records:
        raise SystemExit(f"{run_dir / 'metrics.jsonl'}: no records")
    cfg = {}
    if (run_dir / "config.yaml").is_file():
        cfg = yaml.safe_load((run_dir / "config.yaml").read_text(encoding="utf-8")) or {}
    optim = cfg.get("optim", {})

    panels = [
        ("loss (per-frame NLL)", [("train/loss", "train"), ("val/loss", "validation")], False),
        ("gradient norm (before clipping)", [("train/grad_norm", "grad norm")], False),
        ("learning rate", [("train/lr", "lr")], False),
        ("weight norm", [("train/weight_norm", "weight norm")], False),
        ("frames / s", [("train/frames_per_s", "frames/s")], False),
        ("unconditioned fraction", [("train/uncond_fraction", "p(goal = 0)")], False),
    ]
    fig, axes = plt.subplots(2, 3, figsize=(13, 6.5), constrained_layout=True)
    for ax, (name, keys, logy) in zip(axes.flat, panels):
        for key, label in keys:
            xs, ys = series(records, key)
            if xs:
                ax.plot(xs, ys, marker="o" if len(xs) < 30 else None, ms=3, label=label)
        if name.startswith("gradient") and optim:
            if optim.get("max_grad_norm"):
                ax.axhline(optim["max_grad_norm"], color="tab:orange", ls="--", lw=1,
                           label=f"clipped at {optim['max_grad_norm']:g}")
            if optim.get("warn_grad_norm"):
                ax.axhline(optim["warn_grad_norm"], color="tab:red", ls=":", lw=1,
                           label=f"warning at {optim['warn_grad_norm']:g}")
        if name.startswith("unconditioned") and cfg.get("data", {}).get("p_uncond") is not None:
            ax.axhline(cfg["data"]["p_uncond"], color="tab:gray", ls="--", lw=1,
                       label=f"p_uncond = {cfg['data']['p_uncond']:g}")
        if logy:
            ax.set_yscale("log")
        ax.set_title(name)
        ax.set_xlabel("frames")
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
    if title:
        fig.suptitle(title)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=90)
    print(f"wrote {out}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run_dir", type=Path, help="a training run directory (holds metrics.jsonl)")
    ap.add_argument("out", type=Path, help="PNG to write")
    ap.add_argument("--title", default=None, help="figure title")
    args = ap.parse_args(argv)
    plot(args.run_dir, args.out, args.title)
    return 0


if __name__ == "__main__":
    sys.exit(main())
