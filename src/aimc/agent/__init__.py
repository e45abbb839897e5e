"""Agents that act in an environment: policy + goal from text, video or a prompt schedule."""

from __future__ import annotations

__all__ = ["Agent", "PromptSchedule", "RandomAgent"]


def __getattr__(name: str):
    # imported on first use, so that `aimc --help` does not load torch
    if name in __all__:
        from aimc.agent import agent

        return getattr(agent, name)
    raise AttributeError(f"module 'aimc.agent' has no attribute {name!r}")
