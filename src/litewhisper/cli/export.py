"""`litewhisper export MODEL -o DIR [--quantize int8|none]`: ONNX graphs + a CTranslate2 decoder, ready to run."""

from __future__ import annotations

import argparse

from litewhisper.errors import LiteWhisperError
from litewhisper.export.quantize import (
    ACTIVATIONS,
    DEFAULT_TIMING_THREADS,
    KEEP_FP32_VALUES,
    QUANTIZATIONS,
    Int8Options,
    check_keep_fp32,
)


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "export",
        help="export a model for fast CPU inference (ONNX encoder + CTranslate2 decoder)",
        description="Export a Whisper or lite-whisper model into DIR in Hugging Face's ONNX layout "
        "(onnx/encoder_model.onnx and decoder_model_merged.onnx, plus *_quantized.onnx for int8; config, "
        "tokenizer), which transformers.js loads, plus the decoder as a CTranslate2 model. `litewhisper "
        "transcribe DIR` then runs it with onnxruntime + faster-whisper's decoding loop. Needs the onnx extra.",
    )
    p.add_argument("model", metavar="MODEL", help="tiny.en, base, a model directory or a hub id")
    p.add_argument("-o", "--output", metavar="DIR", required=True, help="export directory")
    p.add_argument(
        "--quantize",
        choices=QUANTIZATIONS,
        default="int8",
        help="int8: dynamic int8 MatMul weights (default); none: fp32",
    )
    p.add_argument(
        "--per-channel",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="int8 with one weight scale per output channel (default: on)",
    )
    p.add_argument(
        "--no-rotate",
        action="store_true",
        help="int8: do not rotate the low-rank factors (an orthogonal R between them, exact in fp32, "
        "that spreads the intermediate's variance over its channels)",
    )
    p.add_argument(
        "--keep-fp32",
        metavar="auto|none|PATTERN",
        default="auto",
        help=f"int8: MatMuls of the encoder graph left in fp32: {KEEP_FP32_VALUES}".replace("%", "%%"),
    )
    p.add_argument(
        "--activations",
        choices=ACTIVATIONS,
        default="row",
        help="int8: the encoder's activation scales, one per row (token, as CTranslate2; default) or one per "
        "tensor (onnxruntime's dynamic quantization: faster, less accurate)",
    )
    p.add_argument(
        "--merge-slow-factors",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="int8: merge each factorised linear back to one dense MatMul where its int8 pair is not faster on "
        "this CPU (timed once per shape, cached in ~/.cache/litewhisper/layer_timing.json; default: on with "
        "--activations row)",
    )
    p.add_argument(
        "--timing-threads",
        type=int,
        metavar="N",
        default=DEFAULT_TIMING_THREADS,
        help=f"int8: intra-op threads the factorised linears are timed with (default {DEFAULT_TIMING_THREADS})",
    )
    p.add_argument(
        "--int8-only",
        action="store_true",
        help="int8: leave out the fp32 ONNX graphs (kept by default for transformers.js dtype 'fp32'); smaller DIR",
    )
    p.add_argument(
        "--no-onnx-decoder",
        action="store_true",
        help="leave out the ONNX decoder (our runtime uses the CTranslate2 decoder; transformers.js needs it); "
        "smaller DIR",
    )
    p.add_argument("--overwrite", action="store_true", help="replace an existing DIR")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from litewhisper.atomic import check_output_dir

    # every option is checked before the heavy imports and the model load (--quantize: argparse's choices)
    check_keep_fp32(args.keep_fp32, "--keep-fp32")
    if args.activations == "row" and args.per_channel is False:
        raise LiteWhisperError("--no-per-channel needs --activations tensor (per-row scales use per-channel weights)")
    Int8Options(  # its own checks of the timing options (messages name the flags)
        activations=args.activations, merge_slow_factors=args.merge_slow_factors, timing_threads=args.timing_threads
    )
    if args.int8_only and args.quantize != "int8":
        raise LiteWhisperError("--int8-only needs --quantize int8 (the default)")
    check_output_dir(args.output, args.overwrite, flag="--overwrite")  # the CLI names its flag
    from litewhisper.export.api import export_model

    result = export_model(
        args.model,
        args.output,
        quantize=args.quantize,
        overwrite=args.overwrite,
        per_channel=args.per_channel,
        onnx_decoder=not args.no_onnx_decoder,
        rotate=not args.no_rotate,
        keep_fp32=args.keep_fp32,
        activations=args.activations,
        int8_only=args.int8_only,
        merge_slow_factors=args.merge_slow_factors,
        timing_threads=args.timing_threads,
    )
    diffs = ", ".join(f"{k} max |Δ| {v:.2e}" for k, v in result.max_abs_diff.items())
    print(
        f"{args.model} -> {result.path} ({result.precision}, {result.size_bytes / 2**20:.1f} MiB); "
        f"encoder vs PyTorch: {diffs}"
    )
    return 0
