"""Transcript writers: plain text, JSON, SubRip (srt) and WebVTT (vtt), written atomically."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path

from litewhisper.atomic import atomic_write_text
from litewhisper.decode.results import Segment, Transcription
from litewhisper.errors import LiteWhisperError

__all__ = ["FORMATS", "format_timestamp", "to_txt", "to_json", "to_srt", "to_vtt", "render", "write_transcription"]


def format_timestamp(seconds: float, decimal_marker: str = ",") -> str:
    """12.3456 -> '00:00:12,346' (srt) or with '.' '00:00:12.346' (vtt); hours are never omitted."""
    if seconds < 0:
        raise ValueError(f"timestamp must be non-negative, got {seconds}")
    ms = round(seconds * 1000)
    hours, ms = divmod(ms, 3_600_000)
    minutes, ms = divmod(ms, 60_000)
    secs, ms = divmod(ms, 1000)
    return f"{hours:02d}:{minutes:02d}:{secs:02d}{decimal_marker}{ms:03d}"


def _cues(result: Transcription) -> list[Segment]:
    """Subtitle cues: one per word (with word timestamps), else the segments, else one cue spanning the clip."""
    if result.segments and all(s.words for s in result.segments):
        return [Segment(w.start, w.end, w.word) for s in result.segments for w in s.words]
    if result.segments:
        return result.segments
    return [Segment(0.0, result.duration_s, result.text)] if result.text else []


def to_txt(result: Transcription) -> str:
    return result.text + "\n"


def to_json(result: Transcription, indent: int | None = 2) -> str:
    """An object with path, text, language, duration_s, n_tokens, hit_token_limit and segments
    [{start, end, text}] (plus words [{start, end, word, probability}] with word timestamps)."""
    obj = asdict(result)
    for seg in obj["segments"]:
        if seg["words"] is None:
            del seg["words"]
    return json.dumps(obj, ensure_ascii=False, indent=indent) + "\n"


def to_srt(result: Transcription) -> str:
    blocks = [
        f"{i}\n{format_timestamp(c.start)} --> {format_timestamp(c.end)}\n{c.text}\n"
        for i, c in enumerate(_cues(result), 1)
    ]
    return "\n".join(blocks)


def to_vtt(result: Transcription) -> str:
    blocks = [f"{format_timestamp(c.start, '.')} --> {format_timestamp(c.end, '.')}\n{c.text}\n" for c in _cues(result)]
    return "\n".join(["WEBVTT\n", *blocks])


FORMATS: dict[str, Callable[[Transcription], str]] = {"txt": to_txt, "json": to_json, "srt": to_srt, "vtt": to_vtt}


def render(result: Transcription, fmt: str) -> str:
    """The transcript as text in `fmt` (txt, json, srt or vtt)."""
    if fmt not in FORMATS:
        raise LiteWhisperError(f"unknown output format {fmt!r}: expected one of {', '.join(FORMATS)}")
    return FORMATS[fmt](result)


def write_transcription(result: Transcription, path: str | os.PathLike, fmt: str | None = None) -> Path:
    """Write `result` to `path` atomically; the format defaults to the path's suffix."""
    path = Path(path)
    return atomic_write_text(path, render(result, fmt or path.suffix.lstrip(".")))
