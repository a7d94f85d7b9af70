"""litewhisper: compress Whisper's encoder with LiteASR and export lite-whisper checkpoints.

Public API (imported lazily, so `import litewhisper` stays fast):
    load_model, transcribe, calibrate, plan_ranks, compress(model, audio, RankPolicy | SizeBudget),
    save_checkpoint, evaluate_model, ... (`__all__` lists them all)
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
    "load_model": "models.load",
    "WhisperBundle": "models.load",
    "load_audio": "audio.load",
    "transcribe": "decode.transcribe",
    "Transcription": "decode.transcribe",
    "Segment": "decode.transcribe",
    "transcribe_iter": "decode.transcribe",
    "TranscriptionFailure": "decode.transcribe",
    "DecodeOptions": "decode.options",
    "calibrate": "compression.calibration",
    "ActivationStats": "compression.calibration",
    "CalibrationConfig": "compression.calibration",
    "plan_ranks": "compression.plan",
    "RankPolicy": "compression.policy",
    "SizeBudget": "compression.policy",
    "RankPlan": "compression.plan",
    "compress": "compression.api",
    "CompressionResult": "compression.api",
    "apply_plan": "compression.factorize",
    "factorize_linear": "compression.factorize",
    "encoder_params": "models.cost",
    "encoder_flops": "models.cost",
    "swap_modules": "swap",
    "quiet": "progress",
    "layer_sensitivities": "compression.sensitivity",
    "save_checkpoint": "models.checkpoint",
    "use_reduced_attention": "attention.reduced",
    "ReducedDimSelfAttention": "attention.reduced",
    "builtin_calibration_audio": "audio.synth",
    "EvalConfig": "evaluation.evaluate",
    "evaluate_model": "evaluation.evaluate",
    "corpus_score": "evaluation.metrics",
    "BenchConfig": "bench.latency",
    "ReportConfig": "report.report",
    "run_report": "report.report",
}

__all__ = list(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'litewhisper' has no attribute {name!r}")
    return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)


def __dir__() -> list[str]:
    return sorted(list(globals()) + list(_EXPORTS))
