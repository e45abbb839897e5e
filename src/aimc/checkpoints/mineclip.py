"""MineCLIP ``attn.pth``: load strictly and safely, save in the same format or as safetensors.

Official format (``torch.save``): ``{"state_dict": {"model." + key: tensor, ...}, ...}``.
Only ``model.``-prefixed keys belong to the network (a training framework may have stored
more beside them; those are ignored, as the original loader does). The network's own key
names are used unchanged by :class:`aimc.models.mineclip.MineCLIP`, so there is no name map;
the one twist is aliasing: ``image_encoder.*`` and ``clip_model.vision_model.*`` (and
``reward_head.clip_model.*`` and ``clip_model.*``) are the same tensors, all listed.

* ``.pth``/``.pt``: the official layout, each shared tensor stored once (torch keeps
  storage sharing), readable by the original ``load_ckpt(strict=True)``.
* ``.safetensors``: one key per distinct tensor (the first alias), plus the config in the
  metadata (``aimc_mineclip_config``, JSON), so the file alone rebuilds the model.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from aimc.checkpoints.keys import compare_state_dicts, list_keys
from aimc.checkpoints.safe_load import check_readable_file, load_torch_file
from aimc.errors import UserError
from aimc.models.mineclip import MineCLIP, MineCLIPConfig
from aimc.utils.io import atomic_path

PREFIX = "model."
OFFICIAL_MD5 = "b5ece9198337cfd117a3bfbd921e56da"  # attn.pth as STEVE-1 checks it
CONFIG_METADATA_KEY = "aimc_mineclip_config"


class CheckpointMismatchError(UserError):
    """The file's keys or shapes do not fit the model built from the config."""


def md5sum(path: str | Path) -> str:
    h = hashlib.md5()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def official_to_state_dict(ckpt: object, source: str = "checkpoint") -> dict[str, torch.Tensor]:
    """``{"state_dict": {"model.x": t}}`` (or a bare ``{"model.x": t}``) -> ``{"x": t}``."""
    if not isinstance(ckpt, dict):
        raise UserError(f"{source}: expected a dict with a 'state_dict' entry (MineCLIP attn.pth), got {type(ckpt).__name__}")
    sd = ckpt.get("state_dict", ckpt)
    if not isinstance(sd, dict):
        raise UserError(f"{source}: 'state_dict' is a {type(sd).__name__}, expected a dict of tensors")
    out = {k[len(PREFIX):]: v for k, v in sd.items() if isinstance(k, str) and k.startswith(PREFIX)}
    if not out:
        raise UserError(
            f"{source}: no keys start with '{PREFIX}' (found e.g. {list_keys(sorted(map(str, sd))[:3])}); "
            "this is not a MineCLIP attn.pth checkpoint"
        )
    for k, v in out.items():
        if not isinstance(v, torch.Tensor):
            raise UserError(f"{source}: entry '{PREFIX}{k}' is a {type(v).__name__}, not a tensor")
    return out


def load_state_dict_strict(model: MineCLIP, sd: dict[str, torch.Tensor], source: str) -> None:
    """Strict load with an error that lists missing / unexpected keys and shape mismatches.

    Alias keys missing from ``sd`` (e.g. a safetensors file stores each tensor once) are
    filled from the key they alias, so both full and deduplicated dicts load.
    """
    own = model.state_dict()
    sd = dict(sd)
    for alias, first in alias_map(model).items():
        if alias not in sd and first in sd:
            sd[alias] = sd[first]
    mismatch = compare_state_dicts(own, sd)
    if mismatch:
        raise CheckpointMismatchError(
            f"{source} does not fit MineCLIP({model.cfg}): " + mismatch.describe()
            + ". Check that the config matches the checkpoint (MineCLIPConfig.official() for attn.pth)."
        )
    model.load_state_dict(sd, strict=True)


def alias_map(model: torch.nn.Module) -> dict[str, str]:
    """Every state-dict key that shares its tensor with an earlier key -> that earlier key."""
    first: dict[int, str] = {}
    out: dict[str, str] = {}
    for k, v in model.state_dict(keep_vars=True).items():
        ident = id(v)
        if ident in first:
            out[k] = first[ident]
        else:
            first[ident] = k
    return out


def load_mineclip(
    path: str | Path,
    config: MineCLIPConfig | None = None,
    map_location: str | torch.device = "cpu",
    check_md5: bool = False,
) -> MineCLIP:
    """Build MineCLIP and load ``attn.pth`` (official) or an aimc ``.safetensors`` strictly.

    ``config`` defaults to the one stored in a safetensors file, else the official model.
    ``check_md5`` verifies the official file's MD5 as STEVE-1 does. Returns the model in eval mode.
    """
    path = check_readable_file(Path(path), "MineCLIP checkpoint (the official file is attn.pth)")
    if path.suffix == ".safetensors":
        sd, stored_cfg = _read_safetensors(path)
        config = config or stored_cfg
    else:
        if check_md5 and (digest := md5sum(path)) != OFFICIAL_MD5:
            raise UserError(f"{path}: MD5 {digest} differs from the official attn.pth ({OFFICIAL_MD5}); file damaged or different")
        sd = official_to_state_dict(load_torch_file(path, map_location=map_location), str(path))
    model = MineCLIP(config or MineCLIPConfig.official())
    load_state_dict_strict(model, sd, str(path))
    return model.eval()


def _read_safetensors(path: Path) -> tuple[dict[str, torch.Tensor], MineCLIPConfig | None]:
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            sd = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as e:  # safetensors raises its own error types
        raise UserError(f"{path}: not a readable safetensors file ({e})") from e
    cfg = None
    if CONFIG_METADATA_KEY in meta:
        cfg = MineCLIPConfig(**json.loads(meta[CONFIG_METADATA_KEY]))
    return sd, cfg


def save_mineclip(model: MineCLIP, path: str | Path) -> Path:
    """Save by suffix: ``.safetensors`` (deduplicated + config) or ``.pth``/``.pt`` (official)."""
    path = Path(path)
    if path.suffix == ".safetensors":
        aliases = alias_map(model)
        sd = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items() if k not in aliases}
        meta = {CONFIG_METADATA_KEY: json.dumps(dataclasses.asdict(model.cfg)), "format": "aimc-mineclip"}
        with atomic_path(path) as tmp:
            save_file(sd, str(tmp), metadata=meta)
    elif path.suffix in (".pth", ".pt"):
        # state_dict() returns the shared tensors themselves, so torch.save stores each once.
        ckpt = {"state_dict": model.state_dict(prefix=PREFIX)}
        with atomic_path(path) as tmp:
            torch.save(ckpt, tmp)
    else:
        raise UserError(f"{path}: unknown checkpoint suffix; use .pth (official attn.pth format) or .safetensors")
    return path


__all__ = [
    "load_mineclip",
    "save_mineclip",
    "official_to_state_dict",
    "load_state_dict_strict",
    "alias_map",
    "md5sum",
    "CheckpointMismatchError",
    "OFFICIAL_MD5",
]
