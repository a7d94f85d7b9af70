"""`export_model(source, out_dir, quantize=...)`: a model as ONNX graphs + a CTranslate2 decoder, atomically,
verified after writing (encoder output of every written precision against PyTorch)."""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from litewhisper.atomic import atomic_directory, check_output_dir
from litewhisper.errors import LiteWhisperError
from litewhisper.export.ct2 import export_ct2_decoder
from litewhisper.export.layout import write_marker, write_metadata
from litewhisper.export.onnx import export_all
from litewhisper.export.quantize import QUANTIZATIONS, quantize_graph
from litewhisper.models.deployed import (CT2_DIR, ONNX_DIR, encoder_session, is_export,
                                         require_onnx_extra)

__all__ = ["ExportError", "ExportResult", "export_model", "verify_encoder"]

log = logging.getLogger("litewhisper")

FP32_TOLERANCE = 1e-3  # max |Δ| of the fp32 encoder vs PyTorch (seen: ~1e-6)


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
    if not hasattr(model, "get_encoder") or getattr(model.config, "model_type", None) not in ("whisper",
                                                                                                 "lite-whisper"):
        raise ExportError(f"model {bundle.name} ({type(model).__name__}) cannot be exported: expected a Whisper or "
                          "lite-whisper model (a built-in name, a Hugging Face / CTranslate2 / lite-whisper dir)")


def verify_encoder(model, onnx_path: Path, seed: int = 0) -> float:
    """max |Δ| between the ONNX encoder and PyTorch on one fixed 30-s window of log-mel-like features."""
    gen = torch.Generator().manual_seed(seed)
    features = torch.randn(1, model.config.num_mel_bins, 3000, generator=gen).clamp(-1.5, 1.5)  # (1, n_mels, 3000)
    with torch.inference_mode():
        ref = model.get_encoder()(features.to(model.dtype)).last_hidden_state.float().numpy()
    out = encoder_session(onnx_path, threads=1).run(None, {"input_features": features.numpy()})[0]
    return float(np.abs(out - ref).max())


def _size(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def export_model(source, out_dir: str | os.PathLike, quantize: str = "int8", overwrite: bool = False,
                 per_channel: bool = False, onnx_decoder: bool = True) -> ExportResult:
    """Export `source` (anything load_model accepts, or a loaded bundle) into `out_dir`; see export/onnx.py.

    onnx_decoder=False leaves out the ONNX decoders (only the CTranslate2 decoder, which our runtime uses).
    """
    from litewhisper.models.load import load_model

    if quantize not in QUANTIZATIONS:
        raise LiteWhisperError(f"quantize must be one of {', '.join(QUANTIZATIONS)}, got {quantize!r}")
    require_onnx_extra("litewhisper export")
    check_output_dir(out_dir, overwrite)  # fail before minutes of work
    if isinstance(source, (str, os.PathLike)) and is_export(source):
        raise ExportError(f"{source} is already an export; pass the original model (built-in name or checkpoint)")
    bundle = load_model(source) if isinstance(source, (str, os.PathLike)) else source
    _check_exportable(bundle)
    precision = "int8" if quantize == "int8" else "fp32"
    with atomic_directory(out_dir, overwrite=overwrite) as tmp:
        encoder, *decoders = export_all(bundle.model, tmp / ONNX_DIR, decoders=onnx_decoder)
        diffs = {"fp32": verify_encoder(bundle.model, encoder)}
        if diffs["fp32"] > FP32_TOLERANCE:
            raise ExportError(f"exported encoder differs from PyTorch by {diffs['fp32']:.2e} (> {FP32_TOLERANCE}); "
                              "the model uses an operation the ONNX export does not reproduce")
        encoders = {"fp32": f"{ONNX_DIR}/{encoder.name}"}
        if quantize == "int8":
            q_encoder = quantize_graph(encoder, per_channel=per_channel)
            for path in decoders:
                quantize_graph(path, per_channel=per_channel, embeddings=True)
                path.unlink()  # int8 export: the fp32 decoders would only double the size
            diffs["int8"] = verify_encoder(bundle.model, q_encoder)
            encoder.unlink()
            encoders = {"int8": f"{ONNX_DIR}/{q_encoder.name}"}
        export_ct2_decoder(bundle.model, bundle.processor.tokenizer, tmp / CT2_DIR, quantize)  # (re)creates it
        write_metadata(bundle, tmp)
        write_marker(tmp, bundle.name, precision, encoders, {"encoder_max_abs_diff": diffs})
        size = _size(tmp)
    for name, diff in diffs.items():
        log.info("verified %s encoder: max |Δ| vs PyTorch %.2e", name, diff)
    return ExportResult(path=Path(out_dir), precision=precision, max_abs_diff=diffs, size_bytes=size)
