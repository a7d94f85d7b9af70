"""int8 MatMuls with one activation scale per row (per token), as CTranslate2 quantizes.

onnxruntime's dynamic quantization gives a whole activation tensor one scale, and Whisper's encoder has tokens
whose activations are 10-30× the others' (the last positions of a padded window reach 195 where a typical token
peaks at 10 in base's layer 5 fc2), so every other token keeps a few int8 levels. Here each MatMul x @ W with a
constant W (K, M) becomes

    x2 = x.reshape(-1, K)                                       (N, K)
    s = max(|row|) / 127                                        (N,)   symmetric, one scale per row
    q = QuantizeLinear(x2, s, 128, axis=0)                      (N, K) uint8, zero point 128
    y = MatMulIntegerToFloat(q, Wq, 1, w_scale, 128) · s        (N, M) float
    y.reshape(*x.shape[:-1], M)

with Wq int8 per output column (symmetric). MatMulIntegerToFloat (onnxruntime's contrib op, the one its dynamic
quantization fuses into) applies the zero point and the column scales inside the GEMM; only the row scale is a
separate multiply. Asymmetric rows were 10-20 % more accurate (base: relative error 0.017 vs 0.021 with layer 0
in fp32) but 10 % slower (MatMulInteger takes one zero point per tensor, so the per-row offsets cost two more
passes over the output).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np

__all__ = ["quantize_rows", "quantize_weight"]

log = logging.getLogger("litewhisper")

_EPS = 1e-6  # smallest row max: a row of zeros quantizes to zeros instead of dividing by 0


def quantize_weight(w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(K, M) float -> (int8 (K, M), scale (M,)): symmetric, one scale per output column."""
    scale = np.maximum(np.abs(w).max(axis=0), 1e-12) / 127  # (M,)
    return np.clip(np.round(w / scale), -127, 127).astype(np.int8), scale.astype(np.float32)


class _Builder:
    """Adds constants and nodes to a graph; names derive from the MatMul they replace."""

    def __init__(self, graph) -> None:
        self.graph, self.consts = graph, set()

    def const(self, name: str, value: np.ndarray) -> str:
        from onnx import numpy_helper

        if name not in self.consts:
            self.consts.add(name)
            self.graph.initializer.append(numpy_helper.from_array(np.asarray(value), name))
        return name

    def shared(self) -> dict[str, str]:
        """Scalars and axes every replaced MatMul uses."""
        f32 = np.float32
        return {
            "zero": self.const("rowq/zero", np.array(0, f32)),
            "one": self.const("rowq/one", np.array(1, f32)),
            "levels": self.const("rowq/127", np.array(127, f32)),
            "mid": self.const("rowq/128", np.array(128, f32)),
            "mid_u8": self.const("rowq/128u8", np.array(128, np.uint8)),
            "eps": self.const("rowq/eps", np.array(_EPS, f32)),
            "axis1": self.const("rowq/axis1", np.array([1], np.int64)),
        }


def _row_matmul(b: _Builder, node, w: np.ndarray) -> list:
    """The nodes that replace MatMul `node` (x @ w) by its per-row int8 form (see the module doc)."""
    from onnx import TensorProto, helper

    (k, m), (x, y), c = w.shape, (node.input[0], node.output[0]), b.shared()
    wq, w_scale = quantize_weight(w)

    def t(s: str) -> str:
        return f"{node.name}/rowq/{s}"

    def mk(op: str, inputs: list[str], outputs: list[str], **attrs):  # a node named after its output
        return helper.make_node(op, inputs, outputs, name=t(op) if outputs == [y] else outputs[0], **attrs)

    return [
        mk("Reshape", [x, b.const(f"rowq/rows{k}", np.array([-1, k], np.int64))], [t("x2")]),  # (N, K)
        mk("ReduceMin", [t("x2")], [t("min")], axes=[1], keepdims=0),  # (N,)
        mk("ReduceMax", [t("x2")], [t("max")], axes=[1], keepdims=0),
        mk("Neg", [t("min")], [t("-min")]),
        mk("Max", [t("max"), t("-min"), c["eps"]], [t("absmax")]),
        mk("Div", [t("absmax"), c["levels"]], [t("s")]),  # (N,) row scales
        mk("Mul", [t("s"), c["zero"]], [t("zeros")]),
        mk("Add", [t("zeros"), c["mid"]], [t("z0")]),
        mk("Cast", [t("z0")], [t("z")], to=TensorProto.UINT8),  # (N,) 128s: QuantizeLinear wants one per row
        mk("QuantizeLinear", [t("x2"), t("s"), t("z")], [t("q")], axis=0),  # (N, K) uint8
        mk(
            "MatMulIntegerToFloat",
            [t("q"), b.const(t("wq"), wq), c["one"], b.const(t("w_scale"), w_scale), c["mid_u8"]],
            [t("qw")],
            domain="com.microsoft",
        ),  # (N, M): (q - 128) @ Wq * w_scale
        mk("Unsqueeze", [t("s"), c["axis1"]], [t("scol")]),  # (N, 1)
        mk("Mul", [t("qw"), t("scol")], [t("y2")]),
        mk("Shape", [x], [t("lead")], end=-1),
        mk("Concat", [t("lead"), b.const(f"rowq/cols{m}", np.array([m], np.int64))], [t("shape")], axis=0),
        mk("Reshape", [t("y2"), t("shape")], [y]),
    ]


def quantize_rows(src: Path, dst: Path, exclude: Sequence[str] = ()) -> Path:
    """Write `src` with every MatMul by a constant 2-D weight in per-row int8 form to `dst` (MatMuls named in
    `exclude`, and those of two activations such as attention's, stay fp32); returns dst."""
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(src))
    opset = next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))
    if opset >= 18:  # ReduceMin/ReduceMax take their axes as an input from opset 18 on
        raise ValueError(f"{src.name} has opset {opset}; per-row int8 writes opset-17 reductions (export's OPSET)")
    graph, skip = model.graph, set(exclude)
    b = _Builder(graph)
    weights = {i.name: i for i in graph.initializer}
    nodes, count = [], 0
    for node in list(graph.node):
        w = weights.get(node.input[1]) if node.op_type == "MatMul" else None
        if w is None or len(w.dims) != 2 or node.name in skip:
            nodes.append(node)
            continue
        nodes += _row_matmul(b, node, numpy_helper.to_array(w).astype(np.float32))
        count += 1
    del graph.node[:]
    graph.node.extend(nodes)
    used = {name for node in graph.node for name in node.input}
    kept = [i for i in graph.initializer if i.name in used]  # the fp32 weights that were replaced go
    del graph.initializer[:]
    graph.initializer.extend(kept)
    if count and not any(o.domain == "com.microsoft" for o in model.opset_import):
        model.opset_import.append(onnx.helper.make_opsetid("com.microsoft", 1))
    onnx.save(model, str(dst))
    log.info("%s -> %s: %d MatMuls int8 with per-row activation scales", src.name, dst.name, count)
    return dst
