"""Properties of the policy network on tiny configs (no fixtures needed)."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from aimc.config import from_dict, to_dict
from aimc.models.vpt import PolicyConfig, STEVE1Policy, detach_state, select_state, state_batch_size


def make(seed: int = 0, **overrides) -> STEVE1Policy:
    torch.manual_seed(seed)
    cfg = PolicyConfig.tiny(img_shape=[32, 32, 3], action_heads={"buttons": 11, "camera": 7}, **overrides)
    policy = STEVE1Policy(cfg).eval()
    with torch.no_grad():  # break symmetric inits (zero biases) so that every path matters
        for p in policy.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return policy


def inputs(policy: STEVE1Policy, b: int = 2, t: int = 12, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    h, w, c = policy.cfg.img_shape
    img = torch.randint(0, 256, (b, t, h, w, c), generator=g, dtype=torch.uint8)
    goal = torch.randn(b, t, policy.cfg.mineclip_embed_dim, generator=g)
    first = torch.zeros(b, t, dtype=torch.bool)
    first[:, 0] = True
    return img, goal, first


def run(policy, img, goal, first, state):
    with torch.no_grad():
        return policy(img, goal, first, state)


def assert_same(a: dict, b: dict, atol: float = 1e-5) -> None:
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=atol, rtol=0)


RECURRENCES = ["transformer", "lstm", "multi_layer_lstm"]


@pytest.mark.parametrize("recurrence", RECURRENCES)
def test_state_carry_equals_full_sequence(recurrence):
    policy = make(recurrence_type=recurrence)
    img, goal, first = inputs(policy)
    full, vfull, sfull = run(policy, img, goal, first, policy.initial_state(2))
    l1, v1, s = run(policy, img[:, :5], goal[:, :5], first[:, :5], policy.initial_state(2))
    l2, v2, s = run(policy, img[:, 5:], goal[:, 5:], first[:, 5:], s)
    assert_same(full, {k: torch.cat([l1[k], l2[k]], 1) for k in l1})
    torch.testing.assert_close(vfull, torch.cat([v1, v2], 1), atol=1e-5, rtol=0)
    for a, b in zip(sfull, s):
        for x, y in zip(a, b):
            torch.testing.assert_close(x, y, atol=1e-5, rtol=0)


@pytest.mark.parametrize("recurrence", RECURRENCES + ["multi_layer_bilstm"])
def test_first_at_chunk_start_resets_that_row_only(recurrence):
    policy = make(recurrence_type=recurrence)
    img, goal, first = inputs(policy, t=10)
    _, _, s = run(policy, img[:, :6], goal[:, :6], first[:, :6], policy.initial_state(2))
    second = torch.zeros(2, 4, dtype=torch.bool)
    second[1, 0] = True
    carried, _, _ = run(policy, img[:, 6:], goal[:, 6:], second, s)
    fresh, _, _ = run(policy, img[:, 6:], goal[:, 6:], second, policy.initial_state(2))
    for k in carried:
        torch.testing.assert_close(carried[k][1], fresh[k][1], atol=1e-5, rtol=0)
        assert (carried[k][0] - fresh[k][0]).abs().max() > 1e-4  # row 0 still remembers


@pytest.mark.parametrize("recurrence", ["transformer", "lstm"])
def test_mid_chunk_first_ignored_by_default_and_honoured_when_corrected(recurrence):
    quirky = make(recurrence_type=recurrence)
    corrected = make(recurrence_type=recurrence, reset_on_every_first=True)
    img, goal, first = inputs(quirky)
    plain, _, _ = run(quirky, img, goal, first, quirky.initial_state(2))
    flagged = first.clone()
    flagged[0, 7] = True
    # original behaviour: a flag at t > 0 changes nothing
    assert_same(plain, run(quirky, img, goal, flagged, quirky.initial_state(2))[0], atol=0)
    # corrected: from t=7 on, row 0 behaves like a fresh episode started at t=7
    out, _, state = run(corrected, img, goal, flagged, corrected.initial_state(2))
    fresh, _, fresh_state = run(corrected, img[:, 7:], goal[:, 7:], first[:, 7:], corrected.initial_state(2))
    for k in out:
        torch.testing.assert_close(out[k][0, 7:], fresh[k][0], atol=1e-5, rtol=0)
        torch.testing.assert_close(out[k][1, :], plain[k][1, :], atol=1e-5, rtol=0)
    # ... and the carried state also forgets the frames before the flag
    nxt = inputs(corrected, t=3, seed=5)
    cont = torch.zeros(2, 3, dtype=torch.bool)
    a = run(corrected, *nxt[:2], cont, state)[0]
    b = run(corrected, *nxt[:2], cont, fresh_state)[0]
    for k in a:
        torch.testing.assert_close(a[k][0], b[k][0], atol=1e-5, rtol=0)


def test_attention_sees_exactly_the_memory_window():
    """A frame more than L-1 steps back has no influence (one block); one L-1 steps back does."""
    policy = make(n_recurrence_layers=1)
    L = policy.cfg.memory_length
    img, goal, first = inputs(policy, b=1, t=L + 2)
    base = run(policy, img, goal, first, policy.initial_state(1))[0]["buttons"]
    changed = img.clone()
    changed[0, 0] = 255 - changed[0, 0]
    out = run(policy, changed, goal, first, policy.initial_state(1))[0]["buttons"]
    # the last frame's window is frames t-L+1 .. t, frame 0 is outside for t >= L
    torch.testing.assert_close(out[0, L:], base[0, L:], atol=1e-6, rtol=0)
    assert (out[0, L - 1] - base[0, L - 1]).abs().max() > 1e-5


def test_channels_last_and_checkpointing_keep_results():
    ref = make()
    img, goal, first = inputs(ref, t=6)
    for flags in ({"channels_last": True}, {"activation_checkpointing": True}):
        other = make(**flags)
        other.load_state_dict(ref.state_dict())
        assert_same(run(ref, img, goal, first, ref.initial_state(2))[0],
                    run(other, img, goal, first, other.initial_state(2))[0])  # fmt: skip
    # training mode: same loss and same gradients with checkpointing
    ckpt = make(activation_checkpointing=True)
    ckpt.load_state_dict(ref.state_dict())
    grads = []
    for policy in (ref, ckpt):
        policy.train()
        logits, vpred, _ = policy(img, goal, first, policy.initial_state(2))
        actions = {k: torch.zeros(2, 6, dtype=torch.long) for k in logits}
        loss = -policy.log_prob(logits, actions).mean() + vpred.pow(2).mean()
        loss.backward()
        grads.append({n: p.grad.clone() for n, p in policy.named_parameters() if p.grad is not None})
    assert grads[0].keys() == grads[1].keys() and len(grads[0]) > 50
    for n in grads[0]:
        torch.testing.assert_close(grads[0][n], grads[1][n], atol=1e-6, rtol=1e-5)


def test_gradients_flow_through_carried_state_until_detached():
    policy = make().train()
    img, goal, first = inputs(policy, t=4)
    _, _, s = policy(img[:, :2], goal[:, :2], first[:, :2], policy.initial_state(2))
    _, v, _ = policy(img[:, 2:], goal[:, 2:], torch.zeros(2, 2, dtype=torch.bool), s)
    assert v.grad_fn is not None and any(x.requires_grad for layer in s for x in layer[1:])
    assert not any(x.requires_grad for layer in detach_state(s) for x in layer)


def test_distribution_helpers():
    policy = make()
    logits = {"buttons": torch.log_softmax(torch.randn(3, 5, 11), -1), "camera": torch.log_softmax(torch.randn(3, 5, 7), -1)}
    actions = policy.argmax(logits)
    assert actions["buttons"].shape == (3, 5) and actions["buttons"].dtype == torch.int64
    lp = policy.log_prob(logits, actions)
    expected = logits["buttons"].max(-1).values + logits["camera"].max(-1).values
    torch.testing.assert_close(lp, expected)
    ent = policy.entropy(logits)
    manual = sum(torch.distributions.Categorical(logits=l).entropy() for l in logits.values())
    torch.testing.assert_close(ent, manual)
    g1, g2 = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    assert all(torch.equal(a, b) for a, b in zip(policy.sample(logits, g1).values(), policy.sample(logits, g2).values()))
    # sampling follows the distribution
    probs = torch.tensor([0.7, 0.2, 0.1])
    many = {"a": probs.log().expand(20000, 3)}
    counts = torch.bincount(policy.sample(many, torch.Generator().manual_seed(0))["a"], minlength=3) / 20000
    torch.testing.assert_close(counts, probs, atol=0.02, rtol=0)


def test_act_with_and_without_guidance():
    policy = make()
    img, goal, _ = inputs(policy, b=2, t=3)
    first = torch.tensor([True, True])
    # no guidance: batch B state, equals forward()
    actions, state, info = policy.act(img[:, 0], goal[:, 0], first, policy.initial_state(2), stochastic=False)
    logits, vpred, _ = run(policy, img[:, :1], goal[:, :1], first[:, None], policy.initial_state(2))
    assert all(torch.equal(actions[k], logits[k][:, 0].argmax(-1)) for k in actions)
    torch.testing.assert_close(info["vpred"], policy.value_head.denormalize(vpred[:, 0]))
    assert state_batch_size(state) == 2
    # guidance: one batched forward over [goal ; zero goal], state of 2B rows
    s = 3.0
    actions, state, info = policy.act(img[:, 0], goal[:, 0], first, policy.initial_state(4), cond_scale=s, stochastic=False)
    both, vboth, _ = run(
        policy, img[:, :1].repeat(2, 1, 1, 1, 1), torch.cat([goal[:, :1], torch.zeros_like(goal[:, :1])]),
        first[:, None].repeat(2, 1), policy.initial_state(4),
    )  # fmt: skip
    for k in both:
        guided = (1 + s) * both[k][:2, 0] - s * both[k][2:, 0]
        torch.testing.assert_close(info["logits"][k], guided)
        assert torch.equal(actions[k], guided.argmax(-1))
    assert state_batch_size(state) == 4
    torch.testing.assert_close(info["vpred_uncond"], policy.value_head.denormalize(vboth[2:, 0]))
    # the guided scores are not normalised by default; the correction flag renormalises them
    assert not torch.allclose(info["logits"]["camera"].exp().sum(-1), torch.ones(2), atol=1e-3)
    renorm = make(renormalize_guided_logits=True)
    _, _, info2 = renorm.act(img[:, 0], goal[:, 0], first, renorm.initial_state(4), cond_scale=s, stochastic=False)
    torch.testing.assert_close(info2["logits"]["camera"].exp().sum(-1), torch.ones(2))
    with pytest.raises(ValueError, match="initial_state"):
        policy.act(img[:, 0], goal[:, 0], first, policy.initial_state(2), cond_scale=s)


def test_select_state_picks_rows():
    policy = make()
    state = policy.initial_state(4)
    assert state_batch_size(select_state(state, [0, 2])) == 2


def test_unconditioned_vpt_and_generic_heads():
    torch.manual_seed(0)
    cfg = PolicyConfig.tiny(img_shape=[32, 32, 3], mineclip_embed_dim=0, action_heads={"action": 17})
    policy = STEVE1Policy(cfg).eval()
    assert not any("mineclip" in k for k in policy.state_dict())
    img = torch.zeros(1, 2, 32, 32, 3, dtype=torch.uint8)
    logits, vpred, _ = run(policy, img, None, torch.ones(1, 2, dtype=torch.bool), policy.initial_state(1))
    assert logits["action"].shape == (1, 2, 17) and vpred.shape == (1, 2)
    torch.testing.assert_close(logits["action"].exp().sum(-1), torch.ones(1, 2))


def test_zero_goal_adds_only_the_bias():
    policy = make()
    x = torch.zeros(1, 1, policy.cfg.mineclip_embed_dim)
    torch.testing.assert_close(policy.net.mineclip_embed_linear(x)[0, 0], policy.net.mineclip_embed_linear.bias)


def test_attention_scaling_correction_changes_the_model():
    a = make()
    b = make(attention_sqrt_scaling=True)
    b.load_state_dict(a.state_dict())
    img, goal, first = inputs(a, t=4)
    la = run(a, img, goal, first, a.initial_state(2))[0]["buttons"]
    lb = run(b, img, goal, first, b.initial_state(2))[0]["buttons"]
    assert (la - lb).abs().max() > 1e-5


def test_value_normalizer_is_frozen_and_updates_in_training_mode():
    policy = make()
    norm = policy.value_head.normalizer
    assert all(not p.requires_grad for p in norm.parameters())
    norm.train()
    before = norm.debiasing_term.item()
    norm(torch.full((2, 3), 5.0))
    assert norm.debiasing_term.item() > before
    norm.eval()
    x = torch.tensor([[1.5, -2.0]])
    torch.testing.assert_close(norm.denormalize(norm(x)), x)


def test_config_round_trip_and_validation():
    cfg = PolicyConfig.tiny(recurrence_type="lstm")
    assert from_dict(PolicyConfig, to_dict(cfg)) == cfg
    net_args, pi = cfg.to_net_args()
    assert net_args["recurrence_type"] == "multi_layer_lstm" and pi == {"temperature": cfg.temperature}
    again = PolicyConfig.from_net_args(net_args, pi, mineclip_embed_dim=cfg.mineclip_embed_dim, action_heads=cfg.action_heads)
    assert dataclasses.replace(again, recurrence_type="lstm") == cfg
    assert PolicyConfig.vpt_2x().hidsize == 2048 and PolicyConfig.vpt_2x(mineclip_embed_dim=0).mineclip_embed_dim == 0
    with pytest.raises(ValueError, match="attention_heads"):
        PolicyConfig.tiny(attention_heads=5)
    with pytest.raises(ValueError, match="recurrence_type"):
        PolicyConfig.tiny(recurrence_type="gru")
    with pytest.raises(ValueError, match="attention_memory_size"):
        PolicyConfig.tiny(attention_memory_size=8)
    with pytest.raises(ValueError, match="scale_input_img"):
        PolicyConfig.from_net_args({**net_args, "scale_input_img": False})
    with pytest.warns(UserWarning, match="unknown net arg"):
        PolicyConfig.from_net_args({**net_args, "some_new_knob": 1})


def test_film_goal_conditioning():
    """goal_conditioning="film": starts as the unconditioned network, then the goal scales and
    shifts the features on both sides of the recurrent layers; "add" keys stay out of it."""
    torch.manual_seed(0)
    cfg = PolicyConfig.tiny(img_shape=[32, 32, 3], action_heads={"action": 17}, goal_conditioning="film")
    policy = STEVE1Policy(cfg).eval()
    keys = set(policy.state_dict())
    assert {"net.goal_film_in.weight", "net.goal_film_out.bias"} <= keys
    assert not any("mineclip_embed_linear" in k for k in keys)
    img, goal, first = inputs(policy)
    a, _, _ = run(policy, img, goal, first, policy.initial_state(2))
    b, _, _ = run(policy, img, torch.zeros_like(goal), first, policy.initial_state(2))
    torch.testing.assert_close(a["action"], b["action"])  # zero-initialised: the goal does nothing yet
    for which in ("goal_film_in", "goal_film_out"):
        p = make(goal_conditioning="film")
        with torch.no_grad():
            getattr(p.net, "goal_film_in" if which == "goal_film_out" else "goal_film_out").weight.zero_()
        c, _, _ = run(p, img, goal, first, p.initial_state(2))
        d, _, _ = run(p, img, torch.zeros_like(goal), first, p.initial_state(2))
        assert (c["buttons"] - d["buttons"]).abs().max() > 1e-3, which
    with pytest.raises(ValueError, match="goal_conditioning"):
        PolicyConfig.tiny(goal_conditioning="concat")
