from __future__ import annotations

from pathlib import Path

import pytest

from aimc.utils.io import atomic_dir, atomic_write_text, clean_tmp_dirs


def test_atomic_write_keeps_old_file_on_error(tmp_path: Path):
    p = tmp_path / "a.txt"
    atomic_write_text(p, "old")
    with pytest.raises(RuntimeError):
        from aimc.utils.io import atomic_path

        with atomic_path(p) as tmp:
            tmp.write_text("half")
            raise RuntimeError("boom")
    assert p.read_text() == "old"
    assert [q.name for q in tmp_path.iterdir()] == ["a.txt"]


def test_atomic_dir_all_or_nothing(tmp_path: Path):
    target = tmp_path / "ep"
    with pytest.raises(ValueError):
        with atomic_dir(target) as d:
            (d / "x").write_text("1")
            raise ValueError
    assert not target.exists()
    with atomic_dir(target) as d:
        (d / "x").write_text("2")
    assert (target / "x").read_text() == "2"
    with atomic_dir(target) as d:  # replacing a complete version
        (d / "y").write_text("3")
    assert sorted(p.name for p in target.iterdir()) == ["y"]
    (tmp_path / ".tmp-ep.abc").mkdir()
    assert clean_tmp_dirs(tmp_path) == 1
