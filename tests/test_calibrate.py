"""Calibration statistics: streaming moments, windowing, merge, save/load, hooks, q/k/v derivation."""

import math

import numpy as np
import pytest
import torch

from helpers import tiny_whisper
from litewhisper.compression.calibration import CalibrationConfig, calibrate, iter_windows, moment_hooks
from litewhisper.compression.stats import ActivationStats, Moments
from litewhisper.errors import CalibrationError
from litewhisper.models.linears import encoder_linears

SR = 16_000


def clips(seconds=(3, 5, 7), seed=0):
    rng = np.random.default_rng(seed)
    return [(0.1 * rng.standard_normal(int(SR * s))).astype(np.float32) for s in seconds]


def no_hooks(model) -> bool:
    return all(not m._forward_hooks for m in model.modules())


def test_moments_match_direct_statistics():
    rng = torch.Generator().manual_seed(0)
    x = torch.randn(500, 6, generator=rng, dtype=torch.float64)
    m = Moments.zeros(6)
    m.add_(x[:200])
    m.add_(x[200:])
    assert m.count == 500
    torch.testing.assert_close(m.mean, x.mean(0), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(m.covariance(), torch.cov(x.T, correction=0), rtol=1e-10, atol=1e-12)


def test_output_moments_through_linear_equal_direct():
    torch.manual_seed(0)
    lin = torch.nn.Linear(5, 7).double()
    x = torch.randn(300, 5, dtype=torch.float64)
    mx, my = Moments.zeros(5), Moments.zeros(7)
    mx.add_(x)
    my.add_(lin(x).detach())
    derived = mx.through(lin)
    torch.testing.assert_close(derived.sum, my.sum, rtol=1e-12, atol=1e-10)
    torch.testing.assert_close(derived.gram, my.gram, rtol=1e-12, atol=1e-9)


def test_qkv_from_shared_inputs_equals_direct_outputs(tiny_model):
    audio = clips()
    shared = calibrate(tiny_model, audio, CalibrationConfig(share_inputs=True))
    direct = calibrate(tiny_model, audio, CalibrationConfig(share_inputs=False))
    assert shared.layers.keys() == direct.layers.keys() and len(shared.layers) == 12
    for name, s in shared.layers.items():
        d = direct.layers[name]
        assert s.moments.count == d.moments.count == 3 * 1500
        torch.testing.assert_close(s.moments.covariance(), d.moments.covariance(), rtol=1e-5, atol=1e-7)
        torch.testing.assert_close(s.moments.mean, d.moments.mean, rtol=1e-5, atol=1e-7)


def test_merge_of_shards_equals_one_pass(tiny_model):
    audio = clips((3, 5, 7, 2))
    config = CalibrationConfig(batch_size=1)
    whole = calibrate(tiny_model, audio, config)
    a = calibrate(tiny_model, audio[:2], config)
    b = calibrate(tiny_model, audio[2:], config)
    merged = a.merge(b)
    assert merged.metadata["clips"] == "4" and merged.frames == whole.frames == 4 * 1500
    for name, s in whole.layers.items():
        scale = s.moments.gram.abs().max().item()
        torch.testing.assert_close(merged.layers[name].moments.gram, s.moments.gram, rtol=1e-12, atol=1e-12 * scale)
        torch.testing.assert_close(
            merged.layers[name].moments.sum, s.moments.sum, rtol=1e-12, atol=1e-12 * s.moments.sum.abs().max().item()
        )


def test_save_load_round_trip_is_exact(tiny_model, tmp_path):
    stats = calibrate(tiny_model, clips((2,)))
    path = stats.save(tmp_path / "stats.safetensors")
    loaded = ActivationStats.load(path)
    assert loaded.metadata == stats.metadata
    assert loaded.metadata["signature"] == "d_model=32,layers=2,heads=4,ffn=64,mels=80"
    for name, s in stats.layers.items():
        t = loaded.layers[name]
        assert (t.d_in, t.bias, t.moments.count) == (s.d_in, s.bias, s.moments.count)
        assert torch.equal(t.moments.gram, s.moments.gram) and torch.equal(t.moments.sum, s.moments.sum)
    assert loaded.layers["layers.0.self_attn.k_proj"].bias is False


def test_load_rejects_other_files(tmp_path):
    with pytest.raises(CalibrationError, match="not found"):
        ActivationStats.load(tmp_path / "missing.safetensors")
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"not safetensors at all")
    with pytest.raises(CalibrationError, match="not a litewhisper statistics file"):
        ActivationStats.load(bad)


def test_audio_frames_count_only_positions_with_audio(tiny_model):
    stats = calibrate(tiny_model, clips((3, 5.5)), CalibrationConfig(frames="audio"))
    assert stats.frames == 150 + math.ceil(5.5 * SR / 320)


def test_windows_clip_and_pack():
    audio = clips((10, 25, 40))
    clip = list(iter_windows(audio, "clip"))
    assert [w.audio_samples for w in clip] == [10 * SR, 25 * SR, 30 * SR, 10 * SR]
    pack = list(iter_windows(audio, "pack"))
    assert [w.audio_samples for w in pack] == [30 * SR, 30 * SR, 15 * SR]
    np.testing.assert_array_equal(pack[0].samples, np.concatenate(audio)[: 30 * SR])


def test_short_windows_encode_each_clip_at_the_policy_length(tiny_model):
    """Issue 31 item 3: windows as `--window auto` encodes them (clip + 2 s, at least 10 s, in 128-frame steps):
    3 s -> 1024 frames (512 positions), 12 s -> 1408 (704); a 40-s clip stays 3000 + 3000 (long audio: full)."""
    seen: list[int] = []
    hook = tiny_model.model.encoder.conv1.register_forward_pre_hook(lambda m, a: seen.append(a[0].shape[-1]))
    try:
        stats = calibrate(tiny_model, clips((3, 12, 40)), CalibrationConfig(windowing="short", batch_size=8))
    finally:
        hook.remove()
    assert sorted(seen) == [1024, 1408, 3000] and stats.frames == 512 + 704 + 2 * 1500  # long: one call of 2
    audio = calibrate(tiny_model, clips((3,)), CalibrationConfig(windowing="short", frames="audio"))
    assert audio.frames == 150  # positions carrying audio only
    assert tiny_model.model.encoder(torch.zeros(1, 80, 3000)).last_hidden_state.shape[1] == 1500  # hook removed


def test_max_clips_and_metadata(tiny_model):
    stats = calibrate(tiny_model, clips((1, 1, 1)), CalibrationConfig(max_clips=2, windowing="pack"))
    assert stats.metadata["clips"] == "2" and stats.metadata["windows"] == "1"
    assert stats.metadata["windowing"] == "pack" and stats.frames == 1500


def test_hooks_removed_after_exception(tiny_model):
    encoder = tiny_model.model.encoder
    with pytest.raises(RuntimeError, match="boom"):
        with moment_hooks(encoder) as collector:
            assert not no_hooks(tiny_model) and len(collector.sites) == 2 * 4  # qkv, out, fc1, fc2
            raise RuntimeError("boom")
    assert no_hooks(tiny_model)


def test_nan_activations_raise_and_remove_hooks(tiny_model):
    with torch.no_grad():
        tiny_model.model.encoder.layers[1].fc1.weight[0, 0] = float("nan")
    with pytest.raises(CalibrationError, match="non-finite"):
        calibrate(tiny_model, clips((1,)))
    assert no_hooks(tiny_model)


def test_bad_input_errors(tiny_model):
    with pytest.raises(CalibrationError, match="empty"):
        calibrate(tiny_model, [])
    with pytest.raises(CalibrationError, match="NaN"):
        calibrate(tiny_model, [np.array([0.0, np.nan], dtype=np.float32)])
    with pytest.raises(CalibrationError, match="windowing"):
        CalibrationConfig(windowing="slide")
    with pytest.raises(CalibrationError, match="frames"):
        CalibrationConfig(frames="some")
    with pytest.raises(CalibrationError, match="max_clips"):
        CalibrationConfig(max_clips=0)
    with pytest.raises(CalibrationError, match="batch_size"):
        CalibrationConfig(batch_size=0)


def test_merge_refuses_other_model(tiny_model):
    a = calibrate(tiny_model, clips((1,)))
    b = calibrate(tiny_whisper(d_model=48), clips((1,)))
    with pytest.raises(CalibrationError, match="signature"):
        a.merge(b)


def test_check_matches(tiny_model):
    stats = calibrate(tiny_model, clips((1,)))
    stats.check_matches(encoder_linears(tiny_model.model.encoder))
    other = tiny_whisper(d_model=48)
    with pytest.raises(CalibrationError, match="do not match"):
        stats.check_matches(encoder_linears(other.model.encoder))
