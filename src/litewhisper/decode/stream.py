"""Long recordings in bounded memory: decode a file as a stream of windows of a few minutes.

`decode_stream(backend, blocks, options)` reads 16 kHz blocks (`litewhisper.audio.load.stream_audio`) into a
window of `window_s` seconds, decodes the window with the backend's long-form decoder (sequential 30-s
windows), keeps the segments that end before the window's last `margin_s` seconds (a segment there may be cut
by the window's end), and starts the next window at the last kept segment's end. Only one window of samples
and features is ever held, so peak memory does not grow with the recording's length; with
`condition_on_previous_text`, the previous window's text is the next window's prompt.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

import numpy as np

from litewhisper.constants import SAMPLE_RATE, WINDOW_S
from litewhisper.decode.backend import Backend, DecodedClip
from litewhisper.decode.options import DecodeOptions
from litewhisper.decode.results import Segment
from litewhisper.errors import LiteWhisperError

__all__ = ["decode_stream", "StreamedClip", "STREAM_WINDOW_S", "STREAM_MARGIN_S", "READ_BLOCK_S"]

log = logging.getLogger("litewhisper")

STREAM_WINDOW_S = 300.0  # audio decoded per window; files longer than this are streamed
STREAM_MARGIN_S = 10.0  # segments ending in a window's last seconds are decoded again in the next window
READ_BLOCK_S = 30.0  # audio read from the file at a time
PROMPT_CHARS = 200  # previous text carried as the next window's prompt (condition_on_previous_text)


@dataclass(frozen=True)
class StreamedClip:
    """The decoded recording (segment times from its start) and its length in seconds."""

    decoded: DecodedClip
    duration_s: float


def _shift(seg: Segment, offset: float) -> Segment:
    words = (
        None
        if seg.words is None
        else [dataclasses.replace(w, start=round(w.start + offset, 3), end=round(w.end + offset, 3)) for w in seg.words]
    )
    return dataclasses.replace(seg, start=round(seg.start + offset, 3), end=round(seg.end + offset, 3), words=words)


def _window_options(backend: Backend, options: DecodeOptions, previous: str) -> DecodeOptions:
    """Timestamps on (segments place the cut), full encoder windows (a long recording's transcript does not depend
    on `window`); the previous text as prompt when conditioning is asked."""
    base = options.replace(timestamps=True, window="full")
    if not (options.condition_on_previous_text and options.initial_prompt is None and previous):
        return base
    prompted = base.replace(initial_prompt=previous[-PROMPT_CHARS:])
    try:
        backend.check(prompted)
    except LiteWhisperError:
        return base  # prompt and output would not fit the decoder's positions: decode without it
    return prompted


def _cut(segments: list[Segment], length_s: float, last: bool, margin_s: float) -> tuple[list[Segment], float]:
    """(segments to keep, seconds from the window's start where the next window begins)."""
    if last:
        return segments, length_s
    limit = length_s - margin_s
    kept = [s for s in segments if s.end <= limit]
    cut_through = any(s.end > limit for s in segments)
    restart = kept[-1].end if kept and cut_through else limit  # nothing spoken across the limit: skip to it
    return kept, max(restart, min(WINDOW_S, limit))  # always move on by at least one Whisper window


def _windows(blocks: Iterable[np.ndarray], window: int) -> Iterator[tuple[np.ndarray, bool]]:
    """Windows of `window` samples from the blocks (the last one may be shorter; True when it is the last);
    the caller sends back how many samples of the window to drop before the next one starts."""
    it = iter(blocks)
    buffer = np.zeros(0, dtype=np.float32)
    exhausted = False
    while True:
        parts = [buffer]
        while sum(p.size for p in parts) < window and not exhausted:
            block = next(it, None)
            exhausted = block is None
            parts += [] if block is None else [block]
        buffer = np.concatenate(parts)  # (samples,) at most one window plus one block
        drop = yield buffer[:window], exhausted and buffer.size <= window
        buffer = buffer[drop:].copy()  # the old window is freed


def _progress(
    on_seconds: Callable[[float], None] | None, offset: float, scale: float
) -> Callable[[float], None] | None:
    """The backend's seconds-done callback, as seconds of the whole recording."""
    return None if on_seconds is None else (lambda s: on_seconds(offset + s * scale))


def decode_stream(
    backend: Backend,
    blocks: Iterable[np.ndarray],
    options: DecodeOptions,
    vad=None,
    on_seconds: Callable[[float], None] | None = None,
    window_s: float = STREAM_WINDOW_S,
    margin_s: float = STREAM_MARGIN_S,
) -> StreamedClip:
    """Decode a recording given as 16 kHz blocks, window by window (see the module docstring).

    vad: a `SpeechFilter` applied to each window. on_seconds(s): seconds of the recording done so far.
    """
    if not 0 <= margin_s < window_s - WINDOW_S:
        raise LiteWhisperError(
            f"margin_s must be in [0, window_s - {WINDOW_S:g}), got {margin_s} for window_s {window_s}"
        )
    offset, segments, outs = 0.0, [], []
    windows = _windows(blocks, round(window_s * SAMPLE_RATE))
    samples, last = next(windows)
    while True:
        length = samples.size / SAMPLE_RATE
        speech = vad.filter(samples) if vad is not None else None
        found: list[Segment] = []
        if speech is None or speech.samples.size:
            heard = speech.samples if speech is not None else samples
            previous = " ".join(s.text for s in segments[-20:])
            out = backend.decode_batch(
                [heard],
                _window_options(backend, options, previous),
                _progress(on_seconds, offset, samples.size / heard.size),
            )[0]
            found = out.segments if speech is None else [speech.map_segment(s) for s in out.segments]
            outs.append(out)
        kept, restart = _cut(found, length, last, margin_s)
        segments += [_shift(s, offset) for s in kept]
        if last:
            break
        drop = round(restart * SAMPLE_RATE)
        offset += drop / SAMPLE_RATE
        if on_seconds is not None:
            on_seconds(offset)
        samples, last = windows.send(drop)
    decoded = DecodedClip(
        text=" ".join(s.text for s in segments),
        segments=segments,
        language=next((o.language for o in outs if o.language), None),
        n_tokens=sum(o.n_tokens for o in outs),
        hit_token_limit=any(o.hit_token_limit for o in outs),
    )
    return StreamedClip(decoded, round(offset + length, 3))
