"""PPO's losses and one update over a :class:`aimc.rl.rollouts.Rollout` (cleanRL's recurrent PPO).

Per minibatch of fragments, replayed from their stored recurrent states:

    ratio     = exp(log pi(a) - log pi_old(a))                     pi_old: the rollout's log-probs
    policy    = mean(max(-A ratio, -A clip(ratio, 1 - c, 1 + c)))  A: GAE, normalised per minibatch
    value     = 0.5 mean((v - normalise(R))^2)                     VPT's value head and EWMA normaliser
    kl_ref    = mean(sum over heads of KL(pi || pi_ref))           pi_ref: frozen starting weights
    loss      = policy + vf_coef value + kl_coef kl_ref - ent_coef entropy

Means run over the valid steps. The optimizer step is :func:`aimc.train.policy.optimizer_step`
(gradient clipping, divergence check, DDP all-reduce). An update's epochs stop early once the
approximate KL to the rollout's policy, ``mean((ratio - 1) - log ratio)``, passes ``target_kl``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from aimc.rl.config import PPOConfig
from aimc.rl.rollouts import Rollout, gather_states, policy_forward
from aimc.train import distributed as D
from aimc.train.policy import Learner, kl_to_reference, optimizer_step


def explained_variance(pred: np.ndarray, target: np.ndarray) -> float:
    """1 - Var(target - pred) / Var(target) (NaN when the targets do not vary)."""
    var = float(np.var(target))
    return math.nan if var == 0 else 1.0 - float(np.var(target - pred)) / var


@dataclass
class Minibatch:
    index: list[tuple[int, int]]  # (slot, fragment)


class _Fragments:
    """The ``MicroBatches`` stream ``optimizer_step`` consumes: one minibatch of fragments, one micro-step."""

    def __init__(self, chunk: dict[str, Any], state: Any) -> None:
        self.chunk, self.state = chunk, state

    def next(self) -> tuple[dict[str, Any], Any]:
        return self.chunk, self.state

    def done(self, state: Any) -> None:
        pass


def minibatch_tensors(ro: Rollout, index: list[tuple[int, int]], device: torch.device) -> dict[str, Any]:
    F = ro.fragment

    def take(a: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(np.stack([a[s, f * F:(f + 1) * F] for s, f in index])).to(device)

    c = {"goal": take(ro.goal), "first": take(ro.first),
         "actions": {h: take(a) for h, a in ro.actions.items()}, "old_log_prob": take(ro.log_prob),
         "valid": take(ro.valid), "adv": take(ro.advantages), "ret": take(ro.returns)}
    if ro.features is not None:
        c["feat"] = take(ro.features)
    else:
        c["img"] = take(ro.img)
    if ro.ref_logits is not None:
        c["ref"] = {h: take(a) for h, a in ro.ref_logits.items()}
    return c


def with_bc(c: dict[str, Any], state: Any, bc: dict[str, Any], policy: torch.nn.Module,
            device: torch.device) -> tuple[dict[str, Any], Any, int]:
    """Minibatch ``c`` with the BC sequences ``bc`` (B', T) appended as rows (fresh recurrent state),
    so that one forward serves both (and DDP sees one forward); returns (chunk, state, PPO rows)."""
    from aimc.models.vpt import state_batch_size

    n = state_batch_size(state)
    b = {k: (v.to(device) if isinstance(v, torch.Tensor) else torch.as_tensor(v).to(device))
         for k, v in bc.items() if k in ("img", "goal", "first")}
    out = dict(c)
    out["goal"] = torch.cat([c["goal"], b["goal"].float()])
    out["first"] = torch.cat([c["first"], b["first"].bool()])
    if "feat" in c:  # the frozen CNN: the BC frames' features, no gradient
        with torch.no_grad():
            out["feat"] = torch.cat([c["feat"], policy.net.img_process(b["img"]).float()])
    else:
        out["img"] = torch.cat([c["img"], b["img"]])
    out["bc_actions"] = {h: torch.as_tensor(a).to(device) for h, a in bc["actions"].items()}
    fresh = policy.initial_state(b["first"].shape[0], device)
    state = [tuple(torch.cat([x, y]) for x, y in zip(layer, new)) for layer, new in zip(state, fresh)]
    return out, state, n


def ppo_update(learner: Learner, ro: Rollout, cfg: PPOConfig, *, kl_coef: float, rng: np.random.Generator,
               info: D.DistInfo | None = None, policy_loss: bool = True, bc_coef: float = 0.0,
               bc_batch: Any = None) -> dict[str, float]:
    """``cfg.epochs`` passes of ``cfg.minibatches`` optimizer steps over the rollout's fragments
    (fewer when the approximate KL passes ``cfg.target_kl``); returns the update's statistics.
    ``policy_loss`` False trains the value head's loss only (``ppo.value_warmup``). ``bc_batch()``
    (with ``bc_coef`` > 0) gives the behavioural-cloning sequences added to each minibatch (PPO + BC)."""
    info = info or D.DistInfo()
    policy, device = learner.policy, learner.device
    frags = ro.fragments
    n_mb = max(1, min(cfg.minibatches, len(frags)))
    if info.enabled:  # every rank takes the same number of optimizer steps (DDP all-reduces in each)
        import torch.distributed as dist

        t = torch.tensor([n_mb], device=device)
        dist.all_reduce(t, op=dist.ReduceOp.MIN)
        n_mb = int(t)
    sums: dict[str, float] = {}
    counts = 0
    epochs_done = 0
    stopped_early = False

    for _epoch in range(cfg.epochs):
        order = rng.permutation(len(frags))
        approx_kls = []
        for part in np.array_split(order, n_mb):
            index = [frags[i] for i in part]
            c = minibatch_tensors(ro, index, device)
            state = gather_states(ro.states, index, device)
            rows = len(index)
            if bc_coef > 0 and bc_batch is not None:
                c, state, rows = with_bc(c, state, bc_batch(), policy, device)
            stats: dict[str, torch.Tensor] = {}

            def loss_fn(model, pol, c, state, stats=stats, rows=rows):
                logits, vpred, new_state = policy_forward(model, pol, c, state)
                bc_nll = None
                if "bc_actions" in c:
                    bc_nll = -pol.log_prob({h: lp[rows:] for h, lp in logits.items()}, c["bc_actions"]).float().mean()
                    logits, vpred = {h: lp[:rows] for h, lp in logits.items()}, vpred[:rows]
                valid = c["valid"].float()
                n = valid.sum().clamp(min=1)
                logp = pol.log_prob(logits, c["actions"]).float()
                logratio = (logp - c["old_log_prob"]) * valid
                ratio = logratio.exp()
                adv = c["adv"]
                if cfg.norm_adv:
                    m = (adv * valid).sum() / n
                    sd = (((adv - m) ** 2 * valid).sum() / n).sqrt()
                    adv = (adv - m) / (sd + 1e-8)
                pg = torch.max(-adv * ratio, -adv * ratio.clamp(1 - cfg.clip, 1 + cfg.clip))
                pg_loss = (pg * valid).sum() / n
                mask = c["valid"]
                target = pol.value_head.normalize(c["ret"][mask])  # updates the EWMA statistics (training mode)
                v_loss = 0.5 * ((vpred.float()[mask] - target) ** 2).mean() if mask.any() else vpred.sum() * 0
                entropy = (pol.entropy(logits).float() * valid).sum() / n
                kl_ref = ((kl_to_reference(logits, c["ref"]).float() * valid).sum() / n if "ref" in c
                          else torch.zeros((), device=vpred.device))
                loss = cfg.vf_coef * v_loss
                if policy_loss:
                    loss = loss + pg_loss + kl_coef * kl_ref - cfg.ent_coef * entropy
                    if bc_nll is not None:
                        loss = loss + bc_coef * bc_nll
                with torch.no_grad():
                    stats.update(
                        policy_loss=pg_loss, value_loss=v_loss, entropy=entropy, kl_ref=kl_ref,
                        approx_kl=(((ratio - 1) - logratio) * valid).sum() / n,
                        clipfrac=(((ratio - 1).abs() > cfg.clip).float() * valid).sum() / n)
                    if bc_nll is not None:
                        stats["bc_loss"] = bc_nll
                return loss, new_state

            step = optimizer_step(learner, _Fragments(c, state), 1, cfg.max_grad_norm, info, loss_fn=loss_fn)
            vals = {k: float(D.mean_across(v.detach().float(), info)) for k, v in stats.items()}
            vals["grad_norm"] = float(step.grad_norm)
            for k, v in vals.items():
                sums[k] = sums.get(k, 0.0) + v
            counts += 1
            approx_kls.append(vals["approx_kl"])
        epochs_done += 1
        if policy_loss and cfg.target_kl > 0 and float(np.mean(approx_kls)) > cfg.target_kl:
            stopped_early = epochs_done < cfg.epochs
            break
    if info.enabled:  # the value normaliser's statistics are no gradients: average them over the ranks
        import torch.distributed as dist

        for t in policy.value_head.normalizer.parameters():
            dist.all_reduce(t.data)
            t.data /= info.world_size
    out = {k: v / max(counts, 1) for k, v in sums.items()}
    out.update(epochs=float(epochs_done), early_stop=float(stopped_early), minibatch_steps=float(counts))
    valid = ro.valid
    out["explained_variance"] = explained_variance(ro.value[valid], ro.returns[valid])
    return out
