"""The package's layers: no module imports from a layer above its own.

From the bottom: shared helpers (errors, utils, config); actions; models (pure modules);
checkpoints (official formats); data; envs; train and agent; eval; the capabilities built on
them (rl, online, tune); quickstart; cli. Imports inside functions count too.
"""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src" / "aimc"
LAYERS = [
    {"errors", "utils", "config", "__init__", "__version__"},
    {"actions"},
    {"models"},
    {"checkpoints"},
    {"data"},
    {"envs"},
    {"train", "agent"},
    {"eval"},
    {"rl", "online", "tune"},
    {"quickstart"},
    {"cli"},
]
RANK = {name: i for i, layer in enumerate(LAYERS) for name in layer}


def _layer(module_parts: tuple[str, ...]) -> str:
    return module_parts[0].removesuffix(".py")


def _imports(path: Path) -> list[tuple[int, str]]:
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module and node.module.split(".")[0] == "aimc":
            parts = node.module.split(".")
            targets = [parts[1]] if len(parts) > 1 else [a.name for a in node.names]
            found += [(node.lineno, t) for t in targets]
        elif isinstance(node, ast.Import):
            found += [(node.lineno, a.name.split(".")[1]) for a in node.names if a.name.startswith("aimc.")]
    return found


def test_every_top_level_module_has_a_layer():
    names = {p.name.removesuffix(".py") for p in SRC.iterdir() if (p.suffix == ".py" or (p / "__init__.py").is_file())}
    assert names - set(RANK) - {"assets", "configs"} == set(), "add new packages to LAYERS"


def test_no_module_imports_from_a_layer_above():
    wrong = []
    for path in sorted(SRC.rglob("*.py")):
        own = _layer(path.relative_to(SRC).parts)
        for line, target in _imports(path):
            if RANK.get(target, -1) > RANK[own]:
                wrong.append(f"{path.relative_to(SRC)}:{line} ({own}) imports aimc.{target}")
    assert not wrong, "\n".join(wrong)
