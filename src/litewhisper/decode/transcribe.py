"""The one decoder: audio -> `Transcription`s for transcribe, evaluate, bench and the report.

`decode(model, audio, options)` reads and probes the inputs, optionally drops non-speech with a VAD, plans
batches (clips up to 30 s in input order, grouped by encoder window; then longer clips by length), shows one
progress bar, and hands each batch to a backend (`litewhisper.decode.backend`; PyTorch / Hugging Face `generate`
for a `WhisperBundle`). A bad input never stops the others: `decode` yields a `TranscriptionFailure` for it and
carries on; `transcribe` raises instead.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any

import numpy as np

from litewhisper.constants import SAMPLE_RATE, WINDOW_S
from litewhisper.decode.backend import Backend, DecodedClip, backend_for
from litewhisper.decode.languages import language_code
from litewhisper.decode.options import TASKS, DecodeOptions
from litewhisper.decode.results import Segment, Transcription, TranscriptionFailure, Word
from litewhisper.errors import AudioError
from litewhisper.progress import progress_bar

__all__ = [
    "decode",
    "transcribe",
    "transcribe_iter",
    "DecodeOptions",
    "Transcription",
    "TranscriptionFailure",
    "Segment",
    "Word",
    "language_code",
    "plan_batches",
    "AudioInput",
    "TASKS",
]

log = logging.getLogger("litewhisper")

CHUNK_S = WINDOW_S  # Whisper's window: longer clips need long-form decoding
SILENCE_PEAK = 10 ** (-60 / 20)  # a clip whose peak stays below -60 dBFS is digital silence: no speech
AudioInput = str | os.PathLike | np.ndarray


@dataclass(frozen=True)
class _Clip:
    index: int
    name: str
    source: AudioInput
    duration_s: float | None  # None: unknown until read (standard input)


def _probe(index: int, item: AudioInput) -> _Clip | TranscriptionFailure:
    """Name and duration of an input, read from the file header (no decoding) or the array; '-' is standard
    input (length unknown: streamed)."""
    if isinstance(item, np.ndarray):
        name = f"<array {index}>"
        if item.ndim != 1 or item.size == 0:
            return TranscriptionFailure(
                name,
                f"audio array {index} has shape {item.shape}: expected a "
                "non-empty 1-D float array of 16 kHz mono samples",
            )
        return _Clip(index, name, item, item.size / SAMPLE_RATE)
    from litewhisper.audio.load import STDIN, probe_audio, source_name

    if str(item) == STDIN:
        return _Clip(index, source_name(item), item, None)
    try:
        info = probe_audio(item)
    except AudioError as exc:
        return TranscriptionFailure(str(item), str(exc))
    return _Clip(index, str(item), item, info.duration_s)


def _load(clip: _Clip) -> np.ndarray:
    from litewhisper.audio.load import load_audio

    if not isinstance(clip.source, np.ndarray):
        return load_audio(clip.source)
    samples = np.ascontiguousarray(clip.source, dtype=np.float32)
    if not np.isfinite(samples).all():
        raise AudioError(f"{clip.name} contains NaN or infinite samples")
    return samples


def plan_batches(
    clips: Sequence[_Clip], batch_size: int, frames: Callable[[float], int] | None = None
) -> list[tuple[bool, list[_Clip]]]:
    """(long_form, clips) batches: short clips in input order, then long clips sorted by duration. `frames`
    (`DecodeOptions.encoder_frames`): short clips are grouped by their encoder window first (the clips of a batch
    share one window; input order within a group)."""
    short = [c for c in clips if c.duration_s <= CHUNK_S]
    groups: dict[int, list[_Clip]] = {}
    for clip in short:
        groups.setdefault(frames(clip.duration_s) if frames is not None else 0, []).append(clip)
    long = sorted((c for c in clips if c.duration_s > CHUNK_S), key=lambda c: c.duration_s)
    return [(False, g[i : i + batch_size]) for _, g in sorted(groups.items()) for i in range(0, len(g), batch_size)] + [
        (True, long[i : i + batch_size]) for i in range(0, len(long), batch_size)
    ]


def decode(
    model: Any, audio: AudioInput | Iterable[AudioInput], options: DecodeOptions = DecodeOptions()
) -> Iterator[tuple[int, Transcription | TranscriptionFailure]]:
    """Decode many inputs, yielding `(input index, Transcription | TranscriptionFailure)` as batches finish.

    model: a `WhisperBundle` (PyTorch backend) or any `Backend`. audio: paths (any format `load_audio` reads)
    or 1-D float arrays of 16 kHz mono samples. Unreadable inputs are yielded first as failures, then short
    clips in input order, then long clips by length. Raises LiteWhisperError up front for options the model
    cannot honour (e.g. translate on tiny.en) or a missing optional dependency (--vad).
    """
    backend = backend_for(model)
    backend.check(options)  # raise now, not at the first next()
    vad = None
    if options.vad:
        from litewhisper.decode.vad import SpeechFilter

        vad = SpeechFilter()
    items = [audio] if isinstance(audio, (str, os.PathLike, np.ndarray)) else list(audio)
    return _run(backend, items, options, vad)


def _options(options: DecodeOptions | None, changes: dict[str, Any]) -> DecodeOptions:
    options = options or DecodeOptions()
    return options.replace(**changes) if changes else options


def transcribe_iter(
    model: Any, audio: AudioInput | Iterable[AudioInput], options: DecodeOptions | None = None, **changes: Any
) -> Iterator[tuple[int, Transcription | TranscriptionFailure]]:
    """`decode` with `changes` to the options' fields, e.g. `transcribe_iter(m, x, beam_size=5)`."""
    return decode(model, audio, _options(options, changes))


def _run(
    backend: Backend, items: list[AudioInput], options: DecodeOptions, vad
) -> Iterator[tuple[int, Transcription | TranscriptionFailure]]:
    clips = []
    for index, item in enumerate(items):
        probed = _probe(index, item)
        if isinstance(probed, TranscriptionFailure):
            yield index, probed
        else:
            clips.append(probed)
    streamed = [c for c in clips if _streamed(c)]  # long recordings: window by window, bounded memory
    batched = [c for c in clips if not _streamed(c)]
    known = None if any(c.duration_s is None for c in clips) else round(sum(c.duration_s for c in clips), 1)
    with progress_bar(total=known, unit="audio-s", desc="transcribing") as bar:
        for _, batch in plan_batches(batched, options.batch_size, options.encoder_frames):
            yield from _decode_batch(backend, batch, options, vad, bar)
        for clip in streamed:
            yield clip.index, _decode_streamed(backend, clip, options, vad, bar)


def _streamed(clip: _Clip) -> bool:
    from litewhisper.decode.stream import STREAM_WINDOW_S

    return not isinstance(clip.source, np.ndarray) and (clip.duration_s is None or clip.duration_s > STREAM_WINDOW_S)


def _decode_streamed(
    backend: Backend, clip: _Clip, options: DecodeOptions, vad, bar
) -> Transcription | TranscriptionFailure:
    """Decode one long recording as a stream of windows (`litewhisper.decode.stream`)."""
    from litewhisper.audio.load import stream_audio
    from litewhisper.decode.stream import READ_BLOCK_S, decode_stream

    start = bar.n

    def advance(seconds: float) -> None:
        bar.n = round(start + seconds, 1)
        bar.refresh()

    try:
        done = decode_stream(backend, stream_audio(clip.source, READ_BLOCK_S), options, vad, advance)
    except AudioError as exc:
        return TranscriptionFailure(clip.name, str(exc))
    advance(done.duration_s)
    return _result(clip, done.duration_s, done.decoded, None, options, backend)


def _decode_batch(
    backend: Backend, batch: list[_Clip], options: DecodeOptions, vad, bar
) -> Iterator[tuple[int, Transcription | TranscriptionFailure]]:
    """Load and decode one batch; the progress bar advances by the batch's seconds of audio."""
    start = bar.n

    def advance(seconds: float) -> None:
        bar.n = min(round(start + seconds, 1), bar.total or 0.0)
        bar.refresh()

    loaded = []
    for clip in batch:
        try:
            samples = _load(clip)
        except AudioError as exc:
            yield clip.index, TranscriptionFailure(clip.name, str(exc))
            continue
        speech = vad.filter(samples) if vad is not None else None
        if options.no_speech_threshold is not None and float(np.abs(samples).max()) < SILENCE_PEAK:
            speech = _NO_SPEECH  # Whisper's no-speech rule misses digital silence (it says "you"): skip it
        loaded.append((clip, samples, speech))
    todo = [(clip, samples, speech) for clip, samples, speech in loaded if speech is None or speech.samples.size]
    decoded = iter(
        backend.decode_batch([s.samples if s is not None else a for _, a, s in todo], options, advance) if todo else []
    )
    for clip, samples, speech in loaded:
        out = next(decoded) if speech is None or speech.samples.size else None
        yield clip.index, _result(clip, samples.size / SAMPLE_RATE, out, speech, options, backend)
    advance(sum(c.duration_s for c in batch))


_NO_SPEECH = SimpleNamespace(samples=np.zeros(0, dtype=np.float32))  # like a VAD result with no speech


def _result(
    clip: _Clip, duration_s: float, out: DecodedClip | None, speech, options: DecodeOptions, backend: Backend
) -> Transcription:
    """The Transcription of one clip; times mapped back to the original audio when a VAD cut it."""
    duration = round(duration_s, 3)
    if out is None:  # the VAD found no speech at all
        language = language_code(options.language) if options.language else None
        return Transcription(clip.name, "", language if backend.is_multilingual else "en", [], duration)
    segments = out.segments if speech is None else [speech.map_segment(s) for s in out.segments]
    return Transcription(
        path=clip.name,
        text=out.text,
        language=out.language,
        segments=segments if options.timestamps else [],
        duration_s=duration,
        n_tokens=out.n_tokens,
        hit_token_limit=out.hit_token_limit,
    )


def transcribe(
    model: Any, audio: AudioInput | Iterable[AudioInput], options: DecodeOptions | None = None, **changes: Any
) -> list[Transcription]:
    """Transcribe paths or 16 kHz mono arrays; results in input order.

    `changes` override fields of `options` (default `DecodeOptions()`), e.g. `transcribe(m, x, beam_size=5)`.
    Raises AudioError for the first input that cannot be read (use `decode` to skip bad inputs and keep the
    others), LiteWhisperError for options the model cannot honour.
    """
    results: dict[int, Transcription] = {}
    for index, result in decode(model, audio, _options(options, changes)):
        if isinstance(result, TranscriptionFailure):
            raise AudioError(result.error)
        results[index] = result
    return [results[i] for i in sorted(results)]
