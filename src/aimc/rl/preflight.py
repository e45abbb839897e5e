"""Memory pre-flight of ``aimc rl``: does the policy, its frozen reference, the optimizer state and
one minibatch's activations fit a GPU (a 24 GB card by default)?

The activation estimate is ``aimc train``'s (:func:`aimc.train.preflight.estimate_memory_gib`,
calibrated on an H100 with the VPT 2x policy) for one minibatch of the update: at most
``collect.episodes x horizon / ppo.minibatches`` frames (whole episodes; the bound is reached
when no episode ends early). The reference adds one copy of the weights (``ppo.ref=copy``) or
nothing (``adapters_off``); a frozen CNN keeps no activations for the backward pass.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from aimc.rl.config import RLConfig

CARD_GIB = 24.0 * 1e9 / 2**30  # a "24 GB" card: 22.35 GiB


def estimate(cfg: RLConfig, policy: Any = None) -> dict[str, float]:
    """GiB of GPU memory: policy weights + gradients + AdamW state, reference, activations."""
    import math

    from aimc.checkpoints.vpt import load_policy
    from aimc.eval.suite import load_suite
    from aimc.rl.loop import learner_config
    from aimc.train.policy import prepare_for_training
    from aimc.train.preflight import CHECKPOINTING_FACTOR, estimate_memory_gib

    if policy is None:
        policy = load_policy(Path(cfg.init))
    goal_dim = int(policy.cfg.mineclip_embed_dim)
    tcfg = learner_config(cfg, goal_dim)
    prepare_for_training(policy, tcfg)
    suite = load_suite(cfg.collect.suite)
    tasks = suite.select(cfg.collect.tasks).tasks if cfg.collect.tasks else suite.tasks
    horizon = max(min(t.max_steps, cfg.collect.max_steps) if cfg.collect.max_steps else t.max_steps for t in tasks)
    frames = math.ceil(cfg.collect.episodes * horizon / cfg.ppo.minibatches)
    tcfg.optim.batch_size, tcfg.optim.trunc_t = max(1, frames // cfg.collect.fragment), cfg.collect.fragment
    precision = "fp32" if cfg.runtime.precision == "fp32" else "bf16"
    est = estimate_memory_gib(tcfg, policy, precision)
    if "cnn" in cfg.model.freeze:
        est["activations_gib"] *= CHECKPOINTING_FACTOR  # no CNN activations kept for the backward pass (rough)
    n = sum(p.numel() for p in policy.parameters())
    ref = 4 * n / 2**30 if cfg.ppo.ref == "copy" else 0.0
    total = est["states_gib"] + ref + est["activations_gib"]
    return {"states_gib": est["states_gib"], "reference_gib": ref, "activations_gib": est["activations_gib"],
            "total_gib": total, "frames_per_minibatch": float(frames), "parameters": float(n)}


def memory_report(cfg: RLConfig, card_gib: float = CARD_GIB, policy: Any = None, card: str = "a 24 GB card") -> str:
    """A few lines: the estimate and whether it fits ``card_gib`` (``card`` names it), with the fixes
    when it does not."""
    e = estimate(cfg, policy)
    fits = e["total_gib"] <= 0.95 * card_gib
    lines = [f"aimc rl memory pre-flight ({e['parameters'] / 1e6:.0f}M parameters, up to "
             f"{e['frames_per_minibatch']:,.0f} frames per minibatch):",
             f"  {'policy weights + gradients + AdamW state':<44}{e['states_gib']:6.1f} GiB",
             f"  {'reference policy (' + cfg.ppo.ref + ')':<44}{e['reference_gib']:6.1f} GiB",
             f"  {'activations of one minibatch':<44}{e['activations_gib']:6.1f} GiB",
             f"  {'total':<44}{e['total_gib']:6.1f} GiB -> "
             + (f"fits {card} ({card_gib:.1f} GiB)" if fits else f"does NOT fit {card} ({card_gib:.1f} GiB)")]
    if not fits:
        fixes = [f"ppo.minibatches={cfg.ppo.minibatches * 2} (half the frames per optimizer step)"]
        if "cnn" not in cfg.model.freeze:
            fixes.append("model.freeze=[cnn]")
        if cfg.model.lora.rank == 0:
            fixes.append("model.lora.rank=8 ppo.ref=adapters_off (no second copy of the weights)")
        if cfg.runtime.precision == "fp32":
            fixes.append("runtime.precision=bf16")
        lines.append("  try: " + "; or ".join(fixes))
    return "\n".join(lines)
