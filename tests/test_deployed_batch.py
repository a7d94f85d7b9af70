"""Clips batched across files in the deployed runtime (issue 29): with several clips up to 30 s, the first windows
are encoded in one onnxruntime batch per window length and their greedy pass decoded in one CTranslate2 call, and
every result (text, segments, token counts, token-limit hits, language) is what decoding each clip alone gives;
clips that fall back, run a second window or are longer than 30 s still decode alone, and batch size 1 never
batches."""

from __future__ import annotations

import numpy as np
import pytest
from test_transcribe import make_tiny_bundle

from helpers import SHARED_DATA, shared_manifest, tiny_whisper, with_tokenizer
from litewhisper.decode.options import DecodeOptions
from litewhisper.decode.transcribe import transcribe
from litewhisper.export.api import export_model
from litewhisper.models.load import WhisperBundle, load_model

SR = 16_000
DEFAULT = DecodeOptions(max_new_tokens=12)  # timestamps, temperature fallback, no-speech rule
GREEDY = DecodeOptions.preset("leaderboard", max_new_tokens=8)
# every window fails the log-probability test (< 0): re-decoded at 0.5 and 1.0, sampled per clip from `seed`
FALLBACK = DecodeOptions(
    temperature=(0.0, 0.5, 1.0), logprob_threshold=0.0, no_speech_threshold=None, timestamps=False, max_new_tokens=8
)


def _clips(seconds=(2.0, 3.5, 6.0, 12.0, 25.0, 11.5), seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [(rng.standard_normal(int(s * SR)) * 0.1).astype(np.float32) for s in seconds]


@pytest.fixture(scope="module")
def deployed(tmp_path_factory):
    model, processor = with_tokenizer(tiny_whisper(seed=5))
    bundle = WhisperBundle(model=model, processor=processor, name="tiny-random", path=None)
    export = export_model(bundle, tmp_path_factory.mktemp("export") / "int8", quantize="int8", onnx_decoder=False)
    return load_model(export.path, threads=1)


def _calls(monkeypatch, model) -> dict[str, list]:
    """Shapes of the encoder runs and batch sizes of the CTranslate2 generate / detect_language calls (the
    decoders loaded again after a sampled clip included)."""
    import ctranslate2

    seen: dict[str, list] = {"encode": [], "generate": [], "detect": []}
    run = model.session.run
    monkeypatch.setattr(
        model.session, "run", lambda out, feeds: seen["encode"].append(feeds["input_features"].shape) or run(out, feeds)
    )

    class Spy:
        def __init__(self, decoder) -> None:
            self.decoder = decoder

        def generate(self, features, prompts, **kwargs):
            seen["generate"].append(len(prompts))
            return self.decoder.generate(features, prompts, **kwargs)

        def detect_language(self, features):
            seen["detect"].append(features.shape[0])
            return self.decoder.detect_language(features)

        def __getattr__(self, name):
            return getattr(self.decoder, name)

    whisper = ctranslate2.models.Whisper
    monkeypatch.setattr(ctranslate2.models, "Whisper", lambda *a, **k: Spy(whisper(*a, **k)))
    monkeypatch.setattr(model.pipeline.model, "model", Spy(model.pipeline.model.model))
    return seen


def _alone(model, clips, options):
    return [transcribe(model, [clip], options)[0] for clip in clips]


def _same(batched, alone) -> None:
    assert [t.text for t in batched] == [t.text for t in alone]
    assert [t.segments for t in batched] == [t.segments for t in alone]
    assert [(t.n_tokens, t.hit_token_limit, t.language) for t in batched] == [
        (t.n_tokens, t.hit_token_limit, t.language) for t in alone
    ]


@pytest.mark.parametrize(
    "options", [DEFAULT, GREEDY, DEFAULT.replace(window="auto")], ids=["default", "greedy", "auto"]
)
def test_batched_clips_decode_as_each_clip_alone(deployed, monkeypatch, options):
    clips = _clips()
    seen = _calls(monkeypatch, deployed)
    alone = _alone(deployed, clips, options)
    calls_alone = len(seen["generate"])
    seen["encode"].clear(), seen["generate"].clear()
    batched = transcribe(deployed, clips, options)
    _same(batched, alone)
    assert any(t.n_tokens for t in batched)
    batches = [n for n in seen["generate"] if n > 1]  # the greedy pass of several clips in one call
    # every batched clip keeps its greedy decode (the budgets are all max_new_tokens here): no call repeated
    assert len(seen["generate"]) == calls_alone - sum(batches) + len(batches)
    if options.window == "auto":  # batches of one window length (decode/transcribe.py): 10.24 s, 14.08 s, 28.16 s
        assert seen["encode"][0] == (3, 80, 1024) and (2, 80, 1408) in seen["encode"]
        assert (1, 80, 2816) in seen["encode"]  # alone in its batch
    else:
        assert seen["encode"][:3] == [(2, 80, 3000)] * 3  # ENCODER_RUN_FRAMES: two 30-s windows a run


def test_clips_that_fall_back_still_decode_alone_seeded_per_clip(deployed, monkeypatch):
    clips = _clips((2.0, 3.5, 6.0))
    alone = _alone(deployed, clips, FALLBACK)
    seen = _calls(monkeypatch, deployed)
    batched = transcribe(deployed, clips, FALLBACK)
    _same(batched, alone)
    assert seen["generate"][0] == 3 and seen["generate"][1:] == [1] * 6  # greedy batched, 0.5 and 1.0 per clip
    assert [t.text for t in transcribe(deployed, clips[::-1], FALLBACK)][::-1] == [t.text for t in batched]


def test_long_clips_and_batch_size_one_decode_alone(deployed, monkeypatch):
    clips = _clips((40.0, 3.0, 5.0), seed=1)
    alone = _alone(deployed, clips, GREEDY)
    seen = _calls(monkeypatch, deployed)
    _same(transcribe(deployed, clips, GREEDY), alone)
    assert seen["encode"][0] == (2, 80, 3000) and seen["generate"][0] == 2  # the two short ones together
    seen["encode"].clear(), seen["generate"].clear()
    _same(transcribe(deployed, clips[1:], GREEDY.replace(batch_size=1)), alone[1:])
    assert seen["encode"] == [(1, 80, 3000)] * 2 and seen["generate"] == [1, 1]


def test_a_clip_over_its_budget_in_the_batch_decodes_again_alone(deployed, monkeypatch):
    """A group decodes with its largest token budget; a clip whose decode reaches its own smaller budget there
    (a random model never ends) is decoded again alone, and hits its limit as it does alone."""
    options = GREEDY.replace(max_new_tokens=100)  # budgets 9.7 tokens/s + 16: 36 for 2 s, 75 for 6 s
    clips = _clips((2.0, 6.0))
    alone = _alone(deployed, clips, options)
    seen = _calls(monkeypatch, deployed)
    batched = transcribe(deployed, clips, options)
    _same(batched, alone)
    assert [t.hit_token_limit for t in batched] == [True, True] and [t.n_tokens for t in batched] == [36, 75]
    assert seen["generate"] == [2, 1]  # the 6-s clip kept its batch decode, the 2-s one decoded again


def test_word_timestamps_batched_match_alone(deployed):
    clips = _clips((3.0, 7.0, 4.0), seed=2)
    options = DEFAULT.replace(word_timestamps=True, temperature=0.0)
    _same(transcribe(deployed, clips, options), _alone(deployed, clips, options))


def test_multilingual_language_detection_is_batched_and_unchanged(tmp_path, monkeypatch):
    bundle = make_tiny_bundle(multilingual=True, seed=2)
    model = load_model(export_model(bundle, tmp_path / "fp32", quantize="none", onnx_decoder=False).path, threads=1)
    clips = _clips((2.0, 4.0, 8.0), seed=3)
    for options in (GREEDY, GREEDY.replace(language="de")):
        alone = _alone(model, clips, options)
        seen = _calls(monkeypatch, model)
        _same(transcribe(model, clips, options), alone)
        assert seen["detect"] == ([3] if options.language is None else [])
        assert seen["generate"][0] == 3
        monkeypatch.undo()


@pytest.mark.real
def test_real_tiny_en_export_batched_equals_per_clip(real_tiny_en, tmp_path, monkeypatch):
    """tiny.en int8, 6 short English dev clips, transcribe's defaults: the same transcripts batched and alone, and
    the batch's greedy decodes are used (fewer decoder calls)."""
    from litewhisper.audio.load import load_audio

    path = export_model(real_tiny_en, tmp_path / "int8", quantize="int8", onnx_decoder=False).path
    model = load_model(path, threads=2)
    rows = [r for r in shared_manifest("dev", "en") if r["duration_s"] <= 10][:6]
    clips = [load_audio(SHARED_DATA / r["path"]) for r in rows]
    seen = _calls(monkeypatch, model)
    for options in (DecodeOptions(), DecodeOptions(window="auto")):
        seen["generate"].clear()
        alone = _alone(model, clips, options)
        calls_alone = len(seen["generate"])
        seen["generate"].clear()
        batched = transcribe(model, clips, options)
        _same(batched, alone)
        assert all(t.text for t in batched)
        assert max(seen["generate"]) > 1 and len(seen["generate"]) <= calls_alone - 4


@pytest.mark.parametrize("options", [GREEDY.replace(beam_size=2), FALLBACK.replace(temperature=(0.5, 1.0))])
def test_a_beam_or_a_sampled_first_pass_decodes_alone_after_a_batched_encoder(deployed, monkeypatch, options):
    clips = _clips((2.0, 3.5, 6.0), seed=4)
    alone = _alone(deployed, clips, options)
    seen = _calls(monkeypatch, deployed)
    _same(transcribe(deployed, clips, options), alone)
    assert seen["encode"][0] == (2, 80, 3000) and set(seen["generate"]) == {1}
