"""The accuracy gate: every case's outputs against the model's fp32 reference.

A case is checked *before* it is timed; a case that fails is a failed test whose
timing is never stored. What is judged (docs/backends.md, "The accuracy gate"):

- the relative L2 error of all outputs together (catches wrong scales and gross errors);
- the cosine of each sample's output with its reference *after removing the reference's
  mean over the samples*, judged at the worst sample: the seeded networks give every input
  nearly the same output, and only what tells the samples apart shows whether the case
  computed *this* input (a constant, mean, stale or shuffled output scores about 0);
- for classifiers, the overlap of each sample's top-5 classes after the same centering
  (what the sample stands out for; a constant predictor scores about 0);
- for reduced precisions, a floor on the error: outputs that match fp32 to fp32's own
  rounding mean the reduced precision did not run.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from numpy.typing import NDArray

#: Classes compared per sample by the class agreement.
CLASS_AGREEMENT_TOP_K = 5
#: Samples in each case's check (``--accuracy-samples``): enough that the worst sample's
#: figure and the class agreement (160 class slots) mean something; a whole number of
#: batches, so b8 checks 4 batches.
DEFAULT_SAMPLES = 32
#: Fewer samples than this and the centered figures (samples compared with each other) say little.
MIN_SAMPLES = 8


@dataclasses.dataclass(frozen=True)
class Tolerance:
    """Limits a case's outputs must meet; None means "not judged"."""

    #: relative L2 error of all outputs together, at most
    max_rel_l2: float | None = None
    #: per-sample cosine after centering by the reference's mean over samples, worst sample, at least
    min_centered_cosine: float | None = None
    #: classifiers: mean overlap of the centered top-5 class sets, at least
    min_class_agreement: float | None = None
    #: relative L2 error at least: below it the case matches fp32 to fp32's rounding (reduced precisions)
    min_rel_l2: float | None = None


#: fp32 backends agree with the torch reference to below 1e-5 relative (measured: TOLERANCE_MEASUREMENTS);
#: every reduced precision here errs by 1e-3 or more. A reduced-precision case below this ran fp32.
FLOOR = 1e-4

#: Set from the working cases of the default CPU matrix (32 samples; docs/backends.md, "The
#: accuracy gate", has the figures and the sabotages each limit rejects). Each limit keeps a
#: margin below the worst working case; every sabotage (constant, mean, stale, shuffled,
#: random outputs, zeroed or reseeded weights) scores at or below ~0.1 centered cosine and
#: ~0.05 class agreement, so the limits sit far from both.
TOLERANCES: dict[str, Tolerance] = {
    "fp32": Tolerance(max_rel_l2=1e-3, min_centered_cosine=0.9999, min_class_agreement=0.95),
    "tf32": Tolerance(max_rel_l2=5e-2, min_centered_cosine=0.9, min_class_agreement=0.5, min_rel_l2=FLOOR),
    "fp16": Tolerance(max_rel_l2=5e-2, min_centered_cosine=0.9, min_class_agreement=0.5, min_rel_l2=FLOOR),
    "bf16": Tolerance(max_rel_l2=2e-1, min_centered_cosine=0.6, min_class_agreement=0.3, min_rel_l2=FLOOR),
    "int8": Tolerance(max_rel_l2=0.5, min_centered_cosine=0.25, min_rel_l2=FLOOR),
    "int8-dynamic": Tolerance(max_rel_l2=0.5, min_centered_cosine=0.25, min_rel_l2=FLOOR),
    "int4": Tolerance(max_rel_l2=0.8, min_centered_cosine=0.1, min_rel_l2=FLOOR),
}

#: int8 recipes that keep weights or activations to 7 bits — what each backend chooses on
#: a CPU without VNNI, where full-range u8 x s8 kernels (VPMADDUBSW) saturate — give up
#: one bit of resolution; held to their own measured bound (docs/backends.md, "int8 by
#: instruction set").
REDUCED_RANGE_INT8 = Tolerance(max_rel_l2=0.5, min_centered_cosine=0.2, min_rel_l2=FLOOR)

#: The backend config key that marks a 7-bit int8 recipe (set by the backends that choose one).
REDUCED_RANGE_KEY = "int8_7bit"


def tolerance_for(precision: str, backend_config: Mapping[str, Any]) -> tuple[str, Tolerance]:
    """The tolerance a case is held to, and its name (recorded with the figures)."""
    if precision == "int8" and backend_config.get(REDUCED_RANGE_KEY):
        return "int8, 7-bit recipe (no VNNI)", REDUCED_RANGE_INT8
    if precision not in TOLERANCES:
        raise ValueError(f"no accuracy tolerance for precision {precision!r}; known: {', '.join(TOLERANCES)}")
    return precision, TOLERANCES[precision]


@dataclasses.dataclass(frozen=True)
class AccuracyReport:
    """How one case's outputs compare with the fp32 reference."""

    precision: str
    samples: int
    max_abs_error: float
    rel_l2_error: float
    #: raw cosine of all outputs (recorded; dominated by what all samples share, so not judged)
    cosine_similarity: float
    #: per-sample cosine after centering: the worst and the median sample (None: not computable)
    centered_cosine_worst: float | None
    centered_cosine_median: float | None
    #: classifiers: mean overlap of the centered top-5 class sets
    class_agreement: float | None
    finite: bool
    failures: tuple[str, ...]
    #: which tolerance judged it (the precision's own, or a recipe's; see ``tolerance_for``)
    tolerance: str = ""

    @property
    def passed(self) -> bool:
        return not self.failures

    def as_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["failures"] = list(self.failures)
        data["passed"] = self.passed
        return data

    def message(self, case_id: str) -> str:
        figures = f"rel_l2_error={self.rel_l2_error:.3g} max_abs_error={self.max_abs_error:.3g}"
        if self.centered_cosine_worst is not None:
            figures += (f" centered_cosine worst={self.centered_cosine_worst:.4f}"
                        f" median={self.centered_cosine_median:.4f}")
        if self.class_agreement is not None:
            figures += f" class_agreement={self.class_agreement:.3f}"
        return f"{case_id}: accuracy check failed ({'; '.join(self.failures)}): {figures} over {self.samples} samples"


def per_sample(arrays: Sequence[NDArray[Any]], n: int) -> NDArray[np.float64]:
    """Every output of each of ``n`` samples as one row (batch is each output's first axis)."""
    return np.concatenate([np.asarray(a, dtype=np.float64).reshape(n, -1) for a in arrays], axis=1)


def centered_figures(got: NDArray[np.float64], ref: NDArray[np.float64],
                     k: int = CLASS_AGREEMENT_TOP_K) -> tuple[NDArray[np.float64] | None, float | None]:
    """Per-sample cosine of ``got`` and ``ref`` (rows are samples) after subtracting the
    reference's mean over the samples, and the mean overlap of the two top-``k`` sets of
    those centered rows (what each sample stands out for).

    The seeded networks map every input to nearly the same output (per-sample logits ~97%
    correlated): a raw cosine mostly measures that shared part, which a case ignoring its
    input reproduces. After centering only what tells the samples apart is left: the mean
    output, a stale buffer or shuffled samples score about 0. Samples whose reference does
    not differ from the mean are left out; None when none is left (or fewer than 2 samples).
    """
    if got.shape[0] < 2:
        return None, None
    mean = ref.mean(axis=0, keepdims=True)
    got_c, ref_c = got - mean, ref - mean
    ref_norm = np.linalg.norm(ref_c, axis=1)
    got_norm = np.linalg.norm(got_c, axis=1)
    varies = ref_norm > 1e-6 * max(float(np.linalg.norm(ref, axis=1).max()), 1e-300)
    if not varies.any():
        return None, None
    # An output at the mean to within rounding carries nothing of its sample: cosine 0, not
    # the cosine of rounding noise.
    distinct = got_norm > 1e-4 * ref_norm
    cos = np.where(distinct, (got_c * ref_c).sum(axis=1) / np.maximum(got_norm * ref_norm, 1e-300), 0.0)[varies]
    k = min(k, got.shape[1] - 1)
    agreement: float | None = None
    if k >= 1:
        top_got = np.argpartition(-got_c[varies], k - 1, axis=1)[:, :k]
        top_ref = np.argpartition(-ref_c[varies], k - 1, axis=1)[:, :k]
        agreement = float(np.mean([len(np.intersect1d(a, b)) / k for a, b in zip(top_got, top_ref, strict=True)]))
    return cos, agreement


def compare_outputs(
    outputs: Sequence[NDArray[Any]],
    reference: Sequence[NDArray[Any]],
    precision: str,
    classifier: bool,
    tolerance: Tolerance | None = None,
    backend_config: Mapping[str, Any] | None = None,
) -> AccuracyReport:
    """Compare ``outputs`` with ``reference`` (same order, same shapes, samples on the first
    axis) for ``precision`` (the tolerance: ``tolerance`` when given, else the one
    ``tolerance_for`` picks)."""
    if len(outputs) != len(reference):
        raise ValueError(f"backend returned {len(outputs)} outputs, the reference has {len(reference)}")
    if tolerance is not None:
        tolerance_name, tol = "given", tolerance
    else:
        tolerance_name, tol = tolerance_for(precision, backend_config or {})
    failures: list[str] = []
    got_arrays = []
    for i, (got, ref) in enumerate(zip(outputs, reference, strict=True)):
        got = np.asarray(got)
        if got.shape != ref.shape:
            raise ValueError(f"output {i}: shape {got.shape} differs from the reference's {ref.shape}")
        got_arrays.append(got)
    samples = int(reference[0].shape[0]) if reference and reference[0].ndim else 1
    if any(r.ndim == 0 or r.shape[0] != samples for r in reference):
        samples = 1  # an output without the batch axis: judged as one sample
    got_rows = per_sample(got_arrays, samples)
    ref_rows = per_sample(reference, samples)

    finite = bool(np.isfinite(got_rows).all())
    if not finite:
        n_bad = int((~np.isfinite(got_rows)).sum())
        failures.append(f"{n_bad} of {got_rows.size} output values are NaN or Inf")
        got_rows = np.nan_to_num(got_rows, nan=0.0, posinf=0.0, neginf=0.0)

    got_flat, ref_flat = got_rows.ravel(), ref_rows.ravel()
    diff = got_flat - ref_flat
    max_abs = float(np.abs(diff).max()) if diff.size else 0.0
    ref_norm = float(np.linalg.norm(ref_flat))
    rel_l2 = float(np.linalg.norm(diff) / ref_norm) if ref_norm > 0 else float(np.linalg.norm(diff))
    got_norm = float(np.linalg.norm(got_flat))
    cosine = float(got_flat @ ref_flat / (got_norm * ref_norm)) if got_norm > 0 and ref_norm > 0 else 0.0
    cos_per_sample, agreement = centered_figures(got_rows, ref_rows)
    if not classifier:
        agreement = None
    worst = float(cos_per_sample.min()) if cos_per_sample is not None else None
    median = float(np.median(cos_per_sample)) if cos_per_sample is not None else None

    if tol.max_rel_l2 is not None and not rel_l2 <= tol.max_rel_l2:
        failures.append(f"relative L2 error {rel_l2:.3g} > {tol.max_rel_l2:g}")
    if tol.min_rel_l2 is not None and finite and not rel_l2 >= tol.min_rel_l2:
        failures.append(
            f"relative L2 error {rel_l2:.3g} < {tol.min_rel_l2:g}: the outputs match fp32 to fp32's own rounding"
            f"{' (bit-identical)' if max_abs == 0 else ''}, so {precision} did not run")
    if tol.min_centered_cosine is not None:
        if worst is None:
            failures.append(f"the per-sample check needs 2 or more samples whose reference outputs differ; "
                            f"got {samples} (raise --accuracy-samples)")
        elif not worst >= tol.min_centered_cosine:
            n_low = int((cos_per_sample < tol.min_centered_cosine).sum()) if cos_per_sample is not None else 0
            failures.append(f"per-sample centered cosine {worst:.4f} < {tol.min_centered_cosine:g} "
                            f"({n_low} of {samples} samples)")
    if agreement is not None and tol.min_class_agreement is not None and not agreement >= tol.min_class_agreement:
        failures.append(f"top-{CLASS_AGREEMENT_TOP_K} class agreement {agreement:.3f} < {tol.min_class_agreement:g}")

    return AccuracyReport(
        precision=precision,
        samples=samples,
        max_abs_error=max_abs,
        rel_l2_error=rel_l2,
        cosine_similarity=cosine,
        centered_cosine_worst=worst,
        centered_cosine_median=median,
        class_agreement=agreement,
        finite=finite,
        failures=tuple(failures),
        tolerance=tolerance_name,
    )
