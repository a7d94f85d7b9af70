"""Whisper's fixed numbers, defined once."""

from __future__ import annotations

import math

__all__ = [
    "window_seconds",
    "encoder_window_frames",
    "SAMPLE_RATE",
    "WINDOW_S",
    "WINDOW_SAMPLES",
    "WINDOW_FRAMES",
    "ENCODER_POSITIONS",
    "MULTILINGUAL_VOCAB_SIZE",
    "MAX_TARGET_POSITIONS",
    "DEFAULT_MAX_NEW_TOKENS",
    "FRAMES_PER_SECOND",
    "TIMESTAMP_STEP_S",
    "MAX_TIMESTAMP_STEPS",
    "TOKENS_PER_SECOND",
    "BUDGET_FLOOR_TOKENS",
    "WINDOW_POLICIES",
    "WINDOW_FLOOR_S",
    "WINDOW_MARGIN_S",
    "WINDOW_FRAME_STEP",
    "CALIBRATION_WINDOWS",
    "REFIT_RIDGE",
]

SAMPLE_RATE = 16_000  # Whisper's input rate (Hz)
WINDOW_S = 30.0  # one encoder window (seconds)
WINDOW_SAMPLES = int(SAMPLE_RATE * WINDOW_S)  # 480,000 samples
WINDOW_FRAMES = 3000  # log-mel frames per window (hop 160)
ENCODER_POSITIONS = 1500  # encoder positions per window (conv stride 2)
MULTILINGUAL_VOCAB_SIZE = 51865  # openai/whisper: multilingual iff n_vocab >= 51865
MAX_TARGET_POSITIONS = 448  # decoder context (tokens)
DEFAULT_MAX_NEW_TOKENS = 224  # decoding limit per window (openai/whisper: n_ctx // 2)
FRAMES_PER_SECOND = 100  # log-mel frames per second (hop 160 at 16 kHz): a window's seek is counted in these
TIMESTAMP_STEP_S = 0.02  # timestamp tokens <|0.00|> ... <|30.00|> step by 20 ms
MAX_TIMESTAMP_STEPS = 1500  # the last timestamp token, <|30.00|>

# The per-window token budget (DecodeOptions.tokens_per_second): a window holding d seconds of the clip may emit at
# most min(max_new_tokens, ceil(TOKENS_PER_SECOND * d) + BUDGET_FLOOR_TOKENS) new tokens. Measured on the 100
# English `calib` clips (2.1-10 s) with base's tokenizer: reference text tokens + 2 timestamp tokens per clip,
# divided by the clip's duration; maximum 6.44 tokens/s (= its 99.9th percentile with 100 clips; median 3.84),
# times a 1.5 margin = 9.7 (the 758 `dev` clips: maximum 7.34). Reproduce:
#   PYTHONPATH=src python benchmarks/token_rate.py --model base --split calib
# The floor covers the timestamps of further segments and very short clips. A full 30-s window gets 307 > 224:
# the budget binds only on windows holding less than ~21 s of audio (short clips, a long clip's last window).
TOKENS_PER_SECOND = 9.7
BUDGET_FLOOR_TOKENS = 16


def window_seconds(duration: float, seek_frames: int) -> float:
    """Seconds of a clip of `duration` s in the window that starts at log-mel frame `seek_frames` (both runtimes
    count a window's start in frames of 10 ms)."""
    return max(0.0, min(WINDOW_S, duration - seek_frames / FRAMES_PER_SECOND))


# The encoder window policy (DecodeOptions.window): "full" encodes every window as 30 s of mel frames (Whisper's
# padding); "auto" encodes a window holding d s of the clip as W = max(d + margin, floor) seconds of frames, rounded
# up to a multiple of WINDOW_FRAME_STEP (at most 3000): the encoder reads frames [:W] and positions [:W/2], and the
# decoder cross-attends those W/2 positions. Windows of long audio that hold 30 s of speech keep 30 s.
WINDOW_POLICIES = ("auto", "full")
WINDOW_FLOOR_S = 10.0  # shortest encoder window (seconds)
WINDOW_MARGIN_S = 2.0  # padding kept after the clip's end (seconds)
WINDOW_FRAME_STEP = 128  # windows are sized in steps of 128 mel frames = 64 encoder positions (1.28 s)


def encoder_window_frames(seconds: float, floor: float = WINDOW_FLOOR_S, margin: float = WINDOW_MARGIN_S) -> int:
    """Mel frames the "auto" policy encodes for a window holding `seconds` of audio: max(seconds + margin, floor)
    seconds, rounded up to a multiple of WINDOW_FRAME_STEP, at most WINDOW_FRAMES."""
    wanted = max(min(max(seconds, 0.0), WINDOW_S) + margin, floor)
    steps = math.ceil(round(wanted * FRAMES_PER_SECOND, 6) / WINDOW_FRAME_STEP)
    return min(WINDOW_FRAMES, steps * WINDOW_FRAME_STEP)


# How calibration builds encoder windows: one clip per 30-s window, clips packed end to end, or one clip per window
# encoded at the length the "auto" policy gives it (compression/calibration.py).
CALIBRATION_WINDOWS = ("clip", "pack", "short")

# `compress --refit`: ridge strength of the closed-form refit (compression/refit.py), as a fraction of the mean
# input variance; it pulls each refitted map toward the factorization's own. Chosen with the proxy on `calib`.
REFIT_RIDGE = 0.1
