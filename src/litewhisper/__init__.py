"""litewhisper: compress Whisper's encoder with LiteASR and export lite-whisper checkpoints.

Public API (imported lazily, so `import litewhisper` stays fast):
    load_model, transcribe, calibrate, plan_ranks, compress, save_checkpoint, evaluate, ...
"""
from __future__ import annotations

import importlib
import logging
from typing import Any

__version__ = "0.1.0"
logging.getLogger("litewhisper").addHandler(logging.NullHandler())

# public name -> module that defines it
_EXPORTS = {
    "LiteWhisperError": "errors",
    "load_model": "models",
    "WhisperBundle": "models",
    "load_audio": "audio",
    "transcribe": "transcription",
    "Transcription": "transcription",
    "Segment": "transcription",
    "transcribe_iter": "transcription",
    "TranscriptionFailure": "transcription",
    "calibrate": "calibration",
    "ActivationStats": "calibration",
    "CalibrationConfig": "calibration",
    "plan_ranks": "plan",
    "RankPolicy": "plan",
    "RankPlan": "plan",
    "compress": "compression",
    "CompressionResult": "compression",
    "apply_plan": "factorize",
    "factorize_linear": "factorize",
    "encoder_params": "flops",
    "encoder_flops": "flops",
    "compress_to_size": "allocate",
    "layer_sensitivities": "sensitivity",
    "save_checkpoint": "checkpoint",
    "use_reduced_attention": "attention",
    "ReducedDimSelfAttention": "attention",
    "builtin_calibration_audio": "synth",
    "EvalConfig": "evaluate",
    "evaluate_model": "evaluate",
    "corpus_score": "metrics",
    "BenchConfig": "bench",
    "ReportConfig": "report",
    "run_report": "report",
}


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'litewhisper' has no attribute {name!r}")
    return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)


def __dir__() -> list[str]:
    return sorted(list(globals()) + list(_EXPORTS))
