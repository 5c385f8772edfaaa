"""What a run records: one typed record per timed case and scenario (``record.CaseResult``)."""

from __future__ import annotations

from infermatrix.results.record import SCENARIO_NAME, SCHEMA_PATH, SCHEMA_VERSION, CaseResult, RecordError, write

__all__ = ["SCENARIO_NAME", "SCHEMA_PATH", "SCHEMA_VERSION", "CaseResult", "RecordError", "write"]
