"""Commands for MineCLIP and the prior: ``aimc mineclip embed-text|inspect``, ``aimc prior train``.

(``aimc mineclip train``, training a small MineCLIP for the built-in world, is registered by
the envs package.)
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def register(cli) -> None:
    """Add this package's commands to ``cli`` (an ``aimc.cli.CommandLine``)."""
    cli.group("mineclip", help="MineCLIP: embed text and gameplay, inspect checkpoints")
    cli.group("prior", help="the STEVE-1 prior (text embedding -> visual goal embedding)")

    p = cli.command("mineclip embed-text", help="embed prompts with MineCLIP (optionally through the prior)", run=_embed_text)
    p.add_argument("prompts", nargs="+", help="one or more prompts")
    p.add_argument("--weights", required=True, help="MineCLIP checkpoint (official attn.pth or aimc .safetensors)")
    p.add_argument("--prior", default=None, help="prior checkpoint (steve1_prior.pt); output visual goals instead")
    p.add_argument("--deterministic", action="store_true", help="with --prior: decode the prior mean (z = 0) instead of a sample")
    p.add_argument("--seed", type=int, default=None, help="with --prior: seed the latent sample")
    p.add_argument("--out", default=None, help="write the (T, D) float32 array to this .npy file (default: print a summary)")
    p.add_argument("--device", default="cpu", help="cpu, cuda, ... (default cpu)")

    p = cli.command("mineclip inspect", help="show a MineCLIP or prior checkpoint's format, sizes and checksum", run=_inspect)
    p.add_argument("checkpoint", help="attn.pth, steve1_prior.pt or an aimc .safetensors")

    p = cli.command("prior train", help="train the prior on paired text/visual embeddings", run=_prior_train)
    p.add_argument("--data", required=True, help=".npz with text_embeddings and visual_embeddings (N, D), or STEVE-1's data.pkl")
    p.add_argument("--out", required=True, help="run directory (config, metrics.jsonl, tb/, checkpoints/)")
    p.add_argument("--config", default=None, help="YAML file with PriorTrainConfig fields")
    p.add_argument("--fast", action="store_true", help="tiny smoke run: 2 epochs, hidden/latent 64, CPU")
    p.add_argument("overrides", nargs="*", help="dotted overrides, e.g. epochs=10 prior.latent_dim=256")


def _embed_text(args: argparse.Namespace) -> int:
    import numpy as np
    import torch

    from aimc.checkpoints.mineclip import load_mineclip

    model = load_mineclip(args.weights).to(args.device)
    with torch.no_grad():
        emb = model.encode_text(list(args.prompts)).float()  # (T, D)
        if args.prior:
            from aimc.checkpoints.prior import load_prior

            prior = load_prior(args.prior).to(args.device)
            if args.seed is not None:
                torch.manual_seed(args.seed)
            emb = prior(emb, deterministic=args.deterministic).float()
    arr = emb.cpu().numpy().astype(np.float32)
    if args.out:
        from aimc.utils.io import atomic_path

        with atomic_path(Path(args.out)) as tmp:
            with open(tmp, "wb") as f:
                np.save(f, arr)
        print(f"wrote {arr.shape} float32 to {args.out}")
    else:
        for prompt, row in zip(args.prompts, arr):
            print(f"{prompt!r}: norm {np.linalg.norm(row):.4f}, first values {np.round(row[:4], 4).tolist()}")
    return 0


def _inspect(args: argparse.Namespace) -> int:
    from aimc.checkpoints.mineclip import md5sum, official_to_state_dict
    from aimc.checkpoints.safe_load import load_torch_file

    path = Path(args.checkpoint)
    if path.suffix == ".safetensors":
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            shapes = {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}
        info = {"format": meta.get("format", "safetensors"), "tensors": len(shapes),
                "parameters": int(sum(_numel(s) for s in shapes.values()))}
        for key in ("aimc_mineclip_config", "aimc_prior_config"):
            if key in meta:
                info["config"] = json.loads(meta[key])
    else:
        obj = load_torch_file(path)
        if isinstance(obj, dict) and ("state_dict" in obj or any(str(k).startswith("model.") for k in obj)):
            sd = official_to_state_dict(obj, str(path))
            distinct = {v.data_ptr(): v for v in sd.values()}
            info = {"format": "MineCLIP attn.pth", "keys": len(sd), "distinct_tensors": len(distinct),
                    "parameters": int(sum(v.numel() for v in distinct.values())),
                    "dtypes": sorted({str(v.dtype) for v in sd.values()})}
            pos = sd.get("image_encoder.pos_embed")
            if pos is not None:
                info["vision_tokens_width"] = list(pos.shape)
        else:
            from aimc.checkpoints.prior import config_from_state_dict

            sd = {k.removeprefix("_orig_mod."): v for k, v in obj.items()}
            info = {"format": "STEVE-1 prior (steve1_prior.pt)", "keys": len(sd),
                    "parameters": int(sum(v.numel() for v in sd.values())),
                    "config": vars(config_from_state_dict(sd, str(path)))}
    info["md5"] = md5sum(path)
    print(json.dumps(info, indent=1))
    return 0


def _numel(shape: tuple[int, ...]) -> int:
    n = 1
    for s in shape:
        n *= s
    return n


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
