"""``aimc checkpoint ...`` and ``aimc mineclip inspect|embed-text|convert``: look into, use and convert checkpoint files.

(``aimc mineclip train`` and ``aimc prior train`` are training commands: ``aimc.train.embedder_commands``.)
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from aimc.errors import UserError


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


def _embed_text(args: argparse.Namespace) -> int:
    import numpy as np
    import torch

    from aimc.checkpoints.mineclip import guess_lang, language_warning, load_mineclip

    model = load_mineclip(args.weights).to(args.device)
    if warning := language_warning({guess_lang(p) for p in args.prompts}, model.langs, "prompts"):
        print(f"warning: {warning}", file=sys.stderr)
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


def _inspect_mineclip(args: argparse.Namespace) -> int:
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
        if "aimc_mineclip_config" in meta:
            info.update(_mineclip_langs(meta, False, path))
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
            if "aimc_mineclip_config" in obj:
                info["config"] = json.loads(obj["aimc_mineclip_config"])
            info.update(_mineclip_langs(obj, True, path))
        else:
            from aimc.checkpoints.prior import config_from_state_dict

            sd = {k.removeprefix("_orig_mod."): v for k, v in obj.items()}
            info = {"format": "STEVE-1 prior (steve1_prior.pt)", "keys": len(sd),
                    "parameters": int(sum(v.numel() for v in sd.values())),
                    "config": vars(config_from_state_dict(sd, str(path)))}
    info["md5"] = md5sum(path)
    print(json.dumps(info, indent=1))
    return 0


def _mineclip_langs(record: dict, official_layout: bool, path: Path) -> dict:
    """The languages a MineCLIP file was trained on, how that is known, and what it was fine-tuned from."""
    from aimc.checkpoints.mineclip import INIT_METADATA_KEY, recorded_langs

    langs, source = recorded_langs(record, official_layout, path)
    why = {
        "recorded": "recorded by aimc when it trained the model",
        "official": "official-format file without aimc's record: the official MineCLIP, English only "
                    "(OpenAI CLIP text encoder, English captions)",
        "unknown": "not recorded (written before aimc recorded languages)",
    }[source]
    out = {"languages": list(langs) if langs is not None else None, "languages_source": why}
    if isinstance(record.get(INIT_METADATA_KEY), str):
        out["fine_tuned_from"] = json.loads(record[INIT_METADATA_KEY])
    return out


def _convert_mineclip(args: argparse.Namespace) -> int:
    from aimc.checkpoints.mineclip import describe_langs, load_mineclip, md5sum, save_mineclip
    from aimc.models.mineclip import MineCLIPConfig

    src, dst = Path(args.input), Path(args.output)
    if src.resolve() == dst.resolve():
        raise UserError(f"{dst}: output is the input file; name another file")
    model = load_mineclip(src)
    save_mineclip(model, dst)
    print(f"wrote {dst} (MineCLIP {'official' if model.cfg == MineCLIPConfig.official() else 'custom'} architecture, "
          f"languages: {describe_langs(model.langs)}, md5 {md5sum(dst)})")
    return 0


def _numel(shape: tuple[int, ...]) -> int:
    n = 1
    for s in shape:
        n *= s
    return n


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

    cli.group("mineclip", help="MineCLIP: train or fine-tune, embed text, inspect and convert checkpoints")
    p = cli.command("mineclip embed-text", help="embed prompts with MineCLIP (optionally through the prior)", run=_embed_text)
    p.add_argument("prompts", nargs="+", help="one or more prompts")
    p.add_argument("--weights", required=True, help="MineCLIP checkpoint (official attn.pth or aimc .safetensors)")
    p.add_argument("--prior", default=None, help="prior checkpoint (steve1_prior.pt); output visual goals instead")
    p.add_argument("--deterministic", action="store_true", help="with --prior: decode the prior mean (z = 0) instead of a sample")
    p.add_argument("--seed", type=int, default=None, help="with --prior: seed the latent sample")
    p.add_argument("--out", default=None, help="write the (T, D) float32 array to this .npy file (default: print a summary)")
    p.add_argument("--device", default="cpu", help="cpu, cuda, ... (default cpu)")

    p = cli.command("mineclip convert", help="write a MineCLIP checkpoint in the other format (.safetensors <-> official .pth)",
                    run=_convert_mineclip)
    p.add_argument("input", help="attn.pth or an aimc .safetensors (e.g. RUN/mineclip.safetensors)")
    p.add_argument("output", help="output file; the suffix picks the format (.pth: official attn.pth layout, or .safetensors)")

    p = cli.command("mineclip inspect", help="show a MineCLIP or prior checkpoint's format, sizes, languages and checksum", run=_inspect_mineclip)
    p.add_argument("checkpoint", help="attn.pth, steve1_prior.pt or an aimc .safetensors")
