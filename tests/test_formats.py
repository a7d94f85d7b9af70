"""Transcript writers: exact srt / vtt text, JSON keys, atomic writes."""

from __future__ import annotations

import json

import pytest

from litewhisper.decode.formats import FORMATS, format_timestamp, render, to_json, write_transcription
from litewhisper.decode.transcribe import Segment, Transcription
from litewhisper.errors import LiteWhisperError

RESULT = Transcription(
    path="talk.flac",
    text="Hello there. General Kenobi!",
    language="en",
    duration_s=3725.5,
    segments=[Segment(0.0, 2.5, "Hello there."), Segment(3661.0015, 3725.5, "General Kenobi!")],
)


@pytest.mark.parametrize(
    "seconds, srt, vtt",
    [
        (0.0, "00:00:00,000", "00:00:00.000"),
        (1.5, "00:00:01,500", "00:00:01.500"),
        (59.9996, "00:01:00,000", "00:01:00.000"),  # rounding carries into the minutes
        (3661.0015, "01:01:01,002", "01:01:01.002"),
        (36000.25, "10:00:00,250", "10:00:00.250"),
    ],
)
def test_format_timestamp(seconds, srt, vtt):
    assert format_timestamp(seconds) == srt
    assert format_timestamp(seconds, ".") == vtt


def test_negative_timestamp_rejected():
    with pytest.raises(ValueError, match="non-negative"):
        format_timestamp(-0.1)


def test_srt_exact():
    assert render(RESULT, "srt") == (
        "1\n00:00:00,000 --> 00:00:02,500\nHello there.\n\n2\n01:01:01,002 --> 01:02:05,500\nGeneral Kenobi!\n"
    )


def test_vtt_exact():
    assert render(RESULT, "vtt") == (
        "WEBVTT\n\n00:00:00.000 --> 00:00:02.500\nHello there.\n\n01:01:01.002 --> 01:02:05.500\nGeneral Kenobi!\n"
    )


def test_subtitles_without_segments_use_one_cue_and_empty_text_none():
    plain = Transcription(path="a.wav", text="Hi.", language="en", segments=[], duration_s=1.25)
    assert render(plain, "srt") == "1\n00:00:00,000 --> 00:00:01,250\nHi.\n"
    silent = Transcription(path="b.wav", text="", language=None, segments=[], duration_s=2.0)
    assert render(silent, "srt") == "" and render(silent, "vtt") == "WEBVTT\n"


def test_txt_and_json():
    assert render(RESULT, "txt") == "Hello there. General Kenobi!\n"
    obj = json.loads(render(RESULT, "json"))
    assert set(obj) == {"path", "text", "language", "segments", "duration_s", "n_tokens", "hit_token_limit"}
    assert obj["text"] == RESULT.text and obj["language"] == "en" and obj["path"] == "talk.flac"
    assert obj["segments"][1] == {"start": 3661.0015, "end": 3725.5, "text": "General Kenobi!"}
    assert "\n" not in to_json(RESULT, indent=None).rstrip("\n")  # JSON Lines form
    unicode = Transcription(path="x", text="Grüße 你好", language="de", segments=[], duration_s=1.0)
    assert "Grüße 你好" in render(unicode, "json")  # written as UTF-8, not escaped


def test_write_infers_format_and_is_atomic(tmp_path, monkeypatch):
    out = write_transcription(RESULT, tmp_path / "sub" / "talk.srt")
    assert out.read_text(encoding="utf-8") == render(RESULT, "srt")
    out.write_text("previous", encoding="utf-8")
    with pytest.raises(LiteWhisperError, match="unknown output format 'docx'"):
        write_transcription(RESULT, tmp_path / "sub" / "talk.srt", "docx")

    def crash(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr("litewhisper.atomic.os.replace", crash)  # fail after the temporary file is written
    with pytest.raises(OSError, match="disk full"):
        write_transcription(RESULT, out, "vtt")
    assert out.read_text(encoding="utf-8") == "previous"  # untouched on failure
    assert sorted(p.name for p in (tmp_path / "sub").iterdir()) == ["talk.srt"]  # no temporary left behind
    assert set(FORMATS) == {"txt", "json", "srt", "vtt"}
