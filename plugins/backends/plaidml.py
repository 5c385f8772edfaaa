"""PlaidML 0.7.0 through its Keras 2.2.4 backend (``plaidml-keras``), in its own environment.

The path, and why (see docs/backends.md):
- Keras 2.2.4 cannot live beside Keras 3, so this backend has its own extra and tox
  environment (``tox -e plaidml``). It imports ``plaidml.keras`` and installs the backend
  *before* ``import keras``; on Python 3.10+ Keras 2.2.4 needs the ``collections.Iterable``
  family restored (``collections.abc``) — the only compatibility shim.
- No ``plaidml-setup``: the backend writes its own settings file in the case's work dir
  and points ``PLAIDML_SETTINGS`` at it (and sets ``PLAIDML_DEVICE_IDS`` /
  ``PLAIDML_EXPERIMENTAL``), so the user's ``~/.plaidml`` is never read or written.
- Devices are PlaidML's own ids (``llvm_cpu.0``, ``opencl_*``, ``metal_*``, ``cuda_*``),
  each a device of the matrix. Devices PlaidML lists only in experimental mode run only
  when asked for: named in ``--devices`` or with ``--plaidml-experimental``.
- The model is the Keras form of the network (its ``keras`` form, ``plugins/models/*.py``) with the same
  weights as torch, called through ``keras.backend.function`` — the graph ``predict()``
  runs, without its Python batching loop. The first call compiles the tile program:
  timed as ``compile_s``, outside the timed rounds.
- Precisions: fp32 and fp16 (Keras ``floatx``), weights and inputs in that type.
- Proof of precision: PlaidML 0.7 has no API to inspect the tile program it compiles, so
  the evidence is what Keras 2.2.4 holds: each convolution's and dense layer's kernel
  dtype (``keras.backend.dtype``), ``floatx`` at build time, and the dtype of one output of
  the compiled function (:func:`keras_evidence`).
"""

from __future__ import annotations

import collections
import collections.abc
import dataclasses
import functools
import json
import os
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from infermatrix.api.announce import announce_backend, installed_version
from infermatrix.api.types import (
    FORM_KERAS,
    Arrays,
    BackendInfo,
    ModelSpec,
    PrepareContext,
    PrepareTimes,
    RunOptions,
    Target,
)
from infermatrix.gate.precision import PrecisionEvidence

NAME = "plaidml"
PRECISIONS = ("fp32", "fp16")
FLOATX = {"fp32": "float32", "fp16": "float16"}
#: What the matrix lists when PlaidML is not installed (its CPU device exists everywhere).
DEFAULT_DEVICES = ("llvm_cpu.0",)


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.getgroup("infermatrix").addoption(
        "--plaidml-experimental", action="store_true", default=False,
        help="plaidml: also run the devices PlaidML lists only in experimental mode")


@functools.lru_cache(maxsize=1)
def plaidml_devices() -> tuple[list[str], list[str]]:
    """PlaidML's device ids: (those of its default configuration, those only in experimental mode)."""
    import plaidml
    import plaidml.settings

    context = plaidml.Context()
    found: dict[bool, list[str]] = {}
    for experimental in (False, True):
        plaidml.settings.experimental = experimental
        matched, unmatched = plaidml.devices(context, limit=100, return_all=True)
        found[experimental] = [d.id.decode() for d in [*matched, *unmatched]]
    plaidml.settings.experimental = False
    normal = found[False]
    return normal, [d for d in found[True] if d not in normal]


@pytest.hookimpl
def pytest_infermatrix_backends() -> list[BackendInfo]:
    info = dataclasses.replace(announce_backend(NAME, "plaidml", "plaidml", DEFAULT_DEVICES, PRECISIONS,
                                                extra="plaidml"), forms=(FORM_KERAS,))
    if not info.available:
        return [info]
    try:
        normal, experimental = plaidml_devices()
    except Exception as exc:  # noqa: BLE001 - a broken PlaidML install: its cases skip with the reason
        return [dataclasses.replace(info, available=False, reason=f"plaidml: cannot list devices: {exc}")]
    devices = tuple(dict.fromkeys([*normal, *experimental, *DEFAULT_DEVICES]))
    return [dataclasses.replace(info, devices=devices, version=installed_version("plaidml-keras") or info.version)]


@pytest.hookimpl
def pytest_infermatrix_targets(backend: BackendInfo, options: RunOptions) -> list[Target] | None:
    if backend.name != NAME:
        return None
    normal, experimental = plaidml_devices()
    asked = set(options.devices or ())
    if options.option("plaidml_experimental", False):
        asked |= set(experimental)
    keras_problem = None
    if installed_version("keras") != "2.2.4":
        keras_problem = (f"plaidml: needs keras 2.2.4 (found {installed_version('keras')}); run it in its own "
                         "environment: tox -e plaidml")
    targets = []
    for device in backend.devices:
        if device not in normal and device not in experimental:
            reason: str | None = (f"plaidml: no device {device} here; PlaidML sees "
                                  f"{', '.join(normal + experimental) or 'none'}")
        elif device in experimental and device not in asked:
            reason = (f"plaidml: {device} is an experimental PlaidML device; ask for it with --devices {device} "
                      "or --plaidml-experimental")
        else:
            reason = keras_problem
        for precision in PRECISIONS:
            if reason is None and precision == "fp16" and device.startswith("llvm_cpu"):
                targets.append(Target(device, precision, "plaidml: fp16 convolution, dense and pooling kernels abort "
                                      "the process on llvm_cpu (PlaidML 0.7.0, measured); fp16 runs on its GPU "
                                      "devices"))
            else:
                targets.append(Target(device, precision, reason))
    return targets


def restore_collections_aliases() -> None:
    """Keras 2.2.4 does ``from collections import Iterable``; those aliases left in Python 3.10."""
    for name in ("Iterable", "Mapping", "MutableMapping", "Sequence", "Callable"):
        if not hasattr(collections, name):
            setattr(collections, name, getattr(collections.abc, name))


def configure(device: str, experimental: bool, workdir: Path) -> Path:
    """PlaidML's settings for this process, without ``plaidml-setup`` or ``~/.plaidml``."""
    settings = workdir / "plaidml-settings.json"
    settings.write_text(json.dumps({"PLAIDML_DEVICE_IDS": [device], "PLAIDML_EXPERIMENTAL": experimental}))
    os.environ["PLAIDML_SETTINGS"] = str(settings)
    os.environ["PLAIDML_DEVICE_IDS"] = device
    os.environ["PLAIDML_EXPERIMENTAL"] = "1" if experimental else "0"
    return settings


def import_keras(device: str) -> Any:
    """Keras 2.2.4 on the PlaidML backend, opened on ``device``; refuses another device in this process."""
    current = os.environ.get("INFERMATRIX_PLAIDML_DEVICE")
    if current is not None and current != device:
        raise RuntimeError(f"plaidml: this process already runs on {current}; {device} needs a fresh process")
    os.environ["INFERMATRIX_PLAIDML_DEVICE"] = device
    restore_collections_aliases()
    import plaidml.keras

    plaidml.keras.install_backend()
    import keras

    if "plaidml" not in keras.backend.backend():
        raise RuntimeError(f"plaidml: keras runs on backend {keras.backend.backend()!r}, not PlaidML "
                           "(keras was imported before plaidml.keras.install_backend())")
    return keras


#: Keras layers that compute (convolutions, dense); their kernel's dtype is the compute type.
COMPUTE_LAYERS = ("Conv1D", "Conv2D", "Conv3D", "DepthwiseConv2D", "SeparableConv2D", "Conv2DTranspose", "Dense")
KERAS_PRECISION = {"float32": "fp32", "float16": "fp16", "float64": "fp64"}


def keras_evidence(keras: Any, net: Any, floatx: str, output_dtype: str | None) -> PrecisionEvidence:
    """Each compute layer by its kernel's dtype, as Keras 2.2.4 (on PlaidML) holds it."""
    compute: dict[str, int] = {}
    kernels: dict[str, int] = {}
    for layer in net.layers:
        if type(layer).__name__ in COMPUTE_LAYERS and layer.weights:
            dtype = str(keras.backend.dtype(layer.weights[0]))
            ran = KERAS_PRECISION.get(dtype, dtype)
            compute[ran] = compute.get(ran, 0) + 1
            kind = f"{type(layer).__name__} {dtype}"
            kernels[kind] = kernels.get(kind, 0) + 1
    return PrecisionEvidence(
        compute=compute, unit="keras layers",
        api="keras.backend.dtype of each convolution/dense kernel (Keras 2.2.4 on PlaidML; PlaidML shows no "
            "compiled program), floatx at build time and the compiled function's output dtype",
        facts={"kernels": kernels, "floatx": floatx, "output_dtype": output_dtype})


@dataclasses.dataclass
class PlaidMLSession:
    function: Any
    dtype: str
    config: Mapping[str, Any]
    times: PrepareTimes
    size_bytes: int | None
    keras: Any = None
    net: Any = None
    #: the output dtype of the compiling call, before ``run`` casts it to float32
    output_dtype: str | None = None

    def precision_evidence(self) -> PrecisionEvidence:
        return keras_evidence(self.keras, self.net, self.dtype, self.output_dtype)

    def run(self, inputs: Arrays) -> list[np.ndarray]:
        # astype without a copy when the input already has the type; the result is host memory: the work is done
        (out,) = self.function([inputs["input"].astype(self.dtype, copy=False)])
        return [np.asarray(out, dtype=np.float32)]

    def close(self) -> None:
        self.function = None
        self.net = None


@pytest.hookimpl
def pytest_infermatrix_prepare(
    backend: BackendInfo, model: ModelSpec, target: Target, batch_size: int, context: PrepareContext
) -> PlaidMLSession | None:
    if backend.name != NAME:
        return None
    assert model.build_keras is not None  # the matrix skips models without one (forms=(FORM_KERAS,))
    from infermatrix.forms.keras import build_from_torch_state
    from infermatrix.gate.reference import torch_state

    normal, _ = plaidml_devices()
    settings = configure(target.device, experimental=target.device not in normal, workdir=context.workdir)
    started = time.perf_counter()
    keras = import_keras(target.device)
    state = torch_state(model, context.cache_root)
    times = PrepareTimes(load_s=time.perf_counter() - started)

    started = time.perf_counter()
    floatx = FLOATX[target.precision]
    keras.backend.set_floatx(floatx)
    keras.backend.set_learning_phase(0)  # inference graph: batch norm uses its moving statistics
    try:
        net, tensors = build_from_torch_state(model, keras, state, dtype=floatx)
        function = keras.backend.function(net.inputs, net.outputs)
    finally:
        keras.backend.set_floatx("float32")
    times.convert_s = time.perf_counter() - started
    session = PlaidMLSession(
        function=function, dtype=floatx, times=times, keras=keras, net=net,
        size_bytes=int(sum(np.prod(w.shape) * np.dtype(floatx).itemsize for w in net.get_weights())),
        config={
            "api": "keras.backend.function (the graph predict() runs, without its batching loop)",
            "keras": keras.__version__, "plaidml": installed_version("plaidml"), "device": target.device,
            "experimental_device": target.device not in normal, "floatx": floatx,
            "settings_file": str(settings), "input_layout": "NCHW (transposed to NHWC inside the model)",
            "weights_from": "torch state_dict", "weight_tensors": tensors,
            "threads": "PlaidML's own (not configurable)",
        },
    )
    # The first call compiles the tile program for this shape: timed apart.
    started = time.perf_counter()
    (out,) = function([model.eval_inputs(batch_size)["input"].astype(floatx, copy=False)])
    times.compile_s = time.perf_counter() - started
    session.output_dtype = str(np.asarray(out).dtype)
    return session
