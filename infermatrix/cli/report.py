"""``python -m infermatrix report RESULTS... --out DIR``: summary.md and index.html of one run."""

from __future__ import annotations


def main(argv: list[str] | None = None) -> int:
    from infermatrix import report

    return report.main(argv)
