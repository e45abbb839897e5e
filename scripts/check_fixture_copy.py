"""Check that the vendored conformance fixtures equal a reference copy, file for file.

    python scripts/check_fixture_copy.py REFERENCE_DIR [VENDORED_DIR]

Every file present in both trees must have the same bytes. Files only in the reference (new
cases) are listed, and so are files only in the vendored copy; neither is an error, since the
suite is also run against the reference itself. Exit code 1 on any difference.
"""

from __future__ import annotations

import filecmp
import sys
from pathlib import Path

DEFAULT_VENDORED = Path(__file__).resolve().parents[1] / "tests" / "fixtures" / "conformance"


def files(root: Path) -> set[Path]:
    return {p.relative_to(root) for p in root.rglob("*") if p.is_file()}


def main(argv: list[str]) -> int:
    if not argv or len(argv) > 2:
        print(__doc__.strip().splitlines()[2].strip(), file=sys.stderr)
        return 2
    reference = Path(argv[0])
    vendored = Path(argv[1]) if len(argv) > 1 else DEFAULT_VENDORED
    for root in (reference, vendored):
        if not root.is_dir():
            print(f"error: {root}: not a folder", file=sys.stderr)
            return 2
    ref, ven = files(reference), files(vendored)
    both = sorted(ref & ven)
    differ = [p for p in both if not filecmp.cmp(reference / p, vendored / p, shallow=False)]
    for p in sorted(ref - ven):
        print(f"only in {reference}: {p}")
    for p in sorted(ven - ref):
        print(f"only in {vendored}: {p}")
    for p in differ:
        print(f"DIFFERENT: {p}")
    print(f"{len(both) - len(differ)} of {len(both)} shared files identical")
    return 1 if differ else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
