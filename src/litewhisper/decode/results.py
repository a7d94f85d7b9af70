"""What the decoder returns: dataclass results (faster-whisper style) and the loop / hallucination tests."""

from __future__ import annotations

import zlib
from dataclasses import dataclass

__all__ = ["Word", "Segment", "Transcription", "TranscriptionFailure", "compression_ratio"]


def compression_ratio(text: str) -> float:
    """gzip (zlib) compression ratio of the text's UTF-8 bytes, as openai-whisper computes it; repetition loops
    compress well (> 2.4). 0.0 for empty text."""
    data = text.encode("utf-8")
    return len(data) / len(zlib.compress(data)) if data else 0.0


@dataclass(frozen=True)
class Word:
    """A word with its time span in seconds (from cross-attention alignment) and its probability."""

    start: float
    end: float
    word: str
    probability: float | None = None


@dataclass(frozen=True)
class Segment:
    """A piece of the transcript with its time span in seconds; `words` with --word-timestamps."""

    start: float
    end: float
    text: str
    words: list[Word] | None = None


@dataclass(frozen=True)
class Transcription:
    """The transcript of one clip; `language` is the given or detected code (e.g. "en").

    n_tokens: text tokens decoded; hit_token_limit: some window reached its token limit without an end-of-text
    token (a runaway loop): `max_new_tokens`, or its budget (`DecodeOptions.window_budget`).
    """

    path: str
    text: str
    language: str | None
    segments: list[Segment]
    duration_s: float
    n_tokens: int = 0
    hit_token_limit: bool = False

    @property
    def compression_ratio(self) -> float:
        return compression_ratio(self.text)


@dataclass(frozen=True)
class TranscriptionFailure:
    """An input that could not be transcribed (missing, corrupt, empty...); `error` says why."""

    path: str
    error: str
