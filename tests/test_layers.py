"""The package's layers: no module imports from a layer above its own.

From the bottom: shared helpers (errors, utils, config); actions; models (pure modules);
checkpoints (official formats); data; envs; train and agent; eval; the capabilities built on
them (rl, online, tune); quickstart; cli. Imports inside functions count too.

One exception: a package's ``commands.py`` (the thin CLI glue that parses arguments and calls
library functions) may import any library layer below ``quickstart``, so that e.g. ``aimc
train`` can hand the evaluator of ``aimc.eval`` to the training loop of ``aimc.train``. Library
modules stay strict: nothing else in ``aimc/train`` imports ``aimc.eval``, and only command modules
import a package's ``commands.py`` (else a higher layer would come in through the glue).
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
COMMANDS_MAY_IMPORT_BELOW = RANK["quickstart"]  # commands.py may import layers below this one


def _layer(module_parts: tuple[str, ...]) -> str:
    return module_parts[0].removesuffix(".py")


def _is_commands(path: Path, root: Path = SRC) -> bool:
    """A package's CLI glue: ``aimc/<package>/commands.py``."""
    return path.name == "commands.py" and path.parent != root


def _imported_modules(path: Path) -> list[tuple[int, str]]:
    """Every ``aimc.X.Y`` a module imports (``from aimc.X import Y`` may import module Y)."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module and node.module.split(".")[0] == "aimc":
            found += [(node.lineno, f"{node.module}.{a.name}") for a in node.names]
        elif isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names if a.name.startswith("aimc.")]
    return found


def layer_violations(root: Path = SRC) -> list[str]:
    """Every import of a module under ``root`` (the ``aimc`` package) that breaks the rules."""
    wrong = []
    for path in sorted(root.rglob("*.py")):
        own = _layer(path.relative_to(root).parts)
        glue = _is_commands(path, root)
        limit = max(RANK[own], COMMANDS_MAY_IMPORT_BELOW - 1) if glue else RANK[own]
        for line, module in _imported_modules(path):
            target = module.split(".")[1]
            where = f"{path.relative_to(root)}:{line} ({own}{' commands' if glue else ''})"
            if RANK.get(target, -1) > limit:
                wrong.append(f"{where} imports aimc.{target}")
            elif not glue and (module.split(".")[-1] == "commands" or ".commands." in module):
                # the exception must not leak: through the glue a library module would reach its imports
                wrong.append(f"{where} imports the command module {module.rsplit('.', 1)[0] if '.commands.' in module else module}")
    return wrong


def test_every_top_level_module_has_a_layer():
    names = {p.name.removesuffix(".py") for p in SRC.iterdir() if (p.suffix == ".py" or (p / "__init__.py").is_file())}
    assert names - set(RANK) - {"assets", "configs"} == set(), "add new packages to LAYERS"


def test_no_module_imports_from_a_layer_above():
    wrong = layer_violations()
    assert not wrong, "\n".join(wrong)


def test_the_rules_catch_what_the_docstring_forbids(tmp_path):
    """On a made-up package: library modules are strict, commands.py may reach below quickstart."""
    root = tmp_path / "aimc"
    files = {
        "train/policy.py": "from aimc.eval.periodic import PeriodicEvaluator\n",  # library: forbidden
        "train/commands.py": "def f():\n    from aimc.eval.periodic import PeriodicEvaluator\n",  # glue: allowed
        "eval/commands.py": "from aimc.quickstart import run_quickstart\n",  # glue, but quickstart: forbidden
        "eval/report.py": "from aimc.train.commands import register\n",  # library via glue: forbidden
        "agent/play.py": "import aimc.train.rundir\n",  # same layer: fine
        "train/embedder_commands.py": "from aimc.tune.study import run_study\n",  # not commands.py: forbidden
    }
    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)
    wrong = "\n".join(layer_violations(root))
    assert "train/policy.py:1 (train) imports aimc.eval" in wrong
    assert "eval/commands.py:1 (eval commands) imports aimc.quickstart" in wrong
    assert "eval/report.py:1 (eval) imports the command module aimc.train.commands" in wrong
    assert "train/embedder_commands.py:1 (train) imports aimc.tune" in wrong
    assert "train/commands.py" not in wrong and "agent/play.py" not in wrong
