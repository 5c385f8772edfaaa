"""Broken cases must fail the accuracy gate; working ones must pass it.

Each sabotage is what a real bug produces — a session that ignores its input (constant or
mean output), reads a stale buffer, mixes up samples, loads no or the wrong weights, or
silently runs fp32 under a reduced-precision name — applied to every model family of the
default matrix and judged at every precision. A sabotage that passes is a failing test.
The working side: torch's own bf16 runs of the same models, and (in
``test_every_reduced_precision_cpu_case_of_mobilenet_v2_passes``) the real backends' cases
on the model where int8 errs most.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from infermatrix.api.types import ModelSpec, make_inputs  # noqa: E402
from infermatrix.gate import reference, weights  # noqa: E402
from infermatrix.gate.accuracy import DEFAULT_SAMPLES, TOLERANCES, compare_outputs  # noqa: E402
from plugins.models import bert, mobilenet, resnet, vgg  # noqa: E402

#: One model per family of the default matrix (resnet50 shares resnet18's family and code).
FAMILIES: dict[str, ModelSpec] = {m.name: m for m in (*resnet.MODELS, *mobilenet.MODELS, *vgg.MODELS, *bert.MODELS)
                                  if m.name in ("resnet18", "mobilenet_v2", "vgg19", "bert_base")}
N = DEFAULT_SAMPLES
Outputs = list[np.ndarray]


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("gate-cache")


def run_module(module: Any, model: ModelSpec, dtype: Any = None) -> Outputs:
    inputs = reference.accuracy_inputs(model, N)
    tensors = [torch.from_numpy(inputs[s.name]) for s in model.inputs]
    if dtype is not None:
        module = copy.deepcopy(module).to(dtype)
        tensors = [t.to(dtype) if t.is_floating_point() else t for t in tensors]
    with torch.inference_mode():
        out = module(*tensors)
    return [o.float().numpy() for o in (out if isinstance(out, (tuple, list)) else (out,))]


def weight_layers(module: Any) -> list[Any]:
    return [m for m in module.modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear, torch.nn.Embedding))]


def zeroed(module: Any, which: Callable[[list[Any]], list[Any]]) -> Any:
    broken = copy.deepcopy(module)
    with torch.no_grad():
        for layer in which(weight_layers(broken)):
            layer.weight.zero_()
    return broken


def reseeded(model: ModelSpec) -> Any:
    """The same network with another seed's weights (a case that loaded the wrong weights)."""
    module = model.build_torch()
    weights.seed_module(module, model.weight_seed + 1000)
    weights.estimate_batchnorm_statistics(module, [
        tuple(torch.from_numpy(a) for a in make_inputs(model.inputs, 4, model.weight_seed + 1 + i).values())
        for i in range(2)])
    return module.eval()


def sabotages(model: ModelSpec, module: Any, ref: Outputs) -> Iterator[tuple[str, Outputs]]:
    rng = np.random.default_rng(0)
    yield "constant output", [np.full_like(a, 0.5) for a in ref]
    yield "zero output", [np.zeros_like(a) for a in ref]
    yield "the mean output for every sample", [np.repeat(a.mean(0, keepdims=True), len(a), 0) for a in ref]
    yield "a stale buffer (sample 0 for all)", [np.repeat(a[:1], len(a), 0) for a in ref]
    yield "a stale buffer per batch of 8", [np.repeat(a[::8], 8, 0) for a in ref]
    last_of_eight = np.arange(N) % 8 == 7
    yield "one sample of each batch of 8 stale", [np.where(last_of_eight.reshape(-1, *[1] * (a.ndim - 1)),
                                                           np.roll(a, 1, 0), a) for a in ref]
    yield "samples shuffled", [a[np.roll(np.arange(len(a)), 1)] for a in ref]
    yield "random output", [rng.normal(a.mean(), a.std(), a.shape).astype(np.float32) for a in ref]
    yield "outputs scaled by 2", [2 * a for a in ref]
    yield "all weights zeroed", run_module(zeroed(module, lambda layers: layers), model)
    yield "one middle layer zeroed", run_module(zeroed(module, lambda layers: [layers[len(layers) // 2]]), model)
    yield "another seed's weights", run_module(reseeded(model), model)


def silent_fp32(ref: Outputs, module: Any, model: ModelSpec) -> Iterator[tuple[str, Outputs]]:
    """fp32 under a reduced-precision name: the reference itself, and fp32 computed another way."""
    yield "silent fp32 (bit-identical)", [a.copy() for a in ref]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # another summation order: fp32 that is not bit-identical
    try:
        yield "silent fp32 (another summation order)", run_module(module, model)
    finally:
        torch.set_num_threads(threads)


#: Every tolerance a case can be held to: each precision's, and int8's 7-bit recipe's (no VNNI).
JUDGED = [*TOLERANCES, "int8 7-bit"]


def judge(model: ModelSpec, got: Outputs, ref: Outputs, precision: str) -> Any:
    if precision == "int8 7-bit":
        return compare_outputs(got, ref, "int8", classifier=model.task == "classification",
                               backend_config={"int8_7bit": True})
    return compare_outputs(got, ref, precision, classifier=model.task == "classification")


@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_every_sabotage_fails_every_precision(name: str, cache: Path) -> None:
    model = FAMILIES[name]
    module = reference.build_torch_model(model, cache)
    ref = reference.reference_outputs(model, N, cache)
    passed = []
    for label, got in sabotages(model, module, ref):
        for precision in JUDGED:
            report = judge(model, got, ref, precision)
            if report.passed:
                passed.append(f"{label} passed {precision}: {report.as_dict()}")
    for label, got in silent_fp32(ref, module, model):
        assert judge(model, got, ref, "fp32").passed, label  # it is fp32: only a reduced precision must refuse it
        for precision in JUDGED:
            if precision != "fp32":
                report = judge(model, got, ref, precision)
                if report.passed:
                    passed.append(f"{label} passed {precision}: {report.as_dict()}")
                else:
                    assert any("did not run" in f for f in report.failures), report.failures
    assert not passed, "\n".join(passed)


@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_torch_reduced_precisions_of_every_family_pass(name: str, cache: Path) -> None:
    """The working side on the same models: torch's bf16 (CPU kernels) passes its gate. (fp16
    on a CPU without fp16 arithmetic takes minutes a model in torch; it was measured once
    for docs/backends.md instead.)"""
    model = FAMILIES[name]
    module = reference.build_torch_model(model, cache)
    ref = reference.reference_outputs(model, N, cache)
    report = judge(model, run_module(module, model, torch.bfloat16), ref, "bf16")
    assert report.passed, report.message(f"{name} torch bf16")


def test_the_hardest_real_reduced_precision_cpu_cases_pass(tmp_path: Path) -> None:
    """The working side on the real backends, prepared as the suite prepares them: every
    reduced-precision CPU case of mobilenet_v2 and resnet50's int8 cases pass this CPU's gate."""
    from infermatrix import host
    from infermatrix.api.types import RunOptions
    from infermatrix.case import matrix, offline

    manager = host.plugin_manager()
    models, backends = host.announced(manager.hook)
    options = RunOptions(cache_root=tmp_path / "cache", threads=2)
    chosen = [m for m in models if m.name in ("mobilenet_v2", "resnet50")]
    entries = matrix.build(matrix.Selection(batch_sizes=(1,)), chosen, backends,
                           lambda b: manager.hook.pytest_infermatrix_targets(backend=b, options=options))
    ran, failed = [], []
    for entry in entries:
        case = entry.case
        if entry.skip_reason or case.target.device != "cpu" or case.target.precision == "fp32":
            continue
        if case.model.name == "resnet50" and not case.target.precision.startswith("int8"):
            continue
        workdir = tmp_path / case.id
        workdir.mkdir()
        try:
            prepared = offline.prepare_offline(manager, case, options, workdir)
        except offline.OfflineError as exc:
            failed.append(str(exc))
            continue
        ran.append(f"{case.id}: {prepared.accuracy.centered_cosine_worst:.3f}")
        prepared.close()
    assert not failed, "\n".join(failed)
    assert any("int8" in r for r in ran), f"no int8 case ran here: {ran}"
