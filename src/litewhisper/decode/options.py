"""How to decode: one frozen dataclass shared by transcribe, evaluate, bench and the report.

The defaults are what `litewhisper transcribe` users get, and follow openai-whisper / faster-whisper:
timestamps on, temperature fallback 0.0, 0.2 ... 1.0 driven by the gzip compression ratio (> 2.4) and the
average log-probability (< -1.0) of each window, and Whisper's no-speech rule (no-speech probability > 0.6
*and* average log-probability < -1.0: the window is silence and yields no text). `DecodeOptions.preset(name)`
gives named settings, e.g. "leaderboard" (greedy, no timestamps, no fallback) — the same decoder, other options.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, replace
from typing import Any

from litewhisper.constants import (
    BUDGET_FLOOR_TOKENS,
    DEFAULT_MAX_NEW_TOKENS,
    MAX_TARGET_POSITIONS,
    TOKENS_PER_SECOND,
    WINDOW_FLOOR_S,
    WINDOW_FRAMES,
    WINDOW_MARGIN_S,
    WINDOW_POLICIES,
    WINDOW_S,
    encoder_window_frames,
    window_seconds,
)
from litewhisper.errors import LiteWhisperError

__all__ = ["DecodeOptions", "PRESETS", "TASKS", "DEFAULT_TEMPERATURES"]

TASKS = ("transcribe", "translate")
DEFAULT_TEMPERATURES = (0.0, 0.2, 0.4, 0.6, 0.8, 1.0)  # openai-whisper / faster-whisper


def _named(field: str) -> str:
    """A field as messages name it, for Python and CLI users alike: 'beam_size (--beam-size)'."""
    return f"{field} (--{field.replace('_', '-')})"


@dataclass(frozen=True)
class DecodeOptions:
    """Decoding options; validated here, checked against the model by the backend.

    temperature: the fallback schedule; a window is re-decoded at the next temperature when its gzip
    compression ratio exceeds `compression_ratio_threshold` or its average log-probability is below
    `logprob_threshold` (either threshold None: that test is off; one temperature: no fallback).
    no_speech_threshold: a window whose no-speech probability exceeds it and whose average log-probability is
    below `logprob_threshold` is silence (no text); with it set, a clip whose peak stays below -60 dBFS (digital
    silence, where Whisper still says "you" with a fair log-probability) is not decoded. max_new_tokens: limit per
    30-s window. tokens_per_second: the token budget per window: a window holding d seconds of the clip (not
    the 30-s padding) emits at most `window_budget(d)` = min(max_new_tokens, ceil(tokens_per_second * d) + 16)
    new tokens, in the greedy pass and in every fallback re-decode (None: max_new_tokens only). A window that
    reaches its budget is counted as a runaway loop (`hit_token_limit`). seed: makes the sampled fallback
    reproducible (the same clips and options give the same text); PyTorch seeds each batch, an export (CTranslate2)
    each clip, so there a clip's text does not depend on the clips decoded before it. The two runtimes draw from
    different generators: a window that falls back to sampling may differ between them. window: the encoder
    window policy: "full" encodes 30 s of mel frames per window (padding included), "auto" a window holding d s of
    a clip of at most 30 s as max(d + window_margin, window_floor) s of frames (rounded up to 1.28-s steps, at most
    30 s; `encoder_frames`); audio longer than 30 s keeps full windows (its transcript does not change).
    batch_size: clips decoded together; an export (deployed runtime) batches the first window of clips up to 30 s
    (encoder, language detection, greedy pass) and gives each clip the result it gives alone; 1: clip by clip.
    """

    language: str | None = None
    task: str = "transcribe"
    timestamps: bool = True
    beam_size: int = 1
    temperature: tuple[float, ...] = DEFAULT_TEMPERATURES
    compression_ratio_threshold: float | None = 2.4
    logprob_threshold: float | None = -1.0
    no_speech_threshold: float | None = 0.6
    condition_on_previous_text: bool = False
    max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS
    tokens_per_second: float | None = TOKENS_PER_SECOND
    initial_prompt: str | None = None
    word_timestamps: bool = False
    vad: bool = False
    batch_size: int = 8
    seed: int = 0
    window: str = "full"
    window_floor: float = WINDOW_FLOOR_S
    window_margin: float = WINDOW_MARGIN_S

    def __post_init__(self) -> None:
        temps = self.temperature
        if isinstance(temps, (int, float)):
            temps = (float(temps),)
        object.__setattr__(self, "temperature", tuple(float(t) for t in temps))
        if not self.temperature or any(not math.isfinite(t) or t < 0 for t in self.temperature):
            raise LiteWhisperError(
                f"{_named('temperature')} must be one or more numbers >= 0 (e.g. 0,0.2,0.4), "
                f"got {','.join(f'{t:g}' for t in self.temperature) or 'none'}"
            )
        if self.language is not None:
            from litewhisper.decode.languages import language_code

            language_code(self.language)
        if self.task not in TASKS:
            raise LiteWhisperError(f"task {self.task!r} is not supported: expected one of {', '.join(TASKS)}")
        for name in ("beam_size", "batch_size"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                raise LiteWhisperError(f"{_named(name)} must be a positive integer, got {getattr(self, name)!r}")
        if not 1 <= self.max_new_tokens <= MAX_TARGET_POSITIONS - 4:
            raise LiteWhisperError(
                f"{_named('max_new_tokens')} must be between 1 and {MAX_TARGET_POSITIONS - 4}, "
                f"got {self.max_new_tokens}"
            )
        if self.tokens_per_second is not None and (
            isinstance(self.tokens_per_second, bool)
            or not isinstance(self.tokens_per_second, (int, float))
            or not math.isfinite(self.tokens_per_second)
            or self.tokens_per_second <= 0
        ):
            raise LiteWhisperError(
                f"{_named('tokens_per_second')} must be a number > 0 (tokens per second of audio) or none "
                f"(no budget), got {self.tokens_per_second!r}"
            )
        self._check_window()
        if self.no_speech_threshold is not None and not 0 <= self.no_speech_threshold <= 1:
            raise LiteWhisperError(
                f"{_named('no_speech_threshold')} is a probability in [0, 1], got {self.no_speech_threshold}"
            )
        if self.compression_ratio_threshold is not None and self.compression_ratio_threshold <= 0:
            raise LiteWhisperError(
                f"{_named('compression_ratio_threshold')} must be > 0, got {self.compression_ratio_threshold}"
            )
        if self.initial_prompt is not None and not self.initial_prompt.strip():
            object.__setattr__(self, "initial_prompt", None)

    def _check_window(self) -> None:
        if self.window not in WINDOW_POLICIES:
            raise LiteWhisperError(
                f"{_named('window')} must be one of {', '.join(WINDOW_POLICIES)}, got {self.window!r}"
            )
        for name, low in (("window_floor", 3.0), ("window_margin", 0.0)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not low <= value <= WINDOW_S:
                raise LiteWhisperError(
                    f"{_named(name)} must be a number of seconds in [{low:g}, {WINDOW_S:g}], got {value!r}"
                )

    @property
    def fallback(self) -> bool:
        """Whether windows may be re-decoded at a higher temperature."""
        return len(self.temperature) > 1 and (
            self.compression_ratio_threshold is not None or self.logprob_threshold is not None
        )

    def window_budget(self, seconds: float) -> int:
        """New tokens allowed to a window holding `seconds` of the clip (both runtimes call this)."""
        if self.tokens_per_second is None:
            return self.max_new_tokens
        seconds = min(max(seconds, 0.0), WINDOW_S)
        return min(self.max_new_tokens, math.ceil(round(self.tokens_per_second * seconds, 6)) + BUDGET_FLOOR_TOKENS)

    def encoder_frames(self, clip_seconds: float, seek_frames: int = 0) -> int:
        """Mel frames the encoder reads for the window starting at frame `seek_frames` of a clip of `clip_seconds`
        (both runtimes call this). Audio longer than one window keeps Whisper's 30-s windows, its last one too, so
        long-form transcripts are the same with "auto" and "full"."""
        if self.window == "full" or clip_seconds > WINDOW_S:
            return WINDOW_FRAMES
        return encoder_window_frames(window_seconds(clip_seconds, seek_frames), self.window_floor, self.window_margin)

    def replace(self, **changes: Any) -> DecodeOptions:
        """A copy with some fields changed (validated again)."""
        return replace(self, **changes)

    def describe(self) -> str:
        """One line for reports, e.g. 'greedy, timestamps, temperature fallback 0-1 (gzip > 2.4, logprob < -1)'."""
        parts = [
            f"beam {self.beam_size}" if self.beam_size > 1 else "greedy",
            "timestamps" if self.timestamps else "no timestamps",
        ]
        if self.fallback:
            parts.append(
                f"temperature fallback {self.temperature[0]:g}-{self.temperature[-1]:g} (gzip > "
                f"{self.compression_ratio_threshold}, logprob < {self.logprob_threshold})"
            )
        if self.no_speech_threshold is not None:
            parts.append(f"no-speech > {self.no_speech_threshold}")
        parts.append(f"at most {self.max_new_tokens} new tokens per window")
        if self.tokens_per_second is not None:
            parts.append(f"budget {self.tokens_per_second:g} tokens/s + {BUDGET_FLOOR_TOKENS}")
        if self.window == "auto":
            parts.append(f"encoder window clip + {self.window_margin:g} s (at least {self.window_floor:g} s)")
        parts.append(f"batch {self.batch_size}")
        return ", ".join(parts + [f for f, on in (("VAD", self.vad), ("initial prompt", self.initial_prompt)) if on])

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (written into evaluate's results)."""
        out = asdict(self)
        out["temperature"] = list(self.temperature)
        return out

    @classmethod
    def preset(cls, name: str, **changes: Any) -> DecodeOptions:
        """Named settings: "default" (what transcribe does) or "leaderboard" (greedy, no timestamps, no
        fallback, no no-speech rule: the usual short-form WER benchmark setting)."""
        if name not in PRESETS:
            raise LiteWhisperError(f"unknown decoding preset {name!r}: expected one of {', '.join(PRESETS)}")
        return replace(PRESETS[name], **changes)


PRESETS: dict[str, DecodeOptions] = {
    "default": DecodeOptions(),
    "leaderboard": DecodeOptions(
        timestamps=False,
        temperature=(0.0,),
        compression_ratio_threshold=None,
        logprob_threshold=None,
        no_speech_threshold=None,
    ),
}
