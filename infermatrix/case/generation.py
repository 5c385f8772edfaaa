"""Text generation: the model folder, prompts, the greedy reference, token timings, the gate.

A generation model (``ModelSpec.task == "generation"``) is a decoder-only Hugging Face
model built locally from a config with seeded weights, trained for a bounded number of
seeded steps on a seeded language (``infermatrix.case.language``) so that its next token
is a confident prediction, and a byte-level BPE tokenizer trained locally on seeded text
(no download at run time). Both are saved once into the cache as a model folder
(``save_pretrained``) keyed by content (config, seed, training recipe); every backend
exports from that folder, and the torch fp32 greedy tokens on the seeded prompts are the
reference every backend's tokens are checked against (``compare_tokens``).

Timing is per token: each backend calls back once per generated token (a transformers
streamer, OpenVINO GenAI's ``StreamerBase``, ONNX Runtime GenAI's token loop), and the
timestamps give time to first token (TTFT), inter-token latencies, decode and end-to-end
tokens per second. Prompts go in as token ids, so tokenization is outside every timing.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import time
import warnings
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from infermatrix.api.scenario import CaseKind
from infermatrix.api.types import FORM_GENERATION, BackendInfo, ModelSpec, PrepareTimes, RunOptions
from infermatrix.cache import CacheError, CacheWarning, sha256
from infermatrix.case import language
from infermatrix.case.language import Training
from infermatrix.case.runner import Drivable, busy_wait
from infermatrix.gate.precision import PrecisionReport, check_precision
from infermatrix.gate.reference import ReferenceUnavailable
from infermatrix.measure import tails

SPECIAL_TOKENS = ("<s>", "</s>", "<pad>", "<unk>")


@dataclasses.dataclass(frozen=True)
class GenerationSpec:
    """How a generation model is made and exercised."""

    config: Mapping[str, Any]
    architecture: str = "LlamaForCausalLM"
    seed: int = 0
    prompt_lengths: tuple[int, ...] = (16, 64)
    new_tokens: tuple[int, ...] = (32,)
    #: a local Hugging Face folder with real weights and tokenizer (None: seeded, built here)
    local_dir: str | None = None
    #: how the seeded model is trained on the seeded language before it is saved (None: not at all)
    training: Training | None = None

    def key(self) -> dict[str, Any]:
        return {"config": dict(sorted(self.config.items())), "architecture": self.architecture, "seed": self.seed,
                "local_dir": self.local_dir, "training": None if self.training is None else self.training.key()}


class UnavailableForGeneration(RuntimeError):
    """What a generation case needs is not installed or not in the cache; the message says what to do."""


# ---- the model folder ------------------------------------------------------------------------


def corpus(seed: int, words: int = 30000) -> list[str]:
    """Seeded pseudo-text (Zipf-distributed made-up words): the same on every Python version."""
    rng = np.random.default_rng(seed)
    letters = np.array(list("etaoinshrdlucmfwypvbgkjqxz"))
    weights = 1 / np.arange(1, 27) ** 0.9
    lexicon = ["".join(rng.choice(letters, size=int(rng.integers(1, 9)), p=weights / weights.sum()))
               for _ in range(3000)]
    zipf = 1 / np.arange(1, len(lexicon) + 1) ** 1.1
    chosen = rng.choice(len(lexicon), size=words, p=zipf / zipf.sum())
    text = [lexicon[i] for i in chosen]
    return [" ".join(text[i:i + 12]) + "." for i in range(0, words, 12)]


def build_tokenizer(vocab_size: int, seed: int) -> Any:
    """Byte-level BPE trained on the seeded corpus, wrapped for transformers (BOS added)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.BPE(unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=list(SPECIAL_TOKENS),
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tokenizer.train_from_iterator(corpus(seed), trainer=trainer)
    bos = tokenizer.token_to_id("<s>")
    tokenizer.post_processor = processors.TemplateProcessing(single="<s> $A", pair="<s> $A <s> $B",
                                                             special_tokens=[("<s>", bos)])
    wrapper: Any = PreTrainedTokenizerFast  # untyped in transformers 5
    return wrapper(tokenizer_object=tokenizer, bos_token="<s>", eos_token="</s>", pad_token="<pad>", unk_token="<unk>")


def model_dir(name: str, spec: GenerationSpec, cache_root: Path) -> Path:
    """The model folder (weights, config, tokenizer): the user's, or made once in the cache."""
    if spec.local_dir is not None:
        folder = Path(spec.local_dir)
        if not (folder / "config.json").is_file():
            raise UnavailableForGeneration(f"{folder}: not a Hugging Face model folder (no config.json)")
        return folder
    import hashlib

    key = hashlib.sha256(json.dumps(spec.key(), sort_keys=True).encode()).hexdigest()[:16]
    folder = cache_root / f"{name}-{key}" / "hf"
    if (folder / "config.json").is_file() and (folder / "tokenizer.json").is_file():
        return folder
    try:
        import torch
        import transformers
    except ImportError as exc:
        raise UnavailableForGeneration(
            f"{name}: no model folder in {folder} and transformers/torch are not installed to make it; run the "
            "torch environment once (tox -e torch) or install infermatrix[torch,llm]") from exc
    config_class = getattr(transformers, spec.architecture.replace("ForCausalLM", "Config"))
    config = config_class(**spec.config, bos_token_id=0, eos_token_id=1, pad_token_id=2)
    torch.manual_seed(spec.seed)
    model = getattr(transformers, spec.architecture)(config).eval()
    trained = None
    if spec.training is not None:
        trained = language.train(model, spec.training, spec.seed, int(spec.config["vocab_size"]))
    tokenizer = build_tokenizer(int(spec.config["vocab_size"]), spec.seed)
    staging = folder.with_name(f".hf-{key}.tmp")
    import shutil

    shutil.rmtree(staging, ignore_errors=True)
    model.save_pretrained(staging)
    tokenizer.save_pretrained(staging)
    if trained is not None:  # how these weights came to be, beside them
        (staging / "infermatrix-training.json").write_text(json.dumps(trained, indent=1))
    shutil.rmtree(folder, ignore_errors=True)
    staging.rename(folder)  # whole folder or nothing: a killed run never leaves half a model
    return folder


def prompt_ids(length: int, batch_size: int, seed: int, vocab_size: int) -> np.ndarray:
    """Seeded prompts of ``length`` tokens (BOS first): segments of the seeded language's cycle."""
    return language.prompts(length, batch_size, seed, vocab_size)


def reference_store(folder: Path, batch_size: int) -> Path:
    """Where the torch fp32 reference tokens of a model folder are cached (named by the prompt recipe)."""
    return folder.parent / f"reference-tokens-b{batch_size}-prompts{language.VERSION}.json"


def sweep(spec: GenerationSpec) -> list[tuple[int, int]]:
    return [(p, n) for p in spec.prompt_lengths for n in spec.new_tokens]


def reference_tokens(name: str, spec: GenerationSpec, cache_root: Path, batch_size: int) -> dict[str, list[list[int]]]:
    """torch fp32 greedy tokens for every (prompt length, new tokens) of the sweep, cached."""
    folder = model_dir(name, spec, cache_root)
    store = reference_store(folder, batch_size)
    wanted = {f"{p}x{n}" for p, n in sweep(spec)}
    cached: dict[str, list[list[int]]] = json.loads(store.read_text()) if store.exists() else {}
    if wanted <= set(cached):
        return cached
    import torch
    from transformers import AutoModelForCausalLM

    model: Any = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
    model.eval()
    vocab = int(model.config.vocab_size)
    for p, n in sweep(spec):
        ids = torch.from_numpy(prompt_ids(p, batch_size, spec.seed, vocab))
        with torch.inference_mode():
            out = model.generate(ids, attention_mask=torch.ones_like(ids), do_sample=False, max_new_tokens=n,
                                 min_new_tokens=n, pad_token_id=2)
        cached[f"{p}x{n}"] = out[:, p:].tolist()
    from infermatrix.cache import atomic_write_json

    atomic_write_json(store, cached)
    return cached


# ---- sessions and timings ----------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Generated:
    """One generation: the new token ids per sequence and when each step's token arrived."""

    tokens: list[list[int]]
    token_times_s: list[float]  # seconds from the call to each generated step's token(s)
    total_s: float


class GenerationSession(Protocol):
    """A backend's generation path. Optionally, like ``infermatrix.api.types.Session``,
    ``precision_evidence() -> PrecisionEvidence | None``: what precision its weights and
    compute are in, read from the backend (``prepare`` checks it before timing)."""

    config: Mapping[str, Any]
    times: PrepareTimes
    size_bytes: int | None

    def generate(self, ids: np.ndarray, new_tokens: int) -> Generated: ...

    def close(self) -> None: ...


class TokenClock:
    """Per-token timestamps. ``start()`` right before the backend's generate call, so that
    setting up its streamer and options is not counted in time to first token."""

    def __init__(self) -> None:
        import time

        self._now = time.perf_counter
        self._start = self._now()
        self.stamps: list[float] = []

    def start(self) -> None:
        self.stamps = []
        self._start = self._now()

    def stamp(self) -> None:
        self.stamps.append(self._now() - self._start)

    def elapsed(self) -> float:
        return self._now() - self._start


def figures(runs: list[Generated], batch_size: int) -> dict[str, float | None]:
    """TTFT, inter-token latency p50/p99, decode and end-to-end tokens/s over repeated runs.

    The p99 is LoadGen's early-stopping estimate (``infermatrix.measure.tails``); with fewer
    inter-token samples than it needs (662) it is null, with ``itl_p99_samples_needed``.
    """
    ttft = [r.token_times_s[0] for r in runs]
    itl = [b - a for r in runs for a, b in zip(r.token_times_s, r.token_times_s[1:], strict=False)]
    decode = [batch_size * (len(r.token_times_s) - 1) / (r.token_times_s[-1] - r.token_times_s[0]) for r in runs
              if len(r.token_times_s) > 1 and r.token_times_s[-1] > r.token_times_s[0]]
    e2e = [batch_size * len(r.token_times_s) / r.total_s for r in runs]
    out: dict[str, float | None] = {"ttft_ms": float(np.median(ttft)) * 1e3,
                                    "e2e_tokens_per_s": float(np.median(e2e)), "runs": float(len(runs))}
    if itl:
        p99 = tails.estimate(itl, 99.0)
        out.update(itl_p50_ms=float(np.median(itl)) * 1e3, itl_samples=float(len(itl)),
                   itl_p99_ms=None if p99.value_s is None else p99.value_s * 1e3)
        if p99.value_s is None:
            out["itl_p99_samples_needed"] = float(p99.samples_needed)
    if decode:
        out["decode_tokens_per_s"] = float(np.median(decode))
    return out


# ---- the token gate ---------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class TokenTolerance:
    """What a precision's greedy tokens must keep of the torch fp32 reference's.

    ``min_prefix``: every sequence's first ``min_prefix`` tokens (all of them when it is
    shorter) equal the reference's — the worst prompt decides. ``min_share``: the share of
    all positions, pooled over every sequence, whose token equals the reference's.
    """

    min_prefix: int
    min_share: float


#: The gate below fp32 (fp32 itself: every token equal), per precision. Measured on the
#: trained tiny Llama (docs/backends.md, "The token gate"; 2-core AMD EPYC Zen 5): every
#: default case — torch bf16 / int8-dynamic, ONNX Runtime GenAI int8-weight-only, OpenVINO
#: GenAI int8-/int4-weight-only — kept every token of 38 prompts (8 to 900 tokens) x 32,
#: with the fp32 top-1 ahead of top-2 by >= 1.94 logits at every step. Teacher-forced, the
#: largest logit move was 0.97 (bf16), 0.49 (int8-dynamic), 0.42 / 0.37 (int8-weight-only,
#: OpenVINO / ONNX Runtime) and 2.85 (int4-weight-only): int4 is the one that can meet a
#: near-tie, so it may diverge earlier. The bounds leave that room, and are far beyond
#: garbage: a uniformly random stream keeps a prefix of 8 in both default sequences with
#: probability 2000^-16 (1.5e-53; 256^-16 = 2.9e-39 drawn from the 256 tokens the model
#: emits); a stuck stream matches at most one position per sequence (the cycle repeats no
#: token); a right start shorter than ``min_prefix`` fails by construction.
TOKEN_TOLERANCE: dict[str, TokenTolerance] = {
    "bf16": TokenTolerance(min_prefix=16, min_share=0.75),
    "fp16": TokenTolerance(min_prefix=16, min_share=0.75),
    "int8-dynamic": TokenTolerance(min_prefix=16, min_share=0.75),
    "int8-weight-only": TokenTolerance(min_prefix=16, min_share=0.75),
    "int4-weight-only": TokenTolerance(min_prefix=8, min_share=0.5),
}


@dataclasses.dataclass(frozen=True)
class TokenReport:
    precision: str
    #: share of all compared positions whose token equals the reference's (per-position agreement)
    identical_share: float
    first_divergence: int | None  # the earliest step at which any sequence differs; None if none
    compared: int
    failures: tuple[str, ...]
    #: tokens before each sequence's first difference from the reference, in the sweep's order
    prefix_lengths: tuple[int, ...] = ()
    #: what the precision had to keep (``TokenTolerance``); None: every token (fp32, or unknown)
    tolerance: TokenTolerance | None = None

    @property
    def shortest_prefix(self) -> int:
        return min(self.prefix_lengths, default=0)

    @property
    def passed(self) -> bool:
        return not self.failures

    def as_dict(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "failures": list(self.failures),
                "prefix_lengths": list(self.prefix_lengths), "shortest_prefix": self.shortest_prefix,
                "passed": self.passed}

    def message(self, case_id: str) -> str:
        return f"{case_id}: token check failed ({'; '.join(self.failures)})"


def prefix_length(have: list[int], want: list[int]) -> int:
    """Tokens until the first difference (a missing token is a difference)."""
    for i, (x, y) in enumerate(zip(have, want, strict=False)):
        if x != y:
            return i
    return min(len(have), len(want))


def compare_tokens(got: Mapping[str, list[list[int]]], expected: Mapping[str, list[list[int]]],
                   precision: str) -> TokenReport:
    """Each sequence's greedy tokens against the torch fp32 reference's, position by position.

    fp32 (and a precision with no ``TOKEN_TOLERANCE``) must give every token. Below fp32 the
    worst sequence's agreeing prefix and the pooled per-position share are held to the
    precision's tolerance. A sequence of another length than the reference's fails at any
    precision: every backend is asked for exactly that many tokens.
    """
    tolerance = None if precision == "fp32" else TOKEN_TOLERANCE.get(precision)
    same = total = 0
    first: int | None = None
    prefixes: list[int] = []
    names: list[str] = []  # "16x32 sequence 0": which prompt each prefix belongs to
    lengths: list[int] = []
    failures: list[str] = []
    for key, want in expected.items():
        have = got.get(key, [])
        if len(have) != len(want):
            failures.append(f"{key}: {len(have)} sequences, the reference has {len(want)}")
        for index, want_row in enumerate(want):
            have_row = have[index] if index < len(have) else []
            if len(have_row) != len(want_row):
                failures.append(f"{key} sequence {index}: {len(have_row)} tokens, the reference has {len(want_row)}")
            prefix = prefix_length(have_row, want_row)
            prefixes.append(prefix)
            names.append(f"{key} sequence {index}")
            lengths.append(len(want_row))
            if prefix < len(want_row) and (first is None or prefix < first):
                first = prefix
            same += sum(int(x == y) for x, y in zip(have_row, want_row, strict=False))
            total += max(len(have_row), len(want_row))
    share = same / total if total else 0.0
    if tolerance is None:
        if share < 1.0 or first is not None:
            failures.append(f"{precision} tokens must equal the torch fp32 reference's; {share:.3f} equal, first "
                            f"divergence at step {first}")
    else:
        worst = min(range(len(prefixes)), key=prefixes.__getitem__, default=None)
        if worst is not None and prefixes[worst] < min(tolerance.min_prefix, lengths[worst]):
            failures.append(f"{names[worst]} keeps the reference's tokens for {prefixes[worst]} steps, "
                            f"< {min(tolerance.min_prefix, lengths[worst])} needed")
        if share < tolerance.min_share:
            failures.append(f"identical-token share {share:.3f} < {tolerance.min_share}")
    return TokenReport(precision, share, first, total, tuple(failures), tuple(prefixes), tolerance)


# ---- a prepared generation case (the counterpart of runner.PreparedCase) -----------------------


@dataclasses.dataclass
class PreparedGeneration(Drivable):
    """A generation case whose session is ready, warmed and checked against the torch tokens."""

    case: Any
    session: GenerationSession
    spec: GenerationSpec
    accuracy: TokenReport
    prepare_s: float
    warmup_s: float
    rss_before_bytes: int
    extra_info: dict[str, Any] = dataclasses.field(default_factory=dict)
    slowdown: float = 0.0
    #: the proof of precision (``infermatrix.gate.precision``), as ``runner.PreparedCase.precision``
    precision: PrecisionReport | None = None

    def info(self) -> dict[str, Any]:
        """How the case was prepared (the record adds which case it is, as for ``runner.case_info``)."""
        return {
            "backend_config": dict(self.session.config), "prepare_s": self.prepare_s,
            **self.session.times.as_dict(), "warmup_s": self.warmup_s, "accuracy": self.accuracy.as_dict(),
            **({"precision_evidence": self.precision.as_dict()} if self.precision is not None else {}),
            "model_size_bytes": self.session.size_bytes, "generation_config": self.spec.key()["config"],
        }

    def ids(self, prompt_length: int) -> np.ndarray:
        return prompt_ids(prompt_length, self.case.batch_size, self.spec.seed, int(self.spec.config["vocab_size"]))

    def generate(self, benchmark: Any, policy: Any) -> dict[str, Any]:
        """Every (prompt length, new tokens) of the sweep, repeated within the time budget.

        pytest-benchmark's rounds are the end-to-end seconds of the first configuration,
        so its table and the regression verdicts see generation like any other case.
        """
        import time

        from infermatrix.measure.timing import benchmark_recorder

        record = None if getattr(benchmark, "disabled", False) else benchmark_recorder(
            benchmark, "infermatrix generate")
        results: dict[str, Any] = {}
        for index, (length, new) in enumerate(sweep(self.spec)):
            ids = self.ids(length)
            runs: list[Generated] = []
            started = time.perf_counter()
            while len(runs) < policy.min_rounds or (time.perf_counter() - started) < policy.min_time_s:
                run = self.session.generate(ids, new)
                if self.slowdown:  # --inject-slowdown: the same share added to the whole generation
                    busy_wait(run.total_s * self.slowdown)
                    run = dataclasses.replace(run, total_s=run.total_s * (1 + self.slowdown),
                                              token_times_s=[t * (1 + self.slowdown) for t in run.token_times_s])
                runs.append(run)
                if index == 0 and record is not None:
                    record(run.total_s)
                if time.perf_counter() - started > policy.max_time_s and len(runs) >= 3:
                    break
            results[f"prompt{length}-new{new}"] = figures(runs, self.case.batch_size)
        first = next(iter(results.values()))
        self.extra_info.update(generate=results,
                               ttft_ms=first["ttft_ms"], decode_tokens_per_s=first.get("decode_tokens_per_s"),
                               e2e_tokens_per_s=first["e2e_tokens_per_s"], itl_p50_ms=first.get("itl_p50_ms"),
                               itl_p99_ms=first.get("itl_p99_ms"), generate_primary=next(iter(results)))
        return results


def prepare(case: Any, prepare_session: Callable[[], GenerationSession | None], cache_root: Path) -> PreparedGeneration:
    """Prepare the session, generate every sweep configuration once (warm-up and compile,
    untimed), check those tokens against the torch fp32 reference, and ask the session for
    its proof of precision (``precision_evidence()``, judged as ``runner.prove_precision``)."""
    import time

    from infermatrix.case.runner import timed_prepare

    spec: GenerationSpec = case.model.generation
    session, prepare_s, rss_before = timed_prepare(case, prepare_session)
    try:
        expected = reference_tokens(case.model.name, spec, cache_root, case.batch_size)
        got: dict[str, list[list[int]]] = {}
        started = time.perf_counter()
        for length, new in sweep(spec):
            ids = prompt_ids(length, case.batch_size, spec.seed, int(spec.config["vocab_size"]))
            got[f"{length}x{new}"] = session.generate(ids, new).tokens
        warmup_s = time.perf_counter() - started
        report = compare_tokens(got, {k: expected[k] for k in got}, case.target.precision)
        give = getattr(session, "precision_evidence", None)
        precision = check_precision(case.target.precision, give() if callable(give) else None)
    except BaseException:
        session.close()
        raise
    return PreparedGeneration(case, session, spec, report, prepare_s, warmup_s, rss_before, precision=precision)


def exported(folder: Path, name: str, make: list[str], tool: str) -> Path:
    """A backend's export of the model folder, made once with ``make`` (a command) and cached.

    Its ``.complete`` marker is a manifest (every file's size and SHA-256): a damaged
    export (a truncated ``model.onnx.data``, say) is found when read, moved aside and made
    again, never loaded twice.
    """
    import shutil
    import subprocess

    target = folder.parent / name
    if (target / COMPLETE).exists():
        problem = export_problem(target)
        if problem is None:
            return target
        aside = target.with_name(f"{target.name}.damaged-{time.strftime('%Y%m%dT%H%M%S')}")
        target.rename(aside)
        warnings.warn(f"infermatrix: {target}: damaged export ({problem}) — moved to {aside}; making it again",
                      CacheWarning, stacklevel=2)
    staging = folder.parent / f".{name}.tmp"
    shutil.rmtree(staging, ignore_errors=True)
    command = [part.replace("{out}", str(staging)).replace("{model}", str(folder)) for part in make]
    try:
        proc = subprocess.run(command, capture_output=True, text=True)
    except OSError as exc:
        raise CacheError(f"{target}: not in the cache, and {tool} cannot run here ({exc.strerror}); run the torch "
                         "environment once (tox -e torch) to make it") from None
    if proc.returncode != 0:
        raise RuntimeError(f"{tool} failed (exit {proc.returncode}): {' '.join(command)}\n"
                           f"{(proc.stdout + proc.stderr)[-3000:]}")
    files = {str(f.relative_to(staging)): {"size": f.stat().st_size, "sha256": sha256(f)}
             for f in sorted(staging.rglob("*")) if f.is_file()}
    (staging / COMPLETE).write_text(json.dumps({"command": command, "files": files}, indent=1))
    shutil.rmtree(target, ignore_errors=True)
    staging.rename(target)
    return target


#: The marker of a finished export: its manifest.
COMPLETE = ".complete"


@functools.lru_cache(maxsize=32)
def _export_problem(target: Path, marker_mtime_ns: int) -> str | None:
    text = (target / COMPLETE).read_text(errors="replace")
    if not text.lstrip().startswith("{"):
        return None  # an export from before manifests (the marker held the command): its loader is the check
    try:
        manifest = json.loads(text)
        files = manifest["files"]
        assert isinstance(files, dict)
    except (ValueError, KeyError, TypeError, AssertionError):
        return "its manifest (.complete) is damaged"
    for name, record in files.items():
        path = target / name
        if not path.is_file():
            return f"{name} is missing"
        if path.stat().st_size != record["size"]:
            return f"{name} has {path.stat().st_size} bytes, {record['size']} when made"
        if sha256(path) != record["sha256"]:
            return f"{name} differs from when it was made (SHA-256)"
    return None


def export_problem(target: Path) -> str | None:
    """What is wrong with a finished export, or None (checked once per process)."""
    return _export_problem(target, (target / COMPLETE).stat().st_mtime_ns)


def fill_generation_cache(case: Any, options: RunOptions, accuracy_samples: int) -> None:
    """The model folder and the torch fp32 reference tokens, made in pytest's process."""
    try:
        reference_tokens(case.model.name, case.model.generation, options.cache_root, case.batch_size)
    except UnavailableForGeneration as exc:
        raise ReferenceUnavailable(str(exc)) from None
    except ImportError as exc:
        raise ReferenceUnavailable(f"{case.model.name}: the torch reference tokens need transformers and torch "
                                   f"({exc}); pip install 'infermatrix[torch,llm]'") from None


def prepare_generation(case: Any, prepare_session: Callable[[], GenerationSession | None], options: RunOptions,
                       policy: Any, accuracy_samples: int) -> PreparedGeneration:
    return prepare(case, prepare_session, options.cache_root)


def is_generation_model(model: ModelSpec) -> bool:
    return FORM_GENERATION in model.forms


def is_generation_case(model: ModelSpec, backend: BackendInfo) -> bool:
    """In-process generation: a generation model on a backend that is not a server."""
    return is_generation_model(model) and not backend.server


#: Text generation: models with a generation form, prepared by ``pytest_infermatrix_prepare_generation``.
GENERATION = CaseKind("generation", accepts=is_generation_case, fill_cache=fill_generation_cache,
                      prepare_hook="pytest_infermatrix_prepare_generation", prepare=prepare_generation)
