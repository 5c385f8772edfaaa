"""Export a model to ONNX once, cached by content.

The key covers the model's content (definition version, weight seed or weights file,
input signature), the opset and the exporter's version (torch's). A second run finds
the file and does not export again; a changed model gets a new key. Environments
without torch (the onnxruntime and openvino tox environments) use the newest export
of the same model content and opset that the cache holds.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from infermatrix.api.types import ModelSpec
from infermatrix.cache import CacheDamaged, atomic_write_bytes, check, quarantine, seal, seal_path, unseal
from infermatrix.gate.reference import ReferenceUnavailable, build_torch_model, model_cache, torch_available

DEFAULT_OPSET = 18
INDEX_FILE = "onnx-exports.json"


class OnnxUnavailable(ReferenceUnavailable):
    """No cached export, and no torch to make one (the case is skipped, saying so)."""


def _exporter_version() -> str:
    import torch

    return f"torch-{torch.__version__.split('+')[0]}-dynamo"


def _export(model: ModelSpec, cache_root: Path, path: Path, opset: int) -> dict[str, Any]:
    import onnx
    import torch

    module = build_torch_model(model, cache_root)
    sample = model.eval_inputs(2)
    args = tuple(torch.from_numpy(sample[s.name]) for s in model.inputs)
    batch = torch.export.Dim("batch", min=1, max=4096)
    started = time.perf_counter()
    program = torch.onnx.export(
        module,
        args,
        dynamo=True,
        opset_version=opset,
        input_names=[s.name for s in model.inputs],
        output_names=list(model.output_names),
        dynamic_shapes=tuple({0: batch} for _ in model.inputs),
        optimize=True,
    )
    assert program is not None
    proto = program.model_proto
    # One self-contained file (our models are far below protobuf's 2 GB limit), so
    # the cache entry is a single atomic rename and its hash covers the weights too.
    unseal(path)
    atomic_write_bytes(path, proto.SerializeToString())
    onnx.checker.check_model(str(path))
    seal(path)
    return {"export_s": time.perf_counter() - started, "exporter": _exporter_version(), "opset": opset}


def onnx_model(model: ModelSpec, cache_root: Path, opset: int = DEFAULT_OPSET) -> tuple[Path, dict[str, Any]]:
    """Path of the model's ONNX file (exported now if needed) and what the export recorded.

    The returned info carries ``export_s`` only when this call exported, so callers can
    tell a cold cache from a warm one.
    """
    cache = model_cache(model, cache_root)
    index: dict[str, Any] = cache.read_json(INDEX_FILE) or {}
    if torch_available():
        key = f"opset{opset}-{_exporter_version()}"
        path = cache.dir / f"model-{key}.onnx"
        if key in index and path.exists() and intact(path):
            return path, {**index[key], "export_s": None, "cached": True}
        info = _export(model, cache_root, cache.path(path.name), opset)
        index[key] = {"file": path.name, "exporter": info["exporter"], "opset": opset,
                      "exported_at": time.strftime("%Y-%m-%dT%H:%M:%S")}
        cache.write_json(INDEX_FILE, index)
        return path, {**index[key], "export_s": info["export_s"], "cached": False}
    candidates = sorted(
        (entry for entry in index.values() if entry.get("opset") == opset and (cache.dir / entry["file"]).exists()),
        key=lambda entry: entry.get("exported_at", ""),
    )
    if not candidates:
        raise OnnxUnavailable(
            f"{model.name}: no ONNX export (opset {opset}) in {cache.dir} and torch is not installed to make one; "
            "run the torch environment once (tox -e torch) to fill the cache"
        )
    entry = candidates[-1]
    path = cache.dir / entry["file"]
    if not intact(path):
        raise OnnxUnavailable(
            f"{model.name}: the cached ONNX export {path} was damaged (moved aside) and torch is not installed to "
            "export it again; run tox -e export (or the torch environment) once to rebuild it"
        )
    return path, {**entry, "export_s": None, "cached": True}


def intact(path: Path) -> bool:
    """Whether a cached export is what was written; a damaged one is moved aside (False).
    An export from before entries were sealed is parsed once and then sealed."""
    try:
        check(path)
        if not seal_path(path).exists():
            try:
                import onnx
            except ImportError:
                return True  # nothing to parse it with here: the runtime's loader is the check
            try:
                onnx.load(str(path), load_external_data=False)
            except Exception as exc:  # onnx raises DecodeError and others for a damaged protobuf
                raise CacheDamaged(path, f"not a readable ONNX model ({type(exc).__name__})") from None
            seal(path)
    except CacheDamaged as damage:
        quarantine(damage)
        return False
    return True

