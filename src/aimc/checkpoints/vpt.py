"""VPT / STEVE-1 policy files: ``.model`` (net kwargs), ``.weights`` (state dict) and safetensors.

Official layout (VPT and STEVE-1 releases)::

    2x.model                   pickle: {"model": {"args": {"net": {"args": NET_ARGS},
                                                           "pi_head_opts": {"temperature": 2.0}}}}
    rl-from-foundation-2x.weights / steve1.weights
                               torch.save of the policy's state_dict (OrderedDict of tensors)

aimc layout::

    policy.safetensors + policy.yaml   tensors + the resolved PolicyConfig

Both pickles are read without running code (``aimc.checkpoints.safe_load``). Key names:
``STEVE1Policy``'s module names equal the official keys, so the name map is the identity;
what differs in the wild are prefixes (none, ``policy.``, ``module.policy.``, ``module.``),
which are stripped on load. Saving writes the plain official layout (no prefix), which the
original ``load_weights`` reads.
"""

from __future__ import annotations

import dataclasses
import pickle
import warnings
from collections import OrderedDict
from pathlib import Path
from typing import Any

import torch

from aimc.checkpoints.keys import compare_state_dicts
from aimc.checkpoints.safe_load import InertRecord, check_readable_file, load_plain_pickle, load_torch_file
from aimc.config import ConfigError, load_config, save_config, to_dict
from aimc.errors import UserError
from aimc.models.vpt import INERT_NET_ARGS, PolicyConfig, STEVE1Policy
from aimc.utils.io import atomic_path, atomic_write_bytes

# Official key -> aimc key. Our module names are the official ones: identity.
OFFICIAL_TO_AIMC: dict[str, str] = {}
# Official keys that aimc does not use (none known so far).
IGNORED_OFFICIAL_KEYS: frozenset[str] = frozenset()
# Prefixes found in the wild, longest first: STEVE-1 training saves through DDP
# (`module.policy.`), an unwrapped agent gives `policy.`, a DDP-wrapped policy `module.`.
KNOWN_PREFIXES = ("module.policy.", "policy.", "module.")
AIMC_MODEL_KEY = "aimc"
GOAL_KEYS = ("net.mineclip_embed_linear.weight", "net.mineclip_embed_linear.bias")
FILM_KEY = "net.goal_film_in.weight"  # goal_conditioning="film" (aimc-only, never in official files)
FILM_KEYS = tuple(f"net.goal_film_{w}.{p}" for w in ("in", "out") for p in ("weight", "bias"))

WEIGHTS_SUFFIXES = (".weights", ".pt", ".pth")


class WeightsMismatchError(UserError, ValueError):
    """The weights do not fit the policy built from the given config."""


# ---- .model files --------------------------------------------------------------------


def load_model_file(path: str | Path) -> PolicyConfig:
    """Read an official ``.model`` file (safely) into a :class:`PolicyConfig`."""
    return read_model_file(path)[0]


def read_model_file(path: str | Path) -> tuple[PolicyConfig, dict[str, str]]:
    """Read a ``.model`` file -> (config, the parts it holds that the network never uses).

    Official files also carry ``extra_args`` (the action/observation spaces as ``gym3.types``
    objects, read as inert records: gym3 is never imported), a ``version``, OpenAI-internal
    factory names and reward-monitor settings; the second value names each with a short note.
    """
    path = Path(path)
    data = load_plain_pickle(path)
    try:
        args = data["model"]["args"]
        net_args = args["net"]["args"]
    except (KeyError, TypeError) as e:
        raise UserError(
            f"{path}: not a VPT .model file: expected a pickled dict with "
            '["model"]["args"]["net"]["args"] (the network kwargs); is it the right file?'
        ) from e
    if not isinstance(net_args, dict):
        raise UserError(f"{path}: ['model']['args']['net']['args'] should be a dict, found {type(net_args).__name__}")
    pi_head_opts = args.get("pi_head_opts") or {}
    # aimc settings the official format has no place for (goal size, action heads, ...);
    # written by save_model_file, ignored by the original loaders.
    extra = args.get(AIMC_MODEL_KEY) or {}
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            cfg = PolicyConfig.from_net_args(net_args, pi_head_opts, **extra)
    except (TypeError, ValueError) as e:
        raise UserError(f"{path}: unsupported network settings: {e}") from e
    for w in caught:
        warnings.warn(f"{path}: {w.message}", stacklevel=2)
    return cfg, _ignored_parts(data, args, net_args)


def _ignored_parts(data: dict, args: dict, net_args: dict) -> dict[str, str]:
    ignored: dict[str, str] = {}
    for key, value in data.items():
        if key == "model":
            continue
        if isinstance(value, dict) and any(isinstance(v, InertRecord) for v in value.values()):
            classes = sorted(_record_classes(value))
            ignored[key] = f"{', '.join(value)}: {', '.join(classes)} objects, read as inert data (never imported)"
        else:
            ignored[key] = _short(value)
    for key in sorted(k for k in data["model"] if k != "args"):
        ignored[f"model.{key}"] = _short(data["model"][key])
    for key in sorted(k for k in args["net"] if k != "args"):
        ignored[f"model.args.net.{key}"] = _short(args["net"][key])
    for key in sorted(k for k in args if k not in ("net", "pi_head_opts", AIMC_MODEL_KEY)):
        ignored[f"model.args.{key}"] = _short(args[key])
    for key in sorted(INERT_NET_ARGS & set(net_args)):
        ignored[f"model.args.net.args.{key}"] = _short(net_args[key])
    return ignored


def _record_classes(obj: Any) -> set[str]:
    if isinstance(obj, InertRecord):
        return {obj.cls} | _record_classes(obj.args) | _record_classes(obj.state)
    if isinstance(obj, dict):
        return set().union(*(_record_classes(v) for v in obj.values())) if obj else set()
    if isinstance(obj, (list, tuple)):
        return set().union(*(_record_classes(v) for v in obj)) if obj else set()
    return set()


def _short(value: Any) -> str:
    if isinstance(value, dict):
        return f"dict with keys {', '.join(map(str, list(value)[:6]))}" + (" ..." if len(value) > 6 else "")
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def save_model_file(cfg: PolicyConfig, path: str | Path) -> None:
    """Write an official ``.model`` file (plain-data pickle, protocol 4) for ``cfg``.

    The original code reads the net args and pi_head_opts; the aimc-only settings go
    under ``["model"]["args"]["aimc"]``, which it ignores.
    """
    net_args, pi_head_opts = cfg.to_net_args()
    extra = {k: v for k, v in to_dict(cfg).items() if k not in net_args and k != "temperature"}
    if cfg.recurrence_type == "lstm":
        extra["recurrence_type"] = "lstm"
    data = {"model": {"args": {"net": {"args": net_args}, "pi_head_opts": pi_head_opts, AIMC_MODEL_KEY: extra}}}
    atomic_write_bytes(Path(path), pickle.dumps(data, protocol=4))


# ---- key conversion ---------------------------------------------------------------------


def strip_prefix(sd: dict[str, Any], source: str = "state dict") -> dict[str, Any]:
    """Remove one wrapper prefix shared by every key (``module.policy.``, ``policy.``, ``module.``)."""
    for prefix in KNOWN_PREFIXES:
        if sd and all(k.startswith(prefix) for k in sd):
            return {k[len(prefix) :]: v for k, v in sd.items()}
    prefixed = sorted({p for k in sd for p in KNOWN_PREFIXES if k.startswith(p)})
    if prefixed and any(not k.startswith(prefixed[0]) for k in sd):
        odd = [k for k in sd if any(k.startswith(p) for p in KNOWN_PREFIXES)][:3]
        raise WeightsMismatchError(
            f"{source}: some keys carry a wrapper prefix ({', '.join(odd)}) and others do not; "
            "this does not look like one policy's weights"
        )
    return dict(sd)


def official_to_policy_state_dict(sd: dict[str, torch.Tensor], source: str = "state dict") -> dict[str, torch.Tensor]:
    """Official (possibly prefixed) keys -> ``STEVE1Policy`` keys."""
    sd = strip_prefix(sd, source)
    return {OFFICIAL_TO_AIMC.get(k, k): v for k, v in sd.items() if k not in IGNORED_OFFICIAL_KEYS}


def policy_state_dict_to_official(sd: dict[str, torch.Tensor]) -> "OrderedDict[str, torch.Tensor]":
    """``STEVE1Policy`` keys -> the official plain layout (no prefix, contiguous CPU tensors)."""
    back = {v: k for k, v in OFFICIAL_TO_AIMC.items()}
    return OrderedDict((back.get(k, k), v.detach().cpu().contiguous()) for k, v in sd.items())


# ---- loading ----------------------------------------------------------------------------


def _looks_like_torch_file(path: Path) -> bool:
    with open(path, "rb") as f:
        head = f.read(4)
    return head.startswith(b"PK\x03\x04") or head[:1] == b"\x80"  # a zip archive or a pickle (protocol >= 2)


def _read_tensors(path: Path) -> dict[str, torch.Tensor]:
    check_readable_file(path, "weights file")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            return load_file(str(path))
        except Exception as e:
            raise UserError(f"{path}: not a readable safetensors file ({e})") from e
    obj = load_torch_file(path)
    if isinstance(obj, dict) and "state_dict" in obj and isinstance(obj["state_dict"], dict):
        obj = obj["state_dict"]  # a training checkpoint that wraps the weights
    if not isinstance(obj, dict):
        raise UserError(f"{path}: expected a state dict (mapping of names to tensors), found {type(obj).__name__}")
    bad = [k for k, v in obj.items() if not isinstance(v, torch.Tensor)]
    if bad:
        raise UserError(
            f"{path}: refused: entries {', '.join(map(str, bad[:5]))} are not tensors (a weights file holds "
            "only tensors; nothing in it was executed)"
        )
    return obj


def _likely_cause(missing: list[str], unexpected: list[str], misshapen: list[str], sd, model_sd) -> str:
    hints = []
    if missing and set(missing) <= set(GOAL_KEYS) and not unexpected and not misshapen:
        return (
            "these look like unconditioned VPT weights loaded into a goal-conditioned STEVE-1 policy: "
            "pass allow_missing_goal=True (--allow-missing-goal) to initialise the goal layer, "
            "or set mineclip_embed_dim=0 for a plain VPT policy"
        )
    if unexpected and set(unexpected) <= set(GOAL_KEYS) and not missing:
        w = sd.get(GOAL_KEYS[0])
        dim = w.shape[1] if w is not None and w.ndim == 2 else "E"
        return f"these are goal-conditioned (STEVE-1) weights: set mineclip_embed_dim={dim}"
    hid = sd.get("net.final_ln.weight")
    if hid is not None and hid.shape != model_sd["net.final_ln.weight"].shape:
        hints.append(
            f"the weights have hidsize={hid.shape[0]} but the config {model_sd['net.final_ln.weight'].shape[0]}: "
            "wrong .model file for these weights (1x/2x/3x)?"
        )
    blocks = {k.split(".")[3] for k in sd if k.startswith("net.recurrent_layer.blocks.")}
    model_blocks = {k.split(".")[3] for k in model_sd if k.startswith("net.recurrent_layer.blocks.")}
    if blocks and len(blocks) != len(model_blocks):
        hints.append(f"the weights have {len(blocks)} recurrent blocks, the config n_recurrence_layers={len(model_blocks)}")
    if any(".r.orc_block." in k for k in sd) != any(".r.orc_block." in k for k in model_sd):
        hints.append("the recurrence type differs (transformer vs LSTM): check recurrence_type")
    heads = {k.split(".")[1] for k in sd if k.startswith("pi_head.")}
    model_heads = {k.split(".")[1] for k in model_sd if k.startswith("pi_head.")}
    if heads != model_heads:
        hints.append(f"the weights have action heads {sorted(heads)}, the config {sorted(model_heads)} (action_heads)")
    if not hints:
        hints.append("the config does not describe these weights: use the .model file they were released with")
    return "; ".join(hints)


def load_state_dict_into(
    policy: STEVE1Policy,
    sd: dict[str, torch.Tensor],
    strict: bool = True,
    allow_missing_goal: bool = False,
    source: str = "weights",
) -> list[str]:
    """Copy official-layout tensors into ``policy``; returns the keys left at their initial values.

    Strict (default): any missing, unexpected or misshapen key is an error that lists them
    and the likely cause. ``allow_missing_goal``: VPT weights into STEVE-1: the goal layer
    keeps its initialisation (and a warning says so). ``strict=False``: load what fits, warn
    about the rest.
    """
    sd = official_to_policy_state_dict(sd, source)
    model_sd = policy.state_dict()
    mismatch = compare_state_dicts(model_sd, sd)
    missing, unexpected, misshapen = mismatch.missing, mismatch.unexpected, mismatch.misshapen
    goal_only = bool(missing) and set(missing) <= set(GOAL_KEYS + FILM_KEYS) and not unexpected and not misshapen
    if mismatch:
        msg = f"{source}: the weights do not fit the policy: " + mismatch.describe()
        msg += ". Likely cause: " + _likely_cause(missing, unexpected, misshapen, sd, model_sd)
        if goal_only and allow_missing_goal:
            warnings.warn(
                f"{source}: no goal layer in these weights (unconditioned VPT); "
                "the goal layers keep their fresh initialisation and must be trained",
                stacklevel=2,
            )
        elif strict:
            raise WeightsMismatchError(msg)
        else:
            warnings.warn(msg + " (loaded the rest, strict=False)", stacklevel=2)
    bad_shapes = mismatch.misshapen_keys
    usable = {k: v for k, v in sd.items() if k in model_sd and k not in bad_shapes}
    with torch.no_grad():
        for k, v in usable.items():
            target = model_sd[k]
            target.copy_(v.to(dtype=target.dtype))
    return missing + sorted(bad_shapes)


def load_policy(
    weights_path: str | Path,
    model_path: str | Path | None = None,
    config: PolicyConfig | None = None,
    strict: bool = True,
    allow_missing_goal: bool = False,
    device: torch.device | str = "cpu",
) -> STEVE1Policy:
    """Build a policy and load weights into it.

    * official: ``weights_path`` = ``.weights``/``.pt`` plus ``model_path`` (``.model``) or ``config``;
    * aimc: ``weights_path`` = ``.safetensors``; its config comes from the sidecar
      ``<stem>.yaml`` unless ``config`` is given.
    """
    weights_path = check_readable_file(Path(weights_path), "weights file")
    if weights_path.suffix != ".safetensors" and not _looks_like_torch_file(weights_path):
        raise UserError(
            f"{weights_path}: not a weights file: expected official .weights/.pt (a PyTorch file) or aimc "
            ".safetensors; this one is neither a pickle nor a zip archive"
        )
    if config is None:
        if model_path is not None:
            config = load_model_file(model_path)
        elif weights_path.suffix == ".safetensors":
            sidecar = weights_path.with_suffix(".yaml")
            if not sidecar.is_file():
                raise UserError(f"{weights_path}: its config {sidecar.name} is missing next to it; pass config=")
            try:
                config = load_config(PolicyConfig, sidecar)
            except ConfigError as e:
                raise UserError(f"{sidecar}: {e}") from e
        else:
            raise UserError(
                f"{weights_path}: official weights need the .model file they came with "
                "(e.g. 2x.model for rl-from-foundation-2x.weights / steve1.weights): pass model_path"
            )
    sd = _read_tensors(weights_path)
    policy = STEVE1Policy(config)
    load_state_dict_into(policy, sd, strict=strict, allow_missing_goal=allow_missing_goal, source=str(weights_path))
    return policy.to(device).eval()


# ---- saving -----------------------------------------------------------------------------


def save_policy(policy: STEVE1Policy, path: str | Path, model_path: str | Path | None = None) -> Path:
    """Save by suffix: ``.weights``/``.pt``/``.pth`` = official ``torch.save`` of a plain
    OrderedDict (readable by the original code; ``model_path`` also writes the ``.model``);
    ``.safetensors`` = tensors + ``<stem>.yaml`` config. Atomic. Returns ``path``."""
    path = Path(path)
    sd = policy_state_dict_to_official(policy.state_dict())
    if path.suffix == ".safetensors":
        from safetensors.torch import save_file

        with atomic_path(path) as tmp:
            save_file(dict(sd), str(tmp), metadata={"format": "aimc-steve1-policy"})
        save_config(policy.cfg, path.with_suffix(".yaml"))
    elif path.suffix in WEIGHTS_SUFFIXES:
        with atomic_path(path) as tmp:
            torch.save(sd, tmp)
        if model_path is not None:
            save_model_file(policy.cfg, model_path)
    else:
        raise UserError(f"{path}: unknown policy format; use .weights (official) or .safetensors")
    return path


ARCHITECTURE_KEYS = (
    "hidsize", "impala_width", "impala_chans", "attention_heads", "n_recurrence_layers", "recurrence_type",
    "attention_memory_size", "timesteps", "img_shape", "temperature", "mineclip_embed_dim", "goal_conditioning",
)  # fmt: skip


def inspect_file(path: str | Path) -> dict[str, Any]:
    """Summary of a ``.model``, ``.weights``/``.pt`` or ``.safetensors`` policy file."""
    path = check_readable_file(Path(path), "policy file (.model, .weights/.pt/.pth or .safetensors)")
    if path.suffix not in (".model", ".safetensors", *WEIGHTS_SUFFIXES) and not _looks_like_torch_file(path):
        raise UserError(
            f"{path}: not a policy file: expected a VPT .model, official .weights/.pt/.pth or aimc "
            ".safetensors file (this one is neither a pickle nor a zip archive)"
        )
    if path.suffix == ".model":
        cfg, ignored = read_model_file(path)
        cfg_dict = to_dict(cfg)
        with torch.device("meta"):  # count parameters without allocating them
            n_vpt = sum(v.numel() for v in STEVE1Policy(dataclasses.replace(cfg, mineclip_embed_dim=0)).state_dict().values())
            n_goal = sum(v.numel() for v in STEVE1Policy(cfg).state_dict().values())
        net_args, pi = cfg.to_net_args()
        return {
            "file": str(path),
            "kind": "VPT .model (network kwargs)",
            "architecture": {k: cfg_dict[k] for k in ARCHITECTURE_KEYS},
            "parameters": {"vpt": n_vpt, f"steve1_with_{cfg.mineclip_embed_dim}d_goal": n_goal},
            "net_args": net_args,
            "pi_head_opts": pi,
            "ignored": ignored,
        }
    raw = _read_tensors(path)
    sd = official_to_policy_state_dict(raw, str(path))
    prefix = next((p for p in KNOWN_PREFIXES if raw and all(k.startswith(p) for k in raw)), "")
    info: dict[str, Any] = {
        "file": str(path),
        "kind": "safetensors" if path.suffix == ".safetensors" else "torch state dict",
        "key_prefix": prefix or "(none)",
        "tensors": len(sd),
        "elements": int(sum(v.numel() for v in sd.values())),
        "dtypes": sorted({str(v.dtype).replace("torch.", "") for v in sd.values()}),
        "goal_conditioned": GOAL_KEYS[0] in sd or FILM_KEY in sd,
    }
    if GOAL_KEYS[0] in sd:
        info["mineclip_embed_dim"] = int(sd[GOAL_KEYS[0]].shape[1])
    if FILM_KEY in sd:
        info["goal_conditioning"] = "film"
        info["mineclip_embed_dim"] = int(sd[FILM_KEY].shape[1])
    if "net.final_ln.weight" in sd:
        info["hidsize"] = int(sd["net.final_ln.weight"].shape[0])
    info["recurrent_blocks"] = len({k.split(".")[3] for k in sd if k.startswith("net.recurrent_layer.blocks.")})
    info["action_heads"] = {
        k.split(".")[1]: int(v.shape[0]) for k, v in sd.items() if k.startswith("pi_head.") and k.endswith("linear_layer.bias")
    }
    return info
