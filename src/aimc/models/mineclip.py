"""MineCLIP: the video-text model whose embedding space STEVE-1's goals live in.

Built up from its parts: a CLIP ViT encodes each frame, a small transformer pools 16
frames over time into one video embedding, a CLIP text transformer encodes prompts, and a
reward head (video adapter + logit scale) scores video against text. Every size is a
field of :class:`MineCLIPConfig`; ``MineCLIPConfig.official()`` is the configuration
STEVE-1 loads from ``attn.pth`` (ViT-B/16 at 160x256, pooling ``attn.d2.nh8.glusw``).

Module names reproduce the original state-dict keys exactly, including its two aliases:
``image_encoder`` *is* ``clip_model.vision_model`` and ``reward_head.clip_model`` *is*
``clip_model``, so ``state_dict()`` lists those tensors under several keys (788 keys, 334
tensors for the official model) and a strict load of ``attn.pth`` needs them all.

Shapes: B batch, L frames per clip (16 in STEVE-1), D = ``embed_dim`` (512), N frames of
an episode, H/W image size (160/256), T texts.

The fast path for whole episodes, :func:`embed_episode`, runs the ViT once per frame and
pools every stride-1 16-frame window from those cached features (the original recomputed
each frame's ViT 16 times).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from torch import nn

from aimc.errors import ConfigError
from aimc.utils.device import autocast
# MineCLIP's pixel statistics (RGB), applied after scaling to [0, 1].
MC_IMAGE_MEAN = (0.3331, 0.3245, 0.3051)
MC_IMAGE_STD = (0.2439, 0.2493, 0.2873)
WINDOW = 16  # frames per STEVE-1 goal window
NONE_EMBED_OFFSET = WINDOW - 1  # the first 15 frames of an episode have no embedding


# ---------------------------------------------------------------------------------------
# Configuration
# ---------------------------------------------------------------------------------------


@dataclass
class MineCLIPConfig:
    """Every size of MineCLIP. Defaults are the official STEVE-1 model (``attn.pth``).

    Fields:
        resolution: (H, W) of the frames the model takes; each must divide by ``patch_size``.
        patch_size: ViT patch (conv kernel = stride).
        vision_width: ViT token width.
        vision_layers: ViT residual blocks.
        vision_heads: ViT attention heads (the original uses ``vision_width // 64``).
        base_image_resolution: square resolution whose positional grid is created at init and
            bicubic-resized to ``resolution`` (CLIP's 224); only affects fresh models.
        embed_dim: joint embedding size D (image projection, text projection, pooling width).
        text_width, text_layers, text_heads: CLIP text transformer sizes.
        context_length: text tokens per row (77; positions are all used, input must be this long).
        vocab_size: text vocabulary (49408 for the CLIP BPE).
        pool_depth: temporal transformer depth K (pairs of attention + feed-forward).
        pool_heads: temporal attention heads H.
        pool_dim_head: temporal per-head width (64; inner width = heads * dim_head).
        pool_ff_mult: temporal GLU feed-forward expansion.
        video_seq_len: longest clip the temporal positional table holds (32).
        video_adapter_layers: reward-head video MLP depth (0 = identity, no residual weight).
        text_adapter_layers: reward-head text MLP depth (0 = identity).
    """

    resolution: tuple[int, int] = (160, 256)
    patch_size: int = 16
    vision_width: int = 768
    vision_layers: int = 12
    vision_heads: int = 12
    base_image_resolution: int = 224
    embed_dim: int = 512
    text_width: int = 512
    text_layers: int = 12
    text_heads: int = 8
    context_length: int = 77
    vocab_size: int = 49408
    pool_depth: int = 2
    pool_heads: int = 8
    pool_dim_head: int = 64
    pool_ff_mult: int = 4
    video_seq_len: int = 32
    video_adapter_layers: int = 2
    text_adapter_layers: int = 0

    def __post_init__(self) -> None:
        self.resolution = tuple(int(r) for r in self.resolution)  # type: ignore[assignment]
        if len(self.resolution) != 2:
            raise ConfigError(f"MineCLIPConfig.resolution must be (height, width), got {self.resolution}")
        for r in self.resolution:
            if r <= 0 or r % self.patch_size:
                raise ConfigError(f"MineCLIPConfig.resolution {self.resolution} must be positive multiples of patch_size {self.patch_size}")
        if self.base_image_resolution % self.patch_size:
            raise ConfigError(f"MineCLIPConfig.base_image_resolution {self.base_image_resolution} is not a multiple of patch_size")
        for name in ("patch_size", "vision_width", "vision_heads", "embed_dim", "text_width", "text_heads",
                     "context_length", "vocab_size", "pool_heads", "pool_dim_head", "pool_ff_mult", "video_seq_len"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"MineCLIPConfig.{name} must be positive, got {getattr(self, name)}")
        for name in ("vision_layers", "text_layers", "pool_depth", "video_adapter_layers", "text_adapter_layers"):
            if getattr(self, name) < 0:
                raise ConfigError(f"MineCLIPConfig.{name} must be >= 0, got {getattr(self, name)}")
        if self.vision_width % self.vision_heads:
            raise ConfigError(f"MineCLIPConfig.vision_width {self.vision_width} must divide by vision_heads {self.vision_heads}")
        if self.text_width % self.text_heads:
            raise ConfigError(f"MineCLIPConfig.text_width {self.text_width} must divide by text_heads {self.text_heads}")

    @property
    def grid(self) -> tuple[int, int]:
        return self.resolution[0] // self.patch_size, self.resolution[1] // self.patch_size

    @classmethod
    def official(cls) -> MineCLIPConfig:
        """The model STEVE-1 loads: ``MineCLIP(arch="vit_base_p16_fz.v2.t2", pool_type="attn.d2.nh8.glusw",
        mlp_adapter_spec="v0-2.t0", resolution=[160, 256], hidden_dim=512, image_feature_dim=512)``."""
        return cls()

    @classmethod
    def from_original(cls, constructor_kwargs: dict, clip_config: dict | None = None, video_seq_len: int = 32) -> MineCLIPConfig:
        """Translate the original ``MineCLIP(**kwargs)`` arguments (+ its CLIP size dict) to a config.

        ``clip_config`` defaults to the dict the original hard-codes (ViT-B/16, 512-d text).
        """
        clip = dict(
            context_length=77, embed_dim=512, image_resolution=224, text_heads=8, text_layers=12,
            text_width=512, vision_layers=12, vision_patch_size=16, vision_width=768, vocab_size=49408,
        )
        clip.update(clip_config or {})
        pool = re.fullmatch(r"attn\.d(\d+)\.nh(\d+)\.glusw", constructor_kwargs.get("pool_type", ""))
        if pool is None:
            raise ValueError(f"pool_type {constructor_kwargs.get('pool_type')!r}: only 'attn.dK.nhH.glusw' is supported")
        adapters = re.fullmatch(r"v(\d+)-(\d+)\.t(\d+)", constructor_kwargs.get("mlp_adapter_spec", ""))
        if adapters is None:
            raise ValueError(f"mlp_adapter_spec {constructor_kwargs.get('mlp_adapter_spec')!r} is not like 'v0-2.t0'")
        if int(adapters.group(1)) != 0:
            raise ValueError("per-frame image adapters (mlp_adapter_spec 'vN-..' with N > 0) are not supported")
        embed = int(clip["embed_dim"])
        for key in ("hidden_dim", "image_feature_dim"):
            if key in constructor_kwargs and int(constructor_kwargs[key]) != embed:
                raise ValueError(f"{key}={constructor_kwargs[key]} differs from the CLIP embed_dim {embed}")
        return cls(
            resolution=tuple(constructor_kwargs.get("resolution", (160, 256))),  # type: ignore[arg-type]
            patch_size=int(clip["vision_patch_size"]),
            vision_width=int(clip["vision_width"]),
            vision_layers=int(clip["vision_layers"]),
            vision_heads=int(clip["vision_width"]) // 64 if int(clip["vision_width"]) >= 64 else 1,
            base_image_resolution=int(clip["image_resolution"]),
            embed_dim=embed,
            text_width=int(clip["text_width"]),
            text_layers=int(clip["text_layers"]),
            text_heads=int(clip["text_heads"]),
            context_length=int(clip["context_length"]),
            vocab_size=int(clip["vocab_size"]),
            pool_depth=int(pool.group(1)),
            pool_heads=int(pool.group(2)),
            video_seq_len=int(video_seq_len),
            video_adapter_layers=int(adapters.group(2)),
            text_adapter_layers=int(adapters.group(3)),
        )


# ---------------------------------------------------------------------------------------
# CLIP parts: attention, residual block, ViT, text transformer
# ---------------------------------------------------------------------------------------


class QuickGELU(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.sigmoid(1.702 * x)


class PackedSelfAttention(nn.Module):
    """Self-attention with ``nn.MultiheadAttention``'s parameters (packed q/k/v ``in_proj``),
    computed batch-first with ``F.scaled_dot_product_attention``."""

    def __init__(self, width: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.in_proj_weight = nn.Parameter(torch.empty(3 * width, width))
        self.in_proj_bias = nn.Parameter(torch.zeros(3 * width))
        self.out_proj = nn.Linear(width, width)
        nn.init.xavier_uniform_(self.in_proj_weight)
        nn.init.zeros_(self.out_proj.bias)

    def forward(self, x: torch.Tensor, causal: bool = False) -> torch.Tensor:
        B, S, C = x.shape  # (B, S, C)
        qkv = F.linear(x, self.in_proj_weight, self.in_proj_bias)  # (B, S, 3C)
        q, k, v = qkv.view(B, S, 3, self.heads, C // self.heads).permute(2, 0, 3, 1, 4)  # 3 x (B, nh, S, hs)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=causal)  # (B, nh, S, hs)
        return self.out_proj(y.transpose(1, 2).reshape(B, S, C))  # (B, S, C)


class ResidualAttentionBlock(nn.Module):
    """Pre-LN CLIP block: x + attn(ln_1(x)), then x + mlp(ln_2(x)) with QuickGELU, width 4x."""

    def __init__(self, width: int, heads: int) -> None:
        super().__init__()
        self.attn = PackedSelfAttention(width, heads)
        self.ln_1 = nn.LayerNorm(width)
        self.mlp = nn.Sequential()
        self.mlp.add_module("c_fc", nn.Linear(width, 4 * width))
        self.mlp.add_module("gelu", QuickGELU())
        self.mlp.add_module("c_proj", nn.Linear(4 * width, width))
        self.ln_2 = nn.LayerNorm(width)

    def forward(self, x: torch.Tensor, causal: bool = False) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x), causal=causal)  # (B, S, C)
        return x + self.mlp(self.ln_2(x))


def resize_pos_grid(pos: torch.Tensor, old_grid: tuple[int, int], new_grid: tuple[int, int]) -> torch.Tensor:
    """Bicubic resize of a (h*w, C) positional table laid out row-major on ``old_grid``."""
    C = pos.shape[1]
    img = pos.reshape(1, old_grid[0], old_grid[1], C).permute(0, 3, 1, 2)  # (1, C, h, w)
    img = F.interpolate(img, size=new_grid, mode="bicubic", align_corners=False)  # (1, C, h', w')
    return img.permute(0, 2, 3, 1).reshape(new_grid[0] * new_grid[1], C)


class VisionTransformer(nn.Module):
    """CLIP ViT for one frame: patches -> [CLS] + tokens + positions -> blocks -> ln_post(CLS) @ projection."""

    def __init__(self, cfg: MineCLIPConfig) -> None:
        super().__init__()
        width, scale = cfg.vision_width, cfg.vision_width**-0.5
        base = cfg.base_image_resolution // cfg.patch_size
        self.cls_token = nn.Parameter(scale * torch.randn(width))
        # Created on CLIP's square grid, then resized to ours: checkpoints store the resized table.
        pos = scale * torch.randn(base * base + 1, width)
        if (base, base) != cfg.grid:
            pos = torch.cat([pos[:1], resize_pos_grid(pos[1:], (base, base), cfg.grid)])
        self.pos_embed = nn.Parameter(pos)  # (1 + gh*gw, width)
        self.projection = nn.Parameter(scale * torch.randn(width, cfg.embed_dim))
        self.conv1 = nn.Conv2d(3, width, kernel_size=cfg.patch_size, stride=cfg.patch_size, bias=False)
        self.ln_pre = nn.LayerNorm(width)
        self.blocks = nn.Sequential(*[ResidualAttentionBlock(width, cfg.vision_heads) for _ in range(cfg.vision_layers)])
        self.ln_post = nn.LayerNorm(width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv1(x)  # (B, C, gh, gw)
        x = x.flatten(2).transpose(1, 2)  # (B, gh*gw, C), row-major over (h, w)
        cls = self.cls_token.to(x.dtype).expand(x.shape[0], 1, -1)  # (B, 1, C)
        x = torch.cat([cls, x], dim=1) + self.pos_embed.to(x.dtype)  # (B, 1+gh*gw, C)
        x = self.ln_pre(x)
        for block in self.blocks:
            x = block(x)
        x = self.ln_post(x[:, 0])  # (B, C)
        return x @ self.projection.to(x.dtype)  # (B, D)


class TextTransformer(nn.Module):
    """CLIP text encoder: tokens + positions -> causal blocks -> ln_final -> feature at EOT @ projection."""

    def __init__(self, cfg: MineCLIPConfig) -> None:
        super().__init__()
        width = cfg.text_width
        self.pos_embed = nn.Parameter(torch.empty(cfg.context_length, width))
        self.projection = nn.Parameter(torch.empty(width, cfg.embed_dim))
        self.token_embedding = nn.Embedding(cfg.vocab_size, width)
        self.blocks = nn.Sequential(*[ResidualAttentionBlock(width, cfg.text_heads) for _ in range(cfg.text_layers)])
        self.ln_final = nn.LayerNorm(width)
        # CLIP's init
        nn.init.normal_(self.token_embedding.weight, std=0.02)
        nn.init.normal_(self.pos_embed, std=0.01)
        proj_std = width**-0.5 * (2 * max(cfg.text_layers, 1)) ** -0.5
        for block in self.blocks:
            nn.init.normal_(block.attn.in_proj_weight, std=width**-0.5)
            nn.init.normal_(block.attn.out_proj.weight, std=proj_std)
            nn.init.normal_(block.mlp.c_fc.weight, std=(2 * width) ** -0.5)
            nn.init.normal_(block.mlp.c_proj.weight, std=proj_std)
        nn.init.normal_(self.projection, std=width**-0.5)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        x = self.token_embedding(tokens) + self.pos_embed  # (B, 77, C); needs exactly context_length tokens
        for block in self.blocks:
            x = block(x, causal=True)
        x = self.ln_final(x)
        x = x[torch.arange(x.shape[0], device=x.device), tokens.argmax(dim=-1)]  # (B, C) at EOT = largest id
        return x @ self.projection.to(x.dtype)  # (B, D)


class CLIP(nn.Module):
    """The image and text towers plus the learned temperature (``logit_scale``, log space)."""

    def __init__(self, cfg: MineCLIPConfig) -> None:
        super().__init__()
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1 / 0.07)))
        self.vision_model = VisionTransformer(cfg)
        self.text_model = TextTransformer(cfg)

    def logits(self, video: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        """(B, D), (T, D) -> (B, T) scaled cosine similarities (no epsilon, no clamp, as the original)."""
        video = video / video.norm(dim=-1, keepdim=True)
        text = text / text.norm(dim=-1, keepdim=True)
        return self.logit_scale.exp() * video @ text.t()


# ---------------------------------------------------------------------------------------
# Temporal pooling: x_transformers 0.27.1 ContinuousTransformerWrapper + Encoder layout
# ---------------------------------------------------------------------------------------


class AbsolutePositionalEmbedding(nn.Module):
    def __init__(self, dim: int, max_len: int) -> None:
        super().__init__()
        self.scale = dim**-0.5  # x_transformers scales the learned table by dim^-0.5
        self.emb = nn.Embedding(max_len, dim)

    def forward(self, length: int, device: torch.device) -> torch.Tensor:
        return self.emb(torch.arange(length, device=device)) * self.scale  # (L, dim)


class TemporalAttention(nn.Module):
    """Bias-free q/k/v/out projections, ``heads`` heads of ``dim_head`` (inner width may exceed dim)."""

    def __init__(self, dim: int, heads: int, dim_head: int) -> None:
        super().__init__()
        self.heads, inner = heads, heads * dim_head
        self.to_q = nn.Linear(dim, inner, bias=False)
        self.to_k = nn.Linear(dim, inner, bias=False)
        self.to_v = nn.Linear(dim, inner, bias=False)
        self.to_out = nn.Linear(inner, dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, L, _ = x.shape  # (B, L, dim)
        q, k, v = (f(x).view(B, L, self.heads, -1).transpose(1, 2) for f in (self.to_q, self.to_k, self.to_v))  # (B, H, L, dh)
        y = F.scaled_dot_product_attention(q, k, v)  # (B, H, L, dh), scale dh^-0.5
        return self.to_out(y.transpose(1, 2).reshape(B, L, -1))  # (B, L, dim)


class GLU(nn.Module):
    """Linear to 2*inner, split into [value, gate], return value * SiLU(gate)."""

    def __init__(self, dim: int, inner: int) -> None:
        super().__init__()
        self.proj = nn.Linear(dim, 2 * inner)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        value, gate = self.proj(x).chunk(2, dim=-1)
        return value * F.silu(gate)


class FeedForward(nn.Module):
    def __init__(self, dim: int, mult: int) -> None:
        super().__init__()
        # indices 1 and 2 hold x_transformers' (post-activation norm, dropout) slots, empty here
        self.net = nn.Sequential(GLU(dim, dim * mult), nn.Identity(), nn.Identity(), nn.Linear(dim * mult, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class AttentionLayers(nn.Module):
    """K pre-norm pairs; ``layers[2i] = [[norm], attention]``, ``layers[2i+1] = [[norm], feed-forward]``."""

    def __init__(self, dim: int, depth: int, heads: int, dim_head: int, ff_mult: int) -> None:
        super().__init__()
        self.layers = nn.ModuleList()
        for _ in range(depth):
            self.layers.append(nn.ModuleList([nn.ModuleList([nn.LayerNorm(dim)]), TemporalAttention(dim, heads, dim_head)]))
            self.layers.append(nn.ModuleList([nn.ModuleList([nn.LayerNorm(dim)]), FeedForward(dim, ff_mult)]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for (norm,), block in self.layers:
            x = x + block(norm(x))
        return x


class TemporalTransformerModel(nn.Module):
    """Positional table (scaled) -> attention layers -> final LayerNorm; no input/output projection."""

    def __init__(self, cfg: MineCLIPConfig) -> None:
        super().__init__()
        dim = cfg.embed_dim
        self.pos_emb = AbsolutePositionalEmbedding(dim, cfg.video_seq_len)
        self.attn_layers = AttentionLayers(dim, cfg.pool_depth, cfg.pool_heads, cfg.pool_dim_head, cfg.pool_ff_mult)
        self.norm = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.pos_emb(x.shape[1], x.device).to(x.dtype)  # (B, L, D)
        return self.norm(self.attn_layers(x))


class TemporalTransformer(nn.Module):
    def __init__(self, cfg: MineCLIPConfig) -> None:
        super().__init__()
        self.model = TemporalTransformerModel(cfg)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x).mean(dim=1)  # (B, L, D) -> (B, D): mean over time


class TemporalPooling(nn.Module):
    def __init__(self, cfg: MineCLIPConfig) -> None:
        super().__init__()
        self.video_seq_len = cfg.video_seq_len
        self.attn = TemporalTransformer(cfg)

    def forward(self, image_features: torch.Tensor) -> torch.Tensor:
        if image_features.shape[1] > self.video_seq_len:
            raise ValueError(f"clip of {image_features.shape[1]} frames exceeds video_seq_len {self.video_seq_len}")
        return self.attn(image_features)  # (B, L, D) -> (B, D)


# ---------------------------------------------------------------------------------------
# Reward head and the whole model
# ---------------------------------------------------------------------------------------


def _adapter_mlp(dim: int, layers: int) -> nn.Module:
    """``layers`` Linear(dim, dim) with ReLU between; slot 3i+2 is an empty norm slot (original layout)."""
    if layers == 0:
        return nn.Identity()
    mods: list[nn.Module] = []
    for _ in range(layers - 1):
        mods += [nn.Linear(dim, dim), nn.ReLU(), nn.Identity()]
    mods.append(nn.Linear(dim, dim))
    return nn.Sequential(*mods)


class RewardHead(nn.Module):
    """Adapts video (and text) features, then scores them with CLIP's scaled cosine similarity.

    adapted = s * v + (1 - s) * MLP(v), s = sigmoid(residual weight); a 0-layer adapter is identity.
    """

    def __init__(self, cfg: MineCLIPConfig, clip_model: CLIP) -> None:
        super().__init__()
        if cfg.video_adapter_layers:
            self.video_residual_weight = nn.Parameter(torch.tensor(4.0))
        else:
            self.video_residual_weight = None
        if cfg.text_adapter_layers:
            self.text_residual_weight = nn.Parameter(torch.tensor(4.0))
        else:
            self.text_residual_weight = None
        self.clip_model = clip_model  # alias: the same module as MineCLIP.clip_model
        self.video_adapter = _adapter_mlp(cfg.embed_dim, cfg.video_adapter_layers)
        self.text_adapter = _adapter_mlp(cfg.embed_dim, cfg.text_adapter_layers)

    @staticmethod
    def _adapt(x: torch.Tensor, mlp: nn.Module, weight: torch.Tensor | None) -> torch.Tensor:
        if weight is None:
            return mlp(x)
        s = torch.sigmoid(weight)
        return s * x + (1.0 - s) * mlp(x)

    def adapt_video(self, video: torch.Tensor) -> torch.Tensor:
        return self._adapt(video, self.video_adapter, self.video_residual_weight)

    def adapt_text(self, text: torch.Tensor) -> torch.Tensor:
        return self._adapt(text, self.text_adapter, self.text_residual_weight)

    def forward(self, video: torch.Tensor, text: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logits = self.clip_model.logits(self.adapt_video(video), self.adapt_text(text))  # (B, T)
        return logits, logits.t()


def normalize_pixels(frames: torch.Tensor) -> torch.Tensor:
    """0..255 frames (..., 3, H, W) -> float (x/255 - mean) / std per RGB channel."""
    mean = torch.tensor(MC_IMAGE_MEAN, device=frames.device).view(3, 1, 1)
    std = torch.tensor(MC_IMAGE_STD, device=frames.device).view(3, 1, 1)
    return (frames.float() / 255.0 - mean) / std


class MineCLIP(nn.Module):
    """Video-text model. ``encode_video`` gives the embeddings STEVE-1 uses as goals."""

    def __init__(self, cfg: MineCLIPConfig | None = None) -> None:
        super().__init__()
        self.cfg = cfg if cfg is not None else MineCLIPConfig.official()
        clip_model = CLIP(self.cfg)
        # Registration order fixes the state-dict order: image_encoder, temporal_encoder,
        # reward_head, clip_model (as in the original).
        self.image_encoder = clip_model.vision_model  # alias
        self.temporal_encoder = TemporalPooling(self.cfg)
        self.reward_head = RewardHead(self.cfg, clip_model)
        self.clip_model = clip_model
        # Languages the text encoder was trained on (("en",) for the official model); None =
        # unknown. Set by the checkpoint loader and by training; not a tensor, not in state_dict.
        self.langs: tuple[str, ...] | None = None

    def video_parameters(self) -> list[nn.Parameter]:
        """Everything that shapes video embeddings and their scores: ViT, temporal pooling, video adapter.

        The rest (text transformer, text adapter, ``logit_scale``) is the text side.
        """
        params = [*self.image_encoder.parameters(), *self.temporal_encoder.parameters(),
                  *self.reward_head.video_adapter.parameters()]
        if self.reward_head.video_residual_weight is not None:
            params.append(self.reward_head.video_residual_weight)
        return params

    # -- video ---------------------------------------------------------------------------
    def forward_image_features(self, frames: torch.Tensor) -> torch.Tensor:
        """(..., 3, H, W) frames with values 0..255 (uint8 or float) -> (..., D) per-frame features."""
        lead = frames.shape[:-3]
        if tuple(frames.shape[-3:]) != (3, *self.cfg.resolution):
            raise ValueError(
                f"frames must be (..., 3, {self.cfg.resolution[0]}, {self.cfg.resolution[1]}), got {tuple(frames.shape)}; "
                "resize with aimc.models.mineclip.preprocess_frames"
            )
        x = normalize_pixels(frames.reshape(-1, *frames.shape[-3:]))  # (B*L, 3, H, W)
        return self.image_encoder(x).reshape(*lead, -1)  # (..., D)

    def forward_video_features(self, image_features: torch.Tensor) -> torch.Tensor:
        """(B, L, D) per-frame features -> (B, D) video embeddings."""
        return self.temporal_encoder(image_features)

    def encode_video(self, frames: torch.Tensor) -> torch.Tensor:
        """(B, L, 3, H, W) clips, values 0..255 -> (B, D); STEVE-1's goal embedding for L = 16."""
        return self.forward_video_features(self.forward_image_features(frames))

    # -- text ----------------------------------------------------------------------------
    def encode_text(self, text: torch.Tensor | list[str] | str) -> torch.Tensor:
        """(T, 77) int64 token rows (or strings, tokenized offline) -> (T, D)."""
        if isinstance(text, (str, list, tuple)):
            from aimc.models.tokenizer import ClipTokenizer

            text = ClipTokenizer().tokenize(list(text) if not isinstance(text, str) else [text])
        tokens = text.to(self.clip_model.text_model.token_embedding.weight.device)
        if tokens.ndim != 2 or tokens.shape[1] != self.cfg.context_length:
            raise ValueError(f"token ids must be (T, {self.cfg.context_length}), got {tuple(tokens.shape)}")
        return self.clip_model.text_model(tokens)

    # -- scoring -------------------------------------------------------------------------
    def forward_reward_head(self, video_features: torch.Tensor, text_features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, D), (T, D) -> (logits_per_video (B, T), logits_per_text (T, B))."""
        return self.reward_head(video_features, text_features)

    def similarity(self, video_features: torch.Tensor, text_features: torch.Tensor) -> torch.Tensor:
        """(B, D) video, (T, D) text -> (B, T) logits: exp(logit_scale) * cos(adapted video, adapted text)."""
        return self.reward_head(video_features, text_features)[0]


# ---------------------------------------------------------------------------------------
# Frames in, embeddings out
# ---------------------------------------------------------------------------------------


def preprocess_frames(frames_rgb: np.ndarray, resolution: tuple[int, int] = (160, 256)) -> np.ndarray:
    """(N, H, W, 3) uint8 RGB -> (N, 3, h, w) uint8, as STEVE-1's ``process_frame_mineclip``.

    Frames not already at ``resolution`` are resized with OpenCV bilinear (``INTER_LINEAR``, no
    antialiasing; bit-exact with the original), e.g. MineRL's 640x360 -> 256x160.
    """
    from aimc.actions.image import resize_for_mineclip

    frames = resize_for_mineclip(frames_rgb, resolution)  # (N, h, w, 3)
    if frames.ndim == 3:
        frames = frames[None]
    return np.ascontiguousarray(frames.transpose(0, 3, 1, 2))  # (N, 3, h, w)


def _resolve(model: nn.Module, device: str | torch.device | None, amp_dtype: torch.dtype | str | None):
    device = torch.device(device) if device is not None else next(model.parameters()).device
    if isinstance(amp_dtype, str):
        names = {"fp32": torch.float32, "float32": torch.float32, "bf16": torch.bfloat16,
                 "bfloat16": torch.bfloat16, "fp16": torch.float16, "float16": torch.float16}
        if amp_dtype not in names:
            raise ValueError(f"amp_dtype {amp_dtype!r} is not one of {sorted(names)}")
        amp_dtype = names[amp_dtype]
    if amp_dtype is None and device.type == "cuda":
        amp_dtype = torch.float16  # the original embedded under torch.cuda.amp.autocast() (fp16)
    return device, amp_dtype


def _as_tensor(frames: np.ndarray | torch.Tensor) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(frames)) if isinstance(frames, np.ndarray) else frames


@torch.no_grad()
def embed_episode(
    model: MineCLIP,
    frames: np.ndarray | torch.Tensor,
    batch_size: int = 64,
    device: str | torch.device | None = None,
    amp_dtype: torch.dtype | str | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Embed every stride-1 16-frame window of an episode, computing each frame's ViT once.

    Args:
        model: MineCLIP (moved to ``device`` if given; eval mode is the caller's job).
        frames: (N, 3, H, W) uint8 at the model's resolution (see :func:`preprocess_frames`).
        batch_size: frames per ViT batch (windows per pooling batch is 4x this).
        device: where to compute; default the model's device.
        amp_dtype: autocast dtype (torch dtype or "fp16"/"bf16"/"fp32"); None = fp16 on CUDA
            (what the original used), no autocast on CPU.

    Returns:
        emb: float32 (N, D); row t embeds frames t-15..t (the window ending at t).
        valid: bool (N,); False for t < 15 (their rows are zero), as the original's ``None``s.
    """
    device, amp_dtype = _resolve(model, device, amp_dtype)
    model.to(device)
    frames = _as_tensor(frames)
    N = frames.shape[0]
    D = model.cfg.embed_dim
    emb = torch.zeros(N, D, dtype=torch.float32)
    valid = torch.zeros(N, dtype=torch.bool)
    if N < WINDOW:
        return emb.numpy(), valid.numpy()
    with autocast(device, amp_dtype):
        feats = torch.cat([
            model.forward_image_features(frames[i : i + batch_size].to(device, non_blocking=True)).float()
            for i in range(0, N, batch_size)
        ])  # (N, D): each frame's ViT once
        windows = feats.unfold(0, WINDOW, 1).permute(0, 2, 1)  # (N-15, 16, D), a view
        pool_batch = 4 * batch_size
        pooled = torch.cat([
            model.forward_video_features(windows[i : i + pool_batch]).float()
            for i in range(0, windows.shape[0], pool_batch)
        ])  # (N-15, D)
    emb[NONE_EMBED_OFFSET:] = pooled.cpu()
    valid[NONE_EMBED_OFFSET:] = True
    return emb.numpy(), valid.numpy()


@torch.no_grad()
def embed_episode_naive(
    model: MineCLIP,
    frames: np.ndarray | torch.Tensor,
    batch_size: int = 4,
    device: str | torch.device | None = None,
    amp_dtype: torch.dtype | str | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """The original's way: ``encode_video`` on each 16-frame window (every frame's ViT 16 times).

    Same arguments and outputs as :func:`embed_episode` (``batch_size`` counts windows); kept for
    tests and the benchmark.
    """
    device, amp_dtype = _resolve(model, device, amp_dtype)
    model.to(device)
    frames = _as_tensor(frames)
    N = frames.shape[0]
    emb = torch.zeros(N, model.cfg.embed_dim, dtype=torch.float32)
    valid = torch.zeros(N, dtype=torch.bool)
    starts = list(range(0, max(N - WINDOW + 1, 0)))
    with autocast(device, amp_dtype):
        for i in range(0, len(starts), batch_size):
            clips = torch.stack([frames[s : s + WINDOW] for s in starts[i : i + batch_size]])  # (b, 16, 3, H, W)
            out = model.encode_video(clips.to(device)).float().cpu()  # (b, D)
            for j, s in enumerate(starts[i : i + batch_size]):
                emb[s + NONE_EMBED_OFFSET] = out[j]
                valid[s + NONE_EMBED_OFFSET] = True
    return emb.numpy(), valid.numpy()


def count_parameters(module: nn.Module) -> int:
    """Distinct parameters (aliases counted once)."""
    return sum(p.numel() for p in module.parameters())


__all__ = [
    "MineCLIPConfig",
    "MineCLIP",
    "CLIP",
    "VisionTransformer",
    "TextTransformer",
    "TemporalPooling",
    "RewardHead",
    "preprocess_frames",
    "normalize_pixels",
    "embed_episode",
    "embed_episode_naive",
    "count_parameters",
    "MC_IMAGE_MEAN",
    "MC_IMAGE_STD",
]
