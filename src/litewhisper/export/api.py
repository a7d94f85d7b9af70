"""`export_model(source, out_dir, quantize=...)`: a model as ONNX graphs + a CTranslate2 decoder, atomically,
verified after writing (encoder output of every written precision against PyTorch).

int8: the encoder's MatMuls get one activation scale per token (rowquant.py, as CTranslate2 quantizes) and one
weight scale per output channel; the graphs of a compressed model are traced from a copy whose low-rank factors are
rotated (rotate.py: exact in fp32, equalises the intermediate's channels); encoder layer 0's MatMuls stay fp32
(any model); a factorised linear whose int8 pair is not faster than its dense int8 form on this CPU (timed once,
cached: layer_timing.py) is merged back to dense in the int8 encoder only (densify.py); see `Int8Options`. The ONNX
decoders get onnxruntime's dynamic quantization.
"""

from __future__ import annotations

import copy
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from litewhisper.atomic import atomic_directory, check_output_dir
from litewhisper.constants import WINDOW_FRAMES
from litewhisper.errors import LiteWhisperError
from litewhisper.export import layer_timing
from litewhisper.export.ct2 import export_ct2_decoder
from litewhisper.export.densify import MERGE_MARGIN, decide_merges, merge_factors
from litewhisper.export.layout import write_marker, write_metadata, write_transformersjs_config
from litewhisper.export.merge import merge_export_decoders, run_merged
from litewhisper.export.onnx import export_all, export_encoder
from litewhisper.export.quantize import (
    DEFAULT_TIMING_THREADS,
    QUANTIZATIONS,
    Int8Options,
    matmul_names,
    quantize_graph,
    quantized_name,
)
from litewhisper.export.rotate import count_low_rank, rotated_copy
from litewhisper.export.rowquant import quantize_rows
from litewhisper.models.deployed import CT2_DIR, ONNX_DIR, encoder_session, is_export, require_onnx_extra
from litewhisper.models.encoder_window import encoder_window

__all__ = ["ExportError", "ExportResult", "export_model", "verify_encoder", "verify_decoder"]

log = logging.getLogger("litewhisper")

FP32_TOLERANCE = 1e-3  # max |Δ| of the fp32 encoder vs PyTorch (seen: ~1e-6)
VERIFY_FRAMES = (WINDOW_FRAMES, 1024)  # encoder windows checked against PyTorch (mel frames)
DECODER_TOLERANCE = 1e-2  # max |Δ| of the fp32 merged decoder's logits vs PyTorch (seen: ~1e-5)
DENSIFIED_NAME = "encoder_model_densified.onnx"  # fp32 encoder with slow factors merged (the int8 one's source)


class ExportError(LiteWhisperError):
    """A model that cannot be exported, or an export that does not reproduce PyTorch."""


@dataclass(frozen=True)
class ExportResult:
    path: Path
    precision: str
    max_abs_diff: dict[str, float]  # encoder output vs PyTorch, per written precision
    size_bytes: int


def _check_exportable(bundle) -> None:
    model = bundle.model
    if not hasattr(model, "get_encoder") or getattr(model.config, "model_type", None) not in (
        "whisper",
        "lite-whisper",
    ):
        raise ExportError(
            f"model {bundle.name} ({type(model).__name__}) cannot be exported: expected a Whisper or "
            "lite-whisper model (a built-in name, a Hugging Face / CTranslate2 / lite-whisper dir)"
        )


def verify_encoder(model, onnx_path: Path, seed: int = 0) -> float:
    """max |Δ| between the ONNX encoder and PyTorch on one fixed window of log-mel-like features, read whole
    (3000 frames) and cut to VERIFY_FRAMES[1] (the dynamic time axis that DecodeOptions.window="auto" uses)."""
    gen = torch.Generator().manual_seed(seed)
    features = torch.randn(1, model.config.num_mel_bins, 3000, generator=gen).clamp(-1.5, 1.5)  # (1, n_mels, 3000)
    session, diffs = encoder_session(onnx_path, threads=1), []
    with torch.inference_mode(), encoder_window(model):
        for frames in VERIFY_FRAMES:
            x = features[..., :frames]  # (1, n_mels, W)
            ref = model.get_encoder()(x.to(model.dtype)).last_hidden_state.float().numpy()  # (1, W/2, d)
            out = session.run(None, {"input_features": x.numpy()})[0]
            diffs.append(float(np.abs(out - ref).max()))
    return max(diffs)


def verify_decoder(model, merged: Path, seed: int = 0) -> float:
    """max |Δ| between the logits of the merged ONNX decoder (a 2-token prompt without cache, then 3 cached steps,
    as transformers.js runs it) and PyTorch's decoder on the same tokens and random encoder states, of a 30-s
    window (1500 positions) and of a shortened one (VERIFY_FRAMES[1] / 2 positions)."""
    cfg = model.config
    gen = torch.Generator().manual_seed(seed)
    ids = torch.tensor([[cfg.decoder_start_token_id, *torch.randint(0, 256, (4,), generator=gen).tolist()]])
    session, diffs = encoder_session(merged, threads=1), []
    for frames in VERIFY_FRAMES:
        states = torch.randn(1, frames // 2, cfg.d_model, generator=gen)  # (1, W/2, d)
        with torch.inference_mode():
            ref = model(encoder_outputs=(states,), decoder_input_ids=ids).logits.float().numpy()  # (1, 5, vocab)
        out = run_merged(session, states.numpy(), ids.numpy(), prompt=2)
        diffs.append(float(np.abs(out - ref).max()))
    return max(diffs)


def _size(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def export_model(
    source,
    out_dir: str | os.PathLike,
    quantize: str = "int8",
    overwrite: bool = False,
    per_channel: bool | None = None,
    onnx_decoder: bool = True,
    rotate: bool = True,
    keep_fp32: str | None = "auto",
    activations: str = "row",
    int8_only: bool = False,
    merge_slow_factors: bool | None = None,
    timing_threads: int = DEFAULT_TIMING_THREADS,
    layer_timings: layer_timing.TimingSource | None = None,
) -> ExportResult:
    """Export `source` (anything load_model accepts, or a loaded bundle) into `out_dir`; see export/onnx.py.

    onnx_decoder=False leaves out the ONNX decoder (only the CTranslate2 decoder, which our runtime uses); else
    the decoder is one merged graph (export/merge.py), as transformers.js loads it. An int8 export keeps the fp32
    graphs beside the int8 ones (transformers.js dtype "fp32" and "q8") unless int8_only.
    int8 only: rotate the low-rank factors; per_channel (None: automatic, on); keep_fp32
    ("auto": encoder layer 0, "none"/None, or a regex on the encoder graph's node names) MatMuls left in fp32;
    activations: the encoder's int8 activation scales, "row" (one per token) or "tensor" (one per tensor);
    merge_slow_factors (None: automatic, on with per-row scales): merge factorised linears whose int8 pair is not
    faster than dense, timed on this CPU with timing_threads threads (cached), or by `layer_timings` if given.
    """
    from litewhisper.models.load import load_model

    if quantize not in QUANTIZATIONS:
        raise LiteWhisperError(f"quantize must be one of {', '.join(QUANTIZATIONS)}, got {quantize!r}")
    options = Int8Options(
        rotate=rotate,
        per_channel=per_channel,
        keep_fp32=keep_fp32,
        activations=activations,
        merge_slow_factors=merge_slow_factors,
        timing_threads=timing_threads,
    )
    if not isinstance(int8_only, bool) or (int8_only and quantize != "int8"):
        raise LiteWhisperError(f"int8_only must be True (with quantize='int8') or False, got {int8_only!r}")
    require_onnx_extra("litewhisper export")
    check_output_dir(out_dir, overwrite)  # fail before minutes of work
    if isinstance(source, (str, os.PathLike)) and is_export(source):
        raise ExportError(f"{source} is already an export; pass the original model (built-in name or checkpoint)")
    bundle = load_model(source) if isinstance(source, (str, os.PathLike)) else source
    _check_exportable(bundle)
    model = bundle.model.float().eval()  # the graphs are fp32 (export_all did this in place before, too)
    precision, low_rank = ("int8" if quantize == "int8" else "fp32"), count_low_rank(model) > 0
    options = options.resolved()
    rotate_now = quantize == "int8" and options.rotate and low_rank
    with atomic_directory(out_dir, overwrite=overwrite) as tmp:
        traced, rotated = rotated_copy(model) if rotate_now else (model, 0)  # the user's model is never rotated
        encoder, *decoders = export_all(traced, tmp / ONNX_DIR, decoders=onnx_decoder)
        diffs = {"fp32": _verified(model, encoder)}  # against the unrotated model
        source, factors = encoder, None
        if quantize == "int8" and options.merge_slow_factors:
            source, factors = _densified(model, traced, encoder, options, layer_timings)
        del traced  # a rotated copy: free it before the int8 pass
        encoders, settings = {"fp32": f"{ONNX_DIR}/{encoder.name}"}, None
        if quantize == "int8":
            q_encoder, settings = _quantize_all(encoder, source, decoders, options, rotated)
            settings["factor_timing"] = factors
            diffs["int8"] = verify_encoder(model, q_encoder)
            encoders = {"int8": f"{ONNX_DIR}/{q_encoder.name}", **({} if int8_only else encoders)}
        check = {"encoder_max_abs_diff": diffs, **_merge_decoders(model, tmp / ONNX_DIR)}
        if int8_only:
            _drop_fp32_graphs(tmp / ONNX_DIR)
        export_ct2_decoder(model, bundle.processor.tokenizer, tmp / CT2_DIR, quantize)  # (re)creates it
        write_metadata(bundle, tmp)
        write_transformersjs_config(tmp)
        write_marker(tmp, bundle.name, precision, encoders, check, int8=settings)
        size = _size(tmp)
    for name, diff in diffs.items():
        log.info("verified %s encoder: max |Δ| vs PyTorch %.2e", name, diff)
    return ExportResult(path=Path(out_dir), precision=precision, max_abs_diff=diffs, size_bytes=size)


def _verified(model, onnx_path: Path) -> float:
    """verify_encoder for an fp32 graph: its max |Δ|, or ExportError above FP32_TOLERANCE."""
    diff = verify_encoder(model, onnx_path)
    if diff > FP32_TOLERANCE:
        raise ExportError(
            f"exported encoder {onnx_path.name} differs from PyTorch by {diff:.2e} (> {FP32_TOLERANCE}); "
            "the model uses an operation the ONNX export does not reproduce"
        )
    return diff


def _densified(
    model, traced, encoder: Path, options: Int8Options, timings: layer_timing.TimingSource | None
) -> tuple[Path, dict]:
    """(the fp32 encoder graph to quantize, the timing record for the marker). The graph is `encoder`, or where
    factorised linears are not faster in int8 (densify.py), a trace of `traced` with them merged (beside it,
    verified against PyTorch like the export, removed once quantized). `traced` is changed only if it is a copy."""
    threads = options.timing_threads
    decisions = decide_merges(
        traced, timings or layer_timing.cached_source(threads), options.keep_fp32, margin=MERGE_MARGIN
    )
    runtime = layer_timing.runtime_key(threads) if timings is None else "given timings"
    record = {"runtime": runtime, "margin": MERGE_MARGIN, "layers": [d.as_dict() for d in decisions]}
    names = [d.name for d in decisions if d.merged]
    if not names:
        return encoder, record
    twin = copy.deepcopy(traced) if traced is model else traced  # the user's model is never changed
    merge_factors(twin, names)
    export_encoder(twin, encoder.with_name(DENSIFIED_NAME))
    record["densified_max_abs_diff"] = _verified(model, encoder.with_name(DENSIFIED_NAME))
    return encoder.with_name(DENSIFIED_NAME), record


def _merge_decoders(model, onnx_dir: Path) -> dict[str, float]:
    """Merge each precision's two decoder graphs into one (the separate ones removed) and check the fp32 one
    against PyTorch; returns {"decoder_max_abs_diff": ...} for the marker, {} without ONNX decoders."""
    merged = merge_export_decoders(onnx_dir)
    fp32 = [path for path in merged if path.stem.endswith("merged")]
    if not fp32:
        return {}
    diff = verify_decoder(model, fp32[0])
    log.info("verified the merged fp32 decoder: max |Δ| of logits vs PyTorch %.2e", diff)
    if diff > DECODER_TOLERANCE:
        raise ExportError(
            f"merged ONNX decoder differs from PyTorch by {diff:.2e} (> {DECODER_TOLERANCE}); "
            "the model uses an operation the ONNX export does not reproduce"
        )
    return {"decoder_max_abs_diff": diff}


def _drop_fp32_graphs(onnx_dir: Path) -> None:
    """int8_only: remove the fp32 graphs that the int8 ones were made from."""
    for path in onnx_dir.glob("*.onnx"):
        if not path.stem.endswith("_quantized"):
            path.unlink()


def _quantize_all(
    encoder: Path, source: Path, decoders: list[Path], options: Int8Options, rotated: int
) -> tuple[Path, dict]:
    """int8 twins of the graphs (beside the fp32 ones; the encoder's made from `source`, its fp32 graph or the
    densified one, which is then removed); returns (int8 encoder, settings for the marker)."""
    keep = matmul_names(source, options.keep_fp32)
    if options.keep_fp32 is not None and not keep:
        raise ExportError(
            f"keep_fp32 pattern {options.keep_fp32!r} matches no MatMul node of the encoder graph; "
            "node names look like /encoder/layers.0/fc1/MatMul ('none' keeps every MatMul int8)"
        )
    log.info(
        "int8: %d low-rank linears rotated, per-channel %s, per-%s activation scales, %d encoder MatMuls kept fp32",
        rotated,
        "on" if options.per_channel else "off",
        options.activations,
        len(keep),
    )
    if options.activations == "row":
        q_encoder = quantize_rows(source, quantized_name(encoder), exclude=keep)
    else:
        q_encoder = quantize_graph(
            source, per_channel=bool(options.per_channel), exclude=keep, dst=quantized_name(encoder)
        )
    if source != encoder:
        source.unlink()
    for path in decoders:
        quantize_graph(path, per_channel=bool(options.per_channel), embeddings=True)
    return q_encoder, {**options.as_dict(), "rotated_layers": rotated, "fp32_matmuls": keep}
