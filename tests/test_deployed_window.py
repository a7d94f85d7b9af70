"""The encoder window policy in an export and the deployed runtime (issue 31): the exported encoders read any
window length and match PyTorch; with window="auto" the runtime encodes a short clip's W frames instead of 30 s
(audio longer than 30 s keeps 3000 in every window), word timestamps and language detection still run, and an
export from before (encoder fixed to 3000 frames) refuses "auto" with a clear error."""

from __future__ import annotations

import json
import shutil

import numpy as np
import onnx
import pytest
import torch
from test_transcribe import make_tiny_bundle

from helpers import SHARED_DATA, shared_manifest, tiny_whisper, with_tokenizer
from litewhisper.constants import WINDOW_FRAMES
from litewhisper.decode.options import DecodeOptions
from litewhisper.decode.transcribe import transcribe
from litewhisper.errors import LiteWhisperError
from litewhisper.export.api import export_model
from litewhisper.models.deployed import EXPORT_MARKER, load_deployed, read_marker
from litewhisper.models.encoder_window import encoder_window
from litewhisper.models.load import WhisperBundle, load_model

SR = 16_000
GREEDY = DecodeOptions.preset("leaderboard", max_new_tokens=8)  # greedy, no timestamps, no fallback
AUTO = GREEDY.replace(window="auto")
# every window fails the log-probability test, so each is decoded at 0.5 then 1.0 (tests/test_deployed_decoding.py)
FALLBACK = AUTO.replace(temperature=(0.5, 1.0), logprob_threshold=0.0, no_speech_threshold=None)


def _noise(seconds: float, seed: int = 0) -> np.ndarray:
    return (np.random.default_rng(seed).standard_normal(int(seconds * SR)) * 0.1).astype(np.float32)


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """A tiny random model exported in int8 (the fp32 encoder kept beside it)."""
    model, processor = with_tokenizer(tiny_whisper(seed=5))
    bundle = WhisperBundle(model=model, processor=processor, name="tiny-random", path=None)
    result = export_model(bundle, tmp_path_factory.mktemp("export") / "int8", quantize="int8", onnx_decoder=False)
    return bundle, result.path


def _spy(monkeypatch, model) -> list[tuple[int, ...]]:
    """The input_features shapes the deployed model's encoder session runs, in order."""
    seen, run = [], model.session.run
    monkeypatch.setattr(
        model.session, "run", lambda out, feeds: seen.append(feeds["input_features"].shape) or run(out, feeds)
    )
    return seen


@pytest.mark.parametrize(("precision", "atol"), [("fp32", 1e-4), ("int8", 1e-2)])  # int8 seen: 1e-3
def test_exported_encoder_has_a_dynamic_time_axis_and_matches_pytorch(exported, precision, atol):
    bundle, path = exported
    marker = read_marker(path)
    assert marker["encoder_window"] == "dynamic"
    assert marker["verify"]["encoder_max_abs_diff"][precision] < atol  # export checked 3000 and 1024 frames
    graph = onnx.load(str(path / marker["encoders"][precision])).graph
    dims = [
        [d.dim_param or d.dim_value for d in t.type.tensor_type.shape.dim] for t in (graph.input[0], graph.output[0])
    ]
    assert dims == [["batch_size", 80, "encoder_frames"], ["batch_size", "encoder_sequence_length", 32]]
    model = load_deployed(path, threads=1, precision=precision)
    assert model.fixed_frames is None
    x = torch.randn(1, 80, WINDOW_FRAMES, generator=torch.Generator().manual_seed(2)).clamp(-1.5, 1.5)
    for frames in (WINDOW_FRAMES, 1024):
        with torch.no_grad(), encoder_window(bundle.model):
            want = bundle.model.get_encoder()(x[..., :frames]).last_hidden_state.numpy()  # (1, W/2, d)
        got = model.encode(x[..., :frames].numpy())
        assert got.shape == (1, frames // 2, 32)
        np.testing.assert_allclose(got, want, rtol=0, atol=atol)


def test_a_rotated_lite_encoder_with_reduced_attention_exports_dynamic_too(tmp_path):
    """Low-rank factors (rotated for int8) and reduced-dimension attention trace with the dynamic time axis."""
    from test_export_int8 import _lite_model

    model, processor = with_tokenizer(_lite_model())
    bundle = WhisperBundle(model=model, processor=processor, name="lite-random", path=None)
    result = export_model(bundle, tmp_path / "int8", quantize="int8", onnx_decoder=False, int8_only=True)
    deployed = load_deployed(result.path, threads=1)
    x = torch.randn(1, 80, WINDOW_FRAMES, generator=torch.Generator().manual_seed(3)).clamp(-1.5, 1.5)
    with torch.no_grad(), encoder_window(model):
        want = model.get_encoder()(x[..., :1024]).last_hidden_state.numpy()  # (1, 512, 128)
    got = deployed.encode(x[..., :1024].numpy())
    assert got.shape == want.shape and np.linalg.norm(got - want) / np.linalg.norm(want) < 0.02  # seen 0.003


def test_auto_encodes_a_short_clip_as_its_window_not_30_seconds(exported, monkeypatch):
    model = load_model(exported[1], threads=1)
    seen = _spy(monkeypatch, model)
    clip = _noise(3.5)
    for options, frames in (
        (GREEDY, 3000),
        (AUTO, 1024),  # 3.5 s + 2 s margin < 10 s floor: 1000 frames -> 1024
        (AUTO.replace(window_floor=3, window_margin=1), 512),  # 4.5 s: 450 -> 512
        (FALLBACK, 1024),  # re-decoded at 0.5 and 1.0 from the same encoder output
    ):
        seen.clear()
        (out,) = transcribe(model, [clip], options)
        assert seen == [(1, 80, frames)]
        assert out.n_tokens > 0 and out.duration_s == 3.5


def test_a_long_clip_keeps_30_s_windows_its_last_one_too(exported, monkeypatch):
    model = load_model(exported[1], threads=1)
    seen = _spy(monkeypatch, model)
    clip = _noise(45.0, seed=1)  # without timestamps each window moves on by 30 s: 0-30 s, 30-45 s
    transcribe(model, [clip], GREEDY)
    assert seen == [(1, 80, 3000)] * 2
    seen.clear()
    (out,) = transcribe(model, [clip], AUTO.replace(tokens_per_second=None))
    assert seen == [(1, 80, 3000)] * 2  # long audio: the same windows as "full", so the same transcript
    assert out.duration_s == 45.0


def test_word_timestamps_align_over_the_shortened_window(exported, monkeypatch):
    """faster-whisper aligns with num_frames = 3000 (the padded window); CTranslate2 clamps it to the W/2
    positions it is given, so the words lie within the window."""
    model = load_model(exported[1], threads=1)
    aligned, align = [], model.pipeline.model.align
    monkeypatch.setattr(
        model.pipeline.model, "align", lambda f, *a, **k: aligned.append((f.shape[1], a[2])) or align(f, *a, **k)
    )
    options = DecodeOptions(window="auto", word_timestamps=True, temperature=0.0, max_new_tokens=12)
    (out,) = transcribe(model, [_noise(6.0, seed=3)], options)
    assert aligned and all(positions == 512 for positions, _ in aligned)  # 1024 frames
    words = [w for s in out.segments for w in s.words or []]
    assert words and all(0 <= w.start <= w.end <= 1024 / 100 for w in words)


def test_language_detection_encodes_the_first_window_with_auto(tmp_path, monkeypatch):
    bundle = make_tiny_bundle(multilingual=True, seed=2)
    path = export_model(bundle, tmp_path / "fp32", quantize="none", onnx_decoder=False).path
    model = load_model(path, threads=1)
    assert model.is_multilingual
    seen = _spy(monkeypatch, model)
    for seconds, frames in ((3.5, [1024, 1024]), (40.0, [3000, 3000, 3000])):  # detection, then each window
        seen.clear()
        (out,) = transcribe(model, [_noise(seconds, seed=4)], AUTO)  # language None: detected on the first window
        assert [s[-1] for s in seen] == frames
        assert out.language and isinstance(out.language, str)


def test_an_export_with_a_fixed_30_s_encoder_refuses_auto(exported, tmp_path):
    """An export made before issue 31 (encoder traced for exactly 3000 frames, no `encoder_window` in the marker)
    still decodes with window="full" and names the fix for "auto"."""
    from litewhisper.export.onnx import _Encoder, _export

    bundle, path = exported
    old = shutil.copytree(path, tmp_path / "old")
    marker = read_marker(old)
    axes = {"input_features": {0: "batch_size"}, "last_hidden_state": {0: "batch_size"}}  # the former export's
    x, encoder = torch.zeros(1, 80, WINDOW_FRAMES), old / marker["encoders"]["int8"]
    _export(_Encoder(bundle.model), (x,), encoder, ["input_features"], ["last_hidden_state"], axes)
    marker.pop("encoder_window")
    (old / EXPORT_MARKER).write_text(json.dumps(marker))
    model = load_model(old, threads=1)
    assert model.fixed_frames == WINDOW_FRAMES
    assert transcribe(model, [_noise(2.0)], GREEDY)[0].n_tokens > 0
    with pytest.raises(LiteWhisperError, match=r"reads exactly 3000 mel frames.*--overwrite.*--window full"):
        transcribe(model, [_noise(2.0)], AUTO)


@pytest.mark.real
def test_real_tiny_en_export_decodes_short_clips_alike_with_auto(real_tiny_en, tmp_path):
    """tiny.en int8 on three short read-speech dev clips (LJSpeech): the 10-s window decodes at most one word
    differently from the 30-s one, and makes no more word errors (seen: 1 word differs, where "full" erred)."""
    from litewhisper.audio.load import load_audio
    from litewhisper.evaluation.metrics import total, word_counts
    from litewhisper.evaluation.normalize import normalize

    path = export_model(real_tiny_en, tmp_path / "int8", quantize="int8", onnx_decoder=False).path
    model = load_model(path, threads=2)
    rows = [r for r in shared_manifest("dev", "en") if r["path"].startswith("ljspeech/") and r["duration_s"] < 8][:3]
    clips = [load_audio(SHARED_DATA / r["path"]) for r in rows]
    decoded = {w: transcribe(model, clips, DecodeOptions(window=w)) for w in ("full", "auto")}
    full, auto = ([normalize(t.text, "english") for t in out] for out in decoded.values())
    refs = [normalize(r["text"], "english") for r in rows]
    assert all(a and word_counts(f, a).errors <= 1 for f, a in zip(full, auto, strict=True))
    assert total(map(word_counts, refs, auto)).errors <= total(map(word_counts, refs, full)).errors
