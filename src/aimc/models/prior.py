"""The STEVE-1 prior: a conditional VAE from a MineCLIP text embedding to a visual goal embedding.

Text prompts and 16-frame gameplay windows land in different regions of MineCLIP's space;
the policy was trained on visual goals, so text goes through this CVAE first. At inference
the latent is drawn from the prior N(0, I) and decoded together with the text embedding.

    encoder: [visual, text] (2D) -> Linear h -> LN -> ReLU -> Linear h -> LN -> ReLU -> Linear 2z
             -> (mu, logvar)                      (used only in training)
    decoder: [z, text] (z + D) -> Linear h -> LN -> ReLU -> Linear h -> LN -> ReLU -> Linear D

State-dict keys are the original's: ``encoder.{0,1,3,4,6}`` and ``decoder.{0,1,3,4,6}``
(``steve1_prior.pt`` is the flat ``state_dict()``; see :mod:`aimc.checkpoints.prior`).
Shapes: B batch, D = ``input_dim`` (512), Z = ``latent_dim``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from aimc.errors import ConfigError


@dataclass
class PriorConfig:
    """Sizes of the prior. Defaults are the released ``steve1_prior.pt`` (all 512).

    Fields:
        input_dim: MineCLIP embedding size D (text input and visual output).
        hidden_dim: width of the two hidden layers of encoder and decoder.
        latent_dim: size Z of the latent z.
    """

    input_dim: int = 512
    hidden_dim: int = 512
    latent_dim: int = 512

    def __post_init__(self) -> None:
        for name in ("input_dim", "hidden_dim", "latent_dim"):
            if int(getattr(self, name)) <= 0:
                raise ConfigError(f"PriorConfig.{name} must be positive, got {getattr(self, name)}")

    @classmethod
    def official(cls) -> PriorConfig:
        """``TranslatorVAE(input_dim=512, hidden_dim=512, latent_dim=512)`` as STEVE-1 loads it."""
        return cls()


def _mlp(in_dim: int, hidden: int, out_dim: int) -> nn.Sequential:
    # indices 0..6: Linear, LayerNorm, ReLU, Linear, LayerNorm, ReLU, Linear
    return nn.Sequential(
        nn.Linear(in_dim, hidden), nn.LayerNorm(hidden), nn.ReLU(),
        nn.Linear(hidden, hidden), nn.LayerNorm(hidden), nn.ReLU(),
        nn.Linear(hidden, out_dim),
    )


class PriorCVAE(nn.Module):
    def __init__(self, cfg: PriorConfig | None = None) -> None:
        super().__init__()
        self.cfg = cfg if cfg is not None else PriorConfig.official()
        D, H, Z = self.cfg.input_dim, self.cfg.hidden_dim, self.cfg.latent_dim
        self.encoder = _mlp(2 * D, H, 2 * Z)
        self.decoder = _mlp(Z + D, H, D)

    def encode(self, visual: torch.Tensor, text: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, D), (B, D) -> mu (B, Z), logvar (B, Z) of q(z | visual, text)."""
        mu, logvar = self.encoder(torch.cat([visual, text], dim=-1)).chunk(2, dim=-1)
        return mu, logvar

    def decode(self, z: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        """(B, Z), (B, D) -> (B, D) predicted visual embedding."""
        return self.decoder(torch.cat([z, text], dim=-1))

    def forward(self, text_emb: torch.Tensor, deterministic: bool = False, eps: torch.Tensor | None = None) -> torch.Tensor:
        """Sample a visual goal for each text embedding: decode(z, text), z ~ N(0, I).

        ``deterministic=True`` uses z = 0 (the prior mean); ``eps`` (B, Z) supplies the noise
        instead of the global torch RNG (the original draws ``randn_like`` unseeded).
        """
        B = text_emb.shape[0]
        if deterministic:
            z = text_emb.new_zeros(B, self.cfg.latent_dim)
        elif eps is not None:
            if tuple(eps.shape) != (B, self.cfg.latent_dim):
                raise ValueError(f"eps must be ({B}, {self.cfg.latent_dim}), got {tuple(eps.shape)}")
            z = eps.to(text_emb)
        else:
            z = torch.randn(B, self.cfg.latent_dim, device=text_emb.device, dtype=text_emb.dtype)
        return self.decode(z, text_emb)  # (B, D)

    def loss(
        self, visual: torch.Tensor, text: torch.Tensor, beta: float = 1.0, eps: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """ELBO as STEVE-1 trains it: beta * KL (summed over batch and latent) + MSE (mean).

        Returns (loss, parts) with parts ``kl``, ``recon`` (detached-free tensors, scalar each).
        """
        mu, logvar = self.encode(visual, text)
        if eps is None:
            eps = torch.randn_like(mu)
        z = mu + eps * torch.exp(0.5 * logvar)  # (B, Z)
        recon = self.decode(z, text)  # (B, D)
        kl = -0.5 * torch.sum(1 + logvar - mu.pow(2) - logvar.exp())
        recon_loss = F.mse_loss(recon.float(), visual.float())
        loss = beta * kl + recon_loss
        return loss, {"kl": kl, "recon": recon_loss}


__all__ = ["PriorConfig", "PriorCVAE"]
