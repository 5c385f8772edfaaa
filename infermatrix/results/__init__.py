"""What a run records: one typed record per timed case and scenario (``record.CaseResult``)."""

from __future__ import annotations

from infermatrix.results.record import SCENARIOS, SCHEMA_PATH, SCHEMA_VERSION, CaseResult, RecordError, write

__all__ = ["SCENARIOS", "SCHEMA_PATH", "SCHEMA_VERSION", "CaseResult", "RecordError", "write"]
