"""Built-in synthetic calibration audio (eSpeak NG through espeakng-loader)."""

from __future__ import annotations

import hashlib
import subprocess
import sys

import numpy as np
import pytest

from litewhisper.audio.synth import (
    SAMPLE_RATE,
    SENTENCES,
    SynthClip,
    _synthesize_in_child,
    builtin_calibration_audio,
    clip_plan,
)
from litewhisper.errors import CalibrationError


def digest(clips: list[np.ndarray]) -> str:
    return hashlib.sha256(b"".join(c.tobytes() for c in clips)).hexdigest()


def test_clips_are_non_silent_16k_speech():
    clips = builtin_calibration_audio(8)
    assert len(clips) == 8
    for clip in clips:
        assert clip.dtype == np.float32 and clip.ndim == 1
        seconds = len(clip) / SAMPLE_RATE
        assert 1.5 < seconds < 15, seconds
        assert 0.3 <= np.abs(clip).max() <= 0.95  # peak-normalised to a varied loudness
        frames = clip[: len(clip) // 400 * 400].reshape(-1, 400)  # 25 ms frames
        voiced = np.sqrt((frames**2).mean(axis=1)) > 0.02
        assert voiced.mean() > 0.3  # mostly speech, not silence
    assert len({len(c) for c in clips}) == 8  # different sentences / voices / speeds


def test_deterministic_across_calls_and_processes():
    first = builtin_calibration_audio(8)
    first[0][:] = 0  # callers get copies: the cache is untouched
    second = builtin_calibration_audio(8)
    assert np.abs(second[0]).max() > 0
    expected = digest(second)
    code = (
        "import hashlib, sys; from litewhisper.audio.synth import builtin_calibration_audio as b; "
        "print(hashlib.sha256(b''.join(c.tobytes() for c in b(8))).hexdigest())"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == expected
    assert digest(builtin_calibration_audio(8, seed=1)) != expected


def test_more_clips_than_sentences_vary_voices():
    plan = clip_plan(len(SENTENCES) + 10, seed=0)
    assert len(plan) == len(SENTENCES) + 10
    assert {p.text for p in plan} == set(SENTENCES)
    firsts = {p.text: p for p in plan[: len(SENTENCES)]}
    assert all(firsts[p.text] != p for p in plan[len(SENTENCES) :])  # a repeated sentence gets a new voice
    assert len({p.voice for p in plan}) >= 20
    assert all(130 <= p.rate <= 210 and 25 <= p.pitch <= 75 for p in plan)


@pytest.mark.parametrize("n_clips", [0, -3, 2.5])
def test_bad_clip_count(n_clips):
    with pytest.raises(CalibrationError, match="positive integer"):
        builtin_calibration_audio(n_clips)


def test_unknown_voice_is_a_clear_error():
    with pytest.raises(CalibrationError, match="no voice 'xx-nowhere'.*espeakng-loader.*--calibration"):
        _synthesize_in_child([SynthClip("Hello.", "xx-nowhere", 170, 50, 50)])


def test_missing_library_is_a_clear_error(tmp_path, monkeypatch):
    fake = tmp_path / "espeakng_loader"
    fake.mkdir()
    (fake / "__init__.py").write_text(
        "def get_library_path():\n    return '/nonexistent/libespeak-ng.so'\n"
        "def get_data_path():\n    return '/nonexistent/espeak-ng-data'\n"
    )
    monkeypatch.setenv("PYTHONPATH", str(tmp_path))
    with pytest.raises(CalibrationError, match="could not be synthesised with eSpeak NG.*OSError"):
        _synthesize_in_child([SynthClip("Hello.", "en-us", 170, 50, 50)])
