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
