"""The accuracy gate's figures and limits on known inputs."""

from __future__ import annotations

import numpy as np
import pytest

from infermatrix.gate.accuracy import TOLERANCES, compare_outputs


def logits(seed: int = 0, n: int = 8, classes: int = 100) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, classes)).astype(np.float32)


def test_identical_outputs_pass_every_precision() -> None:
    ref = logits()
    for precision in TOLERANCES:
        report = compare_outputs([ref.copy()], [ref], precision, classifier=True)
        assert report.passed, precision
        assert report.max_abs_error == 0 and report.rel_l2_error == 0 and report.top1_agreement == 1.0
        assert report.cosine_similarity == pytest.approx(1.0)


def test_figures_match_their_definitions() -> None:
    ref = logits()
    got = ref + 0.01 * logits(1)
    report = compare_outputs([got], [ref], "fp16", classifier=True)
    diff = (got - ref).astype(np.float64)
    assert report.max_abs_error == pytest.approx(np.abs(diff).max())
    assert report.rel_l2_error == pytest.approx(np.linalg.norm(diff) / np.linalg.norm(ref.astype(np.float64)))
    cos = (got.ravel() @ ref.ravel()) / np.linalg.norm(got) / np.linalg.norm(ref)
    assert report.cosine_similarity == pytest.approx(cos, rel=1e-6)


def test_error_that_bf16_tolerates_fails_fp32() -> None:
    ref = logits()
    got = ref * (1 + 0.01 * logits(2))  # ~1% relative noise, what bf16 does
    assert compare_outputs([got], [ref], "bf16", classifier=True).passed
    report = compare_outputs([got], [ref], "fp32", classifier=True)
    assert not report.passed
    assert any("relative L2 error" in f for f in report.failures)


def test_int8_is_judged_by_cosine_and_top1() -> None:
    ref = logits()
    shuffled = ref[:, ::-1].copy()  # same magnitudes, wrong classes
    report = compare_outputs([shuffled], [ref], "int8", classifier=True)
    assert not report.passed
    assert any("top-1 agreement" in f for f in report.failures)
    assert any("cosine similarity" in f for f in report.failures)


def test_nan_or_inf_outputs_fail_with_a_message_that_says_so() -> None:
    ref = logits()
    got = ref.copy()
    got[0, 0] = np.nan
    got[1, 1] = np.inf
    report = compare_outputs([got], [ref], "int8", classifier=True)
    assert not report.passed and not report.finite
    assert "2 of 800 output values are NaN or Inf" in report.failures[0]
    assert "NaN or Inf" in report.message("m-b-cpu-int8-b1")


def test_all_outputs_count_and_shapes_must_match() -> None:
    ref = logits()
    with pytest.raises(ValueError, match="shape"):
        compare_outputs([ref[:4]], [ref], "fp32", classifier=True)
    with pytest.raises(ValueError, match="2 outputs"):
        compare_outputs([ref, ref], [ref], "fp32", classifier=True)
    with pytest.raises(ValueError, match="no accuracy tolerance for precision 'fp7'"):
        compare_outputs([ref], [ref], "fp7", classifier=True)
