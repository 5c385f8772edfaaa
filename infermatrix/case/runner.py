"""One case from start to finish: prepare the session, check accuracy, time it, record.

Kept apart from the pytest wiring (``plugin.py``) so each step can be tested alone.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import numpy as np

from infermatrix.api.scenario import CaseKind, Scenario
from infermatrix.api.types import (
    FORM_GENERATION,
    Arrays,
    BackendInfo,
    Case,
    MemoryReport,
    ModelSpec,
    RunOptions,
    Session,
)
from infermatrix.gate import reference
from infermatrix.gate.accuracy import AccuracyReport, agreement_figures, compare_outputs
from infermatrix.gate.precision import PrecisionReport, check_precision
from infermatrix.measure import tails
from infermatrix.measure.timing import TimingPolicy, TimingResult, benchmark_recorder, measure, warm_up

if TYPE_CHECKING:
    from numpy.typing import NDArray


def process_rss_bytes() -> int:
    import psutil

    return int(psutil.Process().memory_info().rss)


class Drivable:
    """What every prepared case shares (``PreparedCase`` here, ``generation.PreparedGeneration``):
    scenarios drive it through ``run``; memory is read through the memory hook."""

    session: Any
    rss_before_bytes: int
    extra_info: dict[str, Any]
    slowdown: float

    def run(self, scenario: Scenario, benchmark: Any, argument: Any) -> Any:
        assert scenario.measure is not None, f"scenario {scenario.name!r} prepares no case"
        return scenario.measure(self, benchmark, argument)

    def record_memory(self, hook: Any) -> None:
        """The memory hook's figures for this case, into ``extra_info``."""
        report = hook.pytest_infermatrix_memory(session=self.session, baseline_rss_bytes=self.rss_before_bytes)
        self.extra_info.update(memory_info(report))

    def close(self) -> None:
        self.session.close()


@dataclasses.dataclass
class PreparedCase(Drivable):
    """A case whose session is ready, warmed, checked against the reference, and whose
    precision is proven by what the backend reports it compiled (``precision``)."""

    case: Case
    session: Session
    inputs: Arrays
    accuracy: AccuracyReport
    prepare_s: float
    warmup_calls: int
    rss_before_bytes: int
    flops_per_sample: int | None
    threads: int
    extra_info: dict[str, Any] = dataclasses.field(default_factory=dict)
    #: --inject-slowdown: extra share of each timed call's own duration, spent busy-waiting
    slowdown: float = 0.0
    #: the proof of precision (None only for sessions made outside ``prepare``, e.g. by the tools)
    precision: PrecisionReport | None = None
    #: a variant's own figures (infermatrix.case.variants.variant_info), None for a model
    variant: dict[str, Any] | None = None
    #: the case's outputs against the original model's fp32 reference (:func:`agreement_with_original`)
    agreement_with_original: dict[str, Any] | None = None

    def info(self) -> dict[str, Any]:
        return case_info(self)

    def call(self) -> list[NDArray[Any]]:
        if not self.slowdown:
            return self.session.run(self.inputs)
        started = time.perf_counter()
        outputs = self.session.run(self.inputs)
        busy_wait((time.perf_counter() - started) * self.slowdown)
        return outputs


def run_in_batches(session: Session, inputs: Arrays, batch_size: int) -> list[NDArray[Any]]:
    """Run ``inputs`` (n samples) through ``session`` one case-sized batch at a time."""
    n = len(next(iter(inputs.values())))
    pieces: list[list[NDArray[Any]]] = []
    for start in range(0, n, batch_size):
        batch = {k: v[start : start + batch_size] for k, v in inputs.items()}
        pieces.append([np.asarray(o) for o in session.run(batch)])
    return [np.concatenate(parts, axis=0) for parts in zip(*pieces, strict=True)]


def gate_outputs(case: Case, session: Session, cache_root: Path, min_samples: int) -> list[NDArray[Any]]:
    """The session's outputs on the accuracy gate's seeded inputs."""
    n = reference.accuracy_sample_count(case.batch_size, min_samples)
    return run_in_batches(session, reference.accuracy_inputs(case.model, n), case.batch_size)


def check_accuracy(case: Case, session: Session, got: list[NDArray[Any]],
                   expected: list[NDArray[Any]]) -> AccuracyReport:
    """The gate: the session's outputs ``got`` against the model's fp32 reference ``expected``."""
    return compare_outputs(got, expected, case.target.precision, classifier=case.model.task == "classification",
                           backend_config=session.config)


def agreement_with_original(case: Case, got: list[NDArray[Any]], own_reference: list[NDArray[Any]],
                            cache_root: Path) -> dict[str, Any] | None:
    """This case's first output on the gate's inputs against the *original* model's fp32
    reference (``own_reference``, the gate's, for a model), as a variant's fp32 agreement is
    computed: so a variant at int8 (QAT, prune-then-quantize) and the original at
    post-training int8 are compared with the same thing. Where only torch could make the
    original's reference and it is not cached, the record says so instead."""
    from infermatrix.case.variants import original_of

    classifier = case.model.task == "classification"
    if case.model.variant_of is None:
        return {"of": case.model.name, **agreement_figures(own_reference[0], got[0], classifier)}
    model = original_of(case.model)
    try:
        expected = reference.reference_outputs(model, len(got[0]), cache_root)
    except reference.ReferenceUnavailable as missing:
        return {"of": model.name, "why": str(missing)}
    return {"of": model.name, **agreement_figures(expected[0], got[0], classifier)}


def prove_precision(case: Case, session: Session) -> PrecisionReport:
    """The session's evidence of what precision it computes in (read after compilation and
    warm-up, so compiled graphs exist), judged against the case's precision."""
    give = getattr(session, "precision_evidence", None)
    return check_precision(case.target.precision, give() if callable(give) else None)


SessionT = TypeVar("SessionT")


def timed_prepare(case: Case, prepare_session: Callable[[], SessionT | None]) -> tuple[SessionT, float, int]:
    """Run the prepare hook: the session, the seconds it took, and the RSS before it."""
    rss_before = process_rss_bytes()
    started = time.perf_counter()
    session = prepare_session()
    prepare_s = time.perf_counter() - started
    if session is None:
        raise RuntimeError(f"{case.id}: no plugin prepared a session for backend {case.backend.name!r}")
    return session, prepare_s, rss_before


def busy_wait(seconds: float) -> None:
    """--inject-slowdown's added time, spent busy (sleep() is far too coarse at µs-ms scale)."""
    until = time.perf_counter() + seconds
    while time.perf_counter() < until:
        pass


def prepare(
    case: Case,
    prepare_session: Callable[[], Session | None],
    cache_root: Path,
    policy: TimingPolicy,
    accuracy_samples: int,
    threads: int,
) -> PreparedCase:
    """Prepare, first-infer, warm up and check one case (accuracy, proof of precision). Raises
    AssertionError-free: the caller decides how a failed check ends the test."""
    session, prepare_s, rss_before = timed_prepare(case, prepare_session)
    inputs = case.model.eval_inputs(case.batch_size)
    try:
        if session.times.first_inference_s is None:
            t0 = time.perf_counter()
            session.run(inputs)
            session.times.first_inference_s = time.perf_counter() - t0
        warmup_calls = warm_up(lambda: session.run(inputs), policy)
        got = gate_outputs(case, session, cache_root, accuracy_samples)
        expected = reference.reference_outputs(case.model, len(got[0]), cache_root)
        accuracy = check_accuracy(case, session, got, expected)
        against_original = agreement_with_original(case, got, expected, cache_root)
        precision = prove_precision(case, session)
        flops = reference.flops_per_sample(case.model, cache_root)
    except BaseException:
        session.close()
        raise
    from infermatrix.case.variants import variant_info

    return PreparedCase(case, session, inputs, accuracy, prepare_s, warmup_calls, rss_before, flops, threads,
                        precision=precision, variant=variant_info(case.model, cache_root),
                        agreement_with_original=against_original)


def case_info(prepared: PreparedCase) -> dict[str, Any]:
    """How the case was prepared, for every scenario's record (the record adds which case it is:
    ``infermatrix.results.CaseResult.of_case``)."""
    session = prepared.session
    return {
        "backend_config": dict(session.config),
        "prepare_s": prepared.prepare_s,
        **{f"{k}": v for k, v in session.times.as_dict().items()},
        "warmup_calls": prepared.warmup_calls,
        "accuracy": prepared.accuracy.as_dict(),
        **({"precision_evidence": prepared.precision.as_dict()} if prepared.precision is not None else {}),
        "model_size_bytes": session.size_bytes,
        "flops_per_sample": prepared.flops_per_sample,
        **({"variant": prepared.variant} if prepared.variant is not None else {}),
        **({"agreement_with_original": prepared.agreement_with_original}
           if prepared.agreement_with_original is not None else {}),
    }


def percentile_info(samples: list[float], policy: TimingPolicy, stop_reason: str, prefix: str) -> dict[str, Any]:
    """``<prefix>_p50_ms`` and each tail's ``<prefix>_pNN_ms`` where estimable, and
    ``<prefix>_percentiles``: every percentile's value or why it has none, its sample count
    and method. A tail short of samples is left out of the flat figures, never guessed."""
    info: dict[str, Any] = {}
    details: dict[str, Any] = {}
    for key, found in tails.latency_percentiles(samples, tails.reported_tails(policy.tail_percentiles)).items():
        if found.value_s is not None:
            info[f"{prefix}_{key}_ms"] = found.value_s * 1e3
        elif found.why is not None and found.method == tails.METHOD_EARLY_STOPPING:
            if found.percentile not in policy.tail_percentiles:
                hint = f"ask for it with --tail-percentiles {found.percentile:g}"
            elif stop_reason == "tail time limit spent":
                hint = f"the tail time limit (--tail-max-time {policy.tail_max_time_s:g} s) was spent first"
            else:
                hint = f"timing stopped first ({stop_reason})"
            found = dataclasses.replace(found, why=f"{found.why}; {hint}")
        details[key] = found.as_record()
    info[f"{prefix}_percentiles"] = details
    return info


def latency_info(prepared: PreparedCase, timing: TimingResult, policy: TimingPolicy) -> dict[str, Any]:
    if not timing.samples_s:
        return {"stop_reason": timing.stop_reason}
    median = timing.median_s
    batch = prepared.case.batch_size
    info = percentile_info(timing.samples_s, policy, timing.stop_reason, "latency")
    info.update(
        rounds=len(timing.samples_s),
        stop_reason=timing.stop_reason,
        median_ci95_ms=[timing.median_ci_s[0] * 1e3, timing.median_ci_s[1] * 1e3],
        median_ci95_relative_half_width=timing.relative_half_width,
        throughput_samples_per_s=batch / median,
    )
    if prepared.flops_per_sample:
        info.update(efficiency_info(prepared, prepared.flops_per_sample * batch / median))
    return info


def efficiency_info(prepared: PreparedCase, achieved_flops_per_s: float) -> dict[str, Any]:
    """Achieved GFLOP/s and its share of this machine's measured peak (same device and precision)."""
    from infermatrix.measure.peak import measured_peak

    info: dict[str, Any] = {"achieved_gflops_per_s": achieved_flops_per_s / 1e9}
    target = prepared.case.target
    peak = measured_peak(target.device, target.precision, prepared.threads)
    if peak is not None:
        info["peak_gflops_per_s"] = peak.flops_per_s / 1e9
        info["peak_measured_by"] = peak.how
        info["efficiency"] = achieved_flops_per_s / peak.flops_per_s
    return info


def device_latency_info(prepared: PreparedCase, rounds: int, policy: TimingPolicy, stop_reason: str) -> dict[str, Any]:
    """Device-side latency (e.g. CUDA events around the device work), for sessions that have it."""
    device_timings = getattr(prepared.session, "device_timings", None)
    if device_timings is None or rounds <= 0:
        return {}
    samples = list(device_timings(prepared.inputs, rounds))
    info = percentile_info(samples, policy, stop_reason, "device_latency")
    info["device_latency_rounds"] = len(samples)
    return info


def measure_latency(prepared: PreparedCase, benchmark: Any, policy: TimingPolicy) -> TimingResult:
    timing = measure(benchmark, prepared.call, policy, prepared.warmup_calls)
    prepared.extra_info.update(latency_info(prepared, timing, policy))
    # as many device rounds as host rounds, up to 200 — or the rounds the asked-for tails need
    device_rounds = min(len(timing.samples_s), max(200, policy.tail_rounds))
    prepared.extra_info.update(device_latency_info(prepared, device_rounds, policy, timing.stop_reason))
    return timing


def measure_throughput(prepared: PreparedCase, benchmark: Any, duration_s: float) -> list[Any]:
    """Offline throughput over the session's configurations; the best is recorded.

    pytest-benchmark's rounds for this test are the seconds per batch of the best
    configuration in each timing window, so its table and compare stay meaningful.
    """
    from infermatrix.measure.throughput import sweep

    results = sweep(prepared.session, prepared.call, prepared.inputs, prepared.case.batch_size, duration_s,
                    prepared.threads)
    best = max(results, key=lambda r: r.samples_per_s)
    if not getattr(benchmark, "disabled", False):
        record = benchmark_recorder(benchmark, "infermatrix.case.runner.measure_throughput")
        for window in best.window_s_per_batch:
            record(window)
    prepared.extra_info.update(
        throughput_samples_per_s=best.samples_per_s,
        throughput_best_config=best.as_dict(),
        throughput_sweep=[r.as_dict() for r in results],
    )
    if prepared.flops_per_sample:
        prepared.extra_info.update(efficiency_info(prepared, prepared.flops_per_sample * best.samples_per_s))
    return results


def memory_info(report: MemoryReport | None) -> dict[str, Any]:
    if report is None:
        return {}
    return {f"memory_{k}": v for k, v in dataclasses.asdict(report).items() if v is not None}


def fill_forward_cache(case: Case, options: RunOptions, accuracy_samples: int) -> None:
    """The shared cache a forward case reads (seeded weights, fp32 reference, FLOPs), made in
    pytest's process: a worker then runs only its own framework (TensorFlow beside torch
    crashed a process here), and its peak memory is the case's, not the reference model's."""
    n = reference.accuracy_sample_count(case.batch_size, accuracy_samples)
    reference.reference_outputs(case.model, n, options.cache_root)
    reference.flops_per_sample(case.model, options.cache_root)
    if case.model.variant_of is not None:
        from infermatrix.case.variants import original_of

        # what agreement_with_original compares with, and the weights a Keras form loads:
        # a variant cached before its weights were kept as arrays would make a TensorFlow
        # worker import torch (the two abort one process here)
        reference.reference_outputs(original_of(case.model), n, options.cache_root)
        reference.ensure_weights_file(case.model, options.cache_root)


def prepare_forward(case: Case, prepare_session: Callable[[], Session | None], options: RunOptions,
                    policy: TimingPolicy, accuracy_samples: int) -> PreparedCase:
    return prepare(case, prepare_session, options.cache_root, policy, accuracy_samples, options.threads)


def is_forward_model(model: ModelSpec) -> bool:
    return FORM_GENERATION not in model.forms


def is_forward_case(model: ModelSpec, backend: BackendInfo) -> bool:
    return is_forward_model(model) and not backend.server


#: Tensor in, tensor out: every model that has no generation form. (Module-level functions
#: only: the kind travels to the worker by pickle.)
FORWARD = CaseKind("forward", accepts=is_forward_case, fill_cache=fill_forward_cache,
                   prepare_hook="pytest_infermatrix_prepare", prepare=prepare_forward)
