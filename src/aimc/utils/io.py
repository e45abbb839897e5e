"""Crash-safe file writing: write to a temporary sibling, fsync, then rename.

A reader (or a process killed mid-write) sees either the old file or the new one,
never half of one.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

from aimc.errors import UserError


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; on success it is renamed onto ``path``.

    On any exception the temporary file is removed and ``path`` is untouched.
    """
    path = Path(path)
    if path.is_dir():
        raise UserError(f"{path}: is a directory; give a file name to write (e.g. {path / ('output' + path.suffix)})")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:  # a file where a folder should be
        raise UserError(f"{path}: cannot create its folder {path.parent} ({e.strerror}); choose another path") from None
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        with open(tmp_path, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp_path, path)
        _fsync_dir(path.parent)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp_path.unlink()
        raise


def make_dir(path: str | Path, what: str = "output folder") -> Path:
    """Create the folder ``path`` (and its parents) if missing; a :class:`~aimc.errors.UserError`
    naming it when it, or a parent, is a file."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise UserError(f"{path}: is a file; the {what} is a folder: give a folder path (it is created)")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UserError(f"{path}: cannot create the {what} ({e.strerror}); choose another path") from None
    return path


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


@contextlib.contextmanager
def atomic_dir(path: str | Path) -> Iterator[Path]:
    """Build a directory under a temporary name, then rename it into place.

    ``path`` must not exist yet. Used for episodes and checkpoints: a kill at any
    moment leaves either no directory or a complete one (plus a ``.tmp-*`` leftover
    that :func:`clean_tmp_dirs` removes).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{path.name}.", dir=path.parent))
    try:
        yield tmp
        for root, _dirs, files in os.walk(tmp):
            for name in files:
                with open(os.path.join(root, name), "rb") as f:
                    os.fsync(f.fileno())
        if path.exists():
            # replace an older complete version: move it aside first so that a crash
            # between the two renames still leaves a complete directory on disk.
            old = path.parent / f".old-{path.name}.{os.getpid()}"
            os.replace(path, old)
            os.replace(tmp, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, path)
        _fsync_dir(path.parent)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def clean_tmp_dirs(parent: str | Path) -> int:
    """Remove leftovers of interrupted :func:`atomic_dir`/:func:`atomic_path` calls."""
    parent = Path(parent)
    n = 0
    if not parent.is_dir():
        return 0
    for p in parent.iterdir():
        if p.name.startswith((".tmp-", ".old-")) or (p.name.startswith(".") and p.name.endswith(".tmp")):
            if p.is_dir():
                shutil.rmtree(p, ignore_errors=True)
            else:
                p.unlink(missing_ok=True)
            n += 1
    return n


def read_state_json(path: str | Path, empty: dict) -> dict:
    """A run's state file (written atomically with :func:`write_state_json`), or ``empty`` when
    there is none yet; a file that is not JSON was edited by hand, and the error says so."""
    import json

    from aimc.errors import UserError

    p = Path(path)
    if not p.is_file():
        return empty
    try:
        return json.loads(p.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise UserError(f"{p}: not valid JSON ({e}); it is written atomically, so it was edited by hand: "
                        "fix it or start a new --out") from e


def write_state_json(path: str | Path, state: dict) -> None:
    """Write a run's state atomically (a kill leaves the previous state or the new one)."""
    import json

    atomic_write_text(path, json.dumps(state, indent=1, ensure_ascii=False, default=str) + "\n")
