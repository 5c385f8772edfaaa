"""The accuracy gate's figures and limits on known inputs."""

from __future__ import annotations

import numpy as np
import pytest

from infermatrix.gate.accuracy import TOLERANCES, compare_outputs


def logits(seed: int = 0, n: int = 32, classes: int = 100) -> np.ndarray:
    """Like the seeded networks' outputs: a large part shared by all samples, a smaller one each."""
    rng = np.random.default_rng(seed)
    shared = 3 * rng.standard_normal(classes)
    return (shared + rng.standard_normal((n, classes))).astype(np.float32)


def test_identical_outputs_pass_fp32_and_fail_every_reduced_precision() -> None:
    ref = logits()
    report = compare_outputs([ref.copy()], [ref], "fp32", classifier=True)
    assert report.passed
    assert report.max_abs_error == 0 and report.rel_l2_error == 0 and report.class_agreement == 1.0
    assert report.centered_cosine_worst == pytest.approx(1.0) and report.samples == 32
    for precision in set(TOLERANCES) - {"fp32"}:
        report = compare_outputs([ref.copy()], [ref], precision, classifier=True)
        assert not report.passed, precision
        assert "(bit-identical), so " + precision + " did not run" in report.failures[0]


def test_figures_match_their_definitions() -> None:
    ref = logits()
    got = ref + 0.01 * logits(1)
    report = compare_outputs([got], [ref], "fp16", classifier=True)
    diff = (got - ref).astype(np.float64)
    assert report.max_abs_error == pytest.approx(np.abs(diff).max())
    assert report.rel_l2_error == pytest.approx(np.linalg.norm(diff) / np.linalg.norm(ref.astype(np.float64)))
    cos = (got.ravel() @ ref.ravel()) / np.linalg.norm(got) / np.linalg.norm(ref)
    assert report.cosine_similarity == pytest.approx(cos, rel=1e-6)
    mean = ref.astype(np.float64).mean(axis=0)
    g, r = got - mean, ref - mean
    per_sample = (g * r).sum(1) / np.linalg.norm(g, axis=1) / np.linalg.norm(r, axis=1)
    assert report.centered_cosine_worst == pytest.approx(per_sample.min(), rel=1e-9)
    assert report.centered_cosine_median == pytest.approx(np.median(per_sample), rel=1e-9)
    top_g, top_r = np.argsort(-g, 1)[:, :5], np.argsort(-r, 1)[:, :5]
    overlap = np.mean([len(set(x) & set(y)) / 5 for x, y in zip(top_g, top_r, strict=True)])
    assert report.class_agreement == pytest.approx(overlap)


def test_error_that_bf16_tolerates_fails_fp32() -> None:
    ref = logits()
    got = ref * (1 + 0.01 * logits(2))  # ~1% relative noise, what bf16 does
    assert compare_outputs([got], [ref], "bf16", classifier=True).passed
    report = compare_outputs([got], [ref], "fp32", classifier=True)
    assert not report.passed
    assert any("relative L2 error" in f for f in report.failures)


def test_an_output_that_ignores_the_input_fails_though_its_raw_cosine_is_high() -> None:
    ref = logits()
    mean = np.repeat(ref.mean(0, keepdims=True), len(ref), 0)
    report = compare_outputs([mean], [ref], "int8", classifier=True)
    assert report.cosine_similarity > 0.94  # what the old whole-output cosine gate let through
    assert not report.passed
    assert any("per-sample centered cosine" in f and "(32 of 32 samples)" in f for f in report.failures)


def test_one_mixed_up_sample_is_not_identified() -> None:
    ref = logits()
    got = ref * (1 + 0.005 * logits(3))
    got[7] = ref[8]  # one sample's slot holds another's output
    report = compare_outputs([got], [ref], "int8", classifier=True)
    assert not report.passed and report.samples_identified == 31 and report.identification_margin < 0
    assert "1 of 32 samples' outputs are nearer another sample's reference than their own" in report.failures[0]


def test_a_degraded_sample_fails_the_worst_sample_check() -> None:
    ref = logits()
    got = ref * (1 + 0.005 * logits(3))
    rng = np.random.default_rng(4)
    got[7] = ref.mean(0) + 0.3 * (ref[7] - ref.mean(0)) + rng.standard_normal(ref.shape[1])  # mostly noise
    report = compare_outputs([got], [ref], "bf16", classifier=True)
    assert not report.passed
    (worst,) = [f for f in report.failures if "per-sample centered cosine" in f]
    assert worst.endswith("< 0.3 (1 of 32 samples)")


def test_too_few_samples_to_compare_is_a_failure_that_says_what_to_do() -> None:
    ref = logits(n=1)
    report = compare_outputs([ref * 1.01], [ref], "bf16", classifier=True)
    assert not report.passed and "raise --accuracy-samples" in report.failures[0]


def test_class_agreement_is_for_classifiers_only() -> None:
    ref = logits()
    assert compare_outputs([ref], [ref], "fp32", classifier=False).class_agreement is None


def test_nan_or_inf_outputs_fail_with_a_message_that_says_so() -> None:
    ref = logits()
    got = ref.copy()
    got[0, 0] = np.nan
    got[1, 1] = np.inf
    report = compare_outputs([got], [ref], "int8", classifier=True)
    assert not report.passed and not report.finite
    assert "2 of 3200 output values are NaN or Inf" in report.failures[0]
    assert "NaN or Inf" in report.message("m-b-cpu-int8-b1")


def test_all_outputs_count_and_shapes_must_match() -> None:
    ref = logits()
    with pytest.raises(ValueError, match="shape"):
        compare_outputs([ref[:4]], [ref], "fp32", classifier=True)
    with pytest.raises(ValueError, match="2 outputs"):
        compare_outputs([ref, ref], [ref], "fp32", classifier=True)
    with pytest.raises(ValueError, match="no accuracy tolerance for precision 'fp7'"):
        compare_outputs([ref], [ref], "fp7", classifier=True)


def test_the_7bit_int8_recipe_may_leave_3_of_32_samples_unidentified_not_4() -> None:
    ref = logits()
    got = ref * (1 + 0.005 * logits(3))
    for mixed_up in (3, 4):
        broken = got.copy()
        broken[:mixed_up] = ref[8:8 + mixed_up]
        seven_bit = compare_outputs([broken], [ref], "int8", classifier=True, backend_config={"int8_7bit": True})
        full_range = compare_outputs([broken], [ref], "int8", classifier=True)
        assert not full_range.passed
        identification = [f for f in seven_bit.failures if "nearer another sample's reference" in f]
        assert bool(identification) == (mixed_up == 4), seven_bit.failures
        if identification:
            assert "at most 3 may be" in identification[0]
