"""Proof of precision: the core check on synthetic evidence, and through a real run of the
numpy test backend — a case whose backend shows another precision than its id says fails
before it is timed, in the worker process and in pytest's own."""

from __future__ import annotations

import json

import pytest
from helpers import FAST, schema_violations

from infermatrix.gate.precision import PrecisionEvidence, check_precision


def evidence(**compute: int) -> PrecisionEvidence:
    return PrecisionEvidence(compute={k.replace("_", "-"): v for k, v in compute.items()}, unit="layers",
                             api="synthetic", facts={"Convolution": {"u8": compute.get("int8", 0)}})


def test_a_reduced_precision_must_show_compute_in_that_precision() -> None:
    report = check_precision("int8", evidence(int8=20, fp32=1))  # the unquantized rest stays fp32
    assert report.passed and report.status == "verified" and report.share == pytest.approx(20 / 21)
    silent = check_precision("int8", evidence(fp32=21))
    assert not silent.passed and silent.status == "contradicted"
    message = silent.message("resnet18-openvino-cpu-int8-b1")
    assert message.startswith("resnet18-openvino-cpu-int8-b1: precision check failed")
    assert "the case says int8 but no compute op ran in int8" in message and "synthetic: layers fp32 x21" in message
    assert not check_precision("bf16", evidence(fp32=5)).passed


def test_fp32_must_show_fp32_only() -> None:
    assert check_precision("fp32", evidence(fp32=3)).status == "verified"
    silent_bf16 = check_precision("fp32", evidence(bf16=3, fp32=1))  # OpenVINO's CPU default, left unset
    assert not silent_bf16.passed
    assert "compute ran in bf16 (3 layers)" in silent_bf16.failures[0]


def test_another_reduced_precision_is_no_proof() -> None:
    dynamic_for_static = check_precision("int8", evidence(int8_dynamic=4))
    assert not dynamic_for_static.passed and len(dynamic_for_static.failures) == 2
    assert check_precision("int8-dynamic", evidence(int8_dynamic=1, fp32=3)).passed
    assert not check_precision("bf16", evidence(bf16=4, fp16=1)).passed


def test_without_evidence_a_reduced_precision_fails_unverified_and_fp32_is_marked() -> None:
    unverified = check_precision("int8", None)
    assert unverified.status == "unverified" and not unverified.passed
    assert "gave no evidence of what precision ran" in unverified.failures[0]
    fp32 = check_precision("fp32", None)
    assert fp32.passed and fp32.status == "unverified" and fp32.as_dict()["status"] == "unverified"
    assert check_precision("fp32", evidence()).status == "unverified"  # no compute op shown: nothing proven


def test_the_report_is_plain_json_with_the_evidence() -> None:
    data = check_precision("int8", evidence(int8=2, fp32=1)).as_dict()
    assert json.loads(json.dumps(data)) == data
    assert data["compute"] == {"int8": 2, "fp32": 1} and data["api"] == "synthetic" and data["passed"]
    assert data["shows"] == "int8 x2, fp32 x1" and data["facts"] == {"Convolution": {"u8": 2}}
    with pytest.raises(ValueError, match="integers >= 0"):
        PrecisionEvidence(compute={"int8": -1}, unit="layers", api="x")


def run_json(suite: pytest.Pytester, *options: str) -> tuple[pytest.RunResult, dict]:
    out = suite.path / "out.json"
    result = suite.runpytest(f"--benchmark-json={out}", *FAST, "--backends=numpy", "--devices=cpu", "-rf", *options)
    return result, json.loads(out.read_text())


@pytest.mark.parametrize("isolation", ["process", "none"])
def test_real_reduced_precisions_are_verified_and_recorded(suite: pytest.Pytester, isolation: str) -> None:
    result, data = run_json(suite, "--precisions=fp32,fp16,int8-dynamic", "--models=tinylinear",
                            f"--isolation={isolation}")
    result.assert_outcomes(passed=3, failed=0, skipped=0)
    proofs = {b["extra_info"]["precision"]: b["extra_info"]["precision_evidence"] for b in data["benchmarks"]}
    assert {p: proof["compute"] for p, proof in proofs.items()} == {
        "fp32": {"fp32": 1}, "fp16": {"fp16": 1}, "int8-dynamic": {"int8-dynamic": 1}}
    assert all(proof["status"] == "verified" and proof["api"] for proof in proofs.values())
    assert proofs["int8-dynamic"]["facts"]["weight_dtype"] == "int8"
    assert all(schema_violations(b["extra_info"]) == [] for b in data["benchmarks"])


@pytest.mark.parametrize("isolation", ["process", "none"])
def test_sabotage_a_silent_fp32_session_fails_the_precision_check_and_is_not_timed(
    suite: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, isolation: str
) -> None:
    # the backend skips its precision step: every case computes fp32 whatever its id says;
    # both gates refuse it, each saying why
    monkeypatch.setenv("NUMPY_BACKEND_SILENT_FP32", "1")
    result, data = run_json(suite, "--precisions=fp32,fp16,int8-dynamic", "--models=tinylinear",
                            f"--isolation={isolation}")
    result.assert_outcomes(passed=1, failed=2, skipped=0)
    result.stdout.fnmatch_lines([
        "*tinylinear-numpy-cpu-fp16-b2: precision check failed (the case says fp16 but no compute op ran in fp16)*"
        "numpy: the weight matrix's dtype: matmuls fp32 x1*",
        "*tinylinear-numpy-cpu-int8-dynamic-b2: precision check failed*no compute op ran in int8-dynamic*",
    ])
    result.stdout.fnmatch_lines(["*tinylinear-numpy-cpu-fp16-b2: accuracy check failed (relative L2 error * < 0.0001: "
                                 "the outputs match fp32 to fp32's own rounding, so fp16 did not run)*"])
    assert [b["extra_info"]["precision"] for b in data["benchmarks"]] == ["fp32"]  # nothing else timed
    assert set(data["infermatrix"]["failed"]) == {"test_latency[tinylinear-numpy-cpu-fp16-b2]",
                                                  "test_latency[tinylinear-numpy-cpu-int8-dynamic-b2]"}


def test_a_session_without_evidence_is_unverified_fp32_passes_marked_and_a_reduced_precision_fails(
    suite: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("NUMPY_BACKEND_NO_EVIDENCE", "1")
    result, data = run_json(suite, "--precisions=fp32,int8-dynamic", "--models=tinylinear")
    result.assert_outcomes(passed=1, failed=1, skipped=0)
    result.stdout.fnmatch_lines(["*tinylinear-numpy-cpu-int8-dynamic-b2: precision check failed (the case says "
                                 "int8-dynamic but its backend gave no evidence of what precision ran*"])
    (bench,) = data["benchmarks"]
    assert bench["extra_info"]["precision_evidence"] == {"status": "unverified", "expected": "fp32", "passed": True,
                                                         "failures": []}
