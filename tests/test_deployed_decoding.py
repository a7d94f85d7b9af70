"""The deployed runtime decodes as the PyTorch one does (issue 28): a tiny random model exported in fp32 gives the
same greedy tokens in both runtimes for the same audio, and its sampled fallback is reproducible: the same text
twice, for any clip order, chosen by `DecodeOptions.seed`."""

from __future__ import annotations

import numpy as np
import pytest

from helpers import tiny_whisper, with_tokenizer
from litewhisper.decode.deployed_backend import window_audio
from litewhisper.decode.options import DecodeOptions
from litewhisper.decode.transcribe import transcribe
from litewhisper.export.api import export_model
from litewhisper.models.load import WhisperBundle, load_model

GREEDY = DecodeOptions.preset("leaderboard", max_new_tokens=8)  # greedy, no timestamps, no fallback
# every window fails the log-probability test (< 0), so each is decoded at 0.5 then 1.0; no no-speech skip
FALLBACK = DecodeOptions(
    temperature=(0.5, 1.0), logprob_threshold=0.0, no_speech_threshold=None, timestamps=False, max_new_tokens=8
)


def _clips() -> list[np.ndarray]:
    """Noise bursts of 2, 3.5 and 6 s (16 kHz) with a quiet tail: short clips, one padded window each."""
    rng = np.random.default_rng(0)
    clips = []
    for seconds in (2.0, 3.5, 6.0):
        x = rng.standard_normal(int(16000 * seconds)).astype(np.float32) * 0.1
        x[-4000:] *= 0.01
        clips.append(x)
    return clips


# the model's own suppression list (every even text token and the special tokens): the deployed runtime must
# apply it as PyTorch does, not faster-whisper's default list of non-speech symbols
SUPPRESS = list(range(0, 50257, 2)) + list(range(50257, 50363))


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    model, processor = with_tokenizer(tiny_whisper(seed=11))
    model.generation_config.suppress_tokens = SUPPRESS
    bundle = WhisperBundle(model=model, processor=processor, name="tiny-random", path=None)
    export = export_model(bundle, tmp_path_factory.mktemp("export") / "fp32", quantize="none", onnx_decoder=False)
    return bundle, load_model(export.path, threads=1)


def test_short_clips_are_padded_with_silence_to_one_window():
    x = np.ones(16000, np.float32)
    padded = window_audio(x)
    assert padded.shape == (480000,) and padded[:16000].sum() == 16000 and not padded[16000:].any()
    long = np.ones(480001, np.float32)
    assert window_audio(long).shape == (480001,)


def test_both_runtimes_give_the_same_greedy_tokens(models):
    bundle, deployed = models
    for options in (GREEDY, GREEDY.replace(initial_prompt="a prompt of a dozen words or so, to make it longer")):
        torch_out = transcribe(bundle, _clips(), options)
        deployed_out = transcribe(deployed, _clips(), options)
        assert [t.n_tokens for t in torch_out] == [8, 8, 8]  # a random model never ends: the length limit holds
        assert [t.text for t in deployed_out] == [t.text for t in torch_out]
        assert [t.n_tokens for t in deployed_out] == [8, 8, 8]
        assert [t.hit_token_limit for t in torch_out] == [t.hit_token_limit for t in deployed_out] == [True] * 3


def test_the_encoder_sees_the_features_pytorch_computes(models, monkeypatch):
    """A short clip is one window of audio padded with silence (Hugging Face's feature extractor), not of
    log-mel padded with zeros (faster-whisper's loop)."""
    from litewhisper.decode.torch_backend import features

    bundle, deployed = models
    seen = []
    real_encode = deployed.pipeline.encode
    monkeypatch.setattr(deployed.pipeline, "encode", lambda f: seen.append(f.copy()) or real_encode(f))
    clip = _clips()[1]
    transcribe(deployed, clip, GREEDY)
    want = features(bundle.processor, [clip], long_form=False)["input_features"][0].numpy()  # (80, 3000)
    assert len(seen) == 1 and seen[0].shape == want.shape
    np.testing.assert_allclose(seen[0], want, atol=1e-4)


def test_deployed_fallback_is_reproducible_whatever_the_clip_order(models):
    _, deployed = models
    clips = _clips()
    first = [t.text for t in transcribe(deployed, clips, FALLBACK)]
    again = [t.text for t in transcribe(deployed, clips, FALLBACK)]
    reversed_order = [t.text for t in transcribe(deployed, clips[::-1], FALLBACK)][::-1]
    alone = transcribe(deployed, clips[2], FALLBACK)[0].text
    assert again == first and reversed_order == first and alone == first[2]
    other_seed = [t.text for t in transcribe(deployed, clips, FALLBACK.replace(seed=1))]
    assert other_seed != first  # the text is sampled, and the seed chooses it
    assert [t.text for t in transcribe(deployed, clips, FALLBACK.replace(seed=1))] == other_seed


def test_a_decoder_reload_frees_the_old_decoder_first(models, monkeypatch):
    """Each clip that sampled reloads the CTranslate2 decoder (per-clip seeding); the old one is dropped before the
    new one loads, so the two never live at once (base@0.8 int8, 30 short clips: peak RSS 805-1003 -> 591-597 MiB)."""
    import ctranslate2

    _, deployed = models
    alive_at_load: list[bool] = []
    whisper = ctranslate2.models.Whisper

    def loading(*args, **kwargs):
        alive_at_load.append(deployed.pipeline.model is not None)
        return whisper(*args, **kwargs)

    monkeypatch.setattr(ctranslate2.models, "Whisper", loading)
    out = transcribe(deployed, _clips(), FALLBACK)
    assert alive_at_load and not any(alive_at_load)  # reloaded, and never beside the old decoder
    assert [t.text for t in out] == [t.text for t in transcribe(deployed, _clips(), FALLBACK)]
