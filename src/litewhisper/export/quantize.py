"""Dynamic int8 quantization of exported graphs: QInt8 weights on MatMul only (the Conv front-end stays fp32).

Linears must have been exported as MatMul (not Gemm) to be quantized; `nodes_to_exclude` keeps chosen MatMuls
(e.g. layers that int8 hurts) in fp32, `per_channel` quantizes each output column with its own scale.
"""
from __future__ import annotations

import contextlib
import logging
from pathlib import Path
from typing import Iterator, Sequence

from litewhisper.errors import LiteWhisperError

__all__ = ["QUANTIZATIONS", "quantized_name", "quantize_graph"]

log = logging.getLogger("litewhisper")

QUANTIZATIONS = ("int8", "none")


def quantized_name(path: Path) -> Path:
    """onnx/encoder_model.onnx -> onnx/encoder_model_quantized.onnx (the suffix transformers.js reads)."""
    return path.with_name(f"{path.stem}_quantized.onnx")


@contextlib.contextmanager
def _quiet_root_logger() -> Iterator[None]:
    """onnxruntime's quantizer logs every tensor at INFO on the root logger."""
    root = logging.getLogger()
    level = root.level
    root.setLevel(max(level, logging.WARNING))
    try:
        yield
    finally:
        root.setLevel(level)


def quantize_graph(src: Path, per_channel: bool = False, exclude: Sequence[str] = (),
                   embeddings: bool = False) -> Path:
    """Write the int8 twin of `src` beside it; returns its path. embeddings: also the token embedding (Gather),
    which is most of a decoder's size."""
    try:
        from onnxruntime.quantization import QuantType, quantize_dynamic
    except ImportError as e:
        raise LiteWhisperError('int8 export needs the "onnx" extra: pip install "litewhisper[onnx]"') from e
    dst = quantized_name(src)
    log.info("quantizing %s -> %s (int8 MatMul weights%s)", src.name, dst.name, ", per channel" * per_channel)
    ops = ["MatMul", "Gather"] if embeddings else ["MatMul"]
    with _quiet_root_logger():
        quantize_dynamic(str(src), str(dst), weight_type=QuantType.QInt8, op_types_to_quantize=ops,
                         per_channel=per_channel, nodes_to_exclude=list(exclude))
    return dst
