"""Reading and writing policy files: .model, .weights (official) and .safetensors (aimc)."""

from __future__ import annotations

import os
import pickle
from collections import OrderedDict
from pathlib import Path

import pytest
import torch

from aimc.checkpoints.safe_load import UnsafeFileError
from aimc.checkpoints.vpt import (
    WeightsMismatchError,
    inspect_file,
    load_model_file,
    load_policy,
    official_to_policy_state_dict,
    policy_state_dict_to_official,
    save_model_file,
    save_policy,
)
from aimc.cli import main
from aimc.errors import UserError
from aimc.models.vpt import PolicyConfig, STEVE1Policy


def tiny_cfg(**overrides) -> PolicyConfig:
    kwargs = {"img_shape": [32, 32, 3], "action_heads": {"buttons": 11, "camera": 7}, **overrides}
    return PolicyConfig.tiny(**kwargs)


def make(**overrides) -> STEVE1Policy:
    torch.manual_seed(0)
    policy = STEVE1Policy(tiny_cfg(**overrides))
    with torch.no_grad():
        for p in policy.parameters():
            p.add_(0.1 * torch.randn_like(p))
    return policy.eval()


def outputs(policy: STEVE1Policy):
    g = torch.Generator().manual_seed(0)
    img = torch.randint(0, 256, (1, 3, 32, 32, 3), generator=g, dtype=torch.uint8)
    goal = torch.randn(1, 3, policy.cfg.mineclip_embed_dim, generator=g) if policy.cfg.mineclip_embed_dim else None
    with torch.no_grad():
        return policy(img, goal, torch.ones(1, 3, dtype=torch.bool), policy.initial_state(1))[:2]


def write_official(tmp_path: Path, policy: STEVE1Policy, sd=None, name: str = "p") -> tuple[Path, Path]:
    weights, model = tmp_path / f"{name}.weights", tmp_path / f"{name}.model"
    torch.save(OrderedDict(sd if sd is not None else policy.state_dict()), weights)
    save_model_file(policy.cfg, model)
    return weights, model


class _Evil:
    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.mark.parametrize("suffix", [".weights", ".safetensors"])
def test_round_trip(tmp_path: Path, suffix: str):
    policy = make()
    path = tmp_path / f"policy{suffix}"
    save_policy(policy, path, model_path=tmp_path / "policy.model" if suffix == ".weights" else None)
    if suffix == ".safetensors":
        assert (tmp_path / "policy.yaml").is_file()
        loaded = load_policy(path)
    else:
        loaded = load_policy(path, tmp_path / "policy.model", config=None)
        # what the original's loader reads: a plain OrderedDict of tensors without prefix
        raw = torch.load(path, weights_only=True)
        assert type(raw) is OrderedDict and set(raw) == set(policy.state_dict())
    assert loaded.cfg == policy.cfg
    for k, v in policy.state_dict().items():
        assert torch.equal(loaded.state_dict()[k], v), k
    a, b = outputs(policy), outputs(loaded)
    assert all(torch.equal(a[0][k], b[0][k]) for k in a[0]) and torch.equal(a[1], b[1])


def test_lstm_policy_round_trip(tmp_path: Path):
    policy = make(recurrence_type="multi_layer_lstm")
    save_policy(policy, tmp_path / "l.safetensors")
    loaded = load_policy(tmp_path / "l.safetensors")
    assert torch.equal(outputs(policy)[1], outputs(loaded)[1])


def test_model_file_round_trip_and_extra_keys(tmp_path: Path):
    # an official-style file: only net args + pi_head_opts -> STEVE-1 defaults for the rest
    cfg = tiny_cfg(action_heads={"buttons": 8641, "camera": 121}, mineclip_embed_dim=512, temperature=1.5)
    path = tmp_path / "x.model"
    net_args, pi = cfg.to_net_args()
    # real files may carry extra metadata beside the parts loaders read
    data = {"model": {"args": {"net": {"args": net_args}, "pi_head_opts": pi}, "name": "x"}, "version": 3}
    path.write_bytes(pickle.dumps(data, protocol=4))
    assert load_model_file(path) == cfg
    # aimc's own .model files also keep the aimc-only settings (ignored by the original)
    other = tiny_cfg(recurrence_type="lstm", reset_on_every_first=True)
    save_model_file(other, tmp_path / "y.model")
    assert load_model_file(tmp_path / "y.model") == other
    (tmp_path / "bad.model").write_bytes(pickle.dumps({"model": {}}))
    with pytest.raises(UserError, match=r'\["model"\]\["args"\]\["net"\]\["args"\]'):
        load_model_file(tmp_path / "bad.model")


@pytest.mark.parametrize("prefix", ["", "policy.", "module.policy.", "module."])
def test_key_prefixes_are_accepted(tmp_path: Path, prefix: str):
    policy = make()
    sd = {prefix + k: v for k, v in policy.state_dict().items()}
    weights, model = write_official(tmp_path, policy, sd)
    loaded = load_policy(weights, model)
    assert torch.equal(outputs(loaded)[1], outputs(policy)[1])
    assert set(official_to_policy_state_dict(sd)) == set(policy.state_dict())
    assert list(policy_state_dict_to_official(policy.state_dict())) == list(policy.state_dict())


def test_mixed_prefixes_are_refused():
    sd = {"policy.net.final_ln.weight": torch.ones(1), "net.final_ln.bias": torch.ones(1)}
    with pytest.raises(WeightsMismatchError, match="prefix"):
        official_to_policy_state_dict(sd)


def test_malicious_model_file_is_refused(tmp_path: Path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.model"
    path.write_bytes(pickle.dumps({"model": {"args": {"net": {"args": _Evil(marker)}}}}, protocol=4))
    with pytest.raises(UnsafeFileError) as e:
        load_model_file(path)
    assert "evil.model" in str(e.value) and "refused" in str(e.value)
    assert not marker.exists()


@pytest.mark.parametrize("zipfile", [True, False])
def test_malicious_weights_file_is_refused(tmp_path: Path, zipfile: bool):
    marker = tmp_path / "pwned"
    policy = make()
    sd = dict(policy.state_dict())
    sd["net.final_ln.weight"] = _Evil(marker)
    path = tmp_path / "evil.weights"
    torch.save(sd, path, _use_new_zipfile_serialization=zipfile)
    save_model_file(policy.cfg, tmp_path / "evil.model")
    with pytest.raises(UserError) as e:
        load_policy(path, tmp_path / "evil.model")
    assert "evil.weights" in str(e.value)
    assert not marker.exists()


def test_non_tensor_entries_are_refused(tmp_path: Path):
    policy = make()
    sd = dict(policy.state_dict())
    sd["net.final_ln.weight"] = [1.0, 2.0]
    weights, model = write_official(tmp_path, policy, sd)
    with pytest.raises(UserError, match="net.final_ln.weight.*not tensors"):
        load_policy(weights, model)


def test_wrong_model_file_names_the_keys(tmp_path: Path):
    big = make()
    small = make(hidsize=16)
    weights, _ = write_official(tmp_path, big)
    _, wrong_model = write_official(tmp_path, small, name="small")
    with pytest.raises(WeightsMismatchError) as e:
        load_policy(weights, wrong_model)
    msg = str(e.value)
    assert "misshapen" in msg and "net.img_process.linear.layer.weight (32, 256) vs (16, 256)" in msg and "hidsize=32" in msg and "wrong .model" in msg
    fewer = make(n_recurrence_layers=1)
    _, fewer_model = write_official(tmp_path, fewer, name="fewer")
    with pytest.raises(WeightsMismatchError) as e:
        load_policy(weights, fewer_model)
    assert "unexpected" in str(e.value) and "net.recurrent_layer.blocks.1" in str(e.value)
    assert "n_recurrence_layers=1" in str(e.value)
    # strict=False loads what fits and warns
    with pytest.warns(UserWarning, match="unexpected"):
        load_policy(weights, fewer_model, strict=False)


def test_vpt_weights_into_steve1_need_allow_missing_goal(tmp_path: Path):
    vpt = make(mineclip_embed_dim=0)
    weights, _ = write_official(tmp_path, vpt)
    steve1_model = tmp_path / "steve1.model"
    cfg = tiny_cfg()
    save_model_file(cfg, steve1_model)  # .model files do not store the embed dim
    with pytest.raises(WeightsMismatchError) as e:
        load_policy(weights, config=cfg)
    assert "net.mineclip_embed_linear.weight" in str(e.value) and "allow_missing_goal" in str(e.value)
    with pytest.warns(UserWarning, match="goal layer"):
        policy = load_policy(weights, config=cfg, allow_missing_goal=True)
    assert torch.equal(policy.state_dict()["net.final_ln.weight"], vpt.state_dict()["net.final_ln.weight"])
    # the other way round: STEVE-1 weights into an unconditioned config
    steve1_weights, _ = write_official(tmp_path, make(), name="s1")
    with pytest.raises(WeightsMismatchError, match="mineclip_embed_dim=16"):
        load_policy(steve1_weights, config=tiny_cfg(mineclip_embed_dim=0))


def test_missing_pieces_are_clear_errors(tmp_path: Path):
    policy = make()
    weights, _ = write_official(tmp_path, policy)
    with pytest.raises(UserError, match=r"\.model"):
        load_policy(weights)
    save_policy(policy, tmp_path / "a.safetensors")
    (tmp_path / "a.yaml").unlink()
    with pytest.raises(UserError, match="a.yaml"):
        load_policy(tmp_path / "a.safetensors")
    with pytest.raises(FileNotFoundError):
        load_policy(tmp_path / "none.weights", config=policy.cfg)
    with pytest.raises(UserError, match="unknown policy format"):
        save_policy(policy, tmp_path / "x.bin")


def test_cli_inspect_and_convert(tmp_path: Path, capsys):
    policy = make()
    weights, model = write_official(tmp_path, policy)
    assert main(["checkpoint", "convert", str(weights), str(tmp_path / "c.safetensors"), "--model", str(model)]) == 0
    assert main(["checkpoint", "convert", str(tmp_path / "c.safetensors"), str(tmp_path / "back.weights")]) == 0
    back = torch.load(tmp_path / "back.weights", weights_only=True)
    assert all(torch.equal(back[k], v) for k, v in policy.state_dict().items())
    assert load_model_file(tmp_path / "back.model").to_net_args() == policy.cfg.to_net_args()
    capsys.readouterr()
    assert main(["checkpoint", "inspect", str(tmp_path / "c.safetensors")]) == 0
    assert '"hidsize": 32' in capsys.readouterr().out
    info = inspect_file(weights)
    assert info["goal_conditioned"] and info["action_heads"] == {"buttons": 11, "camera": 7}
    assert main(["checkpoint", "inspect", str(tmp_path / "nothing.weights")]) == 2
