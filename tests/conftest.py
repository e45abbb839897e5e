"""Shared test fixtures.

Conformance fixtures (golden outputs of the original STEVE-1/VPT/MineCLIP code) are
discovered under ``$AIMC_CONFORMANCE_DIR`` (default: the copy vendored in
``tests/fixtures/conformance``, so a fresh clone tests itself with nothing beside it).
Every folder below it that holds a case's marker file is a case; finding none is a
failure, not a skip.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

REPO_ROOT = Path(__file__).resolve().parents[1]


def conformance_root() -> Path:
    env = os.environ.get("AIMC_CONFORMANCE_DIR")
    return Path(env) if env else REPO_ROOT / "tests" / "fixtures" / "conformance"


def find_cases(marker: str) -> list[Path]:
    """Every directory below the conformance root that contains ``marker``."""
    root = conformance_root()
    if not root.is_dir():
        return []
    return sorted({p.parent for p in root.rglob(marker)})


def case_params(marker: str) -> list:
    """pytest params for each case, with ``conformance`` in every id.

    With no case found, one param that fails the test (never a silent skip).
    """
    cases = find_cases(marker)
    if not cases:
        return [pytest.param(None, id="conformance-missing")]
    root = conformance_root()
    return [pytest.param(c, id="conformance-" + (str(c.relative_to(root)).replace(os.sep, "-") or "root")) for c in cases]


def require_case(case: Path | None, marker: str) -> Path:
    if case is None:
        pytest.fail(
            f"no conformance case with {marker} found under {conformance_root()} "
            "(set AIMC_CONFORMANCE_DIR to the fixtures folder)"
        )
    return case


@pytest.fixture(autouse=True)
def _deterministic_torch():
    torch.manual_seed(0)
    yield
