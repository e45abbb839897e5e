"""The policy against golden outputs of the original VPT/STEVE-1 code (fixtures/vpt_policy).

Every size, split point, reset row, chunk length and guidance scale is read from the case's
files. Tolerances follow the fixture README's "Numeric tolerance": float outputs within
1e-5 of their scale (max |value|, at least 1), guided scores within (1 + 2*lambda) times
that; integer outputs and state masks exact.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import case_params, require_case

from aimc.checkpoints.vpt import load_model_file, load_policy
from aimc.models.vpt import PolicyConfig, STEVE1Policy

MARKER = "tiny.model"
REL_TOL = 1e-5


def assert_close(actual, expected, name: str, amplify: float = 1.0) -> float:
    actual = actual.detach().cpu().numpy() if isinstance(actual, torch.Tensor) else np.asarray(actual)
    expected = np.asarray(expected)
    assert actual.shape == expected.shape, f"{name}: shape {actual.shape} != {expected.shape}"
    scale = max(1.0, float(np.abs(expected).max()))
    diff = float(np.abs(actual.astype(np.float64) - expected.astype(np.float64)).max())
    tol = REL_TOL * scale * amplify
    assert diff <= tol, f"{name}: max abs diff {diff:.3g} > tolerance {tol:.3g} (scale {scale:.3g})"
    return diff


def load_case(case):
    case = require_case(case, MARKER)
    torch.set_num_threads(max(1, min(2, torch.get_num_threads())))
    policy = load_policy(case / "tiny.weights", case / "tiny.model")
    return case, policy


def npz(case: Path, name: str) -> dict[str, np.ndarray]:
    with np.load(case / f"{name}.npz") as f:
        return {k: f[k] for k in f.files}


def t(x: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(x))


def fixture_state(arrays: dict, prefix: str, n_blocks: int):
    """The original's (mask (B,1,L), K, V) per block -> our (mask (B,L), K, V)."""
    return [
        (t(arrays[f"{prefix}_block{i}_mask"][:, 0]), t(arrays[f"{prefix}_block{i}_K"]), t(arrays[f"{prefix}_block{i}_V"]))
        for i in range(n_blocks)
    ]


def assert_state(state, arrays: dict, prefix: str, amplify: float = 1.0) -> None:
    for i, (mask, k, v) in enumerate(state):
        expected_mask = arrays[f"{prefix}_block{i}_mask"][:, 0]
        assert np.array_equal(mask.numpy(), expected_mask), f"{prefix} block {i} mask differs"
        assert_close(k, arrays[f"{prefix}_block{i}_K"], f"{prefix} block {i} K", amplify)
        assert_close(v, arrays[f"{prefix}_block{i}_V"], f"{prefix} block {i} V", amplify)


def run(policy: STEVE1Policy, img, goal, first, state):
    with torch.no_grad():
        return policy(t(img), t(goal), t(first), state)


def check_outputs(policy, logits, vpred, ref: dict, actions: dict | None, prefix: str = "") -> None:
    for head in policy.cfg.action_heads:
        assert_close(logits[head], ref[f"{prefix}pd_{head}"][:, :, 0], f"{prefix}pd_{head}")
    assert_close(vpred, ref[f"{prefix}vpred"][..., 0], f"{prefix}vpred")
    assert_close(policy.value_head.denormalize(vpred), ref[f"{prefix}vpred_denorm"][..., 0], f"{prefix}vpred_denorm")
    if actions is not None:
        assert_close(policy.log_prob(logits, actions), ref["logprob"], "logprob")
        for head in policy.cfg.action_heads:
            per_head = policy.log_prob({head: logits[head]}, {head: actions[head]})
            assert_close(per_head, ref[f"logprob_{head}"], f"logprob_{head}")


def fixture_actions(arrays: dict, policy) -> dict[str, torch.Tensor]:
    return {h: t(arrays[f"action_{h}"][..., 0]) for h in policy.cfg.action_heads}


@pytest.mark.parametrize("case", case_params(MARKER))
def test_model_file_and_weights_load_strictly(case):
    case, policy = load_case(case)
    cfg = load_model_file(case / "tiny.model")
    meta = json.loads((case / "meta.json").read_text())
    for key, value in meta["net_args"].items():
        assert getattr(cfg, key) == value, key
    assert cfg.temperature == float(meta["pi_head_opts"]["temperature"])
    assert sum(p.numel() for p in policy.parameters()) == meta["n_params"]
    assert len(policy.state_dict()) == meta["n_state_dict_entries"]


@pytest.mark.parametrize("case", case_params(MARKER))
def test_full_sequence(case):
    case, policy = load_case(case)
    inp, ref = npz(case, "io_inputs"), npz(case, "io_full")
    b = inp["img"].shape[0]
    state = policy.initial_state(b)
    for i, (_, k, v) in enumerate(state):  # the initial state is zeros, like the original's
        assert np.array_equal(k.numpy(), inp[f"init_block{i}_K"]) and np.array_equal(v.numpy(), inp[f"init_block{i}_V"])
    logits, vpred, state = run(policy, inp["img"], inp["mineclip_embed"], inp["first"], state)
    check_outputs(policy, logits, vpred, ref, fixture_actions(inp, policy))
    assert_state(state, ref, "final")


@pytest.mark.parametrize("case", case_params(MARKER))
def test_split_sequence_carries_state(case):
    case, policy = load_case(case)
    inp, ref = npz(case, "io_inputs"), npz(case, "io_split")
    s = int(ref["split_at"])
    state = policy.initial_state(inp["img"].shape[0])
    l1, v1, state = run(policy, inp["img"][:, :s], inp["mineclip_embed"][:, :s], inp["first"][:, :s], state)
    assert_state(state, ref, "mid")
    l2, v2, state = run(policy, inp["img"][:, s:], inp["mineclip_embed"][:, s:], inp["first"][:, s:], state)
    logits = {k: torch.cat([l1[k], l2[k]], dim=1) for k in l1}
    check_outputs(policy, logits, torch.cat([v1, v2], dim=1), ref, fixture_actions(inp, policy))
    assert_state(state, ref, "final")


@pytest.mark.parametrize("case", case_params(MARKER))
def test_chunk_start_reset(case):
    case, policy = load_case(case)
    inp, ref = npz(case, "io_inputs"), npz(case, "io_reset")
    mid = npz(case, "io_split")
    s, row = int(ref["split_at"]), int(ref["reset_row"])
    n_blocks = policy.cfg.n_recurrence_layers
    img, goal = inp["img"][:, s:], inp["mineclip_embed"][:, s:]
    logits, vpred, state = run(policy, img, goal, ref["first"], fixture_state(mid, "mid", n_blocks))
    check_outputs(policy, logits, vpred, ref, None)
    assert_state(state, ref, "final")
    fresh_logits, fresh_vpred, _ = run(policy, img, goal, ref["first"], policy.initial_state(img.shape[0]))
    check_outputs(policy, fresh_logits, fresh_vpred, ref, None, prefix="fresh_")
    # the reset row equals a fresh start exactly (hidden memory gets weight exactly 0)
    for k in logits:
        assert torch.equal(logits[k][row], fresh_logits[k][row])
    assert torch.equal(vpred[row], fresh_vpred[row])


@pytest.mark.parametrize("case", case_params(MARKER))
def test_long_run_past_the_attention_window(case):
    case, policy = load_case(case)
    ref = npz(case, "io_long")
    chunk, n_chunks = int(ref["chunk_len"]), int(ref["n_chunks"])
    b = ref["img"].shape[0]
    state = policy.initial_state(b)
    outs = []
    for c in range(n_chunks):
        sl = slice(c * chunk, (c + 1) * chunk)
        logits, vpred, state = run(policy, ref["img"][:, sl], ref["mineclip_embed"][:, sl], ref["first"][:, sl], state)
        for i, (mask, _, _) in enumerate(state):
            expected = ref["state_mask_after_chunk"][c, i, :, 0]
            assert np.array_equal(mask.numpy(), expected), f"state mask after chunk {c}, block {i}"
        outs.append((logits, vpred))
    logits = {k: torch.cat([o[0][k] for o in outs], dim=1) for k in outs[0][0]}
    vpred = torch.cat([o[1] for o in outs], dim=1)
    assert_close(logits["camera"], ref["pd_camera"][:, :, 0], "pd_camera")
    assert_close(logits["buttons"][:, -chunk:], ref["pd_buttons_last_chunk"][:, :, 0], "pd_buttons last chunk")
    assert_close(vpred, ref["vpred"][..., 0], "vpred")
    assert_close(policy.value_head.denormalize(vpred), ref["vpred_denorm"][..., 0], "vpred_denorm")
    assert_close(policy.log_prob(logits, fixture_actions(ref, policy)), ref["logprob"], "logprob")
    # argmax: exact, except where the reference's top-2 gap is below our error (near ties)
    ours = policy.argmax(logits)["buttons"]
    expected = t(ref["pd_buttons_argmax"][..., 0])
    differ = ours != expected
    if differ.any():
        lp = logits["buttons"]
        gap = (lp.gather(-1, ours[..., None]) - lp.gather(-1, expected[..., None]))[..., 0]
        assert float(gap[differ].max()) <= REL_TOL * 20, "argmax differs beyond a near tie"
    assert_state(state, ref, "final")


@pytest.mark.parametrize("case", case_params(MARKER))
def test_guided_act(case):
    case, policy = load_case(case)
    ref = npz(case, "io_act_cfg")
    scale = float(ref["cond_scale"])
    amplify = 1 + 2 * abs(scale)
    b = ref["goal_embed"].shape[0]
    state = policy.initial_state(2 * b)
    first = torch.zeros(b, dtype=torch.bool)
    for step in range(ref["img"].shape[0]):
        img = t(ref["img"][step : step + 1]).expand(b, *ref["img"].shape[1:])
        actions, state, info = policy.act(img, t(ref["goal_embed"]), first, state, cond_scale=scale, stochastic=False)
        for head in policy.cfg.action_heads:
            assert_close(info["logits"][head], ref[f"pd_{head}"][step][:, 0], f"step {step} guided {head}", amplify)
            assert np.array_equal(actions[head].numpy(), ref[f"ac_{head}"][step][:, 0]), f"step {step} {head} action"
        assert_close(info["log_prob"], ref["log_prob"][step], f"step {step} log_prob", amplify)
        assert_close(info["vpred"], ref["vpred"][step][:b, 0], f"step {step} vpred (conditional)")
        assert_close(info["vpred_uncond"], ref["vpred"][step][b:, 0], f"step {step} vpred (unconditional)")
    assert_state(state, ref, "final")


@pytest.mark.parametrize("case", case_params(MARKER))
def test_guided_act_env_actions(case):
    """The argmax actions of the guided run, mapped to MineRL env actions."""
    from aimc.actions.minecraft import policy_to_env

    case = require_case(case, MARKER)
    ref = npz(case, "io_act_cfg")
    order = json.loads((case / "meta.json").read_text())["act_env_button_order"]
    for step in range(ref["img"].shape[0]):
        env_buttons, env_camera = policy_to_env(ref["ac_buttons"][step][:, 0], ref["ac_camera"][step][:, 0])
        got = np.stack([np.asarray(env_buttons[k]) for k in order], axis=-1)
        assert np.array_equal(got, ref["env_buttons"][step]), f"step {step} env buttons"
        assert np.array_equal(np.asarray(env_camera, dtype=np.float64), ref["env_camera"][step]), f"step {step} camera"


def _full_size_policy(keys_file: Path) -> tuple[dict, STEVE1Policy]:
    spec = json.loads(keys_file.read_text())
    goal = [e for e in spec["keys"] if e["key"] == "net.mineclip_embed_linear.weight"]
    embed_dim = goal[0]["shape"][1] if goal else 0
    cfg = PolicyConfig.from_net_args(spec["net_args"], spec["pi_head_opts"], mineclip_embed_dim=embed_dim)
    with torch.device("meta"):
        policy = STEVE1Policy(cfg)
    return spec, policy


@pytest.mark.parametrize("case", case_params(MARKER))
@pytest.mark.parametrize("keys_name", ["keys_2x.json", "keys_vpt_2x.json"])
def test_full_size_keys(case, keys_name):
    case = require_case(case, MARKER)
    spec, policy = _full_size_policy(case / keys_name)
    sd = policy.state_dict()
    expected = {e["key"]: e for e in spec["keys"]}
    assert sorted(sd) == sorted(expected), f"missing {set(expected) - set(sd)}, extra {set(sd) - set(expected)}"
    for key, tensor in sd.items():
        e = expected[key]
        assert list(tensor.shape) == e["shape"], key
        assert str(tensor.dtype).replace("torch.", "") == e["dtype"], key
        assert tensor.numel() == e["numel"], key
    assert len(sd) == spec["n_entries"]
    params = dict(policy.named_parameters())
    assert sum(p.numel() for p in params.values()) == spec["total_elements"]
    assert sum(p.numel() for p in params.values() if p.requires_grad) == spec["trainable_parameters"]
    assert sorted(k for k, p in params.items() if not p.requires_grad) == sorted(spec["non_trainable_parameters"])
