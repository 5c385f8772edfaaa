"""``openai``: a server the user already runs, reached over the OpenAI completions API.

TGI, LMDeploy, SGLang, DeepSpeed-MII, OpenVINO Model Server, vLLM on a GPU machine and
others speak that API; the serve scenario loads any of them the same way it loads the
vLLM server the suite starts. The user names it:

- ``--endpoint URL`` (e.g. ``http://gpu-box:8000``) and ``--endpoint-model NAME`` (the name
  the server serves the model as; default: the suite's model name);
- ``--endpoint-precision P`` — what the server runs; the suite cannot see inside a remote
  server, so the case id carries what the user states, the record's proof of precision says
  it is the user's statement (not read from the server), and the token gate holds it to that
  precision (fp32, the default, must give every reference token: a server that runs
  another precision fails rather than passing under the wrong name);
- ``--endpoint-extra JSON`` — fields every request carries (default
  ``{"ignore_eos": true}`` so exactly ``max_tokens`` are generated; ``{}`` for a server
  that rejects unknown fields, whose requests may then end early at EOS).

Correct before timed: the server must serve the *same model folder* as the suite's
reference (``--model-weights tinyllama=FOLDER`` points the suite at a folder; the default
tiny Llama's folder is printed in the skip reason and lives in the cache). Its greedy
tokens for the seeded prompts are compared with torch fp32's. The server must accept
prompts as token ids for that check (the OpenAI API allows it); where it returns no token ids
its text is re-encoded with the folder's tokenizer. The load then sends the prompts as text
decoded by the folder's tokenizer (``--serve-prompts text``, the default; ``tokens`` for ids).

No ``--endpoint``: the case skips, saying so. An endpoint that does not answer
``/v1/models``: the case skips with the error. The device in the case id is ``remote``.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import pytest

from infermatrix.api.types import (
    FORM_GENERATION,
    BackendInfo,
    ModelSpec,
    PrepareContext,
    PrepareTimes,
    RunOptions,
    Target,
)
from infermatrix.gate.precision import PrecisionEvidence
from infermatrix.serving.client import Endpoint

NAME = "openai"
PRECISIONS = ("fp32", "bf16", "fp16", "int8-weight-only", "int4-weight-only")


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("infermatrix")
    group.addoption("--endpoint", default=None, metavar="URL",
                    help="openai: the base URL of an OpenAI-compatible server you run (e.g. http://host:8000)")
    group.addoption("--endpoint-model", default=None, metavar="NAME",
                    help="openai: the model name the server serves (default: the suite's model name)")
    group.addoption("--endpoint-precision", default="fp32", choices=PRECISIONS,
                    help="openai: the precision the server runs (its case id and token gate; default fp32)")
    group.addoption("--endpoint-extra", default='{"ignore_eos": true}', metavar="JSON",
                    help="openai: fields every request carries (default {\"ignore_eos\": true}; {} for none)")


@pytest.hookimpl
def pytest_infermatrix_backends() -> list[BackendInfo]:
    import importlib.util

    if importlib.util.find_spec("aiohttp") is None:
        return [BackendInfo(NAME, ("remote",), PRECISIONS, available=False, forms=(FORM_GENERATION,),
                            generation_precisions=PRECISIONS, server=True,
                            reason="openai: the serve scenario's client needs aiohttp "
                                   "(pip install 'infermatrix[serve]')")]
    return [BackendInfo(NAME, ("remote",), PRECISIONS, version="OpenAI completions API", forms=(FORM_GENERATION,),
                        generation_precisions=PRECISIONS, server=True)]


@pytest.hookimpl
def pytest_infermatrix_targets(backend: BackendInfo, options: RunOptions) -> list[Target] | None:
    if backend.name != NAME:
        return None
    url = options.option("endpoint")
    stated = options.option("endpoint_precision", "fp32")
    targets = []
    for precision in PRECISIONS:
        if not url:
            reason: str | None = "openai: no --endpoint URL given (a server you run; see docs/serving.md)"
        elif precision != stated:
            reason = f"openai: the endpoint runs {stated} (--endpoint-precision), not {precision}"
        else:
            reason = None
        targets.append(Target("remote", precision, reason))
    return targets


def endpoint_extra(text: str) -> dict[str, Any]:
    try:
        value = json.loads(text)
    except ValueError as exc:
        raise pytest.UsageError(f"--endpoint-extra {text!r}: not JSON ({exc}); e.g. '{{\"ignore_eos\": true}}'") \
            from None
    if not isinstance(value, dict):
        raise pytest.UsageError(f"--endpoint-extra {text!r}: give a JSON object, e.g. '{{}}'")
    return value


@dataclasses.dataclass
class RemoteServer:
    endpoint: Endpoint
    config: dict[str, Any]
    times: PrepareTimes
    size_bytes: int | None = None
    log_path: Path | None = None

    def precision_evidence(self) -> PrecisionEvidence:
        """What the suite can know of a remote server's precision: what the user stated. It is
        recorded as such (unit and API say so), never as something read from the server."""
        stated = str(self.config["stated_precision"])
        return PrecisionEvidence({stated: 1}, "statement by the user (a remote server shows nothing to read)",
                                 "--endpoint-precision", {"endpoint": self.config["url"]})

    def close(self) -> None:
        """The user's server: left running."""


def served_models(url: str) -> list[str]:
    """The model names ``url`` serves (``GET /v1/models``); raises with what went wrong."""
    import urllib.request

    with urllib.request.urlopen(url.rstrip("/") + "/v1/models", timeout=10) as response:
        body = json.loads(response.read())
    return [str(m.get("id")) for m in body.get("data", [])]


@pytest.hookimpl
def pytest_infermatrix_prepare_server(backend: BackendInfo, model: ModelSpec, target: Target,
                                      context: PrepareContext) -> RemoteServer | None:
    if backend.name != NAME:
        return None
    import time

    url = str(context.options.option("endpoint"))
    name = context.options.option("endpoint_model") or model.name
    started = time.perf_counter()
    try:
        names = served_models(url)
    except (OSError, ValueError) as exc:
        pytest.skip(f"openai: {url} does not answer GET /v1/models ({exc})")
    if name not in names:
        pytest.fail(f"openai: {url} serves {', '.join(names) or 'no model'}, not {name!r}; name it with "
                    "--endpoint-model", pytrace=False)
    extra = endpoint_extra(str(context.options.option("endpoint_extra", "{}")))
    config = {"server": "openai-compatible endpoint", "url": url, "model": name,
              "stated_precision": target.precision, "extra_body": extra}
    return RemoteServer(Endpoint(url, name, extra), config, PrepareTimes(load_s=time.perf_counter() - started))
