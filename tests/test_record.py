"""The typed result record: its schema file in step with the dataclass, writing and reading
it, and result files from before it existed."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
from helpers import SCHEMA_KEYWORDS, schema_violations

from infermatrix.results import SCENARIO_NAME, SCHEMA_PATH, SCHEMA_VERSION, CaseResult, RecordError
from infermatrix.results.record import FIELD_KINDS, IDENTITY

JSON_TYPE = {str: "string", int: "integer", float: "number", dict: "object", tuple: "array", bool: "boolean"}


def test_the_schema_file_describes_the_dataclass_field_for_field() -> None:
    schema = json.loads(SCHEMA_PATH.read_text())
    properties = schema["properties"]
    assert set(properties) == {"record_version", *FIELD_KINDS}, "schema and CaseResult name different fields"
    assert schema["required"] == ["record_version", *IDENTITY]
    assert properties["record_version"]["const"] == SCHEMA_VERSION
    assert properties["scenario"]["pattern"] == SCENARIO_NAME
    for name, (kind, optional) in FIELD_KINDS.items():
        expected = [JSON_TYPE[kind], "null"] if optional else JSON_TYPE[kind]
        assert properties[name]["type"] == expected, name
        assert properties[name].get("description"), f"{name}: say what it is for a reader outside Python"
        assert set(properties[name]) <= SCHEMA_KEYWORDS, name  # the test validator reads these only
    assert schema["additionalProperties"] is True  # a scenario's other figures sit beside the fields


def test_the_schema_ships_with_the_package() -> None:
    import fnmatch
    from pathlib import Path

    import tomllib

    project = tomllib.loads((Path(__file__).resolve().parent.parent / "pyproject.toml").read_text())
    patterns = project["tool"]["setuptools"]["package-data"]["infermatrix.results"]
    assert any(fnmatch.fnmatch(SCHEMA_PATH.name, pattern) for pattern in patterns)


def latency_record() -> CaseResult:
    return CaseResult(
        case_id="tinymlp-numpy-cpu-fp32-b4", model="tinymlp", backend="numpy", device="cpu", precision="fp32",
        batch_size=4, scenario="latency", backend_config={"threads": 2}, accuracy={"cosine_similarity": 1.0},
        latency_p50_ms=0.02, rounds=5, repeat_medians_ms=(0.02, 0.021), extra={"median_ci95_ms": [0.019, 0.021]},
    )


def test_a_record_round_trips_through_extra_info_and_conforms_to_the_schema() -> None:
    record = latency_record()
    info = record.to_extra_info()
    assert info["record_version"] == SCHEMA_VERSION and info["median_ci95_ms"] == [0.019, 0.021]
    assert "ttft_ms" not in info and "memory_host_peak_rss_bytes" not in info  # not measured: not written
    assert schema_violations(json.loads(json.dumps(info))) == []
    assert CaseResult.from_benchmark({"name": "test_latency[x]", "extra_info": json.loads(json.dumps(info))}) == record


def test_a_record_with_tails_round_trips_and_says_which_are_not_estimable() -> None:
    from infermatrix.case.runner import percentile_info
    from infermatrix.measure.timing import TimingPolicy

    samples = [0.010 + 0.0001 * i for i in range(100)]
    figures = percentile_info(samples, TimingPolicy(), "precision reached", "latency")
    record = CaseResult.from_extra_info({**latency_record().to_extra_info(), **figures, "rounds": 100})
    assert record.latency_p90_ms == pytest.approx(0.010 * 1e3 + 0.0001 * 97 * 1e3)  # 3rd slowest of 100
    assert record.latency_p99_ms is None and (record.percentile("p99") or {})["value_ms"] is None
    info = json.loads(json.dumps(record.to_extra_info()))
    assert info["record_version"] == SCHEMA_VERSION == 2
    assert "latency_p99_ms" not in info and info["latency_percentiles"]["p99"]["samples_needed"] == 662
    assert schema_violations(info) == []
    assert CaseResult.from_benchmark({"name": "test_latency[x]", "extra_info": info}) == record


def test_version_1_tails_are_judged_by_the_rule_when_read() -> None:
    """Version 1 wrote numpy.percentile of any number of rounds: 16 rounds' p99 was their maximum."""
    base = {"record_version": 1, "case_id": "resnet18-torch-compile-cpu-fp32-b1", "model": "resnet18",
            "backend": "torch-compile", "device": "cpu", "precision": "fp32", "batch_size": 1, "scenario": "latency",
            "latency_p50_ms": 19.0, "latency_p90_ms": 21.0, "latency_p99_ms": 25.0, "latency_p99_9_ms": 25.4}
    short = CaseResult.from_extra_info({**base, "rounds": 16})
    assert (short.latency_p50_ms, short.latency_p90_ms, short.latency_p99_ms, short.latency_p99_9_ms) == (
        19.0, None, None, None)
    p99 = short.percentile("p99")
    assert p99 is not None and p99["value_ms"] is None and p99["samples"] == 16 and p99["samples_needed"] == 662
    assert "version-1 record" in p99["not_estimable"]
    long = CaseResult.from_extra_info({**base, "rounds": 700})
    assert (long.latency_p90_ms, long.latency_p99_ms, long.latency_p99_9_ms) == (21.0, 25.0, None)
    assert long.percentile("p99") == {"value_ms": 25.0, "samples": 700, "samples_needed": 662,
                                      "method": "interpolated sample percentile (record_version 1)"}
    written = json.loads(json.dumps(long.to_extra_info()))  # rewritten, it is a version-2 record
    assert written["record_version"] == 2 and schema_violations(written) == []
    generate = CaseResult.from_extra_info({
        **{k: v for k, v in base.items() if not k.startswith("latency")}, "scenario": "generate",
        "itl_p50_ms": 1.0, "itl_p99_ms": 1.4, "generate": {"prompt16-new32": {"itl_p50_ms": 1.0, "itl_p99_ms": 1.4}}})
    assert generate.itl_p99_ms is None and generate.generate == {"prompt16-new32": {"itl_p50_ms": 1.0,
                                                                                      "itl_p99_ms": None}}


def test_the_validator_sees_what_breaks_the_schema() -> None:
    info = latency_record().to_extra_info()
    broken = {**info, "batch_size": "4", "scenario": "Soak Test", "repeat_medians_ms": [1.0, "x"]}
    del broken["model"]
    found = schema_violations(broken)
    assert any("'model'" in f for f in found) and any(f.startswith("batch_size=") for f in found)
    assert any(f.startswith("scenario=") for f in found) and any(f.startswith("repeat_medians_ms[1]") for f in found)


def test_old_files_are_read_with_identity_from_the_case_id_and_scenario_from_the_test() -> None:
    # cold-start as written before the record: no model/backend/... and no record_version
    old_cold = {"name": "test_cold_start[resnet18-torch-compile-cpu-int8-dynamic-b8]", "stats": {"median": 1.5},
                "extra_info": {"case_id": "resnet18-torch-compile-cpu-int8-dynamic-b8", "scenario": "cold-start",
                               "prepare_s": 1, "first_inference_s": 0.5, "cold_start_total_s": 2,
                               "onnx_export_cached": None, "backend_config": {}}}
    record = CaseResult.from_benchmark(old_cold)
    assert (record.model, record.backend, record.device, record.precision, record.batch_size, record.scenario) == (
        "resnet18", "torch-compile", "cpu", "int8-dynamic", 8, "cold-start")
    assert record.prepare_s == 1.0 and isinstance(record.prepare_s, float)  # JSON's 1 for a float field
    assert record.extra == {"onnx_export_cached": None}
    # latency results from before scenarios were recorded: no scenario key at all
    old_latency = {"name": "test_latency[tinymlp-numpy-cpu-fp32-b1]", "extra_info": {
        "case_id": "tinymlp-numpy-cpu-fp32-b1", "model": "tinymlp", "backend": "numpy", "device": "cpu",
        "precision": "fp32", "batch_size": 1, "model_size_bytes": None}}
    assert CaseResult.from_benchmark(old_latency).scenario == "latency"
    old_memory = {"name": "test_memory[tinymlp-numpy-cpu-fp32-b1]",
                  "extra_info": {"case_id": "tinymlp-numpy-cpu-fp32-b1"}}
    assert CaseResult.from_benchmark(old_memory).scenario == "memory"


@pytest.mark.parametrize("bench, message", [
    ({"name": "x", "extra_info": {}}, "no case_id"),
    ({"name": "x", "extra_info": {"case_id": "not a case id"}}, "is not model-backend-device-precision-bN"),
    ({"name": "x", "extra_info": {"case_id": "m-b-cpu-fp32-b1", "record_version": SCHEMA_VERSION + 1}},
     "newer than this infermatrix reads"),
    ({"name": "x", "extra_info": {"case_id": "m-b-cpu-fp32-b1", "scenario": "Soak Test"}},
     "'Soak Test' is not a scenario name"),
    ({"name": "x", "extra_info": {"case_id": "m-b-cpu-fp32-b1", "latency_p50_ms": "fast"}},
     "field 'latency_p50_ms' = 'fast' is not a float"),
])
def test_what_cannot_be_read_is_an_error_that_names_it(bench: dict[str, Any], message: str) -> None:
    with pytest.raises(RecordError, match=message.replace("(", r"\(").replace("+", r"\+")):
        CaseResult.from_benchmark(bench)


def test_every_scenario_module_names_a_scenario_the_record_takes() -> None:
    """Adding a scenario is a module under suites/: its name must be one a record can hold."""
    import importlib.util

    from infermatrix.api.scenario import Scenario

    names = []
    for module_path in sorted((Path(__file__).parent.parent / "suites").glob("test_*.py")):
        spec = importlib.util.spec_from_file_location(f"_suite_{module_path.stem}", module_path)
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        assert isinstance(module.SCENARIO, Scenario), module_path
        assert module.pytestmark.args == (module.SCENARIO,), f"{module_path}: pytestmark = SCENARIO.mark()"
        names.append(module.SCENARIO.name)
    assert sorted(names) == sorted(set(names)) and len(names) >= 5
    for name in names:
        assert re.match(SCENARIO_NAME, name), name
