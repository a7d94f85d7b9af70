"""Audio in: any file soundfile reads (wav, flac, ogg, mp3), downmixed to mono and resampled to 16 kHz."""
from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np

from litewhisper.errors import AudioError

log = logging.getLogger("litewhisper")

SAMPLE_RATE = 16_000  # Whisper's input rate
AUDIO_EXTENSIONS = (".wav", ".flac", ".ogg", ".oga", ".opus", ".mp3", ".aiff", ".aif")


def load_audio(path: str | os.PathLike, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """Read an audio file as float32 mono samples at `sample_rate` (soxr resampling).

    Raises AudioError for a missing, unreadable, unsupported or empty file.
    """
    import soundfile as sf
    import soxr

    path = Path(path)
    if not path.is_file():
        raise AudioError(f"audio file not found: {path}")
    try:
        samples, file_rate = sf.read(str(path), dtype="float32", always_2d=True)  # (frames, channels)
    except (sf.LibsndfileError, RuntimeError, TypeError) as exc:
        raise AudioError(
            f"cannot read audio {path}: {exc}. Expected wav, flac, ogg or mp3 that libsndfile can decode; "
            "convert other formats first (e.g. `ffmpeg -i IN -ar 16000 OUT.wav`)"
        ) from exc
    if samples.shape[0] == 0:
        raise AudioError(f"audio file {path} is empty (0 samples)")
    mono = samples.mean(axis=1) if samples.shape[1] > 1 else samples[:, 0]
    if not np.isfinite(mono).all():
        raise AudioError(f"audio file {path} contains NaN or infinite samples")
    if file_rate != sample_rate:
        log.debug("resampling %s from %d Hz to %d Hz", path, file_rate, sample_rate)
        mono = soxr.resample(mono, file_rate, sample_rate, quality="HQ")
    return np.ascontiguousarray(mono, dtype=np.float32)


def audio_seconds(source) -> float:
    """Duration of an AudioItem (its manifest `duration_s`), a path (file header only) or a 16 kHz array;
    0.0 for an unreadable file (its loader reports it later)."""
    if isinstance(source, np.ndarray) or hasattr(source, "shape"):
        return float(np.asarray(source).size) / SAMPLE_RATE
    if getattr(source, "duration_s", None) is not None:
        return float(source.duration_s)
    import soundfile as sf

    try:
        return float(sf.info(str(getattr(source, "path", source))).duration)
    except (sf.LibsndfileError, RuntimeError, TypeError):
        return 0.0
