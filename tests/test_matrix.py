"""The case matrix as a user sees it: ids, selection options, their errors, skip reasons."""

from __future__ import annotations

import re

import pytest
from helpers import FAST

from infermatrix.pytest_plugin.plugin import case_id_pattern

ALL_NUMPY_IDS = {
    "tinymlp-numpy-cpu-fp32-b1", "tinymlp-numpy-cpu-fp32-b4",
    "tinymlp-numpy-cpu-fp16-b1", "tinymlp-numpy-cpu-fp16-b4",
    "tinymlp-numpy-cpu-int8-b1", "tinymlp-numpy-cpu-int8-b4",
    "tinymlp-numpy-cpu-int8-dynamic-b1", "tinymlp-numpy-cpu-int8-dynamic-b4",
    "tinymlp-numpy-fakegpu-fp32-b1", "tinymlp-numpy-fakegpu-fp32-b4",
    "tinylinear-numpy-cpu-fp32-b2", "tinylinear-numpy-cpu-fp16-b2", "tinylinear-numpy-cpu-int8-b2",
    "tinylinear-numpy-cpu-int8-dynamic-b2", "tinylinear-numpy-fakegpu-fp32-b2",
    "tinymlp-ghost-cpu-fp32-b1", "tinymlp-ghost-cpu-fp32-b4", "tinylinear-ghost-cpu-fp32-b2",
}


def collected_ids(result: pytest.RunResult) -> set[str]:
    ids = set()
    for line in result.outlines:
        match = re.match(r"^test_latency\.py::test_latency\[(.+)\]$", line.strip())
        if match:
            ids.add(match.group(1))
    return ids


def test_collect_lists_every_case_with_the_id_scheme(suite: pytest.Pytester) -> None:
    result = suite.runpytest("--collect-only", "-q")
    ids = collected_ids(result)
    assert ids == ALL_NUMPY_IDS
    pattern = case_id_pattern()
    for case_id in ids:
        assert pattern.match(case_id), case_id


@pytest.mark.parametrize(
    ("options", "expected"),
    [
        (["--models", "tinylinear"], {i for i in ALL_NUMPY_IDS if i.startswith("tinylinear-")}),
        (["--backends", "ghost"], {i for i in ALL_NUMPY_IDS if "-ghost-" in i}),
        (["--devices", "fakegpu"], {i for i in ALL_NUMPY_IDS if "-fakegpu-" in i}),
        (["--precisions", "fp16,int8"],
         {i for i in ALL_NUMPY_IDS if i.split("-")[3] in ("fp16", "int8") and "dynamic" not in i}),
        (["--batch-sizes", "3", "--backends", "numpy", "--precisions", "fp32", "--devices", "cpu"],
         {"tinymlp-numpy-cpu-fp32-b3", "tinylinear-numpy-cpu-fp32-b3"}),
    ],
)
def test_selection_options_narrow_the_matrix(suite: pytest.Pytester, options: list[str], expected: set[str]) -> None:
    result = suite.runpytest("--collect-only", "-q", *options)
    assert collected_ids(result) == expected


def test_k_selects_one_case_by_its_id(suite: pytest.Pytester) -> None:
    result = suite.runpytest("--collect-only", "-q", "-k", "tinymlp-numpy-cpu-fp32-b4")
    assert collected_ids(result) == {"tinymlp-numpy-cpu-fp32-b4"}


@pytest.mark.parametrize(
    ("option", "value", "valid"),
    [
        ("--models", "resnet9000", "tinylinear, tinymlp"),
        ("--backends", "numpy,tensorflowz", "ghost, numpy"),
        ("--devices", "tpu", "cpu, fakegpu"),
        ("--precisions", "fp8", "fp16, fp32, int8, int8-dynamic"),
    ],
)
def test_unknown_name_is_a_usage_error_listing_valid_names(
    suite: pytest.Pytester, option: str, value: str, valid: str
) -> None:
    result = suite.runpytest("--collect-only", option, value)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines([f"*{option}: unknown name*valid: {valid}*"])
    assert "Traceback" not in result.stderr.str()


@pytest.mark.parametrize("value", ["0", "x", "1,,-2"])
def test_bad_batch_size_is_a_usage_error(suite: pytest.Pytester, value: str) -> None:
    result = suite.runpytest("--collect-only", "--batch-sizes", value)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*--batch-sizes*not a positive integer*"])


def test_model_weights_that_do_not_exist_are_a_usage_error(suite: pytest.Pytester) -> None:
    result = suite.runpytest("--collect-only", "--model-weights", "tinymlp=/nonexistent/w.pt")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*--model-weights tinymlp: file /nonexistent/w.pt does not exist*"])


def test_unrunnable_cases_are_skipped_with_their_reason(suite: pytest.Pytester) -> None:
    result = suite.runpytest("-rs", "--precisions", "fp32,int8,int8-dynamic", *FAST)
    skipped = [line for line in result.outlines if line.startswith("SKIPPED")]
    for reason in (
        "numpy: int8 needs a quantizer this backend does not have",
        "numpy: no fake GPU on this machine",
        "ghost: ghostlib is not installed (pip install 'infermatrix[ghost]' or tox -e ghost)",
        "int8-dynamic quantizes only Linear/MatMul layers and tinymlp is not Linear-heavy",
    ):
        assert any(reason in line for line in skipped), (reason, skipped)
    outcomes = result.parseoutcomes()
    # runnable: tinymlp fp32 b1,b4 + tinylinear fp32 b2 + tinylinear int8-dynamic b2
    assert outcomes["passed"] == 4
    # tinymlp: int8 ×2, int8-dynamic ×2, fakegpu ×2; tinylinear: int8, fakegpu; ghost ×3
    assert outcomes["skipped"] == 11


def test_an_empty_selection_says_so(suite: pytest.Pytester) -> None:
    result = suite.runpytest("-rs", "--backends", "ghost", "--devices", "fakegpu")
    result.stdout.fnmatch_lines(["*the selection matches no case*"])
