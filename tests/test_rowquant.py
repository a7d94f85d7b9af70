"""Per-row int8 MatMuls (export/rowquant.py): onnxruntime computes exactly the per-row quantized product, and
tokens with outlying activations no longer cost the other tokens their precision (as per-tensor scales do)."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from litewhisper.export.quantize import quantize_graph
from litewhisper.export.rowquant import quantize_rows, quantize_weight

K, M = 32, 24


def _matmul_graph(path, w: np.ndarray, opset: int = 17) -> None:
    """y = x @ w + 1 with x (b, t, K): one MatMul by a constant, as the encoder's linears are traced."""
    nodes = [
        helper.make_node("MatMul", ["x", "w"], ["xw"], name="/encoder/layers.0/fc1/MatMul"),
        helper.make_node("Add", ["xw", "one"], ["y"], name="bias"),
    ]
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["b", "t", K])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["b", "t", M])],
        [numpy_helper.from_array(w, "w"), numpy_helper.from_array(np.array(1, np.float32), "one")],
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)]), str(path))


def _run(path, x: np.ndarray) -> np.ndarray:
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]


def _reference(x: np.ndarray, w: np.ndarray) -> np.ndarray:
    """Per-row symmetric int8 activations, per-column symmetric int8 weights, in numpy."""
    rows = x.reshape(-1, K)
    s = np.maximum(np.abs(rows).max(1, keepdims=True), 1e-6) / 127  # (N, 1)
    q = np.clip(np.round(rows / s), -127, 127)
    wq, ws = quantize_weight(w)
    y = (q @ wq.astype(np.float64)) * s * ws + 1
    return y.reshape(*x.shape[:-1], M)


@pytest.fixture
def data():
    gen = np.random.default_rng(0)
    w = gen.standard_normal((K, M)).astype(np.float32)
    x = gen.standard_normal((2, 50, K)).astype(np.float32)
    x[0, :3] *= 40  # three outlying tokens, as at the end of Whisper's padded window
    x[1, 7] = 0  # a row of zeros must not divide by zero
    return x, w


def test_weights_are_symmetric_int8_per_column():
    w = np.array([[1.0, -0.5], [-2.54, 0.25]], np.float32)
    wq, scale = quantize_weight(w)
    assert wq.dtype == np.int8 and np.allclose(scale, [2.54 / 127, 0.5 / 127])
    assert wq.tolist() == [[50, -127], [-127, 64]]


def test_onnxruntime_computes_the_per_row_product(data, tmp_path):
    x, w = data
    _matmul_graph(tmp_path / "fp32.onnx", w)
    quantize_rows(tmp_path / "fp32.onnx", tmp_path / "row.onnx")
    got = _run(tmp_path / "row.onnx", x)
    assert got.shape == (2, 50, M)
    assert np.abs(got - _reference(x, w)).max() < 1e-3  # float32 rounding only
    assert np.allclose(got[1, 7], 1.0)  # zeros @ w + 1
    graph = onnx.load(str(tmp_path / "row.onnx")).graph
    assert [n.op_type for n in graph.node].count("MatMulIntegerToFloat") == 1
    assert "w" not in {i.name for i in graph.initializer}  # the fp32 weight is gone, its int8 twin is in


def test_outlying_tokens_cost_per_tensor_scales_precision_but_not_per_row(data, tmp_path):
    x, w = data
    _matmul_graph(tmp_path / "fp32.onnx", w)
    exact = _run(tmp_path / "fp32.onnx", x)
    row = _run(quantize_rows(tmp_path / "fp32.onnx", tmp_path / "row.onnx"), x)
    tensor = _run(quantize_graph(tmp_path / "fp32.onnx", per_channel=True), x)

    def error(y):  # relative RMS error on the ordinary tokens
        return np.linalg.norm((y - exact)[:, 3:]) / np.linalg.norm(exact[:, 3:])

    assert error(row) < 0.02 and error(tensor) > 5 * error(row), (error(row), error(tensor))


def test_excluded_matmuls_stay_fp32_and_newer_opsets_are_refused(data, tmp_path):
    x, w = data
    _matmul_graph(tmp_path / "fp32.onnx", w)
    kept = quantize_rows(tmp_path / "fp32.onnx", tmp_path / "kept.onnx", exclude=["/encoder/layers.0/fc1/MatMul"])
    assert np.array_equal(_run(kept, x), _run(tmp_path / "fp32.onnx", x))
    _matmul_graph(tmp_path / "opset18.onnx", w, opset=18)
    with pytest.raises(ValueError, match="opset 18"):
        quantize_rows(tmp_path / "opset18.onnx", tmp_path / "never.onnx")
    assert not (tmp_path / "never.onnx").exists()
