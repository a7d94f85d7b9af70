"""int8 MatMuls with one activation scale per row (per token), as CTranslate2 quantizes: standard ONNX ops only.

onnxruntime's dynamic quantization gives a whole activation tensor one scale, and Whisper's encoder has tokens
whose activations are 10-30× the others' (the last positions of a padded window reach 195 where a typical token
peaks at 10 in base's layer 5 fc2), so every other token keeps a few int8 levels. Here each MatMul x @ W with a
constant W (K, M) becomes

    x2 = x.reshape(-1, K)                                      (N, K)
    lo, hi = min(row, 0), max(row, 0); s = (hi - lo) / 255     (N,)   asymmetric uint8 per row
    z = round(-lo / s); q = QuantizeLinear(x2, s, z, axis=0)   (N, K) uint8
    y = (MatMulInteger(q, Wq) - z ⊗ colsum(Wq)) · s ⊗ w_scale  (N, M) float
    y.reshape(*x.shape[:-1], M)

with Wq int8 per output column (symmetric). MatMulInteger takes only a scalar zero point for its first input,
so the per-row zero point is subtracted afterwards through the column sums of Wq (exact in integers).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np

__all__ = ["quantize_rows", "quantize_weight"]

log = logging.getLogger("litewhisper")

_EPS = 1e-8  # smallest row scale: a row of zeros quantizes to zeros instead of dividing by 0


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
            "levels": self.const("rowq/255", np.array(255, f32)),
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

    colsum = b.const(t("colsum"), wq.astype(np.float32).sum(axis=0, keepdims=True))  # (1, M)

    def mk(op: str, inputs: list[str], outputs: list[str], **attrs):  # a node named after its output
        return helper.make_node(op, inputs, outputs, name=t(op) if outputs == [y] else outputs[0], **attrs)

    return [
        mk("Reshape", [x, b.const(f"rowq/rows{k}", np.array([-1, k], np.int64))], [t("x2")]),  # (N, K)
        mk("ReduceMin", [t("x2")], [t("min")], axes=[1], keepdims=0),  # (N,)
        mk("ReduceMax", [t("x2")], [t("max")], axes=[1], keepdims=0),
        mk("Min", [t("min"), c["zero"]], [t("lo")]),
        mk("Max", [t("max"), c["zero"]], [t("hi")]),
        mk("Sub", [t("hi"), t("lo")], [t("range")]),
        mk("Div", [t("range"), c["levels"]], [t("s0")]),
        mk("Max", [t("s0"), c["eps"]], [t("s")]),  # (N,) row scales
        mk("Neg", [t("lo")], [t("-lo")]),
        mk("Div", [t("-lo"), t("s")], [t("z0")]),
        mk("Round", [t("z0")], [t("zf")]),  # (N,) in [0, 255]
        mk("Cast", [t("zf")], [t("z")], to=TensorProto.UINT8),
        mk("QuantizeLinear", [t("x2"), t("s"), t("z")], [t("q")], axis=0),  # (N, K) uint8
        mk("MatMulInteger", [t("q"), b.const(t("wq"), wq)], [t("acc")]),  # (N, M) int32
        mk("Cast", [t("acc")], [t("accf")], to=TensorProto.FLOAT),
        mk("Unsqueeze", [t("zf"), c["axis1"]], [t("zcol")]),  # (N, 1)
        mk("Mul", [t("zcol"), colsum], [t("offset")]),  # (N, M): z ⊗ colsum(Wq)
        mk("Sub", [t("accf"), t("offset")], [t("centred")]),
        mk("Unsqueeze", [t("s"), c["axis1"]], [t("scol")]),
        mk("Mul", [t("centred"), t("scol")], [t("rows")]),
        mk("Mul", [t("rows"), b.const(t("w_scale"), w_scale)], [t("y2")]),  # (N, M)
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
    onnx.save(model, str(dst))
    log.info("%s -> %s: %d MatMuls int8 with per-row activation scales", src.name, dst.name, count)
    return dst
