"""The examples in docstrings run: every ``load_config(...)`` line, and every dotted override
the config module's docstring shows, load against the real config classes."""

from __future__ import annotations

import ast
import importlib
import re
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "aimc"


def _docstrings(path: Path):
    tree = ast.parse(path.read_text(encoding="utf-8"))
    for node in [tree, *ast.walk(tree)]:
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            doc = ast.get_docstring(node)
            if doc:
                yield doc


def _module(path: Path) -> str:
    rel = path.relative_to(SRC.parent).with_suffix("")
    return ".".join(rel.parts).removesuffix(".__init__")


def _load_config_examples() -> list:
    cases = []
    for path in sorted(SRC.rglob("*.py")):
        for doc in _docstrings(path):
            for line in doc.splitlines():
                m = re.search(r"(\w+ = )?(load_config\(.*\))\s*$", line.strip())
                if m:
                    cases.append(pytest.param(_module(path), m.group(2), id=f"{path.name}:{m.group(2)[:40]}"))
    return cases


EXAMPLES = _load_config_examples()


def test_examples_are_found():
    assert len(EXAMPLES) >= 2


@pytest.mark.parametrize("module,call", EXAMPLES)
def test_load_config_examples_load(module: str, call: str):
    from aimc.config import load_config
    from aimc.models.prior import PriorConfig
    from aimc.models.vpt import PolicyConfig
    from aimc.train.config import TrainConfig

    namespace = {"load_config": load_config, "TrainConfig": TrainConfig, "PolicyConfig": PolicyConfig,
                 "PriorConfig": PriorConfig, **vars(importlib.import_module(module))}
    cfg = eval(call, namespace)  # noqa: S307 - our own docstrings
    assert cfg is not None


def test_the_override_examples_in_the_config_docs_load():
    from aimc.config import load_config
    from aimc.train.config import TrainConfig

    doc = importlib.import_module("aimc.config").__doc__
    overrides = [o for o in re.findall(r"``(\w+\.\w+=[^`]+)``", doc) if not o.startswith("section.")]
    assert len(overrides) >= 3
    for override in overrides:
        load_config(TrainConfig, None, [override])
