"""The encoder window policy (issue 31): `DecodeOptions.encoder_frames` and the any-length encoder hook."""

from __future__ import annotations

import argparse

import numpy as np
import pytest
import torch

from helpers import tiny_whisper
from litewhisper.cli.decoding import add_decoding_args, decoding_options
from litewhisper.constants import WINDOW_FRAMES
from litewhisper.decode.options import DecodeOptions
from litewhisper.errors import LiteWhisperError
from litewhisper.models.encoder_window import encoder_window

AUTO = DecodeOptions(window="auto")


def test_full_windows_read_30_seconds_whatever_the_clip():
    assert DecodeOptions().window == "full"
    assert [DecodeOptions().encoder_frames(s) for s in (0.5, 5, 29.9, 30)] == [WINDOW_FRAMES] * 4


def test_auto_window_is_clip_plus_margin_at_least_the_floor_in_steps_of_128_frames():
    # floor 10 s -> 1000 frames -> 1024; 9 s + 2 s margin = 1100 -> 1152; 27 s + 2 = 2900 -> 2944; >= 28 s: 3000
    assert [AUTO.encoder_frames(s) for s in (0, 5, 8, 9, 20, 27, 28, 45)] == [1024] * 3 + [1152, 2304, 2944, 3000, 3000]
    custom = DecodeOptions(window="auto", window_floor=5, window_margin=1)
    assert [custom.encoder_frames(s) for s in (1, 4, 4.2)] == [512, 512, 640]  # 500 -> 512, 520 -> 640


@pytest.mark.parametrize(
    ("field", "value", "flag"),
    [
        ("window", "short", "--window"),
        ("window_floor", 1.0, "--window-floor"),
        ("window_margin", -1, "--window-margin"),
    ],
)
def test_bad_window_settings_name_the_flag(field, value, flag):
    with pytest.raises(LiteWhisperError, match=flag):
        DecodeOptions(**{field: value})


def test_window_flags_build_the_options():
    p = argparse.ArgumentParser()
    add_decoding_args(p)
    opts = decoding_options(p.parse_args(["--window", "auto", "--window-floor", "5", "--window-margin", "1"]))
    assert (opts.window, opts.window_floor, opts.window_margin) == ("auto", 5.0, 1.0)
    assert "encoder window clip + 1 s (at least 5 s)" in opts.describe()


def _reference_encoder(model, features: torch.Tensor) -> torch.Tensor:
    """The encoder written out for W frames: conv1, conv2, positions [:W/2], layers, norm."""
    enc = model.get_encoder()
    h = torch.nn.functional.gelu(enc.conv2(torch.nn.functional.gelu(enc.conv1(features)))).permute(0, 2, 1)
    h = h + enc.embed_positions.weight[: h.shape[1]]
    for layer in enc.layers:
        h = layer(h, None)
    return enc.layer_norm(h)


def test_encoder_window_reads_the_first_w_frames_and_is_removed_on_exit():
    model = tiny_whisper()
    enc = model.get_encoder()
    x = torch.randn(2, model.config.num_mel_bins, WINDOW_FRAMES, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        full = enc(x).last_hidden_state
        with encoder_window(model) as window:
            assert torch.equal(enc(x).last_hidden_state, full)  # frames None: the input as it is
            window.frames = 256
            short = enc(x).last_hidden_state  # (2, 128, d)
            with encoder_window(model) as inner:  # nested: the same handle
                assert inner is window
            direct = enc(x[..., :100]).last_hidden_state  # shorter inputs are read whole
        assert short.shape == (2, 128, model.config.d_model) and direct.shape[1] == 50
        torch.testing.assert_close(short, _reference_encoder(model, x[..., :256]), rtol=0, atol=1e-6)
        with pytest.raises(ValueError, match="3000"):  # transformers' own check is back
            enc(x[..., :256])
    assert type(enc.embed_positions).__name__ == "Embedding" and "forward" not in vars(enc)


def test_encoder_window_refuses_odd_or_too_long_inputs():
    model = tiny_whisper()
    with encoder_window(model), pytest.raises(LiteWhisperError, match="even number of mel frames"):
        model.get_encoder()(torch.zeros(1, model.config.num_mel_bins, 101))


def test_an_encoder_traced_inside_the_window_follows_the_input_length(tmp_path):
    import onnxruntime as ort

    from litewhisper.export.onnx import _Encoder, _export

    model = tiny_whisper()
    x = torch.randn(1, model.config.num_mel_bins, WINDOW_FRAMES, generator=torch.Generator().manual_seed(1))
    axes = {"input_features": {0: "batch_size", 2: "frames"}, "last_hidden_state": {0: "batch_size", 1: "positions"}}
    with encoder_window(model):
        _export(_Encoder(model), (x,), tmp_path / "enc.onnx", ["input_features"], ["last_hidden_state"], axes)
    session = ort.InferenceSession(str(tmp_path / "enc.onnx"), providers=["CPUExecutionProvider"])
    for frames in (WINDOW_FRAMES, 1024, 64):
        got = session.run(None, {"input_features": x[..., :frames].numpy()})[0]
        with torch.no_grad():
            want = _reference_encoder(model, x[..., :frames]).numpy()
        assert got.shape == (1, frames // 2, model.config.d_model)
        np.testing.assert_allclose(got, want, atol=2e-5)


# ---------------------------------------------------------------------------------------------- PyTorch decoding

SMALL = DecodeOptions.preset("leaderboard", max_new_tokens=8, window="auto", window_floor=5, window_margin=1)


@pytest.fixture(scope="module")
def bundle():
    from helpers import with_tokenizer
    from litewhisper.models.load import WhisperBundle

    model, processor = with_tokenizer(tiny_whisper(seed=11))
    model.generation_config.suppress_tokens = list(range(50257, 50363))  # never end-of-text, never special
    return WhisperBundle(model=model, processor=processor, name="tiny-random", path=None)


@pytest.fixture
def frames_read(bundle) -> list[int]:
    """Mel frames of every encoder call (conv1's input length)."""
    seen: list[int] = []
    hook = bundle.model.get_encoder().conv1.register_forward_pre_hook(lambda m, a: seen.append(a[0].shape[-1]))
    yield seen
    hook.remove()


def _noise(*seconds: float) -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    return [rng.standard_normal(int(16_000 * s)).astype(np.float32) * 0.1 for s in seconds]


def test_pytorch_encodes_each_short_clip_in_its_own_window(bundle, frames_read):
    from litewhisper.decode.transcribe import transcribe

    # 2 s + 1 s margin < 5 s floor -> 500 -> 512 frames; 5 s + 1 -> 600 -> 640; 4 s + 1 -> 512
    out = transcribe(bundle, _noise(2.0, 5.0, 4.0), SMALL)
    assert sorted(frames_read) == [512, 640]  # batches group equal windows: one encoder call each
    assert [t.duration_s for t in out] == [2.0, 5.0, 4.0]  # results in input order
    frames_read.clear()
    transcribe(bundle, _noise(2.0, 5.0), SMALL.replace(window="full"))
    assert frames_read == [WINDOW_FRAMES]


def test_pytorch_long_audio_keeps_full_windows_its_last_one_too(bundle, frames_read):
    from litewhisper.decode.transcribe import transcribe

    # timestamps on: the random model's first window ends at 29.98 s (as in test_budget); the second holds 10 s
    transcribe(bundle, _noise(40.0), SMALL.replace(timestamps=True, max_new_tokens=60))
    assert frames_read == [WINDOW_FRAMES, WINDOW_FRAMES]


def test_a_short_clips_second_window_is_sized_by_what_it_holds():
    # a 29-s clip whose first window ended at 20 s: the second holds 9 s -> 11 s -> 1152 frames
    assert AUTO.encoder_frames(29.0, 2000) == 1152 and AUTO.encoder_frames(29.0) == 3000
    assert AUTO.encoder_frames(30.5, 3000) == WINDOW_FRAMES  # long audio: full, its last window too


def test_plan_batches_groups_short_clips_by_window_keeping_input_order_within():
    from litewhisper.decode.transcribe import _Clip, plan_batches

    clips = [_Clip(i, str(i), "x", d) for i, d in enumerate((9.5, 2.0, 40.0, 3.0, 12.0, 4.0))]
    plan = [[c.index for c in batch] for _, batch in plan_batches(clips, 2, AUTO.encoder_frames)]
    assert plan == [[1, 3], [5], [0], [4], [2]]  # 1024 x3, 1152, 1408, then long
    assert [[c.index for c in b] for _, b in plan_batches(clips, 2, DecodeOptions().encoder_frames)] == [
        [0, 1],
        [3, 4],
        [5],
        [2],
    ]


@pytest.mark.real
def test_real_short_clips_keep_their_words_and_timestamps_with_auto(real_tiny_en):
    from helpers import require_shared_data
    from litewhisper.audio.load import load_audio
    from litewhisper.decode.transcribe import transcribe
    from litewhisper.evaluation.metrics import total, word_counts
    from litewhisper.evaluation.normalize import normalize

    jfk = load_audio(require_shared_data() / "misc" / "jfk.flac")  # 11 s
    full, auto = (transcribe(real_tiny_en, [jfk], word_timestamps=True, window=w)[0] for w in ("full", "auto"))
    counts = total([word_counts(normalize(full.text, "english"), normalize(auto.text, "english"))])
    assert counts.rate < 0.1, (full.text, auto.text)
    words = [w for s in auto.segments for w in s.words]
    assert len(words) >= 15 and all(0 <= w.start <= w.end <= auto.duration_s for w in words)
    assert auto.segments[-1].end > 9.0  # timestamps reach the end of the speech


@pytest.mark.real
def test_real_no_speech_rule_still_silences_noise_with_auto(real_tiny_en):
    """5 s of faint white noise: without the no-speech rule tiny.en hallucinates in both windows; with it (the
    default) both give nothing."""
    from litewhisper.decode.transcribe import transcribe

    noise = (np.random.default_rng(0).standard_normal(5 * 16_000) * 0.01).astype(np.float32)
    for window in ("full", "auto"):
        (bare,) = transcribe(real_tiny_en, [noise], DecodeOptions.preset("leaderboard", window=window))
        (ruled,) = transcribe(real_tiny_en, [noise], DecodeOptions(window=window))
        assert bare.text and ruled.text == "" and ruled.segments == [], window
