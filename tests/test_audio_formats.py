"""Audio in: every format FFmpeg decodes (PyAV), standard input, bad files, and long recordings in bounded memory."""

from __future__ import annotations

import io
import json
import logging
import os
import subprocess
import sys
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from helpers import require_shared_data
from litewhisper.audio.datasets import discover_audio, read_manifest
from litewhisper.audio.load import load_audio, probe_audio, stream_audio
from litewhisper.decode.backend import DecodedClip
from litewhisper.decode.options import DecodeOptions
from litewhisper.decode.results import Segment
from litewhisper.decode.stream import decode_stream
from litewhisper.errors import AudioError

SR = 16_000
REPO = Path(__file__).resolve().parents[1]


def encode(samples: np.ndarray, path: Path, container: str, codec: str, rate: int) -> Path:
    """Encode 16 kHz mono float samples with PyAV (e.g. ipod/aac = .m4a, webm/libopus, mp4/aac)."""
    import av

    with av.open(str(path), "w", format=container) as out:
        stream = out.add_stream(codec, rate=rate)
        stream.layout = "mono"
        stream.bit_rate = 128_000
        resampler = av.AudioResampler(format=stream.codec_context.format.name, layout="mono", rate=rate)
        frame = av.AudioFrame.from_ndarray(samples[None, :].astype(np.float32), format="flt", layout="mono")
        frame.sample_rate = SR
        for piece in resampler.resample(frame) + resampler.resample(None):
            out.mux(stream.encode(piece))
        out.mux(stream.encode(None))
    return path


def video_only(path: Path) -> Path:
    """A one-second mp4 with a video stream and no audio."""
    import av

    with av.open(str(path), "w") as out:
        stream = out.add_stream("mpeg4", rate=10)
        stream.width, stream.height, stream.pix_fmt = 32, 32, "yuv420p"
        for _ in range(10):
            out.mux(stream.encode(av.VideoFrame.from_ndarray(np.zeros((32, 32, 3), np.uint8), format="rgb24")))
        out.mux(stream.encode(None))
    return path


def tone(seconds: float, rate: int = SR) -> np.ndarray:
    t = np.arange(round(seconds * rate)) / rate
    return (0.3 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)


FORMATS = [("m4a", "ipod", "aac", SR), ("webm", "webm", "libopus", 48_000), ("mp4", "mp4", "aac", SR)]


@pytest.mark.parametrize("suffix,container,codec,rate", FORMATS)
def test_compressed_formats_decode_to_16k_mono(tmp_path, suffix, container, codec, rate):
    clip = tone(2.0)
    path = encode(clip, tmp_path / f"a.{suffix}", container, codec, rate)
    info = probe_audio(path)
    assert (info.codec, info.sample_rate, info.channels) == ({"libopus": "opus"}.get(codec, codec), rate, 1)
    assert info.duration_s == pytest.approx(2.0, abs=0.1)
    samples = load_audio(path)
    assert samples.dtype == np.float32 and abs(samples.size - clip.size) <= 2048  # AAC priming samples
    spectrum = np.abs(np.fft.rfft(samples[4000:20000]))
    assert np.argmax(spectrum) * SR / 16000 == pytest.approx(440, abs=2)  # the tone survives at 16 kHz


def test_wav_and_flac_samples_identical_to_soundfile(tmp_path):
    stereo = (np.random.default_rng(0).standard_normal((SR, 2)) * 0.2).astype(np.float32)
    for name, subtype in (("a.wav", "PCM_16"), ("b.flac", "PCM_24"), ("c.wav", "FLOAT")):
        sf.write(tmp_path / name, stereo, SR, subtype=subtype)
        ref = sf.read(tmp_path / name, dtype="float32")[0].mean(axis=1)
        np.testing.assert_array_equal(load_audio(tmp_path / name), ref)


def test_stream_blocks_join_to_load_and_read_file_objects(tmp_path):
    path = tmp_path / "a.wav"
    sf.write(path, (np.random.default_rng(1).standard_normal(5 * 44_100) * 0.1).astype(np.float32), 44_100)
    blocks = list(stream_audio(path, block_s=2.0))
    assert [b.size for b in blocks] == [32_000, 32_000, 16_000]
    whole = load_audio(path)
    np.testing.assert_array_equal(np.concatenate(blocks), whole)
    np.testing.assert_array_equal(load_audio(io.BytesIO(path.read_bytes())), whole)


def test_empty_standard_input_and_file_object_say_empty(monkeypatch, tmp_path):
    wav = io.BytesIO()
    sf.write(wav, np.full(SR, 0.25, dtype=np.float32), SR, format="WAV", subtype="FLOAT")
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(b"")))
    with pytest.raises(AudioError, match=r"^standard input \(-\) is empty \(0 bytes\): pipe audio into it"):
        load_audio("-")
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BufferedReader(io.BytesIO(wav.getvalue()))))
    np.testing.assert_array_equal(load_audio("-"), np.full(SR, 0.25, dtype=np.float32))  # the peek consumed nothing
    monkeypatch.setattr(sys, "stdin", type("Tty", (io.StringIO,), {"isatty": lambda self: True})())
    with pytest.raises(AudioError, match=r"standard input \(-\) is a terminal, not audio: pipe audio"):
        load_audio("-")
    with pytest.raises(AudioError, match=r"<file object> is empty \(no bytes left to read\): expected wav"):
        load_audio(io.BytesIO(b""))
    wav.seek(0, io.SEEK_END)  # a file object already read to its end
    with pytest.raises(AudioError, match="is empty"):
        load_audio(wav)


def test_bad_files_say_what_they_are(tmp_path, caplog):
    (tmp_path / "empty.wav").write_bytes(b"")
    (tmp_path / "notes.mp3").write_text("shopping list\n" * 50)
    with pytest.raises(AudioError, match=r"empty\.wav is an empty file \(0 bytes\)"):
        load_audio(tmp_path / "empty.wav")
    with pytest.raises(AudioError, match=r"notes\.mp3 is not an audio file \(expected wav, flac, ogg, mp3, m4a"):
        load_audio(tmp_path / "notes.mp3")
    with pytest.raises(AudioError, match=r"has no audio stream \(found: video mpeg4\)"):
        probe_audio(video_only(tmp_path / "film.mp4"))
    with pytest.raises(AudioError, match="not found"):
        load_audio(tmp_path / "missing.m4a")


def test_truncated_wav_is_read_with_a_warning(tmp_path, caplog):
    sf.write(tmp_path / "full.wav", tone(11.0), SR, subtype="PCM_16")
    data = (tmp_path / "full.wav").read_bytes()
    (tmp_path / "cut.wav").write_bytes(data[: 44 + 478 * 2])  # header says 11 s, 478 frames present
    assert probe_audio(tmp_path / "cut.wav").duration_s == pytest.approx(11.0)
    with caplog.at_level(logging.WARNING, logger="litewhisper"):
        samples = load_audio(tmp_path / "cut.wav")
    assert samples.size == 478
    assert (
        "cut.wav is truncated: its header says 11.00 s of audio but the file holds 0.03 s (478 frames)" in caplog.text
    )
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="litewhisper"):
        load_audio(tmp_path / "full.wav")
    assert "truncated" not in caplog.text


def test_manifest_rows_with_missing_files_are_listed_when_read(tmp_path, monkeypatch, capsys):
    from litewhisper.cli import main

    (tmp_path / "clips").mkdir()
    (tmp_path / "clips" / "ok.wav").write_bytes(b"x")
    rows = [{"path": "clips/ok.wav", "split": "dev"}, {"path": "clips/gone.wav", "split": "calib"}]
    rows += [{"path": f"clips/typo{i}.wav", "split": "dev"} for i in range(7)]
    manifest = tmp_path / "manifest.jsonl"
    manifest.write_text("".join(json.dumps(r) + "\n" for r in rows))
    listed = ", ".join(f"clips/typo{i}.wav (line {i + 3})" for i in range(5))
    expected = (
        f"{manifest}: 7 of 8 rows (split 'dev') point at missing audio files: {listed} and 2 more; each 'path' is "
        f"relative to the manifest's folder {tmp_path.resolve()}: fix those paths or remove their rows"
    )
    for read in (lambda: read_manifest(manifest, split="dev"), lambda: discover_audio(tmp_path, split="dev")):
        with pytest.raises(AudioError) as info:
            read()
        assert str(info.value) == expected
    with pytest.raises(AudioError, match=r"^\S+: 8 of 9 rows \(every split\) point at missing audio files: clips/gone"):
        discover_audio(manifest)
    manifest.write_text("".join(json.dumps(r) + "\n" for r in rows[:2]))
    assert [it.path.name for it in read_manifest(manifest, split="dev")] == ["ok.wav"]  # other splits unchecked
    assert len(read_manifest(manifest, check_files=False)) == 2

    def no_model(*args, **kwargs):
        raise AssertionError("the model was loaded before the manifest was checked")

    monkeypatch.setattr("litewhisper.models.load.load_model", no_model)
    calibrate = ["calibrate", "tiny.en", "--calibration", str(manifest), "-o", str(tmp_path / "stats.safetensors")]
    for args in (calibrate, ["transcribe", "tiny.en", str(manifest), "--quiet"]):
        assert main(args) == 2
        err = capsys.readouterr().err
        assert err.startswith(f"error: {manifest}: 1 of 2 rows (every split) point at missing audio files: clips/gone")


def test_discovery_finds_every_format(tmp_path):
    for name in ("a.m4a", "b.webm", "c.mp4", "d.wav", "e.opus", "f.wma", "g.amr", "h.mkv", "notes.txt"):
        (tmp_path / name).write_bytes(b"x")
    assert [it.path.name for it in discover_audio(tmp_path)] == [
        "a.m4a",
        "b.webm",
        "c.mp4",
        "d.wav",
        "e.opus",
        "f.wma",
        "g.amr",
        "h.mkv",
    ]


def _write_long_wav(path: Path, minutes: float) -> Path:
    """A long 16 kHz wav written block by block (the test never holds it in memory)."""
    with sf.SoundFile(str(path), "w", samplerate=SR, channels=1, subtype="PCM_16") as out:
        for _ in range(round(minutes * 2)):
            out.write(tone(30.0))
    return path


def _peak_stream_bytes(path: Path) -> tuple[int, float]:
    tracemalloc.start()
    try:
        seconds = sum(block.size for block in stream_audio(path, block_s=30.0)) / SR
        return tracemalloc.get_traced_memory()[1], seconds
    finally:
        tracemalloc.stop()


def test_streaming_a_long_file_keeps_memory_bounded(tmp_path):
    short_peak, short_s = _peak_stream_bytes(_write_long_wav(tmp_path / "short.wav", 2))
    long_peak, long_s = _peak_stream_bytes(_write_long_wav(tmp_path / "long.wav", 20))
    assert (short_s, long_s) == (120.0, 1200.0)
    block_bytes = 30 * SR * 4  # one 30-s float32 block: 1.9 MB; the whole 20 min would be 77 MB
    assert long_peak < 4 * block_bytes
    assert long_peak < 1.5 * short_peak + block_bytes  # independent of the length


class RecordingBackend:
    """A fake backend: one 5-s segment every 5 s of each window, text = its absolute start; records sizes."""

    name, is_multilingual = "fake", False

    def __init__(self):
        self.sizes: list[int] = []
        self.offset = 0.0

    def check(self, options):
        pass

    def decode_batch(self, arrays, options, on_seconds=None):
        self.sizes.append(arrays[0].size)
        length = arrays[0].size / SR
        starts = np.arange(0, length, 5.0)
        segs = [Segment(float(s), float(min(s + 5.0, length)), f"t{s:g}") for s in starts]
        return [DecodedClip(" ".join(s.text for s in segs), segs, "en", len(segs), False)]


def test_decode_stream_windows_are_bounded_and_seamless():
    backend = RecordingBackend()
    blocks = (np.zeros(30 * SR, dtype=np.float32) for _ in range(2 * 60))  # 60 min, never held at once
    done = decode_stream(backend, blocks, DecodeOptions(), window_s=300.0, margin_s=10.0)
    assert done.duration_s == 3600.0
    assert max(backend.sizes) == 300 * SR and len(backend.sizes) == 13  # 12 windows of 290 s kept + the rest
    starts = [s.start for s in done.decoded.segments]
    ends = [s.end for s in done.decoded.segments]
    assert starts[0] == 0.0 and ends[-1] == 3600.0
    assert all(b == a for a, b in zip(ends, starts[1:], strict=False))  # no gap, no overlap, no repeat


@pytest.mark.real
@pytest.mark.parametrize("suffix,container,codec,rate", FORMATS)
def test_real_compressed_formats_transcribe_like_the_original(real_tiny_en, tmp_path, suffix, container, codec, rate):
    from litewhisper.decode.transcribe import transcribe

    original = require_shared_data() / "misc" / "jfk.flac"
    path = encode(load_audio(original), tmp_path / f"jfk.{suffix}", container, codec, rate)
    expected, got = transcribe(real_tiny_en, [original, path])
    assert got.text == expected.text
    assert "ask not what your country can do for you" in got.text


@pytest.mark.real
def test_real_stdin_pipe(real_tiny_en, tmp_path):
    original = require_shared_data() / "misc" / "jfk.flac"
    sf.write(tmp_path / "jfk.wav", load_audio(original), SR, subtype="PCM_16")
    env = dict(os.environ, PYTHONPATH=str(REPO / "src"))
    with (tmp_path / "jfk.wav").open("rb") as stdin:
        done = subprocess.run(
            [sys.executable, "-m", "litewhisper", "transcribe", "tiny.en", "-", "--quiet"],
            stdin=stdin,
            capture_output=True,
            text=True,
            env=env,
            timeout=300,
        )
    assert done.returncode == 0, done.stderr
    assert "ask not what your country can do for you" in done.stdout
