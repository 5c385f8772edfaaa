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
import math
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
    #: share of samples whose output is nearer their own reference than any other sample's, at least
    min_identified: float = 1.0


#: fp32 backends agree with the torch reference to 1e-8-6e-6 relative L2 (every fp32 CPU case
#: of the default matrix); every reduced-precision case errs by 8e-3 or more. A
#: reduced-precision case below this floor ran fp32.
FLOOR = 1e-4

#: Set from every reduced-precision CPU case of the default matrix (32 samples, this project's
#: AMD EPYC with AVX-512 + VNNI + bf16; docs/backends.md, "The accuracy gate", has the table).
#: Worst working case per limit, and the limit:
#: - centered cosine, worst sample: int8 0.220 (resnet50, ONNX Runtime) -> 0.1; int8-dynamic
#:   0.968 (bert_base) -> 0.5; bf16 0.592 (resnet50, torch) -> 0.3; fp32 1.0000 -> 0.9999. fp16
#:   and tf32 run on GPUs only (no GPU in the measuring session): torch's CPU fp16 arithmetic on
#:   resnet18 gave 0.9999 (class agreement 0.988, rel. L2 0.0017); GPU fp16 errs more (rel. L2
#:   up to 0.03 on an H100, docs/measurements.md), a quarter of bf16's error -> 0.8 and 0.3.
#: - class agreement (classifiers): bf16 0.169 (resnet50) -> 0.1, fp32 1.0 -> 0.95. Not judged
#:   at int8: resnet50's int8 cases score 0.04-0.075, what the sabotages score (0-0.044) — int8
#:   errs as much as those random-weight logits differ, so the class sets say nothing there.
#: - relative L2: int8 0.224 (mobilenet_v2) -> 0.5, bf16 0.128 (resnet50) -> 0.25.
#: Every sample must also be nearer its own reference than any other (working: all 32 of 32,
#: smallest gap 0.13; the sabotages: at most 22 of 32). Every sabotage scores a worst-sample
#: centered cosine of 0.1 or less, most below 0.
TOLERANCES: dict[str, Tolerance] = {
    "fp32": Tolerance(max_rel_l2=1e-3, min_centered_cosine=0.9999, min_class_agreement=0.95),
    "tf32": Tolerance(max_rel_l2=5e-2, min_centered_cosine=0.8, min_class_agreement=0.3, min_rel_l2=FLOOR),
    "fp16": Tolerance(max_rel_l2=5e-2, min_centered_cosine=0.8, min_class_agreement=0.3, min_rel_l2=FLOOR),
    "bf16": Tolerance(max_rel_l2=0.25, min_centered_cosine=0.3, min_class_agreement=0.1, min_rel_l2=FLOOR),
    "int8": Tolerance(max_rel_l2=0.5, min_centered_cosine=0.1, min_rel_l2=FLOOR),
    "int8-dynamic": Tolerance(max_rel_l2=0.5, min_centered_cosine=0.5, min_rel_l2=FLOOR),
}

#: int8 recipes that keep weights or activations to 7 bits — what each backend chooses on
#: a CPU without VNNI, where full-range u8 x s8 kernels (VPMADDUBSW) saturate — give up
#: one bit of resolution. Measured on the AVX2 kernels (oneDNN under ONEDNN_MAX_CPU_ISA=AVX2,
#: ONNX Runtime's MLAS under QEMU's EPYC-Milan): worst sample 0.142 (resnet50, torch-compile)
#: -> 0.07; the saturating full-range recipes there: mobilenet_v2 -0.12 to -0.02 with 5-15 of 32
#: samples identified, resnet50 0.02-0.098 with 29-30 of 32 identified — each fails.
#: ONNX Runtime's 7-bit recipe on resnet50 under the emulated Zen 3 identified 31 of 32 samples
#: (one sample's own cosine 0.006 below its best other one; worst sample 0.110): these cases
#: must identify 90% (29 of 32). The full-range int8 tolerance keeps 100%.
REDUCED_RANGE_INT8 = Tolerance(max_rel_l2=0.5, min_centered_cosine=0.07, min_rel_l2=FLOOR, min_identified=0.9)

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
    #: samples whose output is nearer their own reference than any other sample's, and the
    #: smallest gap between the two cosines (a sample is identified when it is positive)
    samples_identified: int | None
    identification_margin: float | None
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
        if self.samples_identified is not None:
            figures += f" identified={self.samples_identified} margin={self.identification_margin:.3f}"
        if self.class_agreement is not None:
            figures += f" class_agreement={self.class_agreement:.3f}"
        return f"{case_id}: accuracy check failed ({'; '.join(self.failures)}): {figures} over {self.samples} samples"


def per_sample(arrays: Sequence[NDArray[Any]], n: int) -> NDArray[np.float64]:
    """Every output of each of ``n`` samples as one row (batch is each output's first axis)."""
    return np.concatenate([np.asarray(a, dtype=np.float64).reshape(n, -1) for a in arrays], axis=1)


@dataclasses.dataclass(frozen=True)
class CenteredFigures:
    """Each sample's output against the references after removing the reference's mean
    over the samples (what is left is what tells the samples apart)."""

    #: cosine of each judged sample's output with its own reference
    cosine: NDArray[np.float64]
    #: samples whose output is nearer (cosine) their own reference than any other sample's
    identified: int
    #: the smallest gap between a sample's own cosine and its best other one (< 0: not identified)
    margin: float
    #: classifiers: mean overlap of the top-5 class sets
    class_agreement: float | None


def centered_figures(got: NDArray[np.float64], ref: NDArray[np.float64],
                     k: int = CLASS_AGREEMENT_TOP_K) -> CenteredFigures | None:
    """The figures of ``CenteredFigures`` for ``got`` and ``ref`` (rows are samples).

    The seeded networks map every input to nearly the same output (per-sample logits ~97%
    correlated): a raw cosine mostly measures that shared part, which a case ignoring its
    input reproduces. After centering, a constant, mean, stale or shuffled output scores
    about 0, and a sample whose output is another sample's is *not identified*: it is
    nearer that other sample's reference than its own. Samples whose reference does not
    differ from the mean are left out; None when fewer than 2 samples are left.
    """
    if got.shape[0] < 2:
        return None
    mean = ref.mean(axis=0, keepdims=True)
    got_c, ref_c = got - mean, ref - mean
    ref_norm = np.linalg.norm(ref_c, axis=1)
    got_norm = np.linalg.norm(got_c, axis=1)
    varies = ref_norm > 1e-6 * max(float(np.linalg.norm(ref, axis=1).max()), 1e-300)
    if varies.sum() < 2:
        return None
    got_c, ref_c, got_norm, ref_norm = got_c[varies], ref_c[varies], got_norm[varies], ref_norm[varies]
    # An output at the mean to within rounding carries nothing of its sample: cosine 0, not
    # the cosine of rounding noise.
    got_unit = np.where((got_norm > 1e-4 * ref_norm)[:, None], got_c / np.maximum(got_norm, 1e-300)[:, None], 0.0)
    similarity = got_unit @ (ref_c / ref_norm[:, None]).T  # [i, j]: sample i's output against sample j's reference
    own = np.diag(similarity).copy()
    np.fill_diagonal(similarity, -np.inf)
    gap = own - similarity.max(axis=1)
    k = min(k, got.shape[1] - 1)
    agreement: float | None = None
    if k >= 1:
        top_got = np.argpartition(-got_c, k - 1, axis=1)[:, :k]
        top_ref = np.argpartition(-ref_c, k - 1, axis=1)[:, :k]
        agreement = float(np.mean([len(np.intersect1d(a, b)) / k for a, b in zip(top_got, top_ref, strict=True)]))
    return CenteredFigures(cosine=own, identified=int((gap > 0).sum()), margin=float(gap.min()),
                           class_agreement=agreement)


def agreement_figures(original: NDArray[Any], other: NDArray[Any], classifier: bool) -> dict[str, Any]:
    """How far ``other`` is from ``original`` (rows: samples): the mean and worst per-sample
    cosine and, for classifiers, top-1 agreement — both after removing the original's mean
    over the samples, as :func:`centered_figures` does and for its reason (a seeded network's
    shared output part would make any two outputs look alike)."""
    ref = np.asarray(original, dtype=np.float64).reshape(len(original), -1)
    got = np.asarray(other, dtype=np.float64).reshape(len(other), -1)
    center = ref.mean(axis=0, keepdims=True)
    a, b = ref - center, got - center
    norms = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
    cosine = (a * b).sum(axis=1) / np.maximum(norms, 1e-300)
    found: dict[str, Any] = {"samples": int(a.shape[0]), "cosine_mean": round(float(cosine.mean()), 4),
                             "cosine_min": round(float(cosine.min()), 4)}
    if classifier:
        found["top1_agreement"] = round(float((a.argmax(1) == b.argmax(1)).mean()), 4)
    return found


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
    centered = centered_figures(got_rows, ref_rows)
    worst = float(centered.cosine.min()) if centered is not None else None
    median = float(np.median(centered.cosine)) if centered is not None else None
    agreement = centered.class_agreement if centered is not None and classifier else None

    if tol.max_rel_l2 is not None and not rel_l2 <= tol.max_rel_l2:
        failures.append(f"relative L2 error {rel_l2:.3g} > {tol.max_rel_l2:g}")
    if tol.min_rel_l2 is not None and finite and not rel_l2 >= tol.min_rel_l2:
        failures.append(
            f"relative L2 error {rel_l2:.3g} < {tol.min_rel_l2:g}: the outputs match fp32 to fp32's own rounding"
            f"{' (bit-identical)' if max_abs == 0 else ''}, so {precision} did not run")
    if centered is None:
        failures.append(f"the per-sample check needs 2 or more samples whose reference outputs differ; "
                        f"got {samples} (raise --accuracy-samples)")
    else:
        judged = len(centered.cosine)
        if centered.identified < tol.min_identified * judged:
            spare = judged - math.ceil(tol.min_identified * judged)
            allowed = f"; at most {spare} may be" if tol.min_identified < 1 else ""
            failures.append(f"{judged - centered.identified} of {judged} samples' outputs are nearer another "
                            f"sample's reference than their own (outputs that ignore the input, stale or mixed up"
                            f"{allowed})")
        if tol.min_centered_cosine is not None and not centered.cosine.min() >= tol.min_centered_cosine:
            n_low = int((centered.cosine < tol.min_centered_cosine).sum())
            failures.append(f"per-sample centered cosine {worst:.4f} < {tol.min_centered_cosine:g} "
                            f"({n_low} of {judged} samples)")
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
        samples_identified=centered.identified if centered is not None else None,
        identification_margin=centered.margin if centered is not None else None,
        class_agreement=agreement,
        finite=finite,
        failures=tuple(failures),
        tolerance=tolerance_name,
    )
