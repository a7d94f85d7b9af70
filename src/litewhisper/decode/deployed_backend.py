"""The deployed backend: an export directory (models/deployed.py) decoded by faster-whisper's loop, with our
ONNX encoder in front of CTranslate2's decoder. `DecodeOptions` map onto faster-whisper's `transcribe` arguments;
the decoder's shared steps (inputs, VAD, batching, results) stay in decode/transcribe.py.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import numpy as np

from litewhisper.constants import SAMPLE_RATE, WINDOW_SAMPLES
from litewhisper.decode.backend import DecodedClip
from litewhisper.decode.options import DecodeOptions
from litewhisper.decode.results import Segment, Word
from litewhisper.errors import LiteWhisperError
from litewhisper.models.deployed_batch import FirstWindow, prefetch_first_windows

__all__ = ["DeployedBackend", "transcribe_kwargs"]


def _language(options: DecodeOptions) -> str | None:
    if options.language is None:
        return None
    from litewhisper.decode.languages import language_code

    return language_code(options.language)


def transcribe_kwargs(options: DecodeOptions, multilingual: bool) -> dict[str, Any]:
    """faster-whisper `WhisperModel.transcribe` arguments for `options` (VAD is done before, by the decoder)."""
    return dict(
        language=_language(options) if multilingual else "en",
        task=options.task,
        beam_size=options.beam_size,
        temperature=list(options.temperature),
        compression_ratio_threshold=options.compression_ratio_threshold,
        log_prob_threshold=options.logprob_threshold,
        no_speech_threshold=options.no_speech_threshold,
        condition_on_previous_text=options.condition_on_previous_text,
        initial_prompt=options.initial_prompt,
        word_timestamps=options.word_timestamps,
        without_timestamps=not options.timestamps,
        vad_filter=False,
        max_new_tokens=options.max_new_tokens,
    )


def window_audio(samples: np.ndarray) -> np.ndarray:
    """The audio faster-whisper decodes: a clip of at most one window padded with zeros to 30 s, as the PyTorch
    backend's feature extractor pads it (faster-whisper would pad the log-mel with zeros instead: another encoder
    input, max |Δ| ~15 in tiny.en's encoder output); longer clips as they are (both zero-pad the last window's
    log-mel)."""
    samples = np.ascontiguousarray(samples, dtype=np.float32)
    if samples.size >= WINDOW_SAMPLES:
        return samples
    return np.pad(samples, (0, WINDOW_SAMPLES - samples.size))


class DeployedBackend:
    """Backend over a `DeployedWhisper`: each clip is one faster-whisper call, its first window batched with the
    other clips' (`decode_batch`)."""

    def __init__(self, model) -> None:
        self.model = model
        self.name = model.name
        self.is_multilingual = model.is_multilingual

    def check(self, options: DecodeOptions) -> None:
        self.model.check_window(options.window)
        code = _language(options)
        if not self.is_multilingual and (code not in (None, "en") or options.task == "translate"):
            raise LiteWhisperError(
                f"model {self.name} is English-only and cannot "
                f"{'translate' if options.task == 'translate' else f'transcribe {code!r}'}: "
                "use a multilingual model (e.g. base)"
            )

    def decode_batch(
        self, arrays: list[np.ndarray], options: DecodeOptions, on_seconds: Callable[[float], None] | None = None
    ) -> list[DecodedClip]:
        """Each clip decoded by faster-whisper's loop; with several clips, the first windows of those up to 30 s
        are encoded and decoded (greedy pass) in batches first (models/deployed_batch.py), same results."""
        kwargs, out, done = transcribe_kwargs(options, self.is_multilingual) | self.model.suppression, [], 0.0
        audios = [window_audio(samples) for samples in arrays]
        with self.model.pipeline.feature_extractor.remember():
            firsts = self._prefetch(arrays, audios, kwargs, options)
            for samples, audio, first in zip(arrays, audios, firsts, strict=True):
                out.append(self._clip(samples, audio, kwargs, options, first))
                done += samples.size / SAMPLE_RATE
                if on_seconds is not None:
                    on_seconds(done)
        return out

    def _prefetch(
        self, arrays: list[np.ndarray], audios: list[np.ndarray], kwargs: dict[str, Any], options: DecodeOptions
    ) -> list[FirstWindow | None]:
        """The batch's first windows of the clips up to 30 s (None for the others), when there are several."""
        short = [i for i, samples in enumerate(arrays) if samples.size <= WINDOW_SAMPLES]
        firsts: list[FirstWindow | None] = [None] * len(arrays)
        if len(short) < 2:
            return firsts

        def starter(i: int) -> Callable[[FirstWindow], None]:
            return lambda first: next(iter(self._start(arrays[i], audios[i], kwargs, options, first)[0]), None)

        detect = self.is_multilingual and kwargs["language"] is None
        for i, first in zip(
            short, prefetch_first_windows(self.model, [starter(i) for i in short], detect), strict=True
        ):
            firsts[i] = first
        return firsts

    def _start(
        self, samples: np.ndarray, audio: np.ndarray, kwargs: dict[str, Any], options: DecodeOptions, first
    ) -> tuple[Iterator, Any]:
        """faster-whisper's (segments, info) for one clip (`audio`: `samples` as `window_audio` pads them)."""
        budget = options.window_budget if options.tokens_per_second is not None else None
        frames = options.encoder_frames if options.window != "full" else None  # None: 3000 (old exports too)
        seconds = samples.size / SAMPLE_RATE
        return self.model.transcribe(audio, seconds=seconds, budget=budget, frames=frames, first=first, **kwargs)

    def _clip(
        self,
        samples: np.ndarray,
        audio: np.ndarray,
        kwargs: dict[str, Any],
        options: DecodeOptions,
        first: FirstWindow | None,
    ) -> DecodedClip:
        """One clip; text, token count and token-limit hits counted as the PyTorch backend counts them."""
        self.model.reseed(options.seed)  # each clip samples from `seed`, whatever came before it
        duration, eot = samples.size / SAMPLE_RATE, self.model.eot
        segments, info = self._start(samples, audio, kwargs, options, first)
        out, texts, n_tokens, hit_limit = [], [], 0, False
        for s in segments:  # lazily decoded: the window of `s` is the last one decoded
            hit_limit = hit_limit or self.model.window_tokens >= self.model.window_budget
            if s.start >= duration:
                continue
            words = [Word(round(w.start, 3), round(w.end, 3), w.word, w.probability) for w in s.words or []]
            out.append(
                Segment(
                    round(s.start, 3),
                    round(min(s.end, duration), 3),
                    s.text.strip(),
                    words if options.word_timestamps else None,
                )
            )
            texts.append(s.text)
            n_tokens += sum(t < eot for t in s.tokens)  # text tokens, not timestamps
        text = "".join(texts).strip()  # the segments' tokens decoded together, as PyTorch decodes them
        return DecodedClip(
            text=text,
            segments=[s for s in out if s.text],
            language=info.language,
            n_tokens=n_tokens,
            hit_token_limit=hit_limit,
        )
