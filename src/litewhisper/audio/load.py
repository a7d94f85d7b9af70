"""Audio in: anything FFmpeg decodes (through PyAV), as float32 mono samples at 16 kHz.

One reader for every command: wav, flac, ogg, mp3, m4a/aac, opus/webm, mp4/mkv/mov (the first audio stream),
wma, amr... A file is decoded frame by frame and resampled with soxr's streaming resampler, so
`stream_audio(path, block_s)` yields fixed-size blocks in bounded memory whatever the file's length, and
`load_audio(path)` is the same stream joined. `"-"` reads standard input. Integer PCM becomes float exactly as
libsndfile does it (x / 2**15 for 16 bit), so wav / flac samples are bit-identical to soundfile's.
"""

from __future__ import annotations

import io
import logging
import os
import struct
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np

from litewhisper.constants import SAMPLE_RATE
from litewhisper.errors import AudioError

__all__ = [
    "load_audio",
    "stream_audio",
    "probe_audio",
    "AudioInfo",
    "AudioSource",
    "AUDIO_EXTENSIONS",
    "SAMPLE_RATE",
    "STDIN",
    "source_name",
    "audio_seconds",
    "check_stdin",
]

log = logging.getLogger("litewhisper")

AUDIO_EXTENSIONS = (
    ".wav",
    ".flac",
    ".ogg",
    ".oga",
    ".opus",
    ".mp3",
    ".aiff",
    ".aif",
    ".m4a",
    ".aac",
    ".webm",
    ".mp4",
    ".mkv",
    ".mka",
    ".mov",
    ".wma",
    ".amr",
    ".3gp",
    ".caf",
    ".wv",
    ".ac3",
)
EXPECTED = (
    "expected wav, flac, ogg, mp3, m4a, aac, opus, webm, mp4, mkv, mov, wma, amr or another format FFmpeg decodes"
)
STDIN = "-"  # the source name that reads standard input
AudioSource = str | os.PathLike | BinaryIO
_EXACT_LENGTH_FORMATS = ("wav", "flac", "mov,mp4,m4a,3gp,3g2,mj2")  # headers that state the exact length
_LENGTH_TOLERANCE_S = 0.1  # codec priming / padding (AAC: 2048 samples) is not a short read


@dataclass(frozen=True)
class AudioInfo:
    """What a file holds, from its headers (no decoding); `duration_s` None when the header does not say
    (standard input, some streams)."""

    name: str
    duration_s: float | None
    sample_rate: int
    channels: int
    codec: str
    container: str


def source_name(source: AudioSource) -> str:
    """How a source is named in messages: its path, '<stdin>' or the file object's name."""
    if isinstance(source, (str, os.PathLike)):
        return "<stdin>" if str(source) == STDIN else str(source)
    return str(getattr(source, "name", "<file object>"))


def _open(source: AudioSource):
    """The PyAV container and its first audio stream; AudioError naming the file and what was found."""
    import av

    name = source_name(source)
    target: str | BinaryIO
    if isinstance(source, (str, os.PathLike)) and str(source) != STDIN:
        path = Path(source)
        if not path.is_file():
            raise AudioError(f"audio file not found: {path}")
        if path.stat().st_size == 0:
            raise AudioError(f"{path} is an empty file (0 bytes): {EXPECTED}")
        target = str(path)
    elif isinstance(source, (str, os.PathLike)):
        target = check_stdin()
    else:
        target = source
        if _is_empty(source):
            raise AudioError(f"{name} is empty (no bytes left to read): {EXPECTED}")
    try:
        container = av.open(target, mode="r")
    except av.error.FFmpegError as exc:
        empty = "an empty input" if isinstance(exc, av.error.EOFError) else "not an audio file"
        raise AudioError(f"{name} is {empty} ({EXPECTED}); FFmpeg says: {exc.strerror or exc}") from exc
    if not container.streams.audio:
        found = ", ".join(f"{s.type} {s.codec_context.name}" for s in container.streams) or "no streams at all"
        container.close()
        raise AudioError(f"{name} has no audio stream (found: {found}); {EXPECTED}")
    return container, container.streams.audio[0]


def check_stdin() -> BinaryIO:
    """Standard input as a binary stream, peeked (nothing consumed); AudioError if it is a terminal or empty."""
    pipe = "pipe audio into it (ffmpeg -i talk.mkv -f wav - | litewhisper transcribe MODEL -) or pass a file"
    if sys.stdin is None or sys.stdin.isatty():
        raise AudioError(f"standard input (-) is a terminal, not audio: {pipe}")
    if _is_empty(sys.stdin.buffer):
        raise AudioError(f"standard input (-) is empty (0 bytes): {pipe}")
    return sys.stdin.buffer


def _is_empty(stream: BinaryIO) -> bool:
    """Whether nothing is left to read, found without consuming anything (False when it cannot be told)."""
    if hasattr(stream, "peek"):  # buffered pipes and files: waits for the first bytes or the end
        return not stream.peek(1)
    if stream.seekable():
        here = stream.tell()
        end = stream.seek(0, io.SEEK_END)
        stream.seek(here)
        return end <= here
    return False


def _wav_header_seconds(path: Path) -> float | None:
    """The length a RIFF/WAVE header declares (data chunk bytes / block align / rate); None if unstated."""
    with path.open("rb") as f:
        head = f.read(12)
        if len(head) < 12 or head[:4] != b"RIFF" or head[8:12] != b"WAVE":
            return None
        rate = align = None
        while (chunk := f.read(8)) and len(chunk) == 8:
            kind, size = chunk[:4], struct.unpack("<I", chunk[4:])[0]
            if kind == b"fmt ":
                fmt = f.read(size + size % 2)
                rate, align = struct.unpack("<I", fmt[4:8])[0], struct.unpack("<H", fmt[12:14])[0]
            elif kind == b"data":
                if not rate or not align or size in (0, 0xFFFFFFFF):  # streaming writers leave it unset
                    return None
                return size / align / rate
            else:
                f.seek(size + size % 2, io.SEEK_CUR)
    return None


def _declared_seconds(source: AudioSource, container, stream) -> float | None:
    """The exact length the file's header declares, for formats whose headers state it."""
    if container.format.name not in _EXACT_LENGTH_FORMATS:
        return None
    if container.format.name == "wav":  # FFmpeg trims a truncated wav's length to the file size: read the header
        seekable = isinstance(source, (str, os.PathLike)) and str(source) != STDIN
        return _wav_header_seconds(Path(source)) if seekable else None
    if stream.duration is not None and stream.time_base is not None:
        return float(stream.duration * stream.time_base)
    return None


def probe_audio(source: AudioSource) -> AudioInfo:
    """Rate, channels, codec and length of the first audio stream, from the headers (AudioError if unusable)."""
    container, stream = _open(source)
    try:
        duration = None
        if stream.duration is not None and stream.time_base is not None:
            duration = float(stream.duration * stream.time_base)
        elif container.duration is not None:
            duration = container.duration / 1_000_000  # microseconds
        declared = _declared_seconds(source, container, stream)
        return AudioInfo(
            source_name(source),
            declared if declared is not None else duration,
            int(stream.codec_context.sample_rate or 0),
            int(stream.codec_context.channels or 0),
            stream.codec_context.name,
            container.format.name,
        )
    finally:
        container.close()


def _to_mono_float(frame) -> np.ndarray:
    """One decoded frame -> float32 mono samples at the frame's rate (ints scaled as libsndfile does)."""
    arr = frame.to_ndarray()
    channels = len(frame.layout.channels)
    arr = arr if frame.format.is_planar else arr.reshape(-1, channels).T  # (channels, samples)
    if arr.dtype.kind == "i":
        arr = arr.astype(np.float32) / np.float32(2 ** (8 * arr.dtype.itemsize - 1))
    elif arr.dtype.kind == "u":  # 8-bit PCM is unsigned
        arr = (arr.astype(np.float32) - 128) / np.float32(128)
    arr = arr.astype(np.float32, copy=False)
    return arr.mean(axis=0, dtype=np.float32) if channels > 1 else arr[0]


def _decoded(source: AudioSource, sample_rate: int) -> Iterator[np.ndarray]:
    """Float32 mono pieces at `sample_rate`, decoded and resampled frame by frame; warns on a short read."""
    import av
    import soxr

    name = source_name(source)
    container, stream = _open(source)
    resampler, rate, frames, seconds = None, None, 0, 0.0
    try:
        for frame in container.decode(stream):
            if rate is None or frame.sample_rate != rate:
                rate = frame.sample_rate
                resampler = (
                    None
                    if rate == sample_rate
                    else soxr.ResampleStream(rate, sample_rate, 1, dtype="float32", quality="HQ")
                )
            piece = _to_mono_float(frame)
            frames, seconds = frames + piece.size, seconds + piece.size / rate
            yield piece if resampler is None else resampler.resample_chunk(piece)
        if resampler is not None:
            yield resampler.resample_chunk(np.zeros(0, dtype=np.float32), last=True)
        declared = _declared_seconds(source, container, stream)
    except av.error.FFmpegError as exc:
        raise AudioError(
            f"cannot decode {name} after {seconds:.1f} s of audio: {exc.strerror or exc} (a damaged file? {EXPECTED})"
        ) from exc
    finally:
        container.close()
    if frames == 0:
        raise AudioError(f"{name} holds no audio samples (its {stream.codec_context.name} stream is empty)")
    if declared is not None and seconds < declared - _LENGTH_TOLERANCE_S:
        log.warning(
            "%s is truncated: its header says %.2f s of audio but the file holds %.2f s (%d frames); "
            "transcribing the %.2f s present",
            name,
            declared,
            seconds,
            frames,
            seconds,
        )


def stream_audio(source: AudioSource, block_s: float = 30.0, sample_rate: int = SAMPLE_RATE) -> Iterator[np.ndarray]:
    """Yield float32 mono blocks of `block_s` seconds at `sample_rate` (the last one shorter), decoding only
    as far as needed: memory stays about one block whatever the length. `source`: a path, '-' for standard
    input, or a binary file object. AudioError for a missing, empty, non-audio or undecodable input."""
    if block_s <= 0:
        raise AudioError(f"block_s must be > 0 seconds, got {block_s}")
    size = max(1, round(block_s * sample_rate))
    pending: list[np.ndarray] = []
    held = 0
    for piece in _decoded(source, sample_rate):
        pending.append(piece)
        held += piece.size
        if held >= size:
            joined = np.concatenate(pending)
            starts = range(0, joined.size - size + 1, size)
            for start in starts:
                yield _checked(joined[start : start + size], source)
            rest = joined[starts[-1] + size :]
            pending, held = [rest], rest.size
    if held:
        yield _checked(np.concatenate(pending), source)


def _checked(block: np.ndarray, source: AudioSource) -> np.ndarray:
    if not np.isfinite(block).all():
        raise AudioError(f"audio {source_name(source)} contains NaN or infinite samples")
    return np.ascontiguousarray(block, dtype=np.float32)


def load_audio(source: AudioSource, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """Read a whole input as float32 mono samples at `sample_rate` (the blocks of `stream_audio`, joined).

    Raises AudioError for a missing, empty, non-audio or undecodable input; a file shorter than its header
    says is read as far as it goes, with a warning.
    """
    return np.concatenate(list(stream_audio(source, block_s=60.0, sample_rate=sample_rate)))


def audio_seconds(source) -> float:
    """Duration of an AudioItem (its manifest `duration_s`), a source (headers only) or a 16 kHz array;
    0.0 for an unreadable input (its loader reports it later)."""
    if isinstance(source, np.ndarray) or hasattr(source, "shape"):
        return float(np.asarray(source).size) / SAMPLE_RATE
    if getattr(source, "duration_s", None) is not None:
        return float(source.duration_s)
    try:
        return float(probe_audio(getattr(source, "path", source)).duration_s or 0.0)
    except AudioError:
        return 0.0
