"""Dynamic int8 quantization of exported graphs: QInt8 weights on MatMul only (the Conv front-end stays fp32).

Linears must have been exported as MatMul (not Gemm) to be quantized; `nodes_to_exclude` keeps chosen MatMuls
(e.g. layers that int8 hurts) in fp32, `per_channel` quantizes each output column with its own scale.
`Int8Options` holds (and validates) the int8 export's choices: rotation, per-channel scales, fp32 MatMuls.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from litewhisper.errors import LiteWhisperError
from litewhisper.progress import foreign_noise_silenced

__all__ = [
    "QUANTIZATIONS",
    "ACTIVATIONS",
    "KEEP_FP32_AUTO",
    "KEEP_FP32_VALUES",
    "DEFAULT_TIMING_THREADS",
    "check_keep_fp32",
    "Int8Options",
    "quantized_name",
    "quantize_graph",
    "matmul_names",
]

log = logging.getLogger("litewhisper")

QUANTIZATIONS = ("int8", "none")
# int8 activation scales of the encoder's MatMuls: one per row (token; export/rowquant.py, as CTranslate2 does) or
# one per tensor (onnxruntime's dynamic quantization)
ACTIVATIONS = ("row", "tensor")
# ONNX node names of encoder layer 0 (/encoder/layers.0/fc1/MatMul, /encoder/layers.0/self_attn/MatMul_1, ...)
KEEP_FP32_AUTO = r"/layers\.0/"
# intra-op threads the int8 export times factorised linears with (the deployed runtime's --threads is not known
# at export time; the README's timings are at 2)
DEFAULT_TIMING_THREADS = 2
# what keep_fp32 accepts, as its errors and the CLI's --help say it
KEEP_FP32_VALUES = (
    f"'auto' (the default: encoder layer 0, {KEEP_FP32_AUTO}), 'none' (every MatMul int8) or a regular "
    "expression searched in the encoder graph's MatMul node names (e.g. /encoder/layers.0/fc1/MatMul)"
)


def check_keep_fp32(keep: str | None, name: str = "keep_fp32") -> None:
    """Raise LiteWhisperError unless `keep` is None or one of KEEP_FP32_VALUES (`name`: how the caller spells it)."""
    if keep is not None and (not isinstance(keep, str) or not keep.strip()):
        raise LiteWhisperError(f"{name} must be {KEEP_FP32_VALUES}; got {keep!r}")
    if keep is not None and keep.lower() not in ("auto", "none"):
        try:
            re.compile(keep)
        except re.error as e:
            raise LiteWhisperError(
                f"{name} {keep!r} is not a valid regular expression ({e}); expected {KEEP_FP32_VALUES}"
            ) from e


@dataclass(frozen=True)
class Int8Options:
    """rotate: rotate low-rank factors (export/rotate.py); per_channel: None = automatic, on (it lowered the
    int8 encoder's error and WER of both the original and the compressed base); keep_fp32: "auto" (encoder
    layer 0), "none"/None, or a regex on the encoder graph's node names; activations: the encoder's activation
    scales, "row" (per token, export/rowquant.py; weights then always per channel) or "tensor";
    merge_slow_factors: merge each factorised linear whose int8 pair is not faster than its dense int8 form
    (export/densify.py; timed with timing_threads intra-op threads), None = automatic (on with per-row scales,
    the form the timings measure)."""

    rotate: bool = True
    per_channel: bool | None = None
    keep_fp32: str | None = "auto"
    activations: str = "row"
    merge_slow_factors: bool | None = None
    timing_threads: int = DEFAULT_TIMING_THREADS

    def __post_init__(self) -> None:
        if self.activations not in ACTIVATIONS:
            raise LiteWhisperError(f"activations must be one of {', '.join(ACTIVATIONS)}, got {self.activations!r}")
        if self.activations == "row" and self.per_channel is False:
            raise LiteWhisperError(
                "per-row activation scales (activations='row', the default) always use per-channel weight scales; "
                "per_channel=False needs activations='tensor' (CLI: --activations tensor --no-per-channel)"
            )
        if not isinstance(self.rotate, bool):
            raise LiteWhisperError(f"rotate must be True or False, got {self.rotate!r}")
        if self.per_channel is not None and not isinstance(self.per_channel, bool):
            raise LiteWhisperError(f"per_channel must be True, False or None (automatic), got {self.per_channel!r}")
        check_keep_fp32(self.keep_fp32)
        if self.merge_slow_factors is not None and not isinstance(self.merge_slow_factors, bool):
            raise LiteWhisperError(
                f"merge_slow_factors must be True, False or None (automatic), got {self.merge_slow_factors!r}"
            )
        if self.merge_slow_factors and self.activations != "row":
            raise LiteWhisperError(
                "merge_slow_factors times the per-row int8 form (activations='row'); with activations='tensor' "
                "leave it off (CLI: --no-merge-slow-factors)"
            )
        if isinstance(self.timing_threads, bool) or not isinstance(self.timing_threads, int) or self.timing_threads < 1:
            raise LiteWhisperError(
                f"timing_threads must be a positive integer (CLI: --timing-threads N), got {self.timing_threads!r}"
            )

    @property
    def pattern(self) -> str | None:
        """The regex of the MatMuls kept in fp32, or None."""
        keep = self.keep_fp32
        if keep is None or keep.lower() == "none":
            return None
        return KEEP_FP32_AUTO if keep.lower() == "auto" else keep

    def resolved(self) -> Int8Options:
        """per_channel decided (automatic: on), keep_fp32 as its regex (or None)."""
        per_channel = True if self.per_channel is None else self.per_channel
        merge = self.activations == "row" if self.merge_slow_factors is None else self.merge_slow_factors
        return dataclasses.replace(self, per_channel=per_channel, keep_fp32=self.pattern, merge_slow_factors=merge)

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


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


def quantize_graph(
    src: Path, per_channel: bool = False, exclude: Sequence[str] = (), embeddings: bool = False, dst: Path | None = None
) -> Path:
    """Write the int8 twin of `src` to `dst` (default: beside it, `quantized_name`); returns its path.
    embeddings: also the token embedding (Gather), which is most of a decoder's size."""
    try:
        from onnxruntime.quantization import QuantType, quantize_dynamic
    except ImportError as e:
        raise LiteWhisperError('int8 export needs the "onnx" extra: pip install "litewhisper[onnx]"') from e
    dst = quantized_name(src) if dst is None else dst
    log.info("quantizing %s -> %s (int8 MatMul weights%s)", src.name, dst.name, ", per channel" * per_channel)
    ops = ["MatMul", "Gather"] if embeddings else ["MatMul"]
    with _quiet_root_logger(), foreign_noise_silenced():  # no advice to pre-process (for static quantization)
        quantize_dynamic(
            str(src),
            str(dst),
            weight_type=QuantType.QInt8,
            op_types_to_quantize=ops,
            per_channel=per_channel,
            nodes_to_exclude=list(exclude),
        )
    return dst


def matmul_names(path: Path, pattern: str | None) -> list[str]:
    """Names of the MatMul nodes of the graph at `path` that `pattern` matches (re.search); [] for None."""
    if pattern is None:
        return []
    import onnx

    graph = onnx.load(str(path), load_external_data=False).graph
    regex = re.compile(pattern)
    return [n.name for n in graph.node if n.op_type == "MatMul" and regex.search(n.name)]
