"""``CaseResult``: the one record every scenario writes and every reader reads.

A run's results stay pytest-benchmark JSON (its ``compare`` and table keep working on
them); the record lives in each benchmark's ``extra_info``: every field at the top level,
plus ``"record_version"``. Fields a scenario does not measure are left out, not written
as null, so a reader can tell "not measured" from "measured as nothing". What a scenario
records beyond the typed fields (sweeps, confidence intervals, efficiency) is kept in
``extra`` and written back at the top level too, so nothing a scenario measured is lost.

``case-result.schema.json`` beside this module describes the same record for readers
outside Python; ``tests/test_record.py`` keeps the two in step.

Files written before the record existed carry no ``record_version`` and, for cold-start
and memory, no identity beyond ``case_id``: ``from_benchmark`` reads them too, taking the
identity from the case id (``model-backend-device-precision-bN``) and the scenario from
the test's name.

Version 2 changed what a tail percentile is (``latency_p90_ms``, ``latency_p99_ms``,
``latency_p99_9_ms``, ``itl_p99_ms``): LoadGen's early-stopping estimate, present only
when there were enough samples for it (``infermatrix.measure.tails``); ``latency_percentiles``
says for each percentile its value or why it has none, its sample count and method. Version 1
wrote ``numpy.percentile`` of whatever rounds there were (the p99 of 16 rounds: their
maximum). Reading a version-1 record judges its tails by the same rule from its ``rounds``:
a tail short of samples is read as not estimable; one with enough keeps its value, marked
as version 1's interpolated percentile. Version 1's inter-token p99 cannot be judged (its
sample count was not recorded) and is read as not estimable.
"""

from __future__ import annotations

import dataclasses
import re
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from infermatrix.api.types import Case

#: Bumped when a field changes meaning or type; adding an optional field does not need it
#: (an older reader keeps the unknown key in ``extra``).
SCHEMA_VERSION = 2

#: What a scenario's name looks like (a scenario is a module under suites/; the record
#: names it, and any new scenario module's results are records too).
SCENARIO_NAME = r"^[a-z][a-z0-9-]*$"
#: The scenarios that existed before the record: in files from then, the test's name says
#: which one made a result (``test_cold_start[...]``).
LEGACY_SCENARIOS = ("latency", "throughput", "cold-start", "memory", "generate")

SCHEMA_PATH = Path(__file__).with_name("case-result.schema.json")

#: The fields that say which case and scenario a record belongs to; all required.
IDENTITY = ("case_id", "model", "backend", "device", "precision", "batch_size", "scenario")


class RecordError(ValueError):
    """A benchmark entry that cannot be read as a ``CaseResult``; the message names it."""


@dataclasses.dataclass(frozen=True)
class CaseResult:
    """One timed case of one scenario: which case it was and what was measured."""

    # ---- identity (every record) ----
    case_id: str
    model: str
    backend: str
    device: str
    precision: str
    batch_size: int
    scenario: str

    # ---- how the case ran (every scenario that prepares or isolates the case) ----
    backend_version: str | None = None
    #: what the backend really ran with (providers, dtype, threads, compile mode...)
    backend_config: Mapping[str, Any] | None = None
    #: the accuracy gate's figures (outputs against the fp32 reference, or tokens for generate)
    accuracy: Mapping[str, Any] | None = None
    #: the proof of precision: what the backend read back after compilation (compute ops by
    #: precision, the API it was read with, the facts), and whether it shows the case's precision
    #: ("verified", "contradicted", "unverified"); infermatrix.gate.precision
    precision_evidence: Mapping[str, Any] | None = None
    model_size_bytes: int | None = None
    flops_per_sample: int | None = None
    #: "process" (a worker process ran the case) or "none" (pytest's own process)
    isolation: str | None = None
    #: the reference probe's reading right before the case was timed (infermatrix.measure.probe):
    #: "key" (the probe's identity), "time" (Unix seconds), "matmul_ms" and "copy_ms" (its rounds)
    machine_probe: Mapping[str, Any] | None = None

    # ---- preparation, seconds (cold-start's phases; in-process scenarios record them too) ----
    prepare_s: float | None = None
    load_s: float | None = None
    convert_s: float | None = None
    quantize_s: float | None = None
    compile_s: float | None = None
    first_inference_s: float | None = None

    # ---- latency (a tail is present only where estimable: see ``latency_percentiles``) ----
    latency_p50_ms: float | None = None
    latency_p90_ms: float | None = None
    latency_p99_ms: float | None = None
    latency_p99_9_ms: float | None = None
    #: "p50", "p90", ... -> {"value_ms": number or null (not estimable), "samples", "samples_needed",
    #: "method", and "order_statistic"/"confidence" for an estimate or "not_estimable": why}
    latency_percentiles: Mapping[str, Mapping[str, Any]] | None = None
    rounds: int | None = None
    stop_reason: str | None = None
    #: --repeats: the median of each fresh process; the verdicts use their spread
    repeat_medians_ms: tuple[float, ...] | None = None

    # ---- throughput (latency records its single-stream figure here too) ----
    throughput_samples_per_s: float | None = None

    # ---- cold start ----
    framework_import_s: float | None = None
    cold_start_total_s: float | None = None
    isolated_process_wall_s: float | None = None

    # ---- memory (memory's are the case alone in a fresh process; others' share a process) ----
    memory_host_peak_rss_bytes: int | None = None
    memory_host_peak_rss_added_bytes: int | None = None
    memory_host_rss_delta_bytes: int | None = None
    memory_device_peak_bytes: int | None = None
    memory_device_process_bytes: int | None = None
    memory_source: str | None = None

    # ---- generate (the first sweep configuration; ``generate`` holds all of them) ----
    ttft_ms: float | None = None
    itl_p50_ms: float | None = None
    #: present only where estimable; each configuration in ``generate`` has ``itl_samples`` and,
    #: when not estimable, ``itl_p99_ms`` null and ``itl_p99_samples_needed``
    itl_p99_ms: float | None = None
    decode_tokens_per_s: float | None = None
    e2e_tokens_per_s: float | None = None
    generate: Mapping[str, Mapping[str, float]] | None = None
    generate_primary: str | None = None

    # ---- serve (infermatrix.serving): load points, the curve's knee, the client's floor, the load ----
    serve: Mapping[str, Any] | None = None
    #: a variant's case (``<model>.<variant>``): name, of (the original model), description,
    #: parameters, nonzero_parameters, fp32_bytes, prepare_s, original (its sizes) and agreement
    #: (with the original on held-out inputs: top1_agreement, cosine_mean, cosine_min)
    variant: Mapping[str, Any] | None = None
    #: this case's outputs on the accuracy gate's inputs against the original model's fp32
    #: reference (a model's own, for a model): of, samples, cosine_mean, cosine_min,
    #: top1_agreement (classifiers), centered by the original's mean; or of and why not
    agreement_with_original: Mapping[str, Any] | None = None

    #: everything else the scenario recorded, written back at the top level of extra_info
    extra: Mapping[str, Any] = dataclasses.field(default_factory=dict)

    def __post_init__(self) -> None:
        if not isinstance(self.scenario, str) or not re.match(SCENARIO_NAME, self.scenario):
            raise RecordError(f"{self.case_id}: {self.scenario!r} is not a scenario name (lower-case words "
                              "joined by '-', as the scenario modules under suites/ name themselves)")
        for name in IDENTITY:
            if getattr(self, name) in ("", None):
                raise RecordError(f"{self.case_id or '?'}: {name} is empty; every record names its case")
        if self.batch_size < 1:
            raise RecordError(f"{self.case_id}: batch_size {self.batch_size} must be at least 1")
        clash = sorted(set(self.extra) & (set(FIELD_KINDS) | {"record_version", "extra"}))
        if clash:
            raise RecordError(f"{self.case_id}: extra holds typed field(s) {', '.join(clash)}; set them as fields")

    # ---- reading ----------------------------------------------------------------------

    def percentile(self, key: str) -> Mapping[str, Any] | None:
        """The latency percentile ``key`` ("p99", "p99_9") as measured — a value or why not —
        or None where this record measured no latency percentiles."""
        return (self.latency_percentiles or {}).get(key)

    @property
    def cosine_similarity(self) -> float | None:
        value = (self.accuracy or {}).get("cosine_similarity")
        return None if value is None else float(value)

    @classmethod
    def from_benchmark(cls, bench: Mapping[str, Any]) -> CaseResult:
        """The record of one entry of a result file's ``benchmarks`` (any version)."""
        return cls.from_extra_info(bench.get("extra_info") or {}, name=str(bench.get("name", "")))

    @classmethod
    def from_extra_info(cls, info: Mapping[str, Any], name: str = "") -> CaseResult:
        """The record of an ``extra_info``; ``name`` (the test's) fills what old files lack."""
        data = dict(info)
        version = data.pop("record_version", None)
        if version is not None and int(version) > SCHEMA_VERSION:
            raise RecordError(f"{name or data.get('case_id')}: record_version {version} is newer than this "
                              f"infermatrix reads ({SCHEMA_VERSION}); update infermatrix to read it")
        if version is None or int(version) < 2:
            data = _tails_of_version_1(data)
        data.update(_identity(data, name))
        fields: dict[str, Any] = {}
        for key in list(data):
            if key in FIELD_KINDS:
                fields[key] = _coerce(key, data.pop(key), name or str(data.get("case_id")))
        return cls(**fields, extra=data)

    # ---- writing ----------------------------------------------------------------------

    def to_extra_info(self) -> dict[str, Any]:
        """The record as pytest-benchmark's ``extra_info``: plain JSON, fields at the top level."""
        info: dict[str, Any] = {"record_version": SCHEMA_VERSION}
        for name in FIELD_KINDS:
            value = getattr(self, name)
            if value is None:
                continue
            if isinstance(value, tuple):
                value = list(value)
            elif isinstance(value, Mapping):
                value = dict(value)
            info[name] = value
        info.update(self.extra)
        return info

    @classmethod
    def of_case(cls, case: Case, scenario: str, figures: Mapping[str, Any]) -> CaseResult:
        """The record of ``case`` in ``scenario``: identity from the case itself, the rest from ``figures``."""
        data = {k: v for k, v in figures.items() if k not in IDENTITY and k != "record_version"}
        data.setdefault("backend_version", case.backend.version)
        data.update(case_id=case.id, model=case.model.name, backend=case.backend.name, device=case.target.device,
                    precision=case.target.precision, batch_size=case.batch_size, scenario=scenario)
        return cls.from_extra_info(data, name=case.id)


def write(benchmark: Any, case: Case, scenario: str, figures: Mapping[str, Any] | None = None) -> CaseResult:
    """Put the record of ``case`` in ``scenario`` into ``benchmark.extra_info``, replacing what is there.

    ``figures`` default to what the benchmark's ``extra_info`` already holds, so a fixture
    can collect figures as the scenario runs and seal them into the record at the end.
    """
    record = CaseResult.of_case(case, scenario, benchmark.extra_info if figures is None else figures)
    benchmark.extra_info.clear()  # in place: pytest-benchmark keeps this very dict
    benchmark.extra_info.update(record.to_extra_info())
    return record


# ---- field kinds, shared by the reader and the schema test ---------------------------------------

#: name -> (JSON-able Python type, optional); ``extra`` is not a field of the JSON record.
FIELD_KINDS: dict[str, tuple[type, bool]] = {}


def _kind(hint: Any) -> tuple[type, bool]:
    args = typing.get_args(hint)
    optional = type(None) in args
    if optional:
        (hint,) = [a for a in args if a is not type(None)]
    origin = typing.get_origin(hint) or hint
    if origin in (Mapping, dict):
        return dict, optional
    if not isinstance(origin, type):
        raise TypeError(f"CaseResult: no JSON kind for {hint!r}")
    return origin, optional


_HINTS = typing.get_type_hints(CaseResult)
for _field in dataclasses.fields(CaseResult):
    if _field.name != "extra":
        FIELD_KINDS[_field.name] = _kind(_HINTS[_field.name])


def _coerce(name: str, value: Any, where: str) -> Any:
    """JSON's value as the field's type: ints stand for floats in JSON, lists for tuples."""
    if value is None:
        return None
    kind, _ = FIELD_KINDS[name]
    try:
        if kind is tuple:
            return tuple(float(v) for v in value)
        if kind is dict:
            if not isinstance(value, Mapping):
                raise TypeError(f"expected an object, got {type(value).__name__}")
            return dict(value)
        if kind in (int, float) and isinstance(value, str):
            raise TypeError(f"expected a number, got the string {value!r}")
        return kind(value)
    except (TypeError, ValueError) as exc:
        raise RecordError(f"{where}: field {name!r} = {value!r} is not a {kind.__name__}: {exc}") from None


#: Version 1's tail fields and the percentile each stood for.
_V1_TAILS = {"latency_p90_ms": 90.0, "latency_p99_ms": 99.0, "latency_p99_9_ms": 99.9}
_V1_METHOD = "interpolated sample percentile (record_version 1)"


def _tails_of_version_1(data: dict[str, Any]) -> dict[str, Any]:
    """A version-1 (or older) record's tails, judged by version 2's rule (see the module's docstring)."""
    from infermatrix.measure import tails

    data = dict(data)
    rounds = data.get("rounds")
    samples = int(rounds) if isinstance(rounds, int | float) and not isinstance(rounds, bool) else None
    details: dict[str, Any] = {}
    if data.get("latency_p50_ms") is not None and samples is not None:
        details["p50"] = {"value_ms": data["latency_p50_ms"], "samples": samples, "samples_needed": 1,
                          "method": tails.METHOD_MEDIAN}
    for field, percentile in _V1_TAILS.items():
        if field not in data:
            continue
        value = data.pop(field)
        needed = tails.min_samples(percentile)
        entry: dict[str, Any] = {"value_ms": None, "samples": samples, "samples_needed": needed,
                                 "method": _V1_METHOD}
        if samples is not None and samples >= needed and value is not None:
            entry["value_ms"] = data[field] = value
        else:
            entry["not_estimable"] = (f"{'unknown' if samples is None else samples} rounds in a version-1 record; "
                                      f"LoadGen's early-stopping rule needs {needed} for p{percentile:g}")
        details[tails.percentile_key(percentile)] = entry
    if details and "latency_percentiles" not in data:
        data["latency_percentiles"] = details
    if data.get("itl_p99_ms") is not None:
        data["itl_p99_ms"] = None  # version 1 recorded no inter-token sample count: not judged, not shown
    generate = data.get("generate")
    if isinstance(generate, Mapping):
        data["generate"] = {config: ({**figures, "itl_p99_ms": None} if isinstance(figures, Mapping)
                                     and figures.get("itl_p99_ms") is not None else figures)
                            for config, figures in generate.items()}
    return data


_PARAM = re.compile(r"^test_(?P<scenario>\w+)\[(?P<case_id>.+)\]$")


def _identity(data: Mapping[str, Any], name: str) -> dict[str, Any]:
    """The identity fields, from the record, else the case id, else the test's name."""
    from_name = _PARAM.match(name)
    found: dict[str, Any] = {}
    case_id = data.get("case_id") or (from_name["case_id"] if from_name else None)
    if not case_id:
        raise RecordError(f"{name or 'a benchmark'}: no case_id; not an infermatrix result")
    found["case_id"] = str(case_id)
    missing = [k for k in ("model", "backend", "device", "precision", "batch_size") if data.get(k) in (None, "")]
    if missing:
        # Imported here: the plugin imports the modules that write records (a cycle at import time).
        from infermatrix.pytest_plugin.plugin import case_id_pattern

        parsed = case_id_pattern().match(found["case_id"])
        if parsed is None:
            raise RecordError(f"{name or case_id}: {', '.join(missing)} missing and the case id {case_id!r} is not "
                              "model-backend-device-precision-bN")
        derived = {"model": parsed["model"], "backend": parsed["backend"], "device": parsed["device"],
                   "precision": parsed["precision"], "batch_size": int(parsed["batch"])}
        found.update((k, derived[k]) for k in missing)
    if not data.get("scenario"):
        # Old files: a scenario module's tests are named test_<scenario>; before scenarios
        # existed every result was a latency result.
        scenario = from_name["scenario"].replace("_", "-") if from_name else ""
        found["scenario"] = scenario if scenario in LEGACY_SCENARIOS else "latency"
    return found
