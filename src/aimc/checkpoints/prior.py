"""STEVE-1 prior ``steve1_prior.pt``: load strictly and safely, save in the same format or as safetensors.

Official format: ``torch.save(model.state_dict())``, a flat name -> tensor dict with the
keys ``encoder.{0,1,3,4,6}.{weight,bias}`` and ``decoder.{0,1,3,4,6}.{weight,bias}``; no
prefix, no wrapper. A ``torch.compile``'d model's ``_orig_mod.`` prefix is removed (the
original trainer unwraps it before saving; aimc accepts files where it was not).

Sizes are read from the tensors when no config is given (``encoder.0.weight`` is
(hidden, 2*input), ``encoder.6.weight`` is (2*latent, hidden)), so a retrained prior of
another size loads without flags. ``.safetensors`` files carry the config in metadata.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from aimc.checkpoints.keys import compare_state_dicts
from aimc.checkpoints.safe_load import check_readable_file, load_torch_file
from aimc.errors import UserError
from aimc.models.prior import PriorConfig, PriorCVAE
from aimc.utils.io import atomic_path

CONFIG_METADATA_KEY = "aimc_prior_config"
_COMPILE_PREFIX = "_orig_mod."


class PriorCheckpointError(UserError):
    """The file is not a prior state dict, or does not fit the config."""


def _flat_state_dict(obj: object, source: str) -> dict[str, torch.Tensor]:
    if isinstance(obj, dict) and "state_dict" in obj and isinstance(obj["state_dict"], dict):
        obj = obj["state_dict"]  # tolerate a wrapped dict
    if not isinstance(obj, dict) or not all(isinstance(k, str) for k in obj):
        raise PriorCheckpointError(f"{source}: expected a flat name -> tensor dict (steve1_prior.pt), got {type(obj).__name__}")
    sd = {}
    for k, v in obj.items():
        if not isinstance(v, torch.Tensor):
            raise PriorCheckpointError(f"{source}: entry {k!r} is a {type(v).__name__}, not a tensor")
        sd[k[len(_COMPILE_PREFIX):] if k.startswith(_COMPILE_PREFIX) else k] = v
    return sd


def config_from_state_dict(sd: dict[str, torch.Tensor], source: str = "checkpoint") -> PriorConfig:
    """Infer input/hidden/latent sizes from the tensors."""
    try:
        hidden, two_input = sd["encoder.0.weight"].shape
        two_latent = sd["encoder.6.weight"].shape[0]
    except (KeyError, ValueError) as e:
        raise PriorCheckpointError(
            f"{source}: missing or malformed encoder.0.weight / encoder.6.weight ({e}); keys found: "
            f"{', '.join(sorted(sd)[:8])}. Is this a STEVE-1 prior (steve1_prior.pt)?"
        ) from e
    return PriorConfig(input_dim=int(two_input) // 2, hidden_dim=int(hidden), latent_dim=int(two_latent) // 2)


def load_state_dict_strict(model: PriorCVAE, sd: dict[str, torch.Tensor], source: str) -> None:
    mismatch = compare_state_dicts(model.state_dict(), sd)
    if mismatch:
        raise PriorCheckpointError(f"{source} does not fit PriorCVAE({model.cfg}): " + mismatch.describe())
    model.load_state_dict(sd, strict=True)


def load_prior(path: str | Path, config: PriorConfig | None = None, map_location: str | torch.device = "cpu") -> PriorCVAE:
    """Load ``steve1_prior.pt`` (or an aimc ``.safetensors``) strictly; returns the prior in eval mode."""
    path = check_readable_file(Path(path), "prior checkpoint (the official file is steve1_prior.pt)")
    stored_cfg = None
    if path.suffix == ".safetensors":
        try:
            with safe_open(str(path), framework="pt") as f:
                meta = f.metadata() or {}
                sd = {k: f.get_tensor(k) for k in f.keys()}
        except Exception as e:
            raise PriorCheckpointError(f"{path}: not a readable safetensors file ({e})") from e
        if CONFIG_METADATA_KEY in meta:
            stored_cfg = PriorConfig(**json.loads(meta[CONFIG_METADATA_KEY]))
    else:
        sd = _flat_state_dict(load_torch_file(path, map_location=map_location), str(path))
    cfg = config or stored_cfg or config_from_state_dict(sd, str(path))
    model = PriorCVAE(cfg)
    load_state_dict_strict(model, sd, str(path))
    return model.eval()


def save_prior(model: PriorCVAE, path: str | Path) -> Path:
    """Save by suffix: ``.pt``/``.pth`` (official flat state dict) or ``.safetensors`` (+ config)."""
    path = Path(path)
    sd = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    with atomic_path(path) as tmp:
        if path.suffix == ".safetensors":
            save_file(sd, str(tmp), metadata={CONFIG_METADATA_KEY: json.dumps(dataclasses.asdict(model.cfg)), "format": "aimc-prior"})
        elif path.suffix in (".pt", ".pth"):
            torch.save(sd, tmp)
        else:
            raise PriorCheckpointError(f"{path}: unknown suffix; use .pt (official steve1_prior.pt format) or .safetensors")
    return path


__all__ = ["load_prior", "save_prior", "config_from_state_dict", "PriorCheckpointError"]
