"""Validation loss of trained policies on a held-out split, computed the way training validates.

    python scripts/heldout_loss.py --preset crafter --split test \
        data.stores=[runs/quickstart/store] model.goal_dim=64 validation.max_batches=16 \
        --weights A.safetensors B.safetensors

Each policy is loaded from its ``.safetensors`` (+ ``.yaml``); the batches come from the preset's
data path with ``data.val_split`` set to ``--split``, seeded the same for every policy, so the
numbers are comparable. Used to compare a tuned config with its preset on data no choice saw
(docs/results.md).
"""

from __future__ import annotations

import argparse
import json

import torch


def main() -> int:
    from aimc.checkpoints.vpt import load_policy
    from aimc.config import load_config
    from aimc.train.config import TrainConfig
    from aimc.train.data import make_sources
    from aimc.train.distributed import DistInfo
    from aimc.train.policy import validate

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--preset", required=True)
    p.add_argument("--split", required=True, help="the held-out split of the stores (e.g. test)")
    p.add_argument("--weights", nargs="+", required=True, help="policies to score (last on the line)")
    p.add_argument("overrides", nargs="*")
    args = p.parse_args()
    cfg = load_config(TrainConfig, args.preset, [*args.overrides, f"data.val_split={args.split}"])
    _, val = make_sources(cfg)
    if val is None:
        raise SystemExit(f"no batches in split {args.split!r}")
    out = {}
    for w in args.weights:
        policy = load_policy(w)
        torch.manual_seed(cfg.runtime.seed)
        out[w] = validate(policy, val(), cfg, torch.device("cpu"), "fp32", DistInfo())
        print(f"{w}: {args.split} loss {out[w]:.4f}", flush=True)
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
