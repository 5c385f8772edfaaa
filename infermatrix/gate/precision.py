"""Proof of precision: what a backend read back after compilation, against the case's precision.

The accuracy gate (``accuracy.py``) bounds the error from above only, so a case that
silently ran fp32 passes as int8 or bf16. Every session therefore gives evidence read
from the backend *after* compilation — ``Session.precision_evidence()`` (an optional
method, see ``infermatrix.api.types.Session``): OpenVINO's runtime model, ONNX Runtime's
optimized graph, the kernels Inductor generated, the dtypes of the parameters or of the
traced graph's ops. Each backend reads its own evidence in its own module; this module
holds the one rule that judges it (:func:`check_precision`), run beside the accuracy
check before anything is timed (``infermatrix.case.runner.prepare``).

The evidence counts *compute ops* — convolutions and matrix multiplications, in the
backend's own unit (runtime layers, graph nodes, generated kernel calls, modules) — by
the precision each runs in. The rule:

- a reduced precision (anything but fp32) must show at least one compute op in that
  precision; the rest may stay fp32 (what quantizers leave unquantized), nothing else
  (but int4 weight-only may keep some matrices in int8 weight-only: ``ALSO_ALLOWED``);
- fp32 must show fp32 compute only (OpenVINO's CPU plugin would run bf16 if left alone);
- no evidence at all is *unverified*: recorded as such, and a failure for every reduced
  precision (a backend that cannot show what ran cannot claim a reduced precision);
  an fp32 case without evidence passes, marked unverified.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any, Literal

#: The precision a quantizer's or converter's untouched rest runs in; every backend's reference.
FULL = "fp32"

Status = Literal["verified", "contradicted", "unverified"]

#: What a precision's rest may run in besides fp32: an int4 weight-only export keeps its most
#: sensitive matrices (the LM head; NNCF's ``backup_mode``, int8 by default) in int8 weight-only,
#: a wider format than the case claims, never a narrower one.
ALSO_ALLOWED: Mapping[str, tuple[str, ...]] = {"int4-weight-only": ("int8-weight-only",)}


@dataclasses.dataclass(frozen=True)
class PrecisionEvidence:
    """What a backend read back about the precision its compiled model computes in."""

    #: compute ops (convolutions, matrix multiplications) by the precision they run in, as
    #: the matrix names precisions: ``{"int8": 20, "fp32": 1}``
    compute: Mapping[str, int]
    #: what ``compute`` counts: "runtime layers", "optimized graph nodes", "generated kernel calls", ...
    unit: str
    #: how it was read (the API), for a reader of the record
    api: str
    #: the facts behind ``compute``, plain JSON: counts per op type, execution precisions per
    #: layer type, parameter dtypes, the output dtype
    facts: Mapping[str, Any] = dataclasses.field(default_factory=dict)

    def __post_init__(self) -> None:
        bad = {k: v for k, v in self.compute.items() if not isinstance(v, int) or isinstance(v, bool) or v < 0}
        if bad:
            raise ValueError(f"precision evidence: compute counts must be integers >= 0, got {bad}")

    def shows(self) -> str:
        """The compute ops by precision, most first: "int8 x20, fp32 x1" (or "no compute op")."""
        found = sorted(((n, p) for p, n in self.compute.items() if n), reverse=True)
        return ", ".join(f"{p} x{n}" for n, p in found) or "no compute op"

    def as_dict(self) -> dict[str, Any]:
        return {"compute": dict(self.compute), "unit": self.unit, "api": self.api, "facts": dict(self.facts)}


@dataclasses.dataclass(frozen=True)
class PrecisionReport:
    """The check of one case's evidence against its precision."""

    precision: str
    status: Status
    failures: tuple[str, ...]
    evidence: PrecisionEvidence | None = None

    @property
    def passed(self) -> bool:
        return not self.failures

    @property
    def share(self) -> float | None:
        """The share of compute ops that ran in the case's precision (None without evidence)."""
        if self.evidence is None:
            return None
        total = sum(self.evidence.compute.values())
        return self.evidence.compute.get(self.precision, 0) / total if total else None

    def as_dict(self) -> dict[str, Any]:
        """The record's ``precision_evidence``: the verdict, and the evidence it rests on."""
        data: dict[str, Any] = {"status": self.status, "expected": self.precision, "passed": self.passed,
                                "failures": list(self.failures)}
        if self.evidence is not None:
            data.update(self.evidence.as_dict(), shows=self.evidence.shows(), share=self.share)
        return data

    def message(self, case_id: str) -> str:
        shown = f" ({self.evidence.api}: {self.evidence.unit} {self.evidence.shows()})" if self.evidence else ""
        return f"{case_id}: precision check failed ({'; '.join(self.failures)}){shown}"


def check_precision(precision: str, evidence: PrecisionEvidence | None) -> PrecisionReport:
    """Judge ``evidence`` (None: the session gave none) for a case of ``precision``."""
    failures: list[str] = []
    if evidence is None:
        if precision != FULL:
            failures.append(f"the case says {precision} but its backend gave no evidence of what precision ran "
                            "(its session has no precision_evidence(), or it found nothing to show); a reduced "
                            "precision must be shown, not assumed")
        return PrecisionReport(precision, "unverified", tuple(failures))
    ran = {p: n for p, n in evidence.compute.items() if n}
    if precision != FULL and not ran.get(precision):
        failures.append(f"the case says {precision} but no compute op ran in {precision}")
    others = {p: n for p, n in ran.items() if p not in (precision, FULL, *ALSO_ALLOWED.get(precision, ()))}
    if others:
        failures.append(f"the case says {precision} but compute ran in "
                        + ", ".join(f"{p} ({n} {evidence.unit})" for p, n in sorted(others.items())))
    if failures:
        return PrecisionReport(precision, "contradicted", tuple(failures), evidence)
    # fp32 evidence that shows no compute op at all proves nothing (and contradicts nothing)
    return PrecisionReport(precision, "verified" if ran else "unverified", (), evidence)
