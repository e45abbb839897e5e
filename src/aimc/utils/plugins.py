"""Pluggable pieces named by the user: a registered name, or ``package.module:callable``."""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from typing import Any

from aimc.errors import UserError


def find_factory(name: str, registry: Mapping[str, Callable[..., Any]], what: str) -> Callable[..., Any]:
    """``registry[name]``, else the callable ``package.module:attr`` names; a clear error naming
    ``what`` (e.g. ``"env"``, ``"labeller"``) otherwise."""
    if name in registry:
        return registry[name]
    if ":" in name:
        mod, attr = name.split(":", 1)
        try:
            return getattr(importlib.import_module(mod), attr)
        except (ImportError, AttributeError) as e:
            raise UserError(f"{what} {name!r}: cannot import {attr} from {mod} ({e})") from e
    raise UserError(f"unknown {what} {name!r}; use one of {', '.join(registry)} or 'package.module:callable'")
