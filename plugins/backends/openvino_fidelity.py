"""Does the suite time OpenVINO as OpenVINO times itself?  ``python -m infermatrix fidelity``

A tool of the openvino backend, beside it (announced by its ``pytest_infermatrix_commands``).

Runs OpenVINO's own ``benchmark_app`` (sync API, LATENCY hint, the same threads,
precision hint and static shape the suite uses) on the model's cached ONNX export, and
the suite's openvino session for the same case, alternately (tool, suite, tool, suite,
…: the machine drifts, so the comparison is paired), and prints the median of each and
their ratio per pair.
"""

from __future__ import annotations

import argparse
import re
import shutil
import statistics
import subprocess
import tempfile
from pathlib import Path

from infermatrix import host
from infermatrix.api.types import RunOptions
from infermatrix.case.offline import prepare_side
from infermatrix.machine import physical_cores
from infermatrix.measure.timing import TimingPolicy, timed_rounds

MEDIAN_LINE = re.compile(r"Median:\s+([0-9.]+)\s*ms")


def benchmark_app_median_ms(onnx_path: Path, input_name: str, shape: list[int], threads: int, seconds: int) -> float:
    import sys

    # the console script sits beside the interpreter in a virtual environment
    tool = shutil.which("benchmark_app", path=str(Path(sys.executable).parent)) or shutil.which("benchmark_app")
    if tool is None:
        raise SystemExit("benchmark_app not found: it ships with the openvino package (pip install openvino)")
    # benchmark_app refuses -nthreads together with a hint; under the LATENCY hint the CPU
    # plugin uses one stream on all physical cores, which is what the suite sets explicitly.
    del threads
    cmd = [tool, "-m", str(onnx_path), "-d", "CPU", "-hint", "latency", "-api", "sync",
           "-infer_precision", "f32", "-shape", f"{input_name}[{','.join(map(str, shape))}]", "-t", str(seconds)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds * 10 + 120)
    found = MEDIAN_LINE.findall(proc.stdout)
    if proc.returncode != 0 or not found:
        raise SystemExit(f"benchmark_app failed (exit {proc.returncode}):\n{(proc.stdout + proc.stderr)[-2000:]}")
    return float(found[0])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m infermatrix fidelity", description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="resnet18")
    parser.add_argument("--batch-size", type=int, default=1)
    parser.add_argument("--pairs", type=int, default=3)
    parser.add_argument("--seconds", type=int, default=10, help="seconds per measurement on each side")
    parser.add_argument("--rootdir", type=Path, default=Path.cwd())
    args = parser.parse_args(argv)

    from infermatrix.cache import resolve_cache_dir
    from infermatrix.forms.onnx_export import onnx_model

    rootdir = args.rootdir.resolve()
    threads = physical_cores()
    cache_root = resolve_cache_dir(None, rootdir)
    manager = host.plugin_manager()
    with tempfile.TemporaryDirectory() as tmp:
        prepared = prepare_side(manager, args.model, "openvino:fp32", args.batch_size,
                                RunOptions(cache_root=cache_root, threads=threads), Path(tmp))
        model = prepared.case.model
        onnx_path, _ = onnx_model(model, cache_root)
        spec = model.inputs[0]
        policy = TimingPolicy(min_rounds=10, min_time_s=args.seconds, max_time_s=args.seconds, target_precision=1e-9)
        rows = []
        for _ in range(args.pairs):
            tool_ms = benchmark_app_median_ms(onnx_path, spec.name, [args.batch_size, *spec.shape], threads,
                                              args.seconds)
            samples, _ = timed_rounds(prepared.call, policy)
            suite_ms = statistics.median(samples) * 1e3
            rows.append((tool_ms, suite_ms))
        prepared.session.close()
    print(f"{args.model} b{args.batch_size} openvino CPU f32, LATENCY hint, sync, {threads} threads; "
          f"{args.seconds} s per side, alternating")
    for tool_ms, suite_ms in rows:
        print(f"  benchmark_app median {tool_ms:7.2f} ms   suite median {suite_ms:7.2f} ms   "
              f"suite/tool {suite_ms / tool_ms:.3f}")
    ratios = [suite / tool for tool, suite in rows]
    print(f"  median ratio suite/tool: {statistics.median(ratios):.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
