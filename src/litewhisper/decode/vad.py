"""Voice-activity filter (`--vad`): Silero VAD (ONNX, as shipped in the faster-whisper package, run by
onnxruntime) finds the speech; the decoder sees only the speech, concatenated, and segment / word times are
mapped back to the original audio. Optional: `pip install 'litewhisper[vad]'`.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from litewhisper.constants import SAMPLE_RATE
from litewhisper.decode.results import Segment
from litewhisper.errors import LiteWhisperError

__all__ = ["SpeechFilter", "Speech"]


@dataclass(frozen=True)
class Speech:
    """The speech of one clip, concatenated (`samples`), and the map from its times to the original's."""

    samples: np.ndarray
    timestamps_map: Any

    def to_original(self, t: float, is_end: bool = False) -> float:
        return float(self.timestamps_map.get_original_time(t, is_end=is_end))

    def map_segment(self, seg: Segment) -> Segment:
        words = (
            None
            if seg.words is None
            else [replace(w, start=self.to_original(w.start), end=self.to_original(w.end, True)) for w in seg.words]
        )
        return replace(seg, start=self.to_original(seg.start), end=self.to_original(seg.end, True), words=words)


class SpeechFilter:
    """Silero VAD with faster-whisper's defaults (threshold 0.5, 2 s minimum silence, 400 ms padding)."""

    def __init__(self, min_silence_ms: int = 2000, speech_pad_ms: int = 400, threshold: float = 0.5):
        try:
            import onnxruntime  # noqa: F401  (the VAD model runs on it)
            from faster_whisper.vad import SpeechTimestampsMap, VadOptions, get_speech_timestamps
        except ImportError as exc:
            raise LiteWhisperError(
                f"--vad needs the optional extra 'vad' (Silero VAD from faster-whisper, run by onnxruntime): "
                f"pip install 'litewhisper[vad]'  (missing: {exc.name})"
            ) from exc
        self._map, self._find = SpeechTimestampsMap, get_speech_timestamps
        self._options = VadOptions(
            threshold=threshold, min_silence_duration_ms=min_silence_ms, speech_pad_ms=speech_pad_ms
        )

    def filter(self, samples: np.ndarray) -> Speech:
        """The speech in 16 kHz `samples` (empty when there is none)."""
        chunks = self._find(samples, self._options, sampling_rate=SAMPLE_RATE)  # [{"start", "end"}] in samples
        speech = (
            np.concatenate([samples[c["start"] : c["end"]] for c in chunks])
            if chunks
            else np.zeros(0, dtype=np.float32)
        )
        return Speech(speech.astype(np.float32, copy=False), self._map(chunks, SAMPLE_RATE) if chunks else None)
