"""LoRA adapters on the real policy's transformer: only adapters train, merging gives the
same function in plain weights, and a LoRA run exports loadable official-layout weights."""

from __future__ import annotations

import copy

import pytest
import torch
from safetensors.torch import load_file
from test_train_support import GOAL_DIM, SyntheticBatches, TinyPolicy, single_thread  # noqa: F401 (autouse fixture)
from torch import nn

from aimc.config import load_config
from aimc.errors import UserError
from aimc.models.vpt import PolicyConfig, STEVE1Policy
from aimc.train.config import OptimConfig, TrainConfig
from aimc.train.lora import LoRALinear, apply_lora, merge_lora
from aimc.train.optim import make_optimizer
from aimc.train.policy import chunk, export_weights, micro_step, train_policy


def _policy() -> STEVE1Policy:
    torch.manual_seed(0)
    return STEVE1Policy(PolicyConfig.tiny(img_shape=[16, 16, 3], action_heads={"action": 5}, mineclip_embed_dim=GOAL_DIM))


def _batch(B=2, T=8):
    g = torch.Generator().manual_seed(1)
    return {
        "img": torch.randint(0, 255, (B, T, 16, 16, 3), dtype=torch.uint8, generator=g),
        "goal": torch.randn(B, T, GOAL_DIM, generator=g),
        "actions": {"action": torch.randint(0, 5, (B, T), generator=g)},
        "first": torch.zeros(B, T, dtype=torch.bool),
    }


def _out(p, b):
    with torch.no_grad():
        logits, _, _ = p.eval()(b["img"], b["goal"], b["first"], p.initial_state(b["first"].shape[0]))
    return logits["action"]


def test_lora_trains_only_adapters_and_merges_back(tmp_path):
    p = _policy()
    b = _batch()
    base_out = _out(p, b)
    before = {k: v.clone() for k, v in p.state_dict().items()}
    wrapped = apply_lora(p, ["net.recurrent_layer.*"], rank=2, alpha=4.0)
    assert wrapped and all(n.startswith("net.recurrent_layer.") for n in wrapped)
    trainable = [n for n, q in p.named_parameters() if q.requires_grad]
    assert trainable and all(n.endswith(("lora_A", "lora_B")) for n in trainable)
    torch.testing.assert_close(_out(p, b), base_out, rtol=0, atol=0)  # B = 0: same function at start

    opt = make_optimizer(p, OptimConfig(lr=1e-2), torch.device("cpu"))
    p.train()
    for _ in range(3):
        micro_step(p, p, chunk(b, 0, 8, torch.device("cpu")), p.initial_state(2), "fp32", torch.device("cpu"))
        opt.step()
        opt.zero_grad()
    adapted = _out(p, b)
    assert not torch.allclose(adapted, base_out)
    for name, module in p.named_modules():  # the adapted weights themselves never moved
        if isinstance(module, LoRALinear):
            assert torch.equal(module.base.weight, before[f"{name}.weight"])
    for k, v in p.state_dict().items():
        if "lora_" not in k and ".base." not in k:
            assert torch.equal(v, before[k]), k

    merged = merge_lora(copy.deepcopy(p))
    assert not any(isinstance(m, LoRALinear) for m in merged.modules())
    assert set(merged.state_dict()) == set(before)  # plain names again
    torch.testing.assert_close(_out(merged, b), adapted, rtol=1e-5, atol=1e-5)

    # export merges too: the official-layout file loads into a plain policy with the same output
    export_weights(p, tmp_path / "m", [".safetensors"])
    from aimc.checkpoints.vpt import load_policy

    torch.testing.assert_close(_out(load_policy(tmp_path / "m.safetensors"), b), adapted, rtol=1e-5, atol=1e-5)


def test_lora_targets_must_match():
    with pytest.raises(UserError, match="match no linear layer"):
        apply_lora(nn.Sequential(nn.Linear(2, 2)), ["net.*"], rank=2, alpha=1.0)


def test_lora_run_in_the_loop(tmp_path):
    cfg = load_config(TrainConfig, "tiny", [f"model.goal_dim={GOAL_DIM}", "logging.tensorboard=false",
                                            "model.lora.rank=2", "model.lora.train_groups=[heads]",
                                            "schedule.n_frames=128", "validation.enabled=false"])
    torch.manual_seed(0)
    model = TinyPolicy()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    train_policy(cfg, tmp_path / "run", policy=model, train_data=SyntheticBatches(4, 8))
    final = load_file(str(tmp_path / "run" / "final.safetensors"))
    assert set(final) == set(before)
    changed = {k for k in before if not torch.equal(before[k], final[k])}
    # the adapted linear (merged) and the heads group changed, nothing else
    assert "net.recurrent_layer.proj.weight" in changed and "pi_head.action.weight" in changed
    assert changed <= {"net.recurrent_layer.proj.weight", "pi_head.action.weight", "pi_head.action.bias"}
