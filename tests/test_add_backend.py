"""Adding a backend is four edits: its module, one line in BUILTIN_PLUGINS, one extra, one tox env.

The tox environment's label (cpu-backends or gpu-backends) is what puts it in the nightly:
the Makefile, tox's own nightly environment and the GitHub workflow all ask tox for the
environments of a label instead of keeping a list of their own. These tests add a toy
backend to a copy of the repository through those four places only and check that every
one of them then knows it. Nothing is installed: `tox list` and `tox config` only read tox.ini.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
LABELS = ("cpu-backends", "gpu-backends")
WORKFLOW = Path(".github") / "workflows" / "nightly.yml"

TOY_MODULE = '''"""A toy backend: the smallest module that announces one."""

from __future__ import annotations

import pytest

from infermatrix.api.announce import announce_backend
from infermatrix.api.types import BackendInfo


@pytest.hookimpl
def pytest_infermatrix_backends() -> list[BackendInfo]:
    return [announce_backend("toy", "toyframework", "toyframework", ("cpu",), ("fp32",), extra="toy")]
'''

TOY_TOX_ENV = """
[testenv:toy]
description = toy cases
labels = cpu-backends
extras = toy
commands =
    pytest suites --backends toy --benchmark-json={env:INFERMATRIX_RESULTS:{tox_root}{/}results}{/}toy.json {posargs}
"""

needs_tools = pytest.mark.skipif(
    shutil.which("make") is None or shutil.which("git") is None or shutil.which("bash") is None,
    reason="make, git and bash are needed to run the Makefile and the workflow's shell step",
)


def tool_env() -> dict[str, str]:
    """This interpreter's tox and python first on PATH, as `pip install tox` makes them on a runner."""
    return {**os.environ, "PATH": os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])}


def copy_of_the_repository(dest: Path) -> Path:
    listed = subprocess.run(["git", "ls-files", "-z"], cwd=REPO, capture_output=True)
    if listed.returncode != 0:
        pytest.skip(f"not a git checkout, so no list of the repository's files: {listed.stderr.decode()[-300:]}")
    for name in filter(None, listed.stdout.decode().split("\0")):
        source = REPO / name
        if source.is_file():  # a tracked file deleted in the working tree is not part of this state
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, dest / name)
    return dest


def add_the_toy_backend(root: Path) -> None:
    (root / "plugins" / "backends" / "toy.py").write_text(TOY_MODULE)

    # the one list of built-in plugins (the root conftest.py held it before plugins/__init__.py)
    plugin_list = next(path for path in (root / "plugins" / "__init__.py", root / "conftest.py")
                       if "BUILTIN_PLUGINS = (" in path.read_text())
    text = plugin_list.read_text()
    last = '    "plugins.backends.tensorrt",\n'
    assert text.count(last) == 1, "BUILTIN_PLUGINS changed shape: update this test"
    plugin_list.write_text(text.replace(last, last + '    "plugins.backends.toy",\n'))

    pyproject = root / "pyproject.toml"
    text = pyproject.read_text()
    header = "[project.optional-dependencies]\n"
    assert text.count(header) == 1
    pyproject.write_text(text.replace(header, header + 'toy = ["toyframework>=1"]\n'))

    with (root / "tox.ini").open("a") as tox_ini:
        tox_ini.write(TOY_TOX_ENV)


def workflow_discovery_script(root: Path) -> str:
    """The shell of the workflow step (id: labels) that turns tox labels into the job matrices."""
    lines = (root / WORKFLOW).read_text().splitlines()
    start = next((i for i, line in enumerate(lines) if line.strip() == "id: labels"), None)
    assert start is not None, "the nightly workflow has no step with id: labels"
    step_indent = len(lines[start]) - len(lines[start].lstrip())
    run = next(i for i in range(start, len(lines)) if lines[i].strip() == "run: |")
    body: list[str] = []
    for line in lines[run + 1:]:
        if line.strip() and len(line) - len(line.lstrip()) <= step_indent:
            break
        body.append(line)
    indent = min(len(line) - len(line.lstrip()) for line in body if line.strip())
    return "\n".join(line[indent:] for line in body) + "\n"


def workflow_matrices(root: Path, tmp_path: Path) -> dict[str, list[str]]:
    """Runs the workflow's discovery step as GitHub would, and reads what it wrote to $GITHUB_OUTPUT."""
    output = tmp_path / "github_output"
    output.write_text("")
    proc = subprocess.run(["bash", "-c", workflow_discovery_script(root)], cwd=root, capture_output=True, text=True,
                          env={**tool_env(), "GITHUB_OUTPUT": str(output)}, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    matrices = dict(line.split("=", 1) for line in output.read_text().splitlines() if line)
    return {kind: json.loads(names) for kind, names in matrices.items()}


def nightly_envs(root: Path) -> list[str]:
    proc = subprocess.run(["make", "-s", "print-nightly-envs", f"PY={sys.executable}"], cwd=root, capture_output=True,
                          text=True, env=tool_env(), timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc.stdout.split()


@needs_tools
def test_a_backend_added_in_four_places_is_in_the_nightly_the_workflow_and_the_matrix(tmp_path: Path) -> None:
    root = copy_of_the_repository(tmp_path / "repo")
    add_the_toy_backend(root)

    assert "toy" in nightly_envs(root)  # make nightly runs it, one after the others

    matrices = workflow_matrices(root, tmp_path)
    assert "toy" in matrices["cpu"] and "toy" not in matrices["gpu"], matrices

    collected = subprocess.run(
        [sys.executable, "-m", "pytest", "suites", "--collect-only", "-q", "-p", "no:cacheprovider",
         "--backends", "toy", f"--infermatrix-cache={tmp_path / 'cache'}"],
        cwd=root, capture_output=True, text=True, timeout=300,
    )
    assert collected.returncode == 0, collected.stdout[-3000:] + collected.stderr[-3000:]
    assert re.search(r"^suites/\S+\[resnet18-toy-cpu-fp32-b1\]$", collected.stdout, re.MULTILINE), (
        collected.stdout[-3000:])


@needs_tools
def test_every_backend_environment_is_labelled_and_found_by_the_nightly(tmp_path: Path) -> None:
    """A backend environment without its label would silently drop out of every nightly."""
    root = copy_of_the_repository(tmp_path / "repo")  # tox leaves a lock file under .tox/: not in the checkout
    proc = subprocess.run([sys.executable, "-m", "tox", "config", "-e", "ALL", "-k", "labels", "commands",
                           "--format", "json"], cwd=root, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    config = json.loads(proc.stdout)["env"]
    benchmarks = {name for name, env in config.items() if "--benchmark-json" in json.dumps(env.get("commands", []))}
    assert {"torch", "onnxruntime", "openvino", "tensorflow", "plaidml", "cuda", "tensorrt"} <= benchmarks
    for name in benchmarks:
        assert len(set(config[name]["labels"]) & set(LABELS)) == 1, (name, config[name]["labels"])

    matrices = workflow_matrices(root, tmp_path)
    assert sorted(matrices["cpu"] + matrices["gpu"]) == sorted(benchmarks)
    assert set(matrices["gpu"]) == {"cuda", "tensorrt"}
    assert set(nightly_envs(root)) >= set(matrices["cpu"])
