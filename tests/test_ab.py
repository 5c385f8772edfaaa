"""Paired A/B: the verdict on per-trial ratios, and two real worker processes."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

from infermatrix.cli import ab

TESTS = Path(__file__).resolve().parent


def test_paired_verdicts_on_synthetic_trials() -> None:
    rng = np.random.default_rng(0)
    # trial ratios as measured here: unchanged sides agree within ~2%; a 10% slowdown shows as ~1.10
    same = {f"same{i}": list(np.exp(rng.normal(0, 0.02, 12))) for i in range(40)}
    slow = {f"slow{i}": list(1.10 * np.exp(rng.normal(0, 0.02, 12))) for i in range(10)}
    results = {v.key: v for v in ab.judge_paired({**same, **slow})}
    assert sum(results[k].verdict != "unchanged" for k in same) <= 1
    assert all(results[k].verdict == "regressed" for k in slow)
    # 95% intervals: most, not necessarily all, of ten cover the true ratio
    assert sum(results[k].ci95[0] < 1.10 < results[k].ci95[1] for k in slow) >= 8
    # what is stated is flagged with 95% probability: the 5% smallest change called, plus the
    # margin by which an estimate that noisy must clear it (under 2% at 2% noise and 12 trials)
    assert all(0.05 < results[k].min_detectable_change < 0.07 for k in same)
    assert all(results[k].mode == "paired" for k in results)


def fake_checkout(root: Path) -> None:
    """A checkout whose plugin list (``plugins/__init__.py``) names only the numpy test backend."""
    (root / "plugins").mkdir()
    (root / "plugins" / "__init__.py").write_text('BUILTIN_PLUGINS = ("numpy_backend",)\n')


def test_ab_finds_a_slowed_side_through_worker_processes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    fake_checkout(tmp_path)
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")]))
    common = ["--cases", "tinymlp-numpy-cpu-fp32-b4,tinylinear-numpy-cpu-fp32-b2", "--a-rootdir", str(tmp_path),
              "--b-rootdir", str(tmp_path), "--trials", "6", "--calls", "200", "--json"]
    assert ab.main([*common, "--b-inject-slowdown", "500"]) == 1
    out = json.loads(capsys.readouterr().out)
    assert set(out) == {"tinymlp-numpy-cpu-fp32-b4", "tinylinear-numpy-cpu-fp32-b2"}
    for verdict in out.values():
        assert verdict["verdict"] == "regressed" and verdict["ratio"] > 2
        assert len(verdict["trial_ratios"]) == 6


def test_ab_names_an_unknown_or_unrunnable_case(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    fake_checkout(tmp_path)
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")]))
    base = ["--a-rootdir", str(tmp_path), "--b-rootdir", str(tmp_path), "--trials", "2", "--calls", "2"]
    assert ab.main(["--cases", "nosuch-numpy-cpu-fp32-b1", *base]) == 2
    assert "unknown case 'nosuch-numpy-cpu-fp32-b1'" in capsys.readouterr().err
    assert ab.main(["--cases", "tinymlp-numpy-fakegpu-fp32-b1", *base]) == 2
    assert "no fake GPU on this machine" in capsys.readouterr().err
