"""scripts/check_fixture_copy.py: the vendored conformance fixtures equal a reference copy."""

from __future__ import annotations

import importlib.util
from pathlib import Path

from conftest import REPO_ROOT


def _script():
    spec = importlib.util.spec_from_file_location("check_fixture_copy", REPO_ROOT / "scripts" / "check_fixture_copy.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _tree(root: Path, files: dict[str, bytes]) -> Path:
    for name, data in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(data)
    return root


def test_identical_and_new_cases_pass_a_changed_byte_fails(tmp_path: Path, capsys):
    check = _script()
    ref = _tree(tmp_path / "ref", {"a/x.npz": b"123", "a/README.md": b"r", "new_case/y.json": b"{}"})
    ven = _tree(tmp_path / "ven", {"a/x.npz": b"123", "a/README.md": b"r", "SOURCES.md": b"s"})
    assert check.main([str(ref), str(ven)]) == 0
    out = capsys.readouterr().out
    assert "new_case/y.json" in out and "2 of 2 shared files identical" in out
    (ven / "a" / "x.npz").write_bytes(b"124")
    assert check.main([str(ref), str(ven)]) == 1
    assert "DIFFERENT: a/x.npz" in capsys.readouterr().out
    assert check.main([str(tmp_path / "missing"), str(ven)]) == 2


def test_the_vendored_copy_holds_every_case_type():
    root = REPO_ROOT / "tests" / "fixtures" / "conformance"
    for marker in ("tiny.model", "tiny_attn.pth", "expected_models.json", "expected_contractor.npz"):
        assert list(root.rglob(marker)), f"no vendored case with {marker}"
