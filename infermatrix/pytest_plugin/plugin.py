"""The core pytest plugin: options, the case matrix, the case fixture, results.

Loaded by the root ``conftest.py`` (``pytest_plugins``) or with ``-p infermatrix.pytest_plugin.plugin``.
Outside plugins arrive through the ``infermatrix`` entry-point group.
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
import time
import zipfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from infermatrix import host
from infermatrix.api import hookspec, scenario
from infermatrix.api.scenario import CaseKind, Prepared, Scenario
from infermatrix.api.types import (
    FORM_GENERATION,
    KNOWN_PRECISIONS,
    BackendInfo,
    Case,
    ModelSpec,
    PrepareContext,
    RunOptions,
    WeightsError,
)
from infermatrix.cache import ENV_CACHE_DIR, CacheError, resolve_cache_dir
from infermatrix.case import matrix
from infermatrix.cli import ab
from infermatrix.gate import accuracy, reference
from infermatrix.isolation.pool import DEFAULT_CASE_TIMEOUT_S, RemoteCase, WorkerPool, plugin_specs
from infermatrix.isolation.worker import PrepareRequest
from infermatrix.machine import machine_summary
from infermatrix.measure import tails
from infermatrix.measure.probe import MachineProbe
from infermatrix.measure.timing import TimingPolicy, mark_untimed
from infermatrix.nightly import lock
from infermatrix.results import record

ENTRY_POINT_GROUP = host.ENTRY_POINT_GROUP

matrix_key = pytest.StashKey["InfermatrixState"]()


@dataclasses.dataclass
class InfermatrixState:
    config: pytest.Config
    #: what the hooks get of this run (frozen, picklable: the workers get the same)
    options: RunOptions
    selection: matrix.Selection
    models: list[ModelSpec]
    backends: list[BackendInfo]
    cache_root: Path
    policy: TimingPolicy
    accuracy_samples: int
    scenarios: tuple[str, ...] | None
    slowdowns: dict[str, float] = dataclasses.field(default_factory=dict)
    #: the worker processes of --isolation=process (None: cases run inside pytest)
    pool: WorkerPool | None = None
    progress: Progress | None = None
    #: benchmark name -> why it failed, recorded in the result JSON for the verdicts
    failed: dict[str, str] = dataclasses.field(default_factory=dict)
    #: the reference probe (--machine-probe=on), made on first use
    probe: MachineProbe | None = None
    probe_enabled: bool = True
    _entries: list[matrix.MatrixEntry] | None = None
    _cases: dict[str, Case] | None = None

    def case(self, case_id: str) -> Case:
        if self._cases is None:
            self._cases = {e.case.id: e.case for e in self.entries()}
        return self._cases[case_id]

    def entries(self) -> list[matrix.MatrixEntry]:
        """The matrix, built on first use: stating targets may import a framework."""
        if self._entries is None:
            hook = self.config.hook
            self._entries = matrix.build(
                self.selection,
                self.models,
                self.backends,
                lambda backend: hook.pytest_infermatrix_targets(backend=backend, options=self.options),
            )
        return self._entries


# -------------------------------------------------------------------------
# registration and options
# -------------------------------------------------------------------------


def pytest_addhooks(pluginmanager: pytest.PytestPluginManager) -> None:
    pluginmanager.add_hookspecs(hookspec)


#: The option group of this run's parser: plugins add their options to it, and its values
#: travel to the hooks as ``RunOptions.plugin_options`` (set again by every run's addoption).
_option_group: Any = None


def pytest_addoption(parser: pytest.Parser) -> None:
    global _option_group
    group = parser.getgroup("infermatrix", "infermatrix: the inference benchmark matrix")
    _option_group = group
    group.addoption("--models", help="comma list of models to run (default: all)")
    group.addoption("--variants", metavar="NAMES",
                    help="comma list of model variants to run beside the models (pruned30, sparse50, distilled...; "
                         "'all': every one; default: none). A variant's cases read <model>.<variant>-<backend>-...")
    group.addoption("--backends", help="comma list of backends to run (default: all)")
    group.addoption("--devices", help="comma list of devices, e.g. cpu,cuda (default: all)")
    group.addoption("--precisions", help="comma list of precisions, e.g. fp32,int8 (default: all)")
    group.addoption("--batch-sizes", help="comma list of batch sizes (default: each model's own)")
    group.addoption(
        "--model-weights",
        action="append",
        default=[],
        metavar="MODEL=PATH",
        help="use pretrained weights (a torch state_dict file) for MODEL instead of seeded ones",
    )
    group.addoption("--infermatrix-cache", metavar="DIR", help="cache of exported models and references "
                    "(default: $INFERMATRIX_CACHE_DIR or <rootdir>/.infermatrix-cache)")
    group.addoption("--accuracy-samples", type=int, default=accuracy.DEFAULT_SAMPLES,
                    help=f"samples in each case's accuracy check (default: {accuracy.DEFAULT_SAMPLES}; at least "
                         f"{accuracy.MIN_SAMPLES}: the gate compares samples with each other)")
    group.addoption("--min-rounds", type=int, default=TimingPolicy.min_rounds,
                    help=f"timed rounds at least (default: {TimingPolicy.min_rounds})")
    group.addoption("--min-time", type=float, default=TimingPolicy.min_time_s,
                    help=f"seconds of timed rounds at least (default: {TimingPolicy.min_time_s})")
    group.addoption("--max-time", type=float, default=TimingPolicy.max_time_s,
                    help=f"time budget of a case's timed rounds in seconds (default: {TimingPolicy.max_time_s})")
    group.addoption("--target-precision", type=float, default=TimingPolicy.target_precision,
                    help="stop timing when the median's 95%% CI half-width is below this share "
                    f"(default: {TimingPolicy.target_precision})")
    group.addoption("--tail-percentiles", default=None, metavar="P,...",
                    help="latency: go on timing each case until these tail percentiles have the samples LoadGen's "
                    "early-stopping estimate needs at 99%% confidence (e.g. 90,99: 64 and 662 rounds), or until "
                    "--tail-max-time; without it a tail short of samples is recorded as not estimable")
    group.addoption("--tail-max-time", type=float, default=TimingPolicy.tail_max_time_s, metavar="SECONDS",
                    help="with --tail-percentiles: the most seconds of a latency case's timed rounds; a tail still "
                    f"short of samples then is recorded as not estimable (default: {TimingPolicy.tail_max_time_s:g})")
    group.addoption("--threads", type=int, default=None,
                    help="CPU threads per backend (default: the physical cores)")
    group.addoption("--scenarios", default=None,
                    help="comma list of scenarios to run, or 'all' (default: each scenario module says whether it "
                    "runs by default; suites/ has one module per scenario)")
    group.addoption("--repeats", type=int, default=0,
                    help="also time each latency case in N fresh processes and record the spread "
                    "between them (default: 0, off)")
    group.addoption("--inject-slowdown", action="append", default=[], metavar="BACKEND=PERCENT",
                    help="fault injection: add PERCENT of each timed call's duration to every timed call of "
                    "BACKEND (e.g. onnxruntime=10), to prove the regression verdicts catch it")
    group.addoption("--infermatrix-baselines", metavar="DIR",
                    help="accepted runs per machine (default: <rootdir>/baselines)")
    group.addoption("--accept-baseline", action="store_true", default=False,
                    help="store this run as the newest baseline of this machine (atomic; history kept)")
    group.addoption("--baseline-machine", metavar="FINGERPRINT",
                    help="compare against another machine's baselines (refused unless named here)")
    group.addoption("--benchmark-compare-paired", action="store_true", default=False,
                    help="with --benchmark-compare: also time each latency case interleaved against a re-creation "
                    "of the newest baseline's environment (its recorded package versions and commit, cached by the "
                    "lock's hash) and judge it on the paired ratio (docs/nightly.md)")
    group.addoption("--paired-trials", type=int, default=ab.TRIALS, metavar="N",
                    help=f"with --benchmark-compare-paired: interleaved trials per case (default: {ab.TRIALS})")
    group.addoption("--paired-calls", type=int, default=20, metavar="N",
                    help="with --benchmark-compare-paired: calls per side per trial (default: 20)")
    group.addoption("--regression-fails", choices=("yes", "no"), default="yes",
                    help="with --benchmark-compare: fail the session when a case or group regressed (default: yes)")
    group.addoption("--machine-probe", choices=("on", "off"), default="on",
                    help="time a fixed reference workload (numpy matmul + memory copy, ~15-30 ms) right before "
                    "each case, so the verdicts measure the machine's level instead of inferring it from the "
                    "cases (default: on)")
    group.addoption("--throughput-time", type=float, default=2.0,
                    help="seconds each throughput configuration is timed (default: 2)")
    group.addoption("--isolation", choices=("process", "none"), default="process",
                    help="process (default): each case runs in a worker process, so a crash, hang or out-of-memory "
                    "fails that case only; none: inside pytest (debuggers, profilers)")
    group.addoption("--case-timeout", type=float, default=DEFAULT_CASE_TIMEOUT_S, metavar="SECONDS",
                    help="with --isolation=process: a case's preparation or one scenario running longer than this "
                    f"is stopped and failed as hung (default: {DEFAULT_CASE_TIMEOUT_S:g})")
    group.addoption("--generate-prompt-lengths", default=None, metavar="N,...",
                    help="generate: prompt lengths in tokens (default: each generation model's own, tinyllama 16,64)")
    group.addoption("--generate-new-tokens", default=None, metavar="N,...",
                    help="generate: tokens generated per prompt (default: the model's own, tinyllama 32)")
    group.addoption("--generate-config", action="append", default=[], metavar="MODEL:KEY=VALUE",
                    help="generate: change the config a generation model is built from (seeded weights), e.g. "
                    "tinyllama:num_hidden_layers=8; real weights come from --model-weights MODEL=HF_FOLDER")
    group.addoption("--serve-concurrency", default="1,2,4,8", metavar="N,...",
                    help="serve: requests in flight at each closed-loop load point (default 1,2,4,8)")
    group.addoption("--serve-rates", default="", metavar="R,...",
                    help="serve: Poisson arrival rates (requests/s) of open-loop load points (default: none)")
    group.addoption("--serve-requests", type=int, default=32, metavar="N",
                    help="serve: requests timed at each load point (default 32)")
    group.addoption("--serve-warmup", type=int, default=4, metavar="N",
                    help="serve: requests run before each load point, never counted (default 4)")
    group.addoption("--serve-input-lengths", default="16:64", metavar="LOW:HIGH",
                    help="serve: prompt lengths in tokens, seeded uniform (default 16:64)")
    group.addoption("--serve-prompts", choices=("text", "tokens"), default="text",
                    help="serve scenario: send prompts as text the server tokenizes (default; as real clients "
                         "and vllm bench serve do) or as token ids (TTFT without the server's tokenizing)")
    group.addoption("--serve-output-lengths", default="32:64", metavar="LOW:HIGH",
                    help="serve: generated tokens per request, seeded uniform (default 32:64)")
    group.addoption("--slo", default=None, metavar="ttft=MS,tpot=MS",
                    help="serve: service-level objectives for goodput (milliseconds; ttft, tpot, e2e), e.g. "
                    "ttft=200,tpot=50")
    group.addoption("--warm-cache", action="store_true", default=False,
                    help="fill the cache (seeded weights, fp32 references, FLOP counts, ONNX exports) for the "
                    "selected cases, so environments without torch can run them; use with --collect-only")


#: option -> (is this value sensible, what to give instead); checked at configure time so a
#: nonsense value is a usage error naming the option, never a traceback from a fixture or a
#: dataclass field name (``max_time_s=``) the user never typed. ``None`` is an option's "unset".
NUMBER_RULES: dict[str, tuple[Any, str]] = {
    "--threads": (lambda v: v >= 1, "give a positive number of threads"),
    "--repeats": (lambda v: v >= 0, "give 0 (off) or a number of fresh processes"),
    "--min-rounds": (lambda v: v >= 3, "give 3 rounds or more (the median's confidence interval needs 3)"),
    "--min-time": (lambda v: v >= 0, "give a number of seconds, 0 or more"),
    "--max-time": (lambda v: v > 0, "give a number of seconds above 0"),
    "--target-precision": (lambda v: 0 < v < 1, "give a fraction between 0 and 1, e.g. 0.02 for ±2%"),
    "--throughput-time": (lambda v: v > 0, "give a number of seconds above 0"),
    "--tail-max-time": (lambda v: v > 0, "give a number of seconds above 0"),
    "--case-timeout": (lambda v: v > 0, "give a number of seconds above 0"),
    "--paired-trials": (lambda v: v >= 2, "give 2 trials or more (a paired verdict needs their spread)"),
    "--paired-calls": (lambda v: v >= 1, "give 1 call or more per side per trial"),
    "--serve-requests": (lambda v: v >= 1, "give 1 request or more per load point"),
    "--serve-warmup": (lambda v: v >= 0, "give 0 or more warm-up requests"),
    "--accuracy-samples": (lambda v: v >= accuracy.MIN_SAMPLES,
                           f"give {accuracy.MIN_SAMPLES} samples or more (the gate compares each sample's output with "
                           "the others'; default 32)"),
}


def check_numbers(config: pytest.Config) -> None:
    """Refuse every numeric option's nonsense value (negative, zero where it cannot be, NaN, inf)."""
    for option, (sensible, advice) in NUMBER_RULES.items():
        value = config.getoption(option, default=None)
        if value is None:
            continue
        if not math.isfinite(value) or not sensible(value):
            raise pytest.UsageError(f"{option} {value:g}: {advice}")
    from infermatrix.serving.case import ServeLoad
    from infermatrix.serving.client import SloError

    try:
        ServeLoad.from_options(config.getoption)
    except (ValueError, SloError) as exc:
        raise pytest.UsageError(str(exc)) from None
    min_time, max_time = config.getoption("--min-time"), config.getoption("--max-time")
    if max_time < min_time:
        raise pytest.UsageError(f"--max-time {max_time:g} is below --min-time {min_time:g}: give a time budget of at "
                                "least --min-time")


def tail_percentiles(config: pytest.Config) -> tuple[float, ...]:
    """``--tail-percentiles``, checked: tails between 50 and 100 whose samples fit the run's limits."""
    raw = config.getoption("--tail-percentiles", default=None)
    if raw is None:
        return ()
    advice = "give tail percentiles above 50 and below 100, e.g. 90,99 or 99.9"
    try:
        found = tuple(sorted({float(v) for v in raw.split(",") if v.strip()}))
    except ValueError:
        raise pytest.UsageError(f"--tail-percentiles {raw!r}: {advice}") from None
    if not found:
        raise pytest.UsageError(f"--tail-percentiles {raw!r}: {advice}")
    for percentile in found:
        try:
            tails.check_tail(percentile)
        except ValueError:
            raise pytest.UsageError(f"--tail-percentiles {raw!r}: {percentile:g} is not a tail; {advice}") from None
    limit, budget = config.getoption("--tail-max-time"), config.getoption("--max-time")
    if limit < budget:
        raise pytest.UsageError(f"--tail-max-time {limit:g} is below --max-time {budget:g}: the limit for collecting "
                                "tail samples must be at least the case's time budget")
    timeout = config.getoption("--case-timeout")
    if config.getoption("--isolation") == "process" and limit >= timeout:
        raise pytest.UsageError(f"--tail-max-time {limit:g} is not below --case-timeout {timeout:g}: the worker would "
                                "be stopped as hung first; raise --case-timeout or lower --tail-max-time")
    rounds = max(tails.min_samples(p) for p in found)
    if rounds > TimingPolicy.max_rounds:
        raise pytest.UsageError(f"--tail-percentiles {raw!r}: p{found[-1]:g} needs {rounds} rounds, more than the "
                                f"{TimingPolicy.max_rounds} a case is timed at most")
    return found


def check_cache_dir(path: Path, source: str) -> None:
    """The cache must be a directory this run can write (it creates it when missing); the
    error names the path and where it came from (``source``)."""
    if path.exists() and not path.is_dir():
        raise pytest.UsageError(f"{source} {path}: a file, not a directory; give a directory for the cache")
    existing = next(p for p in (path, *path.parents) if p.exists())
    if not existing.is_dir():
        raise pytest.UsageError(f"{source} {path}: {existing} is a file, so the cache directory cannot be made "
                                "there; give a directory")
    if not os.access(existing, os.W_OK | os.X_OK):
        what = "cannot be written" if existing == path else f"cannot be made ({existing} is not writable)"
        raise pytest.UsageError(f"{source} {path}: the cache directory {what}; give a writable directory")


def check_torch_file(model: str, file: Path) -> None:
    """What can be told of a torch state_dict file without importing torch: it is readable and
    is a zip archive (torch.save's format) or a pickle (its legacy one). Whether it holds a
    state_dict that fits the model needs torch: the case checks that (a FAILED case naming it)."""
    try:
        with open(file, "rb") as fh:
            head = fh.read(2)
    except OSError as exc:
        raise pytest.UsageError(f"--model-weights {model}: cannot read {file} ({exc.strerror}); give a readable "
                                "torch state_dict file") from None
    # zipfile reads the archive's end record: a truncated torch.save file has none
    if not zipfile.is_zipfile(file) and not (len(head) == 2 and head[0] == 0x80 and head[1] >= 2):
        raise pytest.UsageError(f"--model-weights {model}: {file} is not a torch file (neither torch.save's zip "
                                "archive, complete, nor its legacy pickle); save one with "
                                "torch.save(model.state_dict(), path)")


def _parse_slowdowns(raw: list[str], backends: list[BackendInfo]) -> dict[str, float]:
    names = {b.name for b in backends}
    found: dict[str, float] = {}
    for item in raw:
        backend, sep, percent = item.partition("=")
        try:
            value = float(percent)
        except ValueError:
            value = -1.0
        if not sep or not math.isfinite(value) or value < 0:
            raise pytest.UsageError(f"--inject-slowdown {item!r}: expected BACKEND=PERCENT, e.g. onnxruntime=10")
        if backend not in names:
            raise pytest.UsageError(
                f"--inject-slowdown: unknown backend {backend!r}; valid: {', '.join(sorted(names))}"
            )
        found[backend] = value / 100
    return found


def _parse_weights(raw: list[str], models: list[ModelSpec]) -> dict[str, str]:
    names = {m.name for m in models if m.variant_of is None}  # a variant takes its original's
    found: dict[str, str] = {}
    for item in raw:
        model, sep, path = item.partition("=")
        if not sep or not path:
            raise pytest.UsageError(f"--model-weights {item!r}: expected MODEL=PATH, e.g. resnet18=~/resnet18.pth")
        if model not in names:
            raise pytest.UsageError(f"--model-weights: unknown model {model!r}; valid: {', '.join(sorted(names))}")
        file = Path(path).expanduser()
        spec = next(m for m in models if m.name == model)
        generation = spec.generation is not None
        if generation and not (file / "config.json").is_file():
            raise pytest.UsageError(f"--model-weights {model}: {file} is not a Hugging Face model folder "
                                    "(no config.json); give the folder save_pretrained wrote")
        if not generation and not file.exists():
            raise pytest.UsageError(f"--model-weights {model}: file {file} does not exist")
        if not generation and not file.is_file():
            raise pytest.UsageError(f"--model-weights {model}: {file} is not a file; give a torch state_dict file")
        if not generation and spec.build_torch is not None:  # only the torch form reads the file as torch's
            check_torch_file(model, file)
        found[model] = str(file.resolve())
    return found


@pytest.hookimpl(trylast=True)
def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", f"{scenario.MARKER}(scenario): the Scenario a suite module measures")
    config.pluginmanager.load_setuptools_entrypoints(ENTRY_POINT_GROUP)
    if config.pluginmanager.get_plugin(host.CORE_DEFAULTS) is None:
        import importlib

        config.pluginmanager.register(importlib.import_module(host.CORE_DEFAULTS), host.CORE_DEFAULTS)
    models, backends = host.announced(config.hook)
    check_numbers(config)
    try:
        selection = matrix.Selection(
            models=matrix.parse_list("--models", config.getoption("--models")),
            backends=matrix.parse_list("--backends", config.getoption("--backends")),
            devices=matrix.parse_list("--devices", config.getoption("--devices")),
            precisions=matrix.parse_list("--precisions", config.getoption("--precisions")),
            batch_sizes=matrix.parse_batch_sizes(config.getoption("--batch-sizes")),
            variants=matrix.parse_list("--variants", config.getoption("--variants")),
        )
        matrix.validate(selection, models, backends)
        policy = TimingPolicy(
            min_rounds=config.getoption("--min-rounds"),
            min_time_s=config.getoption("--min-time"),
            max_time_s=config.getoption("--max-time"),
            target_precision=config.getoption("--target-precision"),
            tail_percentiles=tail_percentiles(config),
            tail_max_time_s=config.getoption("--tail-max-time"),
        )
    except (matrix.SelectionError, ValueError) as exc:
        raise pytest.UsageError(str(exc)) from None
    # checked against the scenario modules once they are collected (pytest_collection_modifyitems)
    scenarios = matrix.parse_list("--scenarios", config.getoption("--scenarios"))
    timeout = config.getoption("--case-timeout")
    accuracy_samples = config.getoption("--accuracy-samples")
    weights = _parse_weights(config.getoption("--model-weights"), models)
    slowdowns = _parse_slowdowns(config.getoption("--inject-slowdown"), backends)
    models = [configure_generation(m, config, weights.pop(m.name, None)) if m.generation is not None else m
              for m in models]
    models = [dataclasses.replace(m, weights_path=weights[m.name]) if m.name in weights else m for m in models]
    # a variant is made from its original's weights (--model-weights names the original)
    models = [dataclasses.replace(m, weights_path=weights[m.variant_of[0].name])
              if m.variant_of is not None and m.variant_of[0].name in weights else m for m in models]
    option_cache = config.getoption("--infermatrix-cache")
    cache_root = resolve_cache_dir(option_cache, config.rootpath)
    source = "--infermatrix-cache" if option_cache else f"${ENV_CACHE_DIR}" if os.environ.get(ENV_CACHE_DIR) else (
        "the default cache")
    check_cache_dir(cache_root, source)
    options = run_options(config, cache_root, selection)
    pool = WorkerPool(plugin_specs(config), timeout) if config.getoption("--isolation") == "process" else None
    config.pluginmanager.register(ProgressLines(config), "infermatrix-progress")
    if pool is not None:
        config.pluginmanager.register(StopWorkerOnInterrupt(pool), "infermatrix-stop-worker-on-interrupt")
    config.stash[matrix_key] = InfermatrixState(
        config=config,
        options=options,
        selection=selection,
        models=models,
        backends=backends,
        cache_root=cache_root,
        policy=policy,
        accuracy_samples=accuracy_samples,
        scenarios=scenarios,
        slowdowns=slowdowns,
        pool=pool,
        probe_enabled=config.getoption("--machine-probe") == "on",
    )


def configure_generation(model: ModelSpec, config: pytest.Config, folder: str | None) -> ModelSpec:
    """A generation model as this run's options make it: sweep, config changes, local folder."""
    spec = model.generation
    changes: dict[str, Any] = {}
    for option, field in (("--generate-prompt-lengths", "prompt_lengths"), ("--generate-new-tokens", "new_tokens")):
        raw = config.getoption(option)
        if raw:
            try:
                values = tuple(int(v) for v in raw.split(",") if v.strip())
            except ValueError:
                values = ()
            if not values or min(values) < 1:
                raise pytest.UsageError(f"{option}={raw!r}: give positive integers, e.g. 16,64")
            changes[field] = values
    settings = dict(spec.config)
    for item in config.getoption("--generate-config"):
        name, _, assignment = item.partition(":")
        key, sep, value = assignment.partition("=")
        if name != model.name:
            continue
        if not sep or key not in settings:
            raise pytest.UsageError(f"--generate-config {item!r}: expected {model.name}:KEY=VALUE with KEY one of "
                                    f"{', '.join(sorted(settings))}")
        settings[key] = type(settings[key])(value) if not isinstance(settings[key], bool) else value == "true"
    changes["config"] = settings
    if folder is not None:
        changes["local_dir"] = folder
    return model.with_form(FORM_GENERATION, dataclasses.replace(spec, **changes))


def run_options(config: pytest.Config, cache_root: Path, selection: matrix.Selection) -> RunOptions:
    """The run's options as every hook sees them, in pytest and in the workers alike."""
    plain = (str, int, float, bool, type(None))
    values = []
    for option in getattr(_option_group, "options", []):
        value = config.getoption(option.dest)
        if isinstance(value, plain) or (isinstance(value, list) and all(isinstance(v, plain) for v in value)):
            values.append((option.dest, tuple(value) if isinstance(value, list) else value))
    return RunOptions(cache_root=cache_root, threads=threads_option(config), devices=selection.devices,
                      plugin_options=tuple(values))


def threads_option(config: pytest.Config) -> int:
    """The CPU threads every backend uses: ``--threads`` or the physical cores."""
    from infermatrix.machine import physical_cores

    value = config.getoption("--threads", default=None)
    if value is not None and value < 1:  # configure refused it already (check_numbers); kept for other callers
        raise pytest.UsageError(f"--threads {value}: give a positive number of threads")
    return int(value) if value else physical_cores()


# -------------------------------------------------------------------------
# the matrix as parametrized tests
# -------------------------------------------------------------------------


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "infermatrix_case_id" not in metafunc.fixturenames:
        return
    state = metafunc.config.stash[matrix_key]
    try:
        entries = state.entries()
    except matrix.SelectionError as exc:
        raise pytest.UsageError(str(exc)) from None
    # Parameters are the plain case ids (they serialize into pytest-benchmark's JSON);
    # the ``infermatrix_case`` fixture maps an id to its Case.
    # Each scenario takes the cases of its kind (forward, generation, served).
    measured = scenario.of_item(metafunc.definition)
    if measured is not None:
        entries = [e for e in entries if measured.kind.accepts(e.case.model, e.case.backend)]
    params = [
        pytest.param(e.case.id, id=e.case.id, marks=[pytest.mark.skip(reason=e.skip_reason)] if e.skip_reason else [])
        for e in entries
    ]
    if not params:
        params = [pytest.param("", id="no-cases", marks=pytest.mark.skip(reason="the selection matches no case"))]
    metafunc.parametrize("infermatrix_case_id", params)


@pytest.fixture
def infermatrix_case(infermatrix_case_id: str, request: pytest.FixtureRequest) -> Case:
    """The case of this test (model, backend, target, batch size)."""
    return request.config.stash[matrix_key].case(infermatrix_case_id)


@dataclasses.dataclass
class PreparedCases:
    """The prepared case in use, shared by the scenarios of one case.

    Scenario tests are reordered so that a case's scenarios run back to back
    (``pytest_collection_modifyitems``); the session is prepared, warmed and checked
    once for all of them and closed when the next case starts, so at most one case's
    model is in memory at a time.
    """

    current: Prepared | None = None

    def take(self, case_id: str) -> Prepared | None:
        if self.current is not None and self.current.case.id == case_id:
            return self.current
        self.close()
        return None

    def close(self) -> None:
        if self.current is not None:
            current, self.current = self.current, None
            current.close()


prepared_key = pytest.StashKey[PreparedCases]()


@pytest.fixture
def infermatrix_prepared(
    infermatrix_case: Case, request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, benchmark: Any
) -> Iterator[Prepared]:
    """The case's session, prepared, warmed up and checked against the fp32 reference.

    A case whose outputs fail the accuracy check, or whose worker process crashed, hung
    or ran out of memory, is failed by ``pytest_pyfunc_call`` before the test body runs
    (a FAILED test, not a setup ERROR), so nothing is timed.
    """
    config = request.config
    state = config.stash[matrix_key]
    cases = config.stash.setdefault(prepared_key, PreparedCases())
    case = infermatrix_case
    benchmark.group = f"{case.model.name}-b{case.batch_size}"
    benchmark.extra_info["case_id"] = case.id

    measured = scenario.of_item(request.node)
    if measured is None:
        raise pytest.UsageError(f"{request.node.nodeid}: infermatrix_prepared is for scenario tests "
                                f"(a suites/ module with pytestmark = SCENARIO.mark())")
    reading_due = probe_due(state, benchmark)  # its buffers exist before any case is prepared (memory deltas)
    prepared = cases.take(case.id)
    if prepared is None:
        # tmp_path_factory, not tmp_path: pytest's tmp_path teardown raises KeyError when a
        # Ctrl-C lands during setup (its report key is never set), turning an interrupt
        # into an internal error; a case's work directory needs no per-test teardown.
        prepared = prepare_case(state, case, measured.kind, tmp_path_factory.mktemp(case.id))
        cases.current = prepared
    prepared.extra_info = {}  # each scenario test records its own figures
    prepared.slowdown = state.slowdowns.get(case.backend.name, 0.0)
    if prepared.slowdown:
        benchmark.extra_info["injected_slowdown"] = prepared.slowdown
    benchmark.extra_info.update(prepared.info())
    benchmark.extra_info["isolation"] = "process" if state.pool is not None else "none"
    if reading_due is not None:
        benchmark.extra_info["machine_probe"] = reading_due.measure()
    yield prepared
    prepared.record_memory(config.hook)
    benchmark.extra_info.update(prepared.extra_info)
    # The figures gathered above become the case's typed record; the scenario comes from the
    # module's marker, so a test that failed before measuring still says what it was.
    record.write(benchmark, case, measured.name)


def probe_due(state: InfermatrixState, benchmark: Any) -> MachineProbe | None:
    """The reference probe to read right before this test's rounds (infermatrix.measure.probe),
    made on first use: it runs in pytest's process, where no backend is loaded under
    --isolation=process and the worker waits idle on its pipe. None when it is off or nothing
    will be timed. Made before the case is prepared, so that under --isolation=none its
    buffers are not counted in the first case's memory."""
    if not state.probe_enabled or getattr(benchmark, "disabled", False):
        return None
    if state.probe is None:
        state.probe = MachineProbe(1, "worker" if state.pool is not None else "same process")
    return state.probe


def prepare_case(state: InfermatrixState, case: Case, kind: CaseKind, workdir: Path) -> Prepared:
    """Prepare ``case`` as its kind says, in the worker process (``--isolation=process``) or in this one."""
    # The shared cache (references, FLOPs, a generation model's folder and tokens) is
    # filled here, not in the worker: see the kind's ``fill_cache``.
    unprepared = as_user_facing(case, lambda: kind.fill_cache(case, state.options, state.accuracy_samples))
    if unprepared is not None:
        return unprepared
    if state.pool is not None:
        request = PrepareRequest(
            model=case.model.name, weights_path=case.model.weights_path, backend=case.backend, target=case.target,
            batch_size=case.batch_size, workdir=str(workdir), options=state.options, kind=kind,
            policy=state.policy, accuracy_samples=state.accuracy_samples, generation=case.model.generation,
        )
        return RemoteCase(case, state.pool, request)

    hook = getattr(state.config.hook, kind.prepare_hook)
    context = PrepareContext(workdir=workdir, options=state.options)
    prepared: list[Prepared] = []
    unprepared = as_user_facing(case, lambda: prepared.append(kind.prepare(
        case, lambda: hook(backend=case.backend, model=case.model, target=case.target, batch_size=case.batch_size,
                           context=context),
        state.options, state.policy, state.accuracy_samples)))
    return unprepared if unprepared is not None else prepared[0]


def as_user_facing(case: Case, step: Callable[[], None]) -> UnpreparedCase | None:
    """Run a preparation step; what the user can act on becomes a skip, a failure or an
    unprepared case with the message alone — never a setup error with a traceback."""
    try:
        step()
    except reference.ReferenceUnavailable as exc:
        pytest.skip(str(exc))
    except CacheError as exc:
        pytest.fail(str(exc), pytrace=False)
    except WeightsError as exc:
        # The user's --model-weights file, checked by torch only here: the case fails with the
        # message (a FAILED test, nothing timed).
        return UnpreparedCase(case, str(exc))
    return None


class UnpreparedCase:
    """A case that could not be prepared for a reason the user can act on (``failure``):
    ``pytest_pyfunc_call`` fails each of its scenario tests with it before anything is timed."""

    def __init__(self, case: Case, failure: str) -> None:
        self.case = case
        self.failure = failure
        self.accuracy = None
        self.precision = None
        self.extra_info: dict[str, Any] = {}
        self.slowdown = 0.0

    def info(self) -> dict[str, Any]:
        return {}

    def run(self, scenario: Scenario, benchmark: Any, argument: Any) -> Any:
        pytest.fail(self.failure, pytrace=False)

    def record_memory(self, hook: Any) -> None:
        pass

    def close(self) -> None:
        pass


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Run only the selected scenarios, and each case's scenarios back to back."""
    state = config.stash[matrix_key]
    found = {s.name: s for item in items if (s := scenario.of_item(item)) is not None}
    asked = state.scenarios
    if asked == ("all",):
        asked = tuple(found)
    elif asked is None:
        asked = tuple(name for name, s in found.items() if s.default)
    unknown = [name for name in asked if name not in found]
    if unknown and found:
        known = sorted(found.values(), key=lambda s: (s.kind.name, s.order, s.name))
        raise pytest.UsageError(f"--scenarios: unknown {', '.join(map(repr, unknown))}; "
                                f"valid: {', '.join(s.name for s in known)}, all")
    keep: list[pytest.Item] = []
    drop: list[pytest.Item] = []
    for item in items:
        measured = scenario.of_item(item)
        (drop if measured is not None and measured.name not in asked else keep).append(item)
    if drop:
        config.hook.pytest_deselected(items=drop)

    def case_order(item: pytest.Item) -> tuple[str, str, int]:
        callspec = getattr(item, "callspec", None)
        case_id = str(callspec.params.get("infermatrix_case_id", "")) if callspec is not None else ""
        backend = state.case(case_id).backend.name if case_id else ""
        measured = scenario.of_item(item)
        return (backend, case_id, measured.order if measured is not None else -1)

    # Stable: items of no case keep their order first; cases run grouped by backend (one
    # framework per worker process), each case's scenarios back to back in their order
    # (the first prepares the case and warms the cache the fresh-process runs reuse).
    items[:] = sorted(keep, key=case_order)
    cases = {item.nodeid: case_order(item)[1] for item in items
             if not item.get_closest_marker("skip") and case_order(item)[1]}
    state.progress = Progress(total=len(set(cases.values())), cases=cases)


@dataclasses.dataclass
class Progress:
    """Which case runs now and how many are left, for long runs (a line per case)."""

    total: int
    #: node id -> case id of every test that will run
    cases: dict[str, str] = dataclasses.field(default_factory=dict)
    done: int = 0
    current: str = ""
    started: float = dataclasses.field(default_factory=time.monotonic)

    def line(self, case_id: str) -> str | None:
        if case_id == self.current or self.total < 2:
            return None
        self.current = case_id
        self.done += 1
        elapsed = time.monotonic() - self.started
        return (f"infermatrix [{self.done}/{self.total}] {case_id} — {self.total - self.done} case(s) left, "
                f"{elapsed / 60:.1f} min so far")


class ProgressLines:
    """Writes a case's progress line when its first test starts. At ``pytest_runtest_logstart``
    output capture is suspended; a line written during setup would land in the captured
    output instead of the terminal."""

    def __init__(self, config: pytest.Config) -> None:
        self.config = config

    def pytest_runtest_logstart(self, nodeid: str, location: Any) -> None:
        state = self.config.stash.get(matrix_key, None)
        if state is None or state.progress is None or nodeid not in state.progress.cases:
            return
        line = state.progress.line(state.progress.cases[nodeid])
        reporter = self.config.pluginmanager.get_plugin("terminalreporter")
        if line is not None and reporter is not None and self.config.getoption("verbose") >= 0:
            reporter.ensure_newline()
            reporter.write_line(line)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    """Remember failed cases: pytest-benchmark stores no entry for them, the verdicts must."""
    report = yield
    if report.failed and "infermatrix_case" in getattr(item, "fixturenames", ()):
        item.config.stash[matrix_key].failed[item.name] = str(report.longrepr)[-500:]
    return report


def pytest_benchmark_update_json(config: pytest.Config, output_json: dict[str, Any]) -> None:
    state = config.stash.get(matrix_key, None)
    if state is not None:
        probe: dict[str, Any] = (state.probe.summary() if state.probe is not None else
                                 {"enabled": state.probe_enabled, "readings": 0} if state.probe_enabled else
                                 {"enabled": False, "why": "--machine-probe=off"})
        output_json["infermatrix"] = {"failed": dict(state.failed), "probe": probe}
        # What re-creates this environment (exact versions, the commit): an accepted baseline
        # then says what the paired nightly compares against (infermatrix.nightly.lock).
        output_json["infermatrix"]["environment"] = lock.capture(config.rootpath,
                                                                 lock.run_case_ids(output_json)).as_dict()


@pytest.hookimpl(trylast=True)
def pytest_sessionfinish(session: pytest.Session) -> None:
    cases = session.config.stash.get(prepared_key, None)
    if cases is not None:
        cases.close()
    state = session.config.stash.get(matrix_key, None)
    if state is not None and state.pool is not None:
        state.pool.stop()
    from infermatrix.pytest_plugin import compare as compare_session

    compare_session.finish(session)


class StopWorkerOnInterrupt:
    """Ctrl-C (pytest's ``pytest_keyboard_interrupt``): kill the worker at once, whatever
    it is doing; pytest then tears down and writes what finished."""

    def __init__(self, pool: WorkerPool) -> None:
        self.pool = pool

    def pytest_keyboard_interrupt(self, excinfo: Any) -> None:
        self.pool.kill_now()


def pytest_terminal_summary(terminalreporter: Any, config: pytest.Config) -> None:
    from infermatrix.pytest_plugin import compare as compare_session

    compare_session.report(terminalreporter, config)


def gate_failure(prepared: Any) -> str | None:
    """What the gates say of a prepared case: its accuracy report and its proof of precision
    (``precision``: forward and generation cases prove it; absent on a kind of case that does not)."""
    reports = (prepared.accuracy, getattr(prepared, "precision", None))
    failed = [report.message(prepared.case.id) for report in reports if report is not None and not report.passed]
    return "\n".join(failed) or None


@pytest.hookimpl(tryfirst=True)
def pytest_pyfunc_call(pyfuncitem: pytest.Function) -> None:
    """The gates: a case whose outputs are wrong, whose backend shows another precision than
    its id says (or whose worker failed) fails before it is timed."""
    prepared: Any = pyfuncitem.funcargs.get("infermatrix_prepared")
    if prepared is None:
        return
    failure = getattr(prepared, "failure", None)
    if failure is None:
        failure = gate_failure(prepared)
    if failure is not None:
        benchmark: Any = pyfuncitem.funcargs.get("benchmark")
        if benchmark is not None:
            # Deliberately untimed: keeps pytest-benchmark from warning "fixture was not used".
            mark_untimed(benchmark, "infermatrix: case failed before timing")
        pytest.fail(failure, pytrace=False)


@pytest.fixture
def infermatrix_policy(request: pytest.FixtureRequest) -> TimingPolicy:
    return request.config.stash[matrix_key].policy


def pytest_collection_finish(session: pytest.Session) -> None:
    config = session.config
    if not config.getoption("--warm-cache"):
        return
    from infermatrix.case.variants import original_of
    from infermatrix.forms.onnx_export import onnx_model

    state = config.stash[matrix_key]
    done: set[tuple[str, int]] = set()
    reporter = config.pluginmanager.get_plugin("terminalreporter")
    for entry in state.entries():
        model = entry.case.model
        n = reference.accuracy_sample_count(entry.case.batch_size, state.accuracy_samples)
        if (model.name, n) in done:
            continue
        if not any(name == model.name for name, _ in done):
            reference.flops_per_sample(model, state.cache_root)
            if model.build_torch is not None:
                onnx_model(model, state.cache_root)
        reference.reference_outputs(model, n, state.cache_root)
        if model.variant_of is not None:  # each case is also compared with the original (agreement_with_original)
            reference.reference_outputs(original_of(model), n, state.cache_root)
        done.add((model.name, n))
        if reporter is not None:
            reporter.write_line(f"infermatrix: cache warm for {model.name} ({n} reference samples)")


# -------------------------------------------------------------------------
# defaults and results
# -------------------------------------------------------------------------


def pytest_benchmark_update_machine_info(config: pytest.Config, machine_info: dict[str, Any]) -> None:
    """Record the hardware and every backend's version with the results."""
    machine_info["infermatrix"] = machine_summary()
    state = config.stash.get(matrix_key, None)
    if state is not None:
        machine_info["infermatrix"]["backends"] = {
            b.name: {"version": b.version, "available": b.available, "reason": b.reason} for b in state.backends
        }


def pytest_report_header(config: pytest.Config) -> list[str]:
    state = config.stash.get(matrix_key, None)
    if state is None:
        return []
    lines = [f"infermatrix: cache {state.cache_root}"]
    for b in state.backends:
        status = f"{b.version or 'available'}" if b.available else f"unavailable ({b.reason})"
        lines.append(f"  backend {b.name}: {status}")
    return lines


def case_id_pattern() -> re.Pattern[str]:
    """What every case id looks like: ``model-backend-device-precision-bN``."""
    precisions = "|".join(sorted(KNOWN_PRECISIONS, key=len, reverse=True))
    return re.compile(
        rf"^(?P<model>[^-]+)-(?P<backend>.+)-(?P<device>[^-]+)-(?P<precision>{precisions})-b(?P<batch>\d+)$"
    )

