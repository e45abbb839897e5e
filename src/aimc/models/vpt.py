"""The VPT policy with STEVE-1 goal conditioning, in one file.

Read top to bottom: the parts (fan-in layers, IMPALA CNN, masked attention with its
recurrent memory, LSTM blocks, heads), then :class:`PolicyConfig` and finally
:class:`STEVE1Policy`, the whole network. Module attribute names equal the official
``state_dict`` keys (``net.img_process.cnn.stacks.0.firstconv.layer.weight`` ...), so
official weights load without renaming; the file format itself lives in
``aimc.checkpoints.vpt``.

Shapes: B batch, T time steps of this call, H/W image size, C channels, D hidden size
(``hidsize``), E goal embedding size (``mineclip_embed_dim``), nh attention heads,
q = D / nh head size, L = ``attention_memory_size - timesteps`` frames of memory.

The original code's behaviour is the default wherever golden fixtures record it (see
docs/quirks.md); every correction is an opt-in config flag.
"""

from __future__ import annotations

import dataclasses
import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from torch.utils.checkpoint import checkpoint

from aimc.errors import ConfigError
# Per-layer recurrent state: transformer blocks hold (mask (B, L) bool, K (B, L, D), V (B, L, D)),
# LSTM blocks hold (h (B, D), c (B, D)). Everything is batch-first.
LayerState = tuple[torch.Tensor, ...]
State = list[LayerState]

MINECRAFT_ACTION_HEADS = {"buttons": 8641, "camera": 121}
RECURRENCE_TYPES = ("transformer", "lstm", "multi_layer_lstm", "multi_layer_bilstm")

# ----------------------------------------------------------------------------------------
# Building blocks
# ----------------------------------------------------------------------------------------


def _fan_in_(weight: torch.Tensor, scale: float) -> None:
    """Scale every output row (filter) of ``weight`` to L2 norm ``scale`` (VPT's init)."""
    with torch.no_grad():
        dims = tuple(range(1, weight.ndim))
        weight.mul_(scale / weight.norm(dim=dims, p=2, keepdim=True))


class FanInLayer(nn.Module):
    """Optional norm on the input -> conv3x3 or linear -> optional ReLU.

    The layer has a bias only when there is no norm (VPT's ``FanInInitReLULayer``).
    ``norm`` is None, ``"group"`` (GroupNorm with ``groups``), ``"batch"`` or ``"layer"``.
    """

    def __init__(
        self,
        in_dim: int,
        out_dim: int,
        kind: str = "conv",
        norm: str | None = None,
        groups: int = 1,
        init_scale: float = 1.0,
        activation: bool = True,
    ):
        super().__init__()
        self.activation = activation
        if norm is None:
            self.norm = None
        elif norm == "group":
            self.norm = nn.GroupNorm(groups, in_dim)
        elif norm == "batch":
            self.norm = nn.BatchNorm2d(in_dim)
        elif norm == "layer":
            self.norm = nn.LayerNorm(in_dim)
        else:
            raise ValueError(f"unknown norm {norm!r}")
        bias = self.norm is None
        if kind == "conv":
            self.layer = nn.Conv2d(in_dim, out_dim, kernel_size=3, padding=1, bias=bias)
        elif kind == "linear":
            self.layer = nn.Linear(in_dim, out_dim, bias=bias)
        else:
            raise ValueError(f"unknown layer kind {kind!r}")
        _fan_in_(self.layer.weight, init_scale)
        if self.layer.bias is not None:
            nn.init.zeros_(self.layer.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.norm is not None:
            x = self.norm(x)
        x = self.layer(x)
        return F.relu(x) if self.activation else x


class ImpalaResidualBlock(nn.Module):
    """``x + conv1(conv0(x))``, each conv = norm -> conv3x3 (no bias) -> ReLU. Shape kept."""

    def __init__(self, chans: int, init_scale: float, norm: str | None, groups: int):
        super().__init__()
        s = math.sqrt(init_scale)
        self.conv0 = FanInLayer(chans, chans, "conv", norm, groups, init_scale=s)
        self.conv1 = FanInLayer(chans, chans, "conv", norm, groups, init_scale=s)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (N, C, h, w)
        return x + self.conv1(self.conv0(x))


class ImpalaDownStack(nn.Module):
    """conv3x3 -> max-pool 3x3/2 -> GroupNorm -> 2 residual blocks. (N, Cin, h, w) -> (N, C, h/2, w/2)."""

    def __init__(
        self,
        in_chans: int,
        chans: int,
        n_blocks: int,
        init_scale: float,
        first_conv_norm: bool,
        norm: str | None,
        groups: int,
        post_pool_groups: int | None,
    ):
        super().__init__()
        # The very first conv of the CNN sees the raw image: no norm, with bias.
        self.firstconv = FanInLayer(in_chans, chans, "conv", norm if first_conv_norm else None, groups)
        self.n = nn.GroupNorm(post_pool_groups, chans) if post_pool_groups is not None else None
        self.blocks = nn.ModuleList(
            ImpalaResidualBlock(chans, init_scale / math.sqrt(n_blocks), norm, groups) for _ in range(n_blocks)
        )

    def down(self, x: torch.Tensor) -> torch.Tensor:
        x = self.firstconv(x)  # (N, C, h, w)
        x = F.max_pool2d(x, kernel_size=3, stride=2, padding=1)  # (N, C, ceil(h/2), ceil(w/2))
        return self.n(x) if self.n is not None else x

    def forward(self, x: torch.Tensor, checkpointing: bool = False) -> torch.Tensor:
        # With checkpointing each piece is recomputed on its own in backward, so only one
        # piece's activations (not the whole CNN's) are alive at a time.
        x = checkpoint(self.down, x, use_reentrant=False) if checkpointing else self.down(x)
        for block in self.blocks:
            x = checkpoint(block, x, use_reentrant=False) if checkpointing else block(x)
        return x


class ImpalaCNN(nn.Module):
    """3 down-stacks then flatten (C, H, W order) -> LayerNorm -> Linear (no bias) -> ReLU."""

    def __init__(
        self,
        img_shape: tuple[int, int, int],
        chans: tuple[int, ...],
        out_dim: int,
        norm: str | None,
        groups: int,
        dense_norm: str | None,
        post_pool_groups: int | None,
        channels_last: bool = False,
    ):
        super().__init__()
        h, w, c = img_shape
        self.channels_last = channels_last
        self.stacks = nn.ModuleList()
        for i, ch in enumerate(chans):
            self.stacks.append(
                ImpalaDownStack(c, ch, 2, math.sqrt(len(chans)), i > 0, norm, groups, post_pool_groups)
            )
            c, h, w = ch, (h + 1) // 2, (w + 1) // 2
        self.dense = FanInLayer(c * h * w, out_dim, "linear", dense_norm, init_scale=1.4)
        if channels_last:  # conv weights too (loading weights keeps this layout)
            self.stacks.to(memory_format=torch.channels_last)

    def forward(self, x: torch.Tensor, checkpointing: bool = False) -> torch.Tensor:
        # x: (N, H, W, C) float
        # A permuted view, as the original: its strides are channels_last, so PyTorch already
        # runs the convs in channels_last (the reference outputs depend on it at ~1e-4).
        x = x.permute(0, 3, 1, 2)  # (N, C, H, W)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        for stack in self.stacks:
            x = stack(x, checkpointing)  # 128 -> 64 -> 32 -> 16
        x = x.flatten(1)  # (N, C*h*w) in (C, h, w) order whatever the memory format
        return self.dense(x)  # (N, 256)


class ImageEncoder(nn.Module):
    """uint8 frames -> features: /255, IMPALA CNN (-> 256), LayerNorm -> Linear -> ReLU (-> D)."""

    def __init__(self, cfg: "PolicyConfig"):
        super().__init__()
        norm, groups = cfg.conv_norm()
        dense_norm = cfg.dense_norm()
        chans = tuple(int(cfg.impala_width * c) for c in cfg.impala_chans)
        self.cnn = ImpalaCNN(
            tuple(cfg.img_shape),
            chans,
            256,
            norm,
            groups,
            dense_norm,
            cfg.impala_kwargs.get("post_pool_groups"),
            cfg.channels_last,
        )
        self.linear = FanInLayer(256, cfg.hidsize, "linear", dense_norm)
        self.checkpointing = cfg.activation_checkpointing

    def forward(self, img: torch.Tensor) -> torch.Tensor:
        # img: (B, T, H, W, C) uint8
        b, t = img.shape[:2]
        # The original divides by 255.0 (not multiply by 1/255): bit-exact inputs.
        x = img.reshape(b * t, *img.shape[2:]).to(torch.float32) / 255.0  # (B*T, H, W, C)
        x = self.cnn(x, self.checkpointing and self.training and torch.is_grad_enabled())  # (B*T, 256)
        return self.linear(x).reshape(b, t, -1)  # (B, T, D)


# ---- transformer recurrence ------------------------------------------------------------

Q_SCALE, K_SCALE, V_SCALE, PROJ_SCALE, R_SCALE, B_SCALE = 0.1, 0.2, 1.0, 1.0, 0.1, 0.2
N_REL_BASIS = 10  # relative-position basis functions per head


def _normed_linear(in_dim: int, out_dim: int, scale: float, bias: bool = True) -> nn.Linear:
    layer = nn.Linear(in_dim, out_dim, bias=bias)
    _fan_in_(layer.weight, scale)
    if bias:
        nn.init.zeros_(layer.bias)
    return layer


class SelfAttention(nn.Module):
    """Multi-head attention of this chunk's frames over [memory ; chunk] with relative bias.

    Logit(i, j) = Q_i.K_j * scale + rel(i, j) + mask(i, j) where the original's scale is
    1/q (head size), not 1/sqrt(q); ``rel(i, j) = sum_n R_i[n] * b_nd[n, d]`` with
    ``R = r_layer(x)`` (10 coefficients per head) and d = (L + i) - j the distance back in
    time (0 = the frame itself), zero unless 0 <= d < L.
    """

    def __init__(self, dim: int, heads: int, maxlen: int, init_scale: float, sqrt_scaling: bool):
        super().__init__()
        self.heads, self.maxlen = heads, maxlen
        self.head_dim = dim // heads
        self.scale = 1.0 / (math.sqrt(self.head_dim) if sqrt_scaling else self.head_dim)
        s = math.sqrt(init_scale)
        self.q_layer = _normed_linear(dim, dim, Q_SCALE)
        self.k_layer = _normed_linear(dim, dim, K_SCALE, bias=False)
        self.v_layer = _normed_linear(dim, dim, V_SCALE * s, bias=False)
        self.proj_layer = _normed_linear(dim, dim, PROJ_SCALE * s)
        self.r_layer = _normed_linear(dim, N_REL_BASIS * heads, R_SCALE)
        self.b_nd = nn.Parameter(torch.randn(N_REL_BASIS, maxlen) * B_SCALE)

    def relative_bias(self, x: torch.Tensor, n_keys: int) -> torch.Tensor:
        b, t, _ = x.shape
        r = self.r_layer(x).float().view(b, t, self.heads, N_REL_BASIS).transpose(1, 2)  # (B, nh, t, 10)
        per_distance = r @ self.b_nd.float()  # (B, nh, t, L): bias for distance d
        i = torch.arange(t, device=x.device)[:, None]
        j = torch.arange(n_keys, device=x.device)[None, :]
        d = (n_keys - t) + i - j  # (t, T) distance back in time
        inside = (d >= 0) & (d < self.maxlen)
        rel = per_distance.gather(-1, d.clamp(0, self.maxlen - 1).expand(b, self.heads, t, n_keys))
        return rel * inside  # (B, nh, t, T)

    def forward(
        self, x: torch.Tensor, keep: torch.Tensor | None, mem_k: torch.Tensor, mem_v: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        # x: (B, t, D) normed input; keep: (B, t, T) bool or None (attend everywhere)
        # mem_k, mem_v: (B, L, D) keys/values of the previous L frames
        b, t, dim = x.shape
        q = self.q_layer(x)  # (B, t, D)
        k = torch.cat([mem_k, self.k_layer(x)], dim=1)  # (B, T, D), T = L + t
        v = torch.cat([mem_v, self.v_layer(x)], dim=1)  # (B, T, D)
        n_keys = k.shape[1]

        bias = self.relative_bias(x, n_keys)  # (B, nh, t, T)
        if keep is not None:
            bias = bias + (~keep).float()[:, None] * -1e9  # the original adds -1e9, not -inf

        def heads(z: torch.Tensor) -> torch.Tensor:  # (B, n, D) -> (B, nh, n, q)
            return z.view(b, -1, self.heads, self.head_dim).transpose(1, 2)

        qf, kf, vf = heads(q).float(), heads(k).float(), heads(v).float()
        a = F.scaled_dot_product_attention(qf, kf, vf, attn_mask=bias, scale=self.scale)  # (B, nh, t, q)
        a = a.to(x.dtype).transpose(1, 2).reshape(b, t, dim)  # (B, t, D)
        return self.proj_layer(a), k[:, -self.maxlen :], v[:, -self.maxlen :]


class MaskedAttention(nn.Module):
    """Recurrent attention: keeps the last L frames' keys/values and which of them are visible.

    Mask (``clipped_causal``): query i sees exactly the L keys with distance 0..L-1 (itself
    and the L-1 frames before it). Memory keys are hidden when their mask bit is False or
    when the call's ``first[:, 0]`` is True. The original ignores ``first`` flags at t > 0
    (quirk, the default); ``reset_on_every_first`` hides everything before any flagged frame.
    The residual is around the normed input: returns ``x + proj(attention(x))``.
    """

    def __init__(self, cfg: "PolicyConfig", init_scale: float):
        super().__init__()
        self.maxlen = cfg.attention_memory_size - cfg.timesteps
        self.dim = cfg.hidsize
        self.clipped_causal = cfg.attention_mask_style == "clipped_causal"
        self.every_first = cfg.reset_on_every_first
        self.orc_block = SelfAttention(
            cfg.hidsize, cfg.attention_heads, self.maxlen, init_scale, cfg.attention_sqrt_scaling
        )

    def initial_state(self, batch_size: int, device=None, dtype=torch.float32) -> LayerState:
        # Zero keys/values with an all-False mask: the original's `None` mask behaves the same.
        mask = torch.zeros(batch_size, self.maxlen, dtype=torch.bool, device=device)  # (B, L)
        kv = torch.zeros(batch_size, self.maxlen, self.dim, dtype=dtype, device=device)  # (B, L, D)
        return mask, kv, kv.clone()

    def _masks(self, first: torch.Tensor, mem_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """-> (keep (B, t, L+t) bool, new memory mask (B, L) bool)."""
        b, t = first.shape
        L = self.maxlen
        i = torch.arange(t, device=first.device)[:, None]
        j = torch.arange(L + t, device=first.device)[None, :]
        d = L + i - j
        band = (d >= 0) & (d < L)  # (t, L+t) clipped causal window
        if not self.every_first:
            # Original: only first[:, 0] counts.
            hide_mem = first[:, 0]  # (B,)
            keep = band[None].repeat(b, 1, 1)  # (B, t, L+t)
            keep[:, :, :L] &= (mem_mask & ~hide_mem[:, None])[:, None, :]
            chunk_visible = torch.ones(b, min(t, L), dtype=torch.bool, device=first.device)
            new_mask = torch.cat([mem_mask[:, t:] & ~hide_mem[:, None], chunk_visible], dim=1)
            return keep, new_mask
        # Correction: episode index of each frame (memory = 0); a key is visible only
        # within the query's episode.
        episode = torch.cumsum(first.long(), dim=1)  # (B, t)
        key_episode = torch.cat([torch.zeros(b, L, dtype=torch.long, device=first.device), episode], dim=1)
        key_ok = torch.cat([mem_mask, torch.ones(b, t, dtype=torch.bool, device=first.device)], dim=1)
        keep = band[None] & key_ok[:, None, :] & (key_episode[:, None, :] == episode[:, :, None])
        visible = key_ok & (key_episode == episode[:, -1:])  # (B, L+t) seen from the last frame's episode
        return keep, visible[:, -L:]

    def forward(self, x: torch.Tensor, first: torch.Tensor, state: LayerState) -> tuple[torch.Tensor, LayerState]:
        # x: (B, t, D) normed; first: (B, t) bool
        mem_mask, mem_k, mem_v = state
        if self.clipped_causal:
            keep, new_mask = self._masks(first, mem_mask)
        else:  # "none": attend to every key in memory and chunk, first ignored (as the original)
            keep, new_mask = None, mem_mask
        out, new_k, new_v = self.orc_block(x, keep, mem_k, mem_v)
        return x + out, (new_mask, new_k, new_v)


# ---- LSTM recurrence ---------------------------------------------------------------------


def _lstm_forward(
    lstm: nn.LSTM, x: torch.Tensor, first: torch.Tensor, state: LayerState, reverse: bool, every_first: bool
) -> tuple[torch.Tensor, LayerState]:
    # x: (B, t, D); state: (h (B, D), c (B, D))
    h, c = state
    if not every_first:
        # Original: zero the carried state when first[:, 0]; later flags are ignored.
        keep = (~first[:, 0]).to(h.dtype)[:, None]  # (B, 1)
        h, c = h * keep, c * keep
        if reverse:  # multi_layer_bilstm: every second block runs backwards in time
            x = x.flip(1)
        y, (h, c) = lstm(x, (h[None].contiguous(), c[None].contiguous()))  # y: (B, t, D)
        if reverse:
            y = y.flip(1)
        return y, (h[0], c[0])
    outs = []
    for step in range(x.shape[1]):  # correction: reset wherever first is True
        keep = (~first[:, step]).to(h.dtype)[:, None]
        y, (hn, cn) = lstm(x[:, step : step + 1], ((h * keep)[None], (c * keep)[None]))
        h, c = hn[0], cn[0]
        outs.append(y)
    return torch.cat(outs, dim=1), (h, c)


class RecurrentBlock(nn.Module):
    """pre-LN -> recurrence (attention or LSTM) -> residual MLP.

    Transformer: ``y = h + Attn(h)`` with ``h = LN(x)`` (the block input x itself is not
    carried past attention); LSTM: ``y = x + LSTM(LN(x))`` when residual. Then
    ``z = y + mlp1(mlp0(y))`` with mlp0 = LN -> Linear (D -> ratio*D, no bias) -> ReLU and
    mlp1 = Linear (ratio*D -> D, bias), ReLU only if ``pointwise_use_activation``.
    """

    def __init__(self, cfg: "PolicyConfig", index: int, init_scale: float):
        super().__init__()
        d = cfg.hidsize
        self.kind = "transformer" if cfg.recurrence_type == "transformer" else "lstm"
        self.residual = cfg.recurrence_is_residual
        self.reverse = cfg.recurrence_type == "multi_layer_bilstm" and index % 2 == 1
        self.every_first = cfg.reset_on_every_first
        s = init_scale
        if cfg.use_pointwise_layer:
            if self.residual:
                s *= 2**-0.5  # second residual branch
            self.mlp0 = FanInLayer(d, d * cfg.pointwise_ratio, "linear", "layer")
            self.mlp1 = FanInLayer(
                d * cfg.pointwise_ratio, d, "linear", None, init_scale=s, activation=cfg.pointwise_use_activation
            )
        else:
            self.mlp0 = self.mlp1 = None
        self.pre_r_ln = nn.LayerNorm(d)
        if self.kind == "transformer":
            self.r = MaskedAttention(cfg, init_scale=s)
        else:
            self.r = nn.LSTM(d, d, batch_first=True)
            nn.init.normal_(self.r.weight_hh_l0, std=s * (4 * d) ** -0.5)
            nn.init.normal_(self.r.weight_ih_l0, std=s * (4 * d) ** -0.5)
            nn.init.zeros_(self.r.bias_hh_l0)
            nn.init.zeros_(self.r.bias_ih_l0)
        self.dim = d

    def initial_state(self, batch_size: int, device=None, dtype=torch.float32) -> LayerState:
        if self.kind == "transformer":
            return self.r.initial_state(batch_size, device, dtype)
        zeros = torch.zeros(batch_size, self.dim, dtype=dtype, device=device)  # (B, D)
        return zeros, zeros.clone()

    def forward(self, x: torch.Tensor, first: torch.Tensor, state: LayerState) -> tuple[torch.Tensor, LayerState]:
        # x: (B, t, D)
        h = self.pre_r_ln(x)
        if self.kind == "transformer":
            y, state = self.r(h, first, state)  # already residual around h
        else:
            y, state = _lstm_forward(self.r, h, first, state, self.reverse, self.every_first)
            if self.residual:
                y = y + x
        if self.mlp0 is not None:
            z = self.mlp1(self.mlp0(y))
            y = y + z if self.residual else z
        return y, state


class RecurrentStack(nn.Module):
    """``n_recurrence_layers`` recurrent blocks, each with its own state."""

    def __init__(self, cfg: "PolicyConfig"):
        super().__init__()
        n = cfg.n_recurrence_layers
        init_scale = n**-0.5 if cfg.recurrence_is_residual else 1.0
        self.blocks = nn.ModuleList(RecurrentBlock(cfg, i, init_scale) for i in range(n))
        self.checkpointing = cfg.activation_checkpointing

    def forward(self, x: torch.Tensor, first: torch.Tensor, state: State) -> tuple[torch.Tensor, State]:
        if len(state) != len(self.blocks):
            raise ValueError(f"state has {len(state)} layers, the policy has {len(self.blocks)} recurrent blocks")
        new_state = []
        for block, s in zip(self.blocks, state):
            if self.checkpointing and self.training and torch.is_grad_enabled():
                x, s = checkpoint(block, x, first, s, use_reentrant=False)
            else:
                x, s = block(x, first, s)
            new_state.append(s)
        return x, new_state


# ---- heads -------------------------------------------------------------------------------


class CategoricalHead(nn.Module):
    """Linear(D, n) -> / temperature -> log_softmax: normalised log-probs (B, T, n)."""

    def __init__(self, dim: int, n: int, temperature: float):
        super().__init__()
        self.linear_layer = nn.Linear(dim, n)
        self.temperature = temperature

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = self.linear_layer(x) / self.temperature
        return F.log_softmax(logits.float(), dim=-1)


class EwmaNormalizer(nn.Module):
    """Running (debiased) mean / variance of the value targets, updated in training mode.

    The three tensors are frozen Parameters (``requires_grad=False``), as in the official
    checkpoints, so they appear in ``parameters()`` and ``state_dict()`` under the same names.
    """

    def __init__(self, size: int = 1, beta: float = 0.99999, epsilon: float = 1e-5):
        super().__init__()
        self.beta, self.epsilon = beta, epsilon
        self.running_mean = nn.Parameter(torch.zeros(size), requires_grad=False)
        self.running_mean_sq = nn.Parameter(torch.zeros(size), requires_grad=False)
        self.debiasing_term = nn.Parameter(torch.tensor(0.0), requires_grad=False)

    def mean_var(self) -> tuple[torch.Tensor, torch.Tensor]:
        d = self.debiasing_term.clamp(min=self.epsilon)
        mean = self.running_mean / d
        var = (self.running_mean_sq / d - mean**2).clamp(min=1e-2)
        return mean, var

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Normalise targets ``x`` (B, T); in training mode first update the statistics."""
        x = x.float()
        if self.training:
            with torch.no_grad():
                w = self.beta
                self.running_mean.mul_(w).add_(x.mean() * (1 - w))
                self.running_mean_sq.mul_(w).add_((x**2).mean() * (1 - w))
                self.debiasing_term.mul_(w).add_(1 - w)
        mean, var = self.mean_var()
        return (x - mean) / torch.sqrt(var)

    def denormalize(self, x: torch.Tensor) -> torch.Tensor:
        mean, var = self.mean_var()
        return x * torch.sqrt(var) + mean


class ValueHead(nn.Module):
    """Linear(D, 1) predicting the normalised value; ``denormalize`` maps it back."""

    def __init__(self, dim: int):
        super().__init__()
        self.linear = nn.Linear(dim, 1)
        self.normalizer = EwmaNormalizer(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(x)[..., 0]  # (B, T)

    def denormalize(self, v: torch.Tensor) -> torch.Tensor:
        return self.normalizer.denormalize(v)

    def normalize(self, target: torch.Tensor) -> torch.Tensor:
        return self.normalizer(target)


# ----------------------------------------------------------------------------------------
# Configuration
# ----------------------------------------------------------------------------------------

# Keys of official net args that the original accepts but that do not change this network
# (at the values given). Any other unknown key is reported.
INERT_NET_ARGS = frozenset({"input_shape", "active_reward_monitors", "obs_processing_width"})
_FIXED_NET_ARGS = {
    "scale_input_img": True,
    "img_statistics": None,
    "first_conv_norm": False,
    "single_output": False,
}


def _minecraft_heads() -> dict[str, int]:
    return dict(MINECRAFT_ACTION_HEADS)


@dataclass
class PolicyConfig:
    """Every setting of the policy network.

    The first block are the official VPT net kwargs (as stored in ``2x.model``), with the
    2x values as defaults; then the aimc settings.
    """

    attention_heads: int = 16
    """Attention heads per transformer block (head size q = hidsize / heads)."""
    attention_mask_style: str = "clipped_causal"
    """"clipped_causal" (each frame sees itself and the L-1 frames before it) or "none"."""
    attention_memory_size: int = 256
    """Memory + chunk size; the memory holds L = attention_memory_size - timesteps frames."""
    diff_mlp_embedding: bool = False
    """Accepted for compatibility; unused by the original policy."""
    hidsize: int = 2048
    """Width D of the recurrent trunk and the heads' input."""
    img_shape: list[int] = field(default_factory=lambda: [128, 128, 3])
    """Input frame (H, W, C)."""
    impala_chans: list[int] = field(default_factory=lambda: [16, 32, 32])
    """Channels of the three IMPALA stacks before multiplying by ``impala_width``."""
    impala_kwargs: dict[str, Any] = field(default_factory=lambda: {"post_pool_groups": 1})
    """IMPALA options; only ``post_pool_groups`` (GroupNorm groups after pooling, or null)."""
    impala_width: int = 8
    """Multiplier on ``impala_chans``."""
    init_norm_kwargs: dict[str, Any] = field(default_factory=lambda: {"batch_norm": False, "group_norm_groups": 1})
    """Norm of the conv layers: ``group_norm_groups`` (GroupNorm) or ``batch_norm``; dense layers get LayerNorm."""
    n_recurrence_layers: int = 4
    """Number of recurrent blocks."""
    only_img_input: bool = True
    """Accepted for compatibility; the policy always sees only the image (plus the goal)."""
    pointwise_ratio: int = 4
    """Hidden width of the per-block MLP, as a multiple of hidsize."""
    pointwise_use_activation: bool = False
    """ReLU after the MLP's second layer."""
    recurrence_is_residual: bool = True
    """Residual connections around the LSTM and the MLP (attention is always residual)."""
    recurrence_type: str = "transformer"
    """"transformer", "multi_layer_lstm", "multi_layer_bilstm" (every 2nd block backwards) or "lstm" (= multi_layer_lstm)."""
    timesteps: int = 128
    """Training chunk length the memory was sized for (only used to compute L)."""
    use_pointwise_layer: bool = True
    """Per-block residual MLP."""
    use_pre_lstm_ln: bool = False
    """LayerNorm between the image/goal features and the recurrent blocks."""

    mineclip_embed_dim: int = 512
    """Goal embedding size E (STEVE-1: MineCLIP 512). 0 = unconditioned VPT policy (no goal layer)."""
    goal_conditioning: str = "add"
    """How the goal enters. "add" (STEVE-1, the official files): a linear map of the goal is added
    to the image features. "film" (aimc, not in any official file): the goal sets a scale and a
    shift of the image features (before the recurrent layers) and of the final latent (after
    them), so the recurrent history cannot drown it out; used by the built-in world."""
    temperature: float = 2.0
    """Action logits are divided by this before log_softmax (pi_head_opts temperature)."""
    action_heads: dict[str, int] = field(default_factory=_minecraft_heads)
    """Categorical action heads {name: number of choices}; Minecraft: buttons 8641, camera 121."""
    channels_last: bool = False
    """Run the CNN in channels_last memory format (same results, often faster on GPU)."""
    activation_checkpointing: bool = False
    """Recompute the CNN and each recurrent block in backward to save memory (same results)."""
    reset_on_every_first: bool = False
    """Correction: honour `first` at every time step. Original (default): only first[:, 0] of a call resets."""
    attention_sqrt_scaling: bool = False
    """Correction: divide attention logits by sqrt(q). Original (default): by q. Changes the model."""
    renormalize_guided_logits: bool = False
    """Correction: log_softmax the guided scores in act(). Original (default): unnormalised."""

    def __post_init__(self) -> None:
        def bad(name: str, why: str) -> ConfigError:
            return ConfigError(f"PolicyConfig.{name}={getattr(self, name)!r}: {why}")

        if self.recurrence_type not in RECURRENCE_TYPES:
            raise bad("recurrence_type", f"must be one of {', '.join(RECURRENCE_TYPES)}")
        if self.attention_mask_style not in ("clipped_causal", "none"):
            raise bad("attention_mask_style", 'must be "clipped_causal" or "none"')
        for name in ("hidsize", "n_recurrence_layers", "pointwise_ratio", "impala_width", "attention_heads"):
            if int(getattr(self, name)) < 1:
                raise bad(name, "must be a positive integer")
        if self.recurrence_type == "transformer":
            if self.hidsize % self.attention_heads:
                raise bad("attention_heads", f"must divide hidsize={self.hidsize}")
            if self.attention_memory_size - self.timesteps < 1:
                raise bad("attention_memory_size", f"must exceed timesteps={self.timesteps} (memory L = difference)")
        if len(self.img_shape) != 3 or min(self.img_shape) < 1:
            raise bad("img_shape", "must be [height, width, channels]")
        if len(self.impala_chans) < 1:
            raise bad("impala_chans", "needs at least one stack")
        unknown = set(self.impala_kwargs) - {"post_pool_groups"}
        if unknown:
            raise bad("impala_kwargs", f"unsupported keys {sorted(unknown)} (only post_pool_groups)")
        unknown = set(self.init_norm_kwargs) - {"batch_norm", "group_norm_groups"}
        if unknown:
            raise bad("init_norm_kwargs", f"unsupported keys {sorted(unknown)} (only batch_norm, group_norm_groups)")
        if self.mineclip_embed_dim < 0:
            raise bad("mineclip_embed_dim", "must be >= 0 (0 = no goal conditioning)")
        if self.goal_conditioning not in ("add", "film"):
            raise bad("goal_conditioning", 'must be "add" (STEVE-1) or "film"')
        if not self.temperature > 0:
            raise bad("temperature", "must be > 0")
        if not self.action_heads or any(int(n) < 1 for n in self.action_heads.values()):
            raise bad("action_heads", "needs at least one head, each with >= 1 choices")
        if self.reset_on_every_first and self.recurrence_type == "multi_layer_bilstm":
            raise bad("reset_on_every_first", "is not defined for backwards-running LSTM blocks")
        self.temperature = float(self.temperature)

    # -- helpers used by the modules --
    def conv_norm(self) -> tuple[str | None, int]:
        if self.init_norm_kwargs.get("batch_norm", False):
            return "batch", 1
        groups = self.init_norm_kwargs.get("group_norm_groups")
        return ("group", int(groups)) if groups is not None else (None, 1)

    def dense_norm(self) -> str | None:
        # The original swaps GroupNorm/BatchNorm for LayerNorm in dense layers.
        return "layer" if self.conv_norm()[0] is not None else None

    @property
    def memory_length(self) -> int:
        """L: frames of attention memory."""
        return self.attention_memory_size - self.timesteps

    # -- presets and conversions --
    @classmethod
    def vpt_2x(cls, **overrides: Any) -> "PolicyConfig":
        """The official 2x net (``2x.model``), as STEVE-1 builds it (goal layer of 512).

        Pass ``mineclip_embed_dim=0`` for the unconditioned VPT 2x policy.
        """
        return dataclasses.replace(cls(), **overrides)

    @classmethod
    def tiny(cls, **overrides: Any) -> "PolicyConfig":
        """A very small transformer policy for tests (64x64 frames, D=32, 2 blocks, L=16)."""
        base = dict(
            attention_heads=4,
            attention_memory_size=24,
            timesteps=8,
            hidsize=32,
            img_shape=[64, 64, 3],
            impala_chans=[4, 8, 8],
            impala_width=1,
            n_recurrence_layers=2,
            pointwise_ratio=2,
            mineclip_embed_dim=16,
        )
        base.update(overrides)
        return cls(**base)

    @classmethod
    def from_net_args(cls, net_args: dict, pi_head_opts: dict | None = None, **overrides: Any) -> "PolicyConfig":
        """Build from the ``.model`` dicts (``["model"]["args"]["net"]["args"]`` and ``pi_head_opts``)."""
        names = {f.name for f in dataclasses.fields(cls)}
        kwargs: dict[str, Any] = {}
        for key, value in net_args.items():
            if key in names:
                kwargs[key] = value
            elif key in _FIXED_NET_ARGS:
                if value != _FIXED_NET_ARGS[key]:
                    raise ValueError(f"net arg {key}={value!r} is not supported (only {_FIXED_NET_ARGS[key]!r})")
            elif key not in INERT_NET_ARGS:
                warnings.warn(f"ignoring unknown net arg {key}={value!r} (the original ignores it too)", stacklevel=2)
        for key in ("img_shape", "impala_chans"):
            if key in kwargs:
                kwargs[key] = [int(v) for v in kwargs[key]]
        for key in ("impala_kwargs", "init_norm_kwargs"):
            if key in kwargs:
                kwargs[key] = dict(kwargs[key] or {})
        if kwargs.get("recurrence_type") is None and "recurrence_type" in kwargs:
            raise ValueError("net arg recurrence_type=None is not supported")
        pi_head_opts = dict(pi_head_opts or {})
        if "temperature" in pi_head_opts:
            kwargs["temperature"] = float(pi_head_opts.pop("temperature"))
        if pi_head_opts:
            warnings.warn(f"ignoring unknown pi_head_opts {sorted(pi_head_opts)}", stacklevel=2)
        kwargs.update(overrides)
        return cls(**kwargs)

    def to_net_args(self) -> tuple[dict, dict]:
        """-> (net_args, pi_head_opts) as the official ``.model`` file stores them."""
        official = [
            "attention_heads", "attention_mask_style", "attention_memory_size", "diff_mlp_embedding", "hidsize",
            "img_shape", "impala_chans", "impala_kwargs", "impala_width", "init_norm_kwargs", "n_recurrence_layers",
            "only_img_input", "pointwise_ratio", "pointwise_use_activation", "recurrence_is_residual",
            "recurrence_type", "timesteps", "use_pointwise_layer", "use_pre_lstm_ln",
        ]  # fmt: skip
        net_args = {k: _plain(getattr(self, k)) for k in official}
        if net_args["recurrence_type"] == "lstm":
            net_args["recurrence_type"] = "multi_layer_lstm"
        return net_args, {"temperature": self.temperature}


def _plain(v: Any) -> Any:
    if isinstance(v, (list, tuple)):
        return [_plain(x) for x in v]
    if isinstance(v, dict):
        return {k: _plain(x) for k, x in v.items()}
    return v


# ----------------------------------------------------------------------------------------
# The policy
# ----------------------------------------------------------------------------------------


class PolicyNet(nn.Module):
    """Frames (+ goal) -> shared latent (B, T, D) (the original ``MinecraftPolicy``)."""

    def __init__(self, cfg: PolicyConfig):
        super().__init__()
        self.img_process = ImageEncoder(cfg)
        self.pre_lstm_ln = nn.LayerNorm(cfg.hidsize) if cfg.use_pre_lstm_ln else None
        self.recurrent_layer = RecurrentStack(cfg)
        dense_norm = cfg.dense_norm()
        self.lastlayer = FanInLayer(cfg.hidsize, cfg.hidsize, "linear", dense_norm)
        self.final_ln = nn.LayerNorm(cfg.hidsize)
        e, d = cfg.mineclip_embed_dim, cfg.hidsize
        film = e > 0 and cfg.goal_conditioning == "film"
        # STEVE-1: the goal embedding, linearly mapped, is added to the image features.
        self.mineclip_embed_linear = nn.Linear(e, d) if e > 0 and not film else None
        # FiLM: goal -> (scale, shift) of the image features and of the final latent. Zero
        # initialised, so training starts from the unconditioned network.
        self.goal_film_in = nn.Linear(e, 2 * d) if film else None
        self.goal_film_out = nn.Linear(e, 2 * d) if film else None
        for layer in (self.goal_film_in, self.goal_film_out):
            if layer is not None:
                nn.init.zeros_(layer.weight)
                nn.init.zeros_(layer.bias)

    def forward(
        self, img: torch.Tensor, goal: torch.Tensor | None, first: torch.Tensor, state: State
    ) -> tuple[torch.Tensor, State]:
        x = self.img_process(img)  # (B, T, D)
        return self.recur(x, goal, first, state)

    @property
    def goal_conditioned(self) -> bool:
        return self.mineclip_embed_linear is not None or self.goal_film_in is not None

    def recur(
        self, x: torch.Tensor, goal: torch.Tensor | None, first: torch.Tensor, state: State
    ) -> tuple[torch.Tensor, State]:
        """Image features x (B, T, D) + goal (B, T, E) -> latent (B, T, D): everything after the CNN."""
        if self.goal_conditioned and goal is None:
            raise ValueError("this policy is goal-conditioned: pass goal (B, T, E); zeros = unconditioned")
        if self.mineclip_embed_linear is not None:
            x = x + self.mineclip_embed_linear(goal.to(x.dtype))  # zero goal adds only the bias
        if self.goal_film_in is not None:
            scale, shift = self.goal_film_in(goal.to(x.dtype)).chunk(2, dim=-1)  # (B, T, D) each
            x = x * (1 + scale) + shift
        if self.pre_lstm_ln is not None:
            x = self.pre_lstm_ln(x)
        x, state = self.recurrent_layer(x, first, state)  # (B, T, D)
        x = F.relu(x)
        x = self.lastlayer(x)  # LN -> Linear (no bias) -> ReLU
        x = self.final_ln(x)  # (B, T, D)
        if self.goal_film_out is not None:
            scale, shift = self.goal_film_out(goal.to(x.dtype)).chunk(2, dim=-1)
            x = x * (1 + scale) + shift
        return x, state


class STEVE1Policy(nn.Module):
    """The VPT ``MinecraftAgentPolicy`` plus STEVE-1 goal conditioning.

    ``forward(img, goal, first, state)`` runs a chunk of T frames with carried recurrent
    state; ``act`` runs one step for acting, with classifier-free guidance.
    """

    def __init__(self, cfg: PolicyConfig):
        super().__init__()
        self.cfg = cfg
        self.net = PolicyNet(cfg)
        self.value_head = ValueHead(cfg.hidsize)
        self.pi_head = nn.ModuleDict(
            {name: CategoricalHead(cfg.hidsize, int(n), cfg.temperature) for name, n in cfg.action_heads.items()}
        )

    # -- state -----------------------------------------------------------------------
    def initial_state(self, batch_size: int, device: torch.device | str | None = None) -> State:
        """Fresh recurrent state for ``batch_size`` rows (use 2*B for guided ``act``)."""
        if device is None:
            device = next(self.parameters()).device
        return [block.initial_state(batch_size, device) for block in self.net.recurrent_layer.blocks]

    # -- network -----------------------------------------------------------------------
    def forward(
        self,
        img: torch.Tensor,
        goal: torch.Tensor | None,
        first: torch.Tensor,
        state: State,
    ) -> tuple[dict[str, torch.Tensor], torch.Tensor, State]:
        """img (B, T, H, W, 3) uint8, goal (B, T, E) float, first (B, T) bool ->
        (normalised log-probs {name: (B, T, n)}, vpred (B, T) normalised value, new state).

        As the original, only ``first[:, 0]`` resets the carried state (unless
        ``cfg.reset_on_every_first``).
        """
        latent, state = self.net(img, goal, first.bool(), state)  # (B, T, D)
        logits = {name: head(latent) for name, head in self.pi_head.items()}
        return logits, self.value_head(latent), state

    # -- distributions -----------------------------------------------------------------
    @staticmethod
    def log_prob(logits: dict[str, torch.Tensor], actions: dict[str, torch.Tensor]) -> torch.Tensor:
        """Sum over heads of log p(action): logits {name: (..., n)}, actions {name: (...)} -> (...)."""
        return sum(l.gather(-1, actions[k].long()[..., None])[..., 0] for k, l in logits.items())

    @staticmethod
    def entropy(logits: dict[str, torch.Tensor]) -> torch.Tensor:
        """Sum over heads of the entropy of each categorical: (...)."""
        return sum(-(l.exp() * l).sum(-1) for l in logits.values())

    @staticmethod
    def sample(logits: dict[str, torch.Tensor],
               generator: torch.Generator | Sequence[torch.Generator] | None = None) -> dict[str, torch.Tensor]:
        """Gumbel-max sample of each head (as the original): {name: int64 (...)}.

        generator: one stream for the whole batch, or one per batch row (logits (B, n), B
        generators): row i's draws then come from its own stream only, whatever the other rows are.
        """
        out = {}
        for k, l in logits.items():
            if isinstance(generator, (list, tuple)):
                if len(generator) != l.shape[0]:
                    raise ValueError(f"{len(generator)} generators for a batch of {l.shape[0]} rows")
                u = torch.stack([torch.rand(l.shape[1:], generator=g, device=l.device, dtype=l.dtype) for g in generator])
            else:
                u = torch.rand(l.shape, generator=generator, device=l.device, dtype=l.dtype)
            u = torch.where(u == 1.0, torch.full_like(u, 0.999), u)
            out[k] = torch.argmax(l - torch.log(-torch.log(u)), dim=-1)
        return out

    @staticmethod
    def argmax(logits: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return {k: torch.argmax(l, dim=-1) for k, l in logits.items()}

    # -- acting ------------------------------------------------------------------------
    @torch.no_grad()
    def act(
        self,
        img: torch.Tensor,
        goal: torch.Tensor | None,
        first: torch.Tensor,
        state: State,
        cond_scale: float = 0.0,
        stochastic: bool = True,
        generator: torch.Generator | Sequence[torch.Generator] | None = None,
    ) -> tuple[dict[str, torch.Tensor], State, dict[str, Any]]:
        """One step: img (B, H, W, 3) uint8, goal (B, E), first (B,) ->
        (actions {name: (B,)}, new state, info).

        Classifier-free guidance (when the state has 2B rows, from ``initial_state(2*B)``;
        required when ``cond_scale != 0``): rows [goal ; zero goal] run in one batched pass
        and the scores are :func:`guided_scores` of their normalised log-probs. Both rows of
        an environment see the same frame, so the IMPALA CNN (most of the compute) runs once
        on the B frames and its features serve both row sets; the goal enters after it.
        ``info``: ``log_prob`` (B,) read from the scores (unnormalised unless
        ``cfg.renormalize_guided_logits``, as in the original), ``sampled_log_prob`` (B,) the
        log-probability of the action under the distribution it was drawn from
        (``log_softmax`` of the scores), ``vpred`` (B,) denormalised value of the conditional
        rows, ``vpred_uncond`` (B,) when guided, ``logits`` {name: (B, n)} the scores used.
        """
        b = img.shape[0]
        rows = state_batch_size(state)
        guided = rows == 2 * b
        if not guided and rows != b:
            raise ValueError(f"state has {rows} rows; expected {b} (no guidance) or {2 * b} (guidance)")
        if cond_scale != 0 and not guided:
            raise ValueError(
                f"cond_scale={cond_scale} needs a state with 2*B={2 * b} rows (conditional and unconditional): "
                f"start from policy.initial_state({2 * b})"
            )
        first = first.bool().reshape(b)
        if guided:
            if goal is None:
                raise ValueError("guidance needs a goal embedding")
            # One CNN pass serves both row sets. A lone frame still runs as the pair [img ; img],
            # as in the original: on CPU, GroupNorm splits a one-sample reduction over threads,
            # which moves the outputs ~3e-5 off the original's after a few steps.
            x = self.net.img_process((img if b > 1 else torch.cat([img, img]))[:, None])  # (B or 2, 1, D)
            x = torch.cat([x, x]) if b > 1 else x  # (2B, 1, D)
            goal = torch.cat([goal, torch.zeros_like(goal)])  # [goal ; no goal]
            first = torch.cat([first, first])
        else:
            x = self.net.img_process(img[:, None])  # (B, 1, D)
        goal_t = goal[:, None] if goal is not None else None
        latent, state = self.net.recur(x, goal_t, first[:, None], state)  # (rows, 1, D)
        logits = {k: head(latent)[:, 0] for k, head in self.pi_head.items()}  # (rows, n) normalised
        values = self.value_head.denormalize(self.value_head(latent)[:, 0])  # (rows,)
        info: dict[str, Any] = {}
        if guided:
            logits = guided_scores({k: l[:b] for k, l in logits.items()}, {k: l[b:] for k, l in logits.items()},
                                   cond_scale, self.cfg.renormalize_guided_logits)
            info["vpred_uncond"] = values[b:]
        actions = self.sample(logits, generator) if stochastic else self.argmax(logits)
        info.update(log_prob=self.log_prob(logits, actions),
                    sampled_log_prob=self.log_prob({k: F.log_softmax(l, dim=-1) for k, l in logits.items()}, actions),
                    vpred=values[:b], logits=logits)
        return actions, state, info


def guided_scores(
    lp_cond: dict[str, torch.Tensor], lp_uncond: dict[str, torch.Tensor], scale: float, renormalize: bool = False
) -> dict[str, torch.Tensor]:
    """Classifier-free guidance: ``(1 + s) * cond - s * uncond`` per head, s = ``scale``.

    lp_cond / lp_uncond: normalised log-probs {name: (..., n)} of the goal-conditioned and the
    unconditioned (zero goal) rows. The result is left unnormalised as in the original (so
    sampling from it samples ``softmax`` of it); ``renormalize`` applies ``log_softmax``.
    """
    s = float(scale)
    out = {k: (1 + s) * lp - s * lp_uncond[k] for k, lp in lp_cond.items()}
    if renormalize:
        out = {k: F.log_softmax(v, dim=-1) for k, v in out.items()}
    return out


# ----------------------------------------------------------------------------------------
# State helpers
# ----------------------------------------------------------------------------------------


def state_batch_size(state: State) -> int:
    return int(state[0][0].shape[0])


def detach_state(state: State) -> State:
    """Cut the gradient through carried state (truncated BPTT between chunks)."""
    return [tuple(t.detach() for t in layer) for layer in state]


def select_state(state: State, index: torch.Tensor | slice | list[int]) -> State:
    """Rows ``index`` of every state tensor."""
    return [tuple(t[index] for t in layer) for layer in state]


def state_to(state: State, device: torch.device | str) -> State:
    return [tuple(t.to(device) for t in layer) for layer in state]


__all__ = [
    "MINECRAFT_ACTION_HEADS",
    "PolicyConfig",
    "STEVE1Policy",
    "State",
    "detach_state",
    "guided_scores",
    "select_state",
    "state_batch_size",
    "state_to",
]
