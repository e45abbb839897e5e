"""Shared pieces of the training tests: a tiny stand-in policy and synthetic batches.

The stand-in has the ``STEVE1Policy`` interface (``initial_state``, ``forward(img, goal,
first, state)``, ``log_prob``) and its parameter names follow the official layout
(``net.img_process``, ``net.recurrent_layer``, ``pi_head``, ...), so freezing, LoRA and
the loop are exercised without the full VPT model.
"""

from __future__ import annotations

import time

import pytest
import torch
from torch import nn

N_ACTIONS = 5


@pytest.fixture(autouse=True)
def single_thread():
    """Tiny models run fastest on one thread (and the CI machine's cores are shared)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)

IMG = 8
GOAL_DIM = 6


class _ImgProcess(nn.Module):
    def __init__(self, hid: int) -> None:
        super().__init__()
        self.cnn = nn.Conv2d(3, 4, 3, stride=2, padding=1)
        self.linear = nn.Linear(4 * (IMG // 2) ** 2, hid)

    def forward(self, x):  # (N, 3, H, W) -> (N, hid)
        return torch.relu(self.linear(torch.relu(self.cnn(x)).flatten(1)))


class _Recurrent(nn.Module):
    def __init__(self, hid: int) -> None:
        super().__init__()
        self.cell = nn.LSTMCell(hid, hid)
        self.proj = nn.Linear(hid, hid)


class _Net(nn.Module):
    def __init__(self, hid: int, goal_dim: int, dropout: float) -> None:
        super().__init__()
        self.img_process = _ImgProcess(hid)
        self.mineclip_embed_linear = nn.Linear(goal_dim, hid)
        self.recurrent_layer = _Recurrent(hid)
        self.final_ln = nn.LayerNorm(hid)
        self.dropout = nn.Dropout(dropout)


class _Heads(nn.Module):
    def __init__(self, hid: int, n: int) -> None:
        super().__init__()
        self.action = nn.Linear(hid, n)


class TinyPolicy(nn.Module):
    """8x8 frames -> conv -> + goal -> LSTM cell over time -> action logits."""

    def __init__(self, hid: int = 16, goal_dim: int = GOAL_DIM, dropout: float = 0.1) -> None:
        super().__init__()
        self.hid = hid
        self.net = _Net(hid, goal_dim, dropout)
        self.pi_head = _Heads(hid, N_ACTIONS)
        self.value_head = nn.Linear(hid, 1)

    def initial_state(self, batch_size: int, device=None):
        z = torch.zeros(batch_size, self.hid, device=device)
        return [z, z.clone()]

    def forward(self, img, goal, first, state):
        B, T = first.shape
        x = img.permute(0, 1, 4, 2, 3).reshape(B * T, 3, IMG, IMG).float() / 255.0
        feat = self.net.img_process(x).reshape(B, T, -1) + self.net.mineclip_embed_linear(goal.float())
        h, c = state
        outs = []
        for t in range(T):
            keep = (~first[:, t]).float()[:, None]
            h, c = self.net.recurrent_layer.cell(feat[:, t], (h * keep, c * keep))
            outs.append(self.net.recurrent_layer.proj(h))
        y = self.net.dropout(self.net.final_ln(torch.stack(outs, 1)))  # (B, T, hid)
        logits = {"action": torch.log_softmax(self.pi_head.action(y), -1)}
        return logits, self.value_head(y)[..., 0], [h, c]

    def log_prob(self, logits, actions):  # -> (B, T)
        return sum(torch.gather(logits[k], -1, actions[k][..., None])[..., 0] for k in logits)


def make_item(seed: int, index: int, T: int) -> dict:
    """One learnable sequence: the expert action is the index of the brightest of
    five image bands (so the CNN can learn it); goals random, first only at t=0."""
    g = torch.Generator().manual_seed(seed * 1_000_003 + index)
    action = torch.randint(0, N_ACTIONS, (T,), generator=g)
    img = torch.randint(0, 60, (T, IMG, IMG, 3), generator=g, dtype=torch.uint8)
    for t in range(T):
        a = int(action[t])
        img[t, :, a, :] = 250  # the brightest column tells the action
    goal = torch.randn(T, GOAL_DIM, generator=g)
    if torch.rand((), generator=g) < 0.25:
        goal.zero_()
    first = torch.zeros(T, dtype=torch.bool)
    first[0] = True
    return {"img": img, "goal": goal, "actions": {"action": action}, "first": first}


def collate(items: list[dict]) -> dict:
    return {
        "img": torch.stack([i["img"] for i in items]),
        "goal": torch.stack([i["goal"] for i in items]),
        "actions": {"action": torch.stack([i["actions"]["action"] for i in items])},
        "first": torch.stack([i["first"] for i in items]),
    }


class SyntheticBatches:
    """Stateless by index and sharded like the real loader: batch k of rank r holds the
    global items ``k*B*W + r*B + j``; one process with batch 2B sees the same items as
    two processes with batch B."""

    def __init__(self, batch_size: int, T: int, rank: int = 0, world_size: int = 1, seed: int = 0,
                 sleep: float = 0.0, nan_at: int = -1) -> None:
        self.B, self.T, self.rank, self.world, self.seed = batch_size, T, rank, world_size, seed
        self.sleep, self.nan_at = sleep, nan_at

    def batch(self, index: int) -> dict:
        if self.sleep:
            time.sleep(self.sleep)
        start = index * self.B * self.world + self.rank * self.B
        b = collate([make_item(self.seed, start + j, self.T) for j in range(self.B)])
        if index == self.nan_at:
            b["goal"] = torch.full_like(b["goal"], float("nan"))
        return b

    def val(self, n: int = 2):
        return lambda: [collate([make_item(self.seed + 999, i * self.B + j, self.T) for j in range(self.B)])
                        for i in range(n)]


def tiny_overrides(**extra) -> list[str]:
    """Dotted overrides of the shipped ``tiny`` preset used by the tests."""
    return [f"{k}={v}" for k, v in extra.items()]
