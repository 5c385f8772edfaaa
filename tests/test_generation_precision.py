"""The generate scenario's proof of precision: each generation backend's reader on a small
graph of the shape its export has, and the check in ``generation.prepare`` (a case whose
tokens pass the token gate still fails when its weights are not in the format it claims)."""

from __future__ import annotations

import dataclasses
import importlib.util
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest

from infermatrix.api.types import PrepareTimes
from infermatrix.case import generation
from infermatrix.case.generation import Generated, GenerationSpec, sweep
from infermatrix.gate.precision import PrecisionEvidence, check_precision
from infermatrix.pytest_plugin.plugin import gate_failure


def needs(*modules: str) -> None:
    missing = [m for m in modules if importlib.util.find_spec(m) is None]
    if missing:
        pytest.skip(f"needs {', '.join(missing)}")


def verdicts(evidence: PrecisionEvidence) -> dict[str, bool]:
    return {p: check_precision(p, evidence).passed for p in ("fp32", "int8-weight-only", "int4-weight-only")}


# ---- OpenVINO GenAI: the exported IR's weight MatMuls ----------------------------------------------


def ov_ir(layers: str, lm_head: str = "", embedding: str = "f32") -> Any:
    """A model shaped like optimum-cli's export: an embedding Gather, linear layers as
    MatMul(x, decompress(W), transpose_b) with W stored as ``layers`` (u8 / u4 / f32), an LM head."""
    import openvino as ov
    import openvino.opset13 as ops

    def weight(kind: str, rows: int, cols: int) -> Any:
        if kind == "f32":
            return ops.constant(np.ones((rows, cols), np.float32))
        stored = ops.constant(np.ones((rows, cols), np.uint8), dtype=ov.Type.u8 if kind == "u8" else ov.Type.u4)
        scaled = ops.multiply(ops.subtract(ops.convert(stored, "f16"), ops.constant(np.ones((rows, 1), np.float16))),
                              ops.constant(np.ones((rows, 1), np.float16)))
        return ops.convert(scaled, "f32")

    ids = ops.parameter([1, 4], ov.Type.i64, name="ids")
    hidden: Any = ops.gather(weight(embedding, 32, 8), ids, ops.constant(0))
    for _ in range(3):
        hidden = ops.matmul(hidden, weight(layers, 8, 8), False, True)
    # the rotary embedding as the export has it: MatMul(inv_freq constant, positions)
    positions = ops.convert(ops.unsqueeze(ids, ops.constant(1)), "f32")
    rotary = ops.matmul(ops.constant(np.ones((4, 1), np.float32)), positions, False, False)
    logits = ops.matmul(hidden, weight(lm_head or layers, 32, 8), False, True)
    return ov.Model([logits, rotary], [ids], "tiny")


def test_openvino_genai_evidence_counts_weight_matmuls_by_stored_type() -> None:
    needs("openvino")
    from plugins.backends.openvino import ir_weight_evidence

    fp32 = ir_weight_evidence(ov_ir("f32").get_ordered_ops())
    assert dict(fp32.compute) == {"fp32": 4}  # 3 layers + LM head; the rotary product has no weight
    assert fp32.facts["embedding_gather_element_types"] == {"f32": 1}
    assert verdicts(fp32) == {"fp32": True, "int8-weight-only": False, "int4-weight-only": False}

    int8 = ir_weight_evidence(ov_ir("u8", embedding="u8").get_ordered_ops())
    assert dict(int8.compute) == {"int8-weight-only": 4} and int8.facts["matmul_weight_element_types"] == {"u8": 4}
    assert verdicts(int8) == {"fp32": False, "int8-weight-only": True, "int4-weight-only": False}

    # optimum's int4: u4 layers, the LM head (and the embedding) kept u8 — the int4 case passes
    int4 = ir_weight_evidence(ov_ir("u4", lm_head="u8", embedding="u8").get_ordered_ops())
    assert dict(int4.compute) == {"int4-weight-only": 3, "int8-weight-only": 1}
    assert verdicts(int4) == {"fp32": False, "int8-weight-only": False, "int4-weight-only": True}
    assert "read_model" in int4.api and "no compiled model" in int4.api


# ---- ONNX Runtime GenAI: the builder's model.onnx ----------------------------------------------


def ort_graph(bits: int | None) -> Any:
    """A builder-shaped graph: a float embedding Gather, 3 projections as MatMulNBits(bits) (or
    float MatMul when ``bits`` is None)."""
    from onnx import TensorProto, helper, numpy_helper

    nodes = [helper.make_node("Gather", ["embed", "ids"], ["h0"])]
    inits = [numpy_helper.from_array(np.ones((32, 8), np.float32), "embed")]
    for i in range(3):
        if bits is None:
            inits.append(numpy_helper.from_array(np.ones((8, 8), np.float32), f"w{i}"))
            nodes.append(helper.make_node("MatMul", [f"h{i}", f"w{i}"], [f"h{i + 1}"]))
        else:
            inits += [numpy_helper.from_array(np.ones((8, 1, 8 * bits // 8), np.uint8), f"w{i}"),
                      numpy_helper.from_array(np.ones((8,), np.float32), f"s{i}")]
            nodes.append(helper.make_node("MatMulNBits", [f"h{i}", f"w{i}", f"s{i}"], [f"h{i + 1}"],
                                          domain="com.microsoft", K=8, N=8, bits=bits, block_size=32,
                                          accuracy_level=4))
    graph = helper.make_graph(nodes, "tiny", [helper.make_tensor_value_info("ids", TensorProto.INT64, [1, 4])],
                              [helper.make_tensor_value_info("h3", TensorProto.FLOAT, None)], inits)
    return helper.make_model(graph)


def test_onnxruntime_genai_evidence_counts_matmulnbits_by_bits() -> None:
    needs("onnx")
    from plugins.backends.onnxruntime import genai_evidence

    fp32 = genai_evidence(ort_graph(None))
    assert dict(fp32.compute) == {"fp32": 3} and fp32.facts["embedding_gather_types"] == ["fp32"]
    assert verdicts(fp32) == {"fp32": True, "int8-weight-only": False, "int4-weight-only": False}
    int8 = genai_evidence(ort_graph(8))
    assert dict(int8.compute) == {"int8-weight-only": 3}
    assert int8.facts["matmulnbits_attributes"] == {"accuracy_level=4, bits=8, block_size=32": 3}
    assert verdicts(int8) == {"fp32": False, "int8-weight-only": True, "int4-weight-only": False}
    int4 = genai_evidence(ort_graph(4))
    assert verdicts(int4) == {"fp32": False, "int8-weight-only": False, "int4-weight-only": True}
    assert "model.onnx" in int4.api


# ---- torch generate: the Linear modules' weights --------------------------------------------------


@pytest.mark.parametrize("precision", ["fp32", "bf16", "int8-dynamic"])
def test_torch_generation_evidence_reads_the_linear_weights(precision: str) -> None:
    needs("torch", "transformers", *(["torchao"] if precision == "int8-dynamic" else []))
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from plugins.backends.torch import TorchGeneration

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=2)
    net = LlamaForCausalLM(config).eval().to(torch.bfloat16 if precision == "bf16" else torch.float32)
    if precision == "int8-dynamic":
        from torchao.quantization import Int8DynamicActivationInt8WeightConfig, quantize_

        quantize_(net, Int8DynamicActivationInt8WeightConfig())
    session = TorchGeneration(model=net, device="cpu", config={}, times=PrepareTimes(), size_bytes=None)
    evidence = session.precision_evidence()
    assert evidence is not None
    assert dict(evidence.compute) == {precision: 8}  # q, k, v, o, gate, up, down, LM head
    assert evidence.facts["output_dtype"] == ("bfloat16" if precision == "bf16" else "float32")
    for claimed in ("fp32", "bf16", "int8-dynamic"):
        assert check_precision(claimed, evidence).passed == (claimed == precision), claimed


# ---- generation.prepare: the check before timing, and the record ---------------------------------------


@dataclasses.dataclass
class Scripted:
    """A generation session that answers the reference's tokens and shows the given evidence."""

    tokens: dict[str, list[list[int]]]
    evidence: PrecisionEvidence | None
    config: dict[str, Any] = dataclasses.field(default_factory=dict)
    times: PrepareTimes = dataclasses.field(default_factory=PrepareTimes)
    size_bytes: int | None = None
    closed: bool = False

    def generate(self, ids: np.ndarray, new_tokens: int) -> Generated:
        return Generated(tokens=self.tokens[f"{ids.shape[1]}x{new_tokens}"], token_times_s=[0.001] * new_tokens,
                         total_s=0.001 * new_tokens)

    def precision_evidence(self) -> PrecisionEvidence | None:
        return self.evidence

    def close(self) -> None:
        self.closed = True


def prepare_scripted(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, precision: str,
                     session: Any) -> generation.PreparedGeneration:
    spec = GenerationSpec(config={"vocab_size": 64}, prompt_lengths=(4,), new_tokens=(6,))
    want = {f"{p}x{n}": [[(7 * i) % 64 for i in range(n)]] for p, n in sweep(spec)}
    monkeypatch.setattr(generation, "reference_tokens", lambda *args: want)
    session.tokens = want
    case = SimpleNamespace(id=f"tinyllama-openvino-cpu-{precision}-b1", batch_size=1,
                           model=SimpleNamespace(name="tinyllama", generation=spec),
                           target=SimpleNamespace(precision=precision),
                           backend=SimpleNamespace(name="openvino"))
    return generation.prepare(case, lambda: session, tmp_path)


def test_sabotage_an_fp32_export_under_an_int8_weight_only_id_passes_the_tokens_and_fails_the_proof(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """optimum-cli told --weight-format fp32 for the int8-weight-only case: the tokens are
    torch's (the token gate passes, as a silent fp32 always would), the IR shows f32 weights."""
    needs("openvino")
    from plugins.backends.openvino import ir_weight_evidence

    sabotaged = Scripted({}, ir_weight_evidence(ov_ir("f32").get_ordered_ops()))
    prepared = prepare_scripted(monkeypatch, tmp_path, "int8-weight-only", sabotaged)
    assert prepared.accuracy.passed and prepared.precision is not None and not prepared.precision.passed
    failure = gate_failure(prepared)
    assert failure is not None and "tinyllama-openvino-cpu-int8-weight-only-b1: precision check failed" in failure
    assert "no compute op ran in int8-weight-only" in failure and "fp32 x4" in failure
    record = prepared.info()["precision_evidence"]
    assert record["status"] == "contradicted" and record["compute"] == {"fp32": 4} and record["share"] == 0.0

    honest = prepare_scripted(monkeypatch, tmp_path, "int8-weight-only",
                              Scripted({}, ir_weight_evidence(ov_ir("u8").get_ordered_ops())))
    assert gate_failure(honest) is None and honest.info()["precision_evidence"]["status"] == "verified"


def test_a_generation_session_without_evidence_is_unverified(monkeypatch: pytest.MonkeyPatch,
                                                               tmp_path: Path) -> None:
    prepared = prepare_scripted(monkeypatch, tmp_path, "int8-weight-only", Scripted({}, None))
    assert prepared.accuracy.passed and "gave no evidence" in (gate_failure(prepared) or "")
    fp32 = prepare_scripted(monkeypatch, tmp_path, "fp32", Scripted({}, None))
    assert gate_failure(fp32) is None and fp32.info()["precision_evidence"]["status"] == "unverified"
