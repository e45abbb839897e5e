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

aimc also records which languages the text encoder was trained on (``model.langs``):
``aimc_mineclip_langs`` (a JSON list) in a safetensors file's metadata, and a top-level
``aimc_mineclip_langs`` entry beside ``state_dict`` in a ``.pth`` that aimc writes (with
``aimc_mineclip_config``; the original loader reads only ``state_dict``). An official-format
file without that entry is the official MineCLIP or something made from it: English only
(``OFFICIAL_LANGS``; its text encoder is OpenAI's CLIP with an English BPE vocabulary, trained
on English YouTube transcripts). A safetensors file from before aimc recorded languages says
nothing: ``langs`` is None (unknown).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
from collections.abc import Iterable
from dataclasses import dataclass
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
LANGS_METADATA_KEY = "aimc_mineclip_langs"
INIT_METADATA_KEY = "aimc_mineclip_init"
# The official MineCLIP's text side: OpenAI CLIP's text encoder (English BPE vocabulary, English
# captions), trained further on English YouTube transcripts. It knows English only.
OFFICIAL_LANGS = ("en",)


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


@dataclass
class MineCLIPFile:
    """What a MineCLIP checkpoint holds, read without building a model.

    state_dict: the network's tensors (``model.`` prefix removed; a safetensors file holds each
        shared tensor once). config: the architecture stored in the file (aimc files), else None
        (official ``attn.pth``). langs: languages its text encoder was trained on, None = unknown.
    langs_source: "recorded" (aimc wrote them), "official" (an official-format file without a
        record: the official MineCLIP, English only) or "unknown". format: "safetensors" or "pth".
    extra: other metadata (``init``: what the weights were fine-tuned from).
    """

    path: Path
    state_dict: dict[str, torch.Tensor]
    config: MineCLIPConfig | None
    langs: tuple[str, ...] | None
    langs_source: str
    format: str
    extra: dict


def read_mineclip_file(path: str | Path, map_location: str | torch.device = "cpu", check_md5: bool = False) -> MineCLIPFile:
    """Read ``attn.pth`` (official layout) or an aimc ``.safetensors`` safely, without a model."""
    path = check_readable_file(Path(path), "MineCLIP checkpoint (the official file is attn.pth)")
    if path.suffix == ".safetensors":
        sd, record = _read_safetensors(path)
        layout = "safetensors"
    else:
        if check_md5 and (digest := md5sum(path)) != OFFICIAL_MD5:
            raise UserError(f"{path}: MD5 {digest} differs from the official attn.pth ({OFFICIAL_MD5}); file damaged or different")
        record = load_torch_file(path, map_location=map_location)
        sd = official_to_state_dict(record, str(path))
        layout = "pth"
    langs, source = recorded_langs(record, layout == "pth", path)
    init = record.get(INIT_METADATA_KEY)
    extra = {"init": json.loads(init)} if isinstance(init, str) else {}
    return MineCLIPFile(path, sd, _config_from_json(record.get(CONFIG_METADATA_KEY), path), langs, source, layout, extra)


def recorded_langs(record: dict, official_layout: bool, path: str | Path) -> tuple[tuple[str, ...] | None, str]:
    """(languages, how that is known) from a file's metadata (safetensors) or top-level entries (.pth).

    "recorded": aimc wrote them. "official": an official-layout file without aimc's record, i.e.
    the official MineCLIP (English only). "unknown": an aimc file from before languages were recorded.
    """
    langs = _langs_from_json(record.get(LANGS_METADATA_KEY), Path(path))
    if langs is not None:
        return langs, "recorded"
    return (OFFICIAL_LANGS, "official") if official_layout else (None, "unknown")


def load_mineclip(
    path: str | Path,
    config: MineCLIPConfig | None = None,
    map_location: str | torch.device = "cpu",
    check_md5: bool = False,
) -> MineCLIP:
    """Build MineCLIP and load ``attn.pth`` (official) or an aimc ``.safetensors`` strictly.

    ``config`` defaults to the one stored in the file (aimc files), else the official model.
    ``check_md5`` verifies the official file's MD5 as STEVE-1 does. Returns the model in eval
    mode, with ``model.langs`` set from the file (see the module docstring).
    """
    f = read_mineclip_file(path, map_location, check_md5)
    model = MineCLIP(config or f.config or MineCLIPConfig.official())
    load_state_dict_strict(model, f.state_dict, str(f.path))
    model.langs = f.langs
    return model.eval()


def _read_safetensors(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            sd = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as e:  # safetensors raises its own error types
        raise UserError(f"{path}: not a readable safetensors file ({e})") from e
    if meta.get("format") not in (None, "aimc-mineclip") or not any(k.startswith("image_encoder.") for k in sd):
        raise UserError(
            f"{path}: not a MineCLIP checkpoint (format {meta.get('format', 'unknown')!r}, keys e.g. "
            f"{list_keys(sorted(sd)[:3])}); a MineCLIP .safetensors is written by aimc mineclip train"
        )
    return sd, meta


def _config_from_json(raw: object, path: Path) -> MineCLIPConfig | None:
    if raw is None:
        return None
    try:
        fields = json.loads(raw) if isinstance(raw, str) else dict(raw)  # type: ignore[arg-type]
        return MineCLIPConfig(**fields)
    except (TypeError, ValueError) as e:
        raise UserError(f"{path}: its stored MineCLIP config ({CONFIG_METADATA_KEY}) is not valid: {e}") from e


def _langs_from_json(raw: object, path: Path) -> tuple[str, ...] | None:
    if raw is None:
        return None
    langs = json.loads(raw) if isinstance(raw, str) else raw
    if not isinstance(langs, (list, tuple)) or not all(isinstance(x, str) and x for x in langs):
        raise UserError(f"{path}: its language record ({LANGS_METADATA_KEY}) is not a list of language codes: {raw!r}")
    return tuple(langs)


# Fields a state dict's shapes determine; the others (frame size, head counts, the square grid
# a fresh model starts from) are not in the tensors.
SHAPE_FIELDS = ("patch_size", "vision_width", "vision_layers", "embed_dim", "text_width", "text_layers", "context_length",
                "vocab_size", "pool_depth", "pool_ff_mult", "video_seq_len", "video_adapter_layers", "text_adapter_layers")


def config_from_state_dict(sd: dict[str, torch.Tensor], source: str, given: dict | None = None) -> MineCLIPConfig:
    """The architecture of an official-layout state dict (``attn.pth`` stores no config).

    Sizes and depths come from the tensors' shapes; a ``given`` field that contradicts them is
    a :class:`ConfigError`. What the shapes cannot tell comes from ``given``, else from the
    original's rules: the frame size (the official 160x256 when the patch count fits), head
    counts (width / 64, temporal heads of 64 channels), the base grid (CLIP's 224).
    """
    from aimc.errors import ConfigError

    given = dict(given or {})

    def tensor(*names: str) -> torch.Tensor:
        for n in names:
            if n in sd:
                return sd[n]
        raise CheckpointMismatchError(f"{source}: no {names[0]!r}; this is not a MineCLIP state dict")

    def count(prefix: str) -> int:
        pat = re.compile(re.escape(prefix) + r"(\d+)\.")
        return len({m.group(1) for k in sd if (m := pat.match(k))})

    text = ("clip_model.text_model.", "reward_head.clip_model.text_model.")
    conv = tensor("image_encoder.conv1.weight", "clip_model.vision_model.conv1.weight")
    vision_width, patch = int(conv.shape[0]), int(conv.shape[2])
    tokens = int(tensor("image_encoder.pos_embed").shape[0]) - 1
    tok_emb = tensor(*(t + "token_embedding.weight" for t in text))
    pool_prefix = "temporal_encoder.attn.model.attn_layers.layers."
    pool_layers = count(pool_prefix)
    if pool_layers == 0 or pool_layers % 2:
        raise CheckpointMismatchError(f"{source}: the temporal pooling has {pool_layers} layers, expected attention/feed-forward pairs")
    embed_dim = int(tensor("image_encoder.projection").shape[1])
    inner = int(tensor(pool_prefix + "0.1.to_q.weight").shape[0])
    derived = {
        "patch_size": patch,
        "vision_width": vision_width,
        "vision_layers": count("image_encoder.blocks."),
        "embed_dim": embed_dim,
        "text_width": int(tok_emb.shape[1]),
        "text_layers": max(count(t + "blocks.") for t in text),
        "context_length": int(tensor(*(t + "pos_embed" for t in text)).shape[0]),
        "vocab_size": int(tok_emb.shape[0]),
        "pool_depth": pool_layers // 2,
        "pool_ff_mult": int(tensor(pool_prefix + "1.1.net.0.proj.weight").shape[0]) // (2 * embed_dim),
        "video_seq_len": int(tensor("temporal_encoder.attn.model.pos_emb.emb.weight").shape[0]),
        "video_adapter_layers": sum(1 for k in sd if k.startswith("reward_head.video_adapter.") and k.endswith(".weight")),
        "text_adapter_layers": sum(1 for k in sd if k.startswith("reward_head.text_adapter.") and k.endswith(".weight")),
    }
    wrong = [f"{k}={given[k]!r} (the file has {v})" for k, v in derived.items() if k in given and _differs(given[k], v)]
    if wrong:
        raise ConfigError(
            f"{source} fixes the model's architecture, and the config contradicts it: model.{', model.'.join(wrong)}. "
            "Remove those settings: with init the sizes come from the file"
        )
    official = MineCLIPConfig.official()
    if "resolution" in given:
        resolution = tuple(int(r) for r in given["resolution"])
        if len(resolution) != 2 or (resolution[0] // patch) * (resolution[1] // patch) != tokens or resolution[0] % patch or resolution[1] % patch:
            raise ConfigError(
                f"model.resolution={list(resolution)} does not fit {source}: its ViT has {tokens} patches of {patch}x{patch} "
                f"pixels, so height/{patch} x width/{patch} must be {tokens}"
            )
    elif (official.resolution[0] // patch) * (official.resolution[1] // patch) == tokens and not official.resolution[0] % patch:
        resolution = official.resolution
    else:
        raise ConfigError(
            f"{source}: an official-format file does not store its frame size, and its ViT has {tokens} patches of "
            f"{patch}x{patch} pixels (not the official 160x256 layout); set model.resolution=[HEIGHT,WIDTH] with "
            f"HEIGHT/{patch} x WIDTH/{patch} = {tokens}"
        )
    if "pool_dim_head" in given:
        pool_dim_head = int(given["pool_dim_head"])
    elif "pool_heads" in given:
        pool_dim_head = inner // max(1, int(given["pool_heads"]))
    else:
        pool_dim_head = 64 if inner % 64 == 0 else inner  # the original's heads are 64 channels wide
    fields = {
        **derived,
        "resolution": resolution,
        "vision_heads": int(given.get("vision_heads", max(1, vision_width // 64))),
        "text_heads": int(given.get("text_heads", max(1, derived["text_width"] // 64))),
        "pool_dim_head": pool_dim_head,
        "pool_heads": int(given.get("pool_heads", max(1, inner // pool_dim_head))),
        "base_image_resolution": int(given.get("base_image_resolution",
                                               official.base_image_resolution if official.base_image_resolution % patch == 0 else resolution[0])),
    }
    if fields["pool_heads"] * fields["pool_dim_head"] != inner:
        raise ConfigError(
            f"{source}: the temporal attention is {inner} channels wide; model.pool_heads x model.pool_dim_head "
            f"({fields['pool_heads']} x {fields['pool_dim_head']}) must equal it"
        )
    unknown = sorted(set(given) - set(fields))
    if unknown:
        raise ConfigError(f"model.{unknown[0]} is not a MineCLIPConfig field; fields: {', '.join(sorted(fields))}")
    return MineCLIPConfig(**fields)


def _differs(a: object, b: object) -> bool:
    if isinstance(a, (list, tuple)) or isinstance(b, (list, tuple)):
        return [int(x) for x in a] != [int(x) for x in b]  # type: ignore[union-attr]
    return a != b


def check_config_matches(stored: MineCLIPConfig, given: dict, source: str) -> None:
    """``given`` (config overrides) must agree with the architecture stored in ``source``."""
    from aimc.errors import ConfigError

    fields = dataclasses.asdict(stored)
    unknown = sorted(set(given) - set(fields))
    if unknown:
        raise ConfigError(f"model.{unknown[0]} is not a MineCLIPConfig field; fields: {', '.join(sorted(fields))}")
    wrong = [f"{k}={given[k]!r} (the file has {fields[k]!r})" for k in sorted(given) if _differs(given[k], fields[k])]
    if wrong:
        raise ConfigError(
            f"{source} fixes the model's architecture, and the config contradicts it: model.{', model.'.join(wrong)}. "
            "Remove those settings: with init the architecture comes from the file"
        )


def save_mineclip(model: MineCLIP, path: str | Path, init: dict | None = None) -> Path:
    """Save by suffix: ``.safetensors`` (deduplicated + config) or ``.pth``/``.pt`` (official).

    Both record the config, ``model.langs`` (when known) and ``init`` (what the weights were
    fine-tuned from, e.g. ``{"path": ..., "md5": ...}``); a ``.pth`` keeps them beside
    ``state_dict``, where MineCLIP's own ``load_ckpt`` does not look.
    """
    path = Path(path)
    langs = getattr(model, "langs", None)
    if path.suffix == ".safetensors":
        aliases = alias_map(model)
        sd = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items() if k not in aliases}
        meta = {CONFIG_METADATA_KEY: json.dumps(dataclasses.asdict(model.cfg)), "format": "aimc-mineclip"}
        if langs is not None:
            meta[LANGS_METADATA_KEY] = json.dumps(list(langs))
        if init:
            meta[INIT_METADATA_KEY] = json.dumps(init)
        with atomic_path(path) as tmp:
            save_file(sd, str(tmp), metadata=meta)
    elif path.suffix in (".pth", ".pt"):
        # state_dict() returns the shared tensors themselves, so torch.save stores each once.
        ckpt: dict = {"state_dict": model.state_dict(prefix=PREFIX)}
        ckpt[CONFIG_METADATA_KEY] = json.dumps(dataclasses.asdict(model.cfg))
        if langs is not None:
            ckpt[LANGS_METADATA_KEY] = list(langs)
        if init:
            ckpt[INIT_METADATA_KEY] = json.dumps(init)
        with atomic_path(path) as tmp:
            torch.save(ckpt, tmp)
    else:
        raise UserError(f"{path}: unknown checkpoint suffix; use .pth (official attn.pth format) or .safetensors")
    return path


# ---------------------------------------------------------------------------------------
# Languages
# ---------------------------------------------------------------------------------------

LANG_NAMES = {"en": "English", "zh": "Chinese"}


def guess_lang(text: str) -> str:
    """``zh`` for text with CJK ideographs, else ``en`` (the two languages aimc's data uses)."""
    return "zh" if any("\u4e00" <= c <= "\u9fff" or "\u3400" <= c <= "\u4dbf" for c in text) else "en"


def check_lang_code(code: str, what: str = "language") -> str:
    """A language code such as ``en``, ``zh`` or ``zh-Hans``; anything else is a clear error."""
    if not isinstance(code, str) or not re.fullmatch(r"[A-Za-z]{2,3}(-[A-Za-z0-9]{2,8})*", code):
        raise UserError(f"{what} {code!r} is not a language code such as en or zh")
    return code


def describe_langs(langs: Iterable[str] | None) -> str:
    """``English (en)`` / ``English (en) and Chinese (zh)`` / ``unknown``."""
    if langs is None:
        return "unknown languages"
    names = [f"{LANG_NAMES[x]} ({x})" if x in LANG_NAMES else x for x in langs]
    return " and ".join(names) if len(names) <= 2 else ", ".join(names[:-1]) + " and " + names[-1]


def language_warning(asked: Iterable[str], model_langs: Iterable[str] | None, what: str = "phrasings") -> str | None:
    """A warning when text in ``asked`` languages goes to an embedder that never learned them.

    None when the embedder's languages are unknown or cover ``asked``.
    """
    if model_langs is None:
        return None
    model_langs = tuple(model_langs)
    missing = sorted(set(asked) - set(model_langs))
    if not missing:
        return None
    return (
        f"the MineCLIP embedder was trained on {describe_langs(model_langs)} text only, so {describe_langs(missing)} "
        f"{what} will be poorly understood (its text encoder never learned them). Use "
        f"{'/'.join(model_langs)} {what}, or teach it: aimc mineclip train --init EMBEDDER --store STORE with "
        f"{'/'.join(missing)} captions (docs/mineclip.md, fine-tuning)"
    )


__all__ = [
    "load_mineclip",
    "read_mineclip_file",
    "config_from_state_dict",
    "check_config_matches",
    "MineCLIPFile",
    "OFFICIAL_LANGS",
    "guess_lang",
    "check_lang_code",
    "describe_langs",
    "language_warning",
    "save_mineclip",
    "official_to_state_dict",
    "load_state_dict_strict",
    "alias_map",
    "md5sum",
    "CheckpointMismatchError",
    "OFFICIAL_MD5",
]
