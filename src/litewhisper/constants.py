"""Whisper's fixed numbers, defined once."""

from __future__ import annotations

__all__ = [
    "SAMPLE_RATE",
    "WINDOW_S",
    "WINDOW_SAMPLES",
    "WINDOW_FRAMES",
    "ENCODER_POSITIONS",
    "MULTILINGUAL_VOCAB_SIZE",
    "MAX_TARGET_POSITIONS",
    "DEFAULT_MAX_NEW_TOKENS",
]

SAMPLE_RATE = 16_000  # Whisper's input rate (Hz)
WINDOW_S = 30.0  # one encoder window (seconds)
WINDOW_SAMPLES = int(SAMPLE_RATE * WINDOW_S)  # 480,000 samples
WINDOW_FRAMES = 3000  # log-mel frames per window (hop 160)
ENCODER_POSITIONS = 1500  # encoder positions per window (conv stride 2)
MULTILINGUAL_VOCAB_SIZE = 51865  # openai/whisper: multilingual iff n_vocab >= 51865
MAX_TARGET_POSITIONS = 448  # decoder context (tokens)
DEFAULT_MAX_NEW_TOKENS = 224  # decoding limit per window (openai/whisper: n_ctx // 2)
