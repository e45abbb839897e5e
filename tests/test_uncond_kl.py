"""optim.uncond_kl: behaviour cloning plus a KL that holds the unconditioned policy (goal zeroed)
where the start weights had it."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from aimc.config import load_config
from aimc.errors import ConfigError
from aimc.train import distributed as D
from aimc.train.config import TrainConfig
from aimc.train.policy import UncondAnchoredLoss, bc_loss, kl_to_reference, optimizer_step, setup_learner

from test_agent import TINY_EMBED, make_bundle


@pytest.fixture(scope="module")
def bundle(tmp_path_factory) -> Path:
    return make_bundle(tmp_path_factory.mktemp("bundle"))


def _cfg(bundle: Path, *over: str) -> TrainConfig:
    return load_config(TrainConfig, "crafter", [f"model.init={bundle}", f"model.goal_dim={TINY_EMBED}",
                                                     "model.policy={}", "optim.max_grad_norm=0", *over])


def _chunk(seed: int, B: int = 4, t: int = 8, goal: torch.Tensor | None = None, action: int | None = None) -> dict:
    rng = np.random.default_rng(seed)
    g = goal.expand(B, t, -1).clone() if goal is not None else torch.randn(B, t, TINY_EMBED)
    a = torch.full((B, t), action) if action is not None else torch.as_tensor(rng.integers(0, 17, (B, t)))
    first = torch.zeros(B, t, dtype=torch.bool)
    first[:, 0] = True
    return {"img": torch.as_tensor(rng.integers(0, 255, (B, t, 64, 64, 3), dtype=np.uint8)), "goal": g,
            "actions": {"action": a}, "first": first}


class _One:
    def __init__(self, policy, c):
        self.policy, self.c = policy, c

    def next(self):
        return self.c, self.policy.initial_state(self.c["first"].shape[0])

    def done(self, state):
        pass


def test_gradient_is_bc_plus_coef_times_the_unconditioned_kl(bundle):
    """One SGD step (lr 1) moves the weights by autograd's gradient of NLL(all rows, their goals) +
    coef x KL(pi(rows 0, 2 without goal) || pi_ref(the same)), pi_ref = the model.init weights."""
    from aimc.checkpoints.vpt import load_policy

    coef = 0.7
    cfg = _cfg(bundle, f"optim.uncond_kl={coef}", "optim.uncond_kl_share=0.5")
    policy = load_policy(bundle)
    learner, _ = setup_learner(cfg, policy, D.DistInfo(), torch.device("cpu"))
    assert isinstance(learner.loss_fn, UncondAnchoredLoss) and learner.loss_fn.stride == 2
    ref = learner.loss_fn.reference
    assert not any(p.requires_grad for p in ref.parameters())
    torch.manual_seed(0)
    with torch.no_grad():  # move away from the reference, as after some training
        for p in policy.parameters():
            p.add_(0.05 * torch.randn_like(p))
    learner.optimizer = torch.optim.SGD(policy.parameters(), lr=1.0)
    c = _chunk(0)

    before = {n: p.detach().clone() for n, p in policy.named_parameters()}
    policy.zero_grad()
    nll, _ = bc_loss(policy, policy, c, policy.initial_state(4))
    rows = [0, 2]
    zero = torch.zeros(2, 8, TINY_EMBED)
    uncond, _, _ = policy(c["img"][rows], zero, c["first"][rows], policy.initial_state(2))
    with torch.no_grad():
        ref_logits, _, _ = ref(c["img"][rows], zero, c["first"][rows], ref.initial_state(2))
    kl = kl_to_reference(uncond, ref_logits).mean()
    assert float(kl.detach()) > 1e-4  # the perturbed policy differs from the reference
    (nll + coef * kl).backward()
    expected = {n: p.grad.detach().clone() if p.grad is not None else torch.zeros_like(p)
                for n, p in policy.named_parameters()}
    policy.zero_grad()

    optimizer_step(learner, _One(policy, c), grad_accum=1)
    for n, p in policy.named_parameters():
        torch.testing.assert_close(before[n] - p.detach(), expected[n], rtol=1e-4, atol=1e-6)
    assert learner.loss_fn.take_mean() == pytest.approx(float(kl.detach()), rel=1e-4)
    assert learner.loss_fn.take_mean() is None  # reset after reading


def test_it_holds_the_unconditioned_policy_while_the_goal_learns(bundle):
    """Training every step on one goal -> one action moves the unconditioned policy too; with
    optim.uncond_kl the unconditioned policy stays near the start, while the goal's action is learnt
    as well."""
    from aimc.checkpoints.vpt import load_policy

    goal = torch.randn(TINY_EMBED)
    probe = _chunk(99, B=4)

    def train(*over: str) -> tuple[float, float]:
        policy = load_policy(bundle)
        learner, _ = setup_learner(_cfg(bundle, *over), policy, D.DistInfo(), torch.device("cpu"))
        ref = load_policy(bundle).eval()
        learner.optimizer = torch.optim.Adam(policy.parameters(), lr=3e-3)
        torch.manual_seed(0)
        for k in range(25):
            optimizer_step(learner, _One(policy, _chunk(k, goal=goal, action=5)), grad_accum=1)
        policy.eval()
        with torch.no_grad():
            zero = torch.zeros(4, 8, TINY_EMBED)
            u, _, _ = policy(probe["img"], zero, probe["first"], policy.initial_state(4))
            r, _, _ = ref(probe["img"], zero, probe["first"], ref.initial_state(4))
            c, _, _ = policy(probe["img"], goal.expand(4, 8, -1), probe["first"], policy.initial_state(4))
        return float(kl_to_reference(u, r).mean()), float(c["action"][..., 5].exp().mean())

    drift_plain, p_plain = train()
    drift_held, p_held = train("optim.uncond_kl=2.0", "optim.uncond_kl_share=0.5")
    assert drift_held < 0.25 * drift_plain, (drift_held, drift_plain)
    assert p_plain > 0.5 and p_held > 0.5, (p_plain, p_held)  # the instructed action is learnt either way


def test_settings_errors(bundle, tmp_path):
    with pytest.raises(ConfigError, match="optim.uncond_kl=1 holds the unconditioned policy.*set model.init"):
        load_config(TrainConfig, "crafter_fast", ["optim.uncond_kl=1"])
    with pytest.raises(ConfigError, match="needs optim.trunc_t = data.T.*optim.trunc_t=32"):
        _cfg(bundle, "optim.uncond_kl=1", "data.T=32")
    with pytest.raises(ConfigError, match="optim.uncond_kl must be >= 0"):
        _cfg(bundle, "optim.uncond_kl=-1")
    with pytest.raises(ConfigError, match="optim.uncond_kl_share must be in"):
        _cfg(bundle, "optim.uncond_kl=1", "optim.uncond_kl_share=0")
    with pytest.raises(ConfigError, match="optim.uncond_kl_anchor must be aimc .safetensors"):
        _cfg(bundle, "optim.uncond_kl=1", "optim.uncond_kl_anchor=x.weights")


def test_online_rounds_anchor_to_the_runs_start_weights(bundle, tmp_path):
    """Round r starts from round r-1's weights, but optim.uncond_kl and optim.l2sp hold the policy
    near --init, the weights the run started from (unless an anchor is given)."""
    from aimc.online.config import OnlineConfig
    from aimc.online.rounds import round_train_config

    cfg = load_config(OnlineConfig, "online_crafter", [f"init={bundle}", "mix.online_share=1",
                                                       "train.overrides=[optim.uncond_kl=1,optim.l2sp=0.1]"])
    t = round_train_config(cfg, tmp_path, 3, str(tmp_path / "round2.safetensors"), TINY_EMBED)
    assert t.model.init == str(tmp_path / "round2.safetensors")
    assert t.optim.uncond_kl_anchor == str(bundle) and t.optim.l2sp_anchor == str(bundle)
    cfg = load_config(OnlineConfig, "online_crafter", [f"init={bundle}", "mix.online_share=1",
                                                       "train.overrides=[optim.uncond_kl=1,optim.uncond_kl_anchor=a.safetensors]"])
    t = round_train_config(cfg, tmp_path, 3, str(tmp_path / "round2.safetensors"), TINY_EMBED)
    assert t.optim.uncond_kl_anchor == "a.safetensors" and t.optim.l2sp_anchor == ""


def test_online_and_continual_accept_it_before_the_first_round(bundle, tmp_path):
    """The settings check that runs before round 1 (and before a plan's first stage) loads the train
    preset with the start weights, so optim.uncond_kl and optim.l2sp without an anchor pass it."""
    from aimc.online.config import OnlineConfig
    from aimc.online.continual import stage_train_config
    from aimc.online.plan import ContinualConfig
    from aimc.online.rounds import check_inputs

    cfg = load_config(OnlineConfig, "online_crafter", [f"init={bundle}", "mix.online_share=1",
                                                       "train.overrides=[optim.uncond_kl=1,optim.l2sp=0.1]"])
    check_inputs(cfg)
    plan = load_config(ContinualConfig, None, [f"init={bundle}", "overrides=[optim.uncond_kl=1]",
                                               "stages=[{name: a, stores: [x], tasks: [collect_stone]}]"])
    t = stage_train_config(plan, tmp_path, 1, str(tmp_path / "stage0.safetensors"), TINY_EMBED)
    assert t.optim.uncond_kl == 1 and t.optim.uncond_kl_anchor == str(bundle)
