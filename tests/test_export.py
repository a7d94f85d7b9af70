"""ONNX export + deployed runtime: graphs equal PyTorch (encoder, decoder, one cached step against a full decoder
forward), lite encoders with reduced attention, int8, the export directory, errors, and real tiny.en."""

from __future__ import annotations

import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from test_attention import make_lowrank

from helpers import shared_manifest, tiny_whisper
from litewhisper.attention.reduced import use_reduced_attention
from litewhisper.errors import LiteWhisperError, ModelSourceError
from litewhisper.export.api import ExportError, export_model
from litewhisper.export.onnx import export_all, export_encoder, per_head_attention
from litewhisper.models.builtin import builtin_source
from litewhisper.models.deployed import EXPORT_MARKER, check_threads, load_deployed
from litewhisper.models.load import WhisperBundle, load_model
from litewhisper.models.processor import build_generation_config, build_processor


def _session(path):
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def _bundle(model) -> WhisperBundle:
    processor = build_processor(
        builtin_source("tiny.en")[1] / "tokenizer.json", model.config.num_mel_bins, model.config.vocab_size
    )
    model.generation_config = build_generation_config(processor.tokenizer, vocab_size=model.config.vocab_size)
    return WhisperBundle(model=model, processor=processor, name="tiny-random", path=None)


@pytest.fixture(scope="module")
def graphs(tmp_path_factory):
    model = tiny_whisper(seed=3)
    return model, export_all(model, tmp_path_factory.mktemp("onnx"))


def test_encoder_and_decoder_graphs_equal_pytorch(graphs):
    model, (enc_path, dec_path, past_path) = graphs
    feats = torch.randn(2, 80, 3000, generator=torch.Generator().manual_seed(0))  # (2, mels, frames), batch 2
    ids = torch.tensor([[50257, 50362, 400, 401, 402, 403]] * 2)  # (2, 6)
    with torch.no_grad():
        enc = model.get_encoder()(feats).last_hidden_state  # (2, 1500, 32)
        full = model(encoder_outputs=(enc,), decoder_input_ids=ids).logits  # (2, 6, vocab): no cache
    got_enc = _session(enc_path).run(None, {"input_features": feats.numpy()})[0]
    np.testing.assert_allclose(got_enc, enc.numpy(), atol=1e-4)
    for prompt in (1, 5):  # traced with 3 tokens: other lengths must work too
        first = _session(dec_path).run(None, {"input_ids": ids[:, :prompt].numpy(), "encoder_hidden_states": got_enc})
        np.testing.assert_allclose(first[0], full[:, :prompt].numpy(), atol=1e-4)
        # one cached step: the next token's logits from the caches equal the full decoder forward at that position
        past = _session(past_path)
        feed = {"input_ids": ids[:, prompt : prompt + 1].numpy()}
        feed.update({i.name: v for i, v in zip(past.get_inputs()[1:], first[1:], strict=False)})
        step = past.run(None, feed)
        np.testing.assert_allclose(step[0][:, 0], full[:, prompt].numpy(), atol=1e-4)
        assert step[1].shape == (2, 4, prompt + 1, 8)  # present.0.decoder.key grew by one position


def test_encoder_attention_is_traced_head_by_head_and_the_model_is_restored(graphs):
    model, (enc_path, *_) = graphs
    softmaxes = [n for n in onnx.load(str(enc_path)).graph.node if n.op_type == "Softmax"]
    cfg = model.config
    assert len(softmaxes) == cfg.encoder_layers * cfg.encoder_attention_heads  # one (b, 1, t, t) score per head
    before = cfg._attn_implementation
    feats = torch.randn(1, 80, 3000, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        reference = model.get_encoder()(feats).last_hidden_state
        with per_head_attention(model):
            assert cfg._attn_implementation != before
            per_head = model.get_encoder()(feats).last_hidden_state
    assert cfg._attn_implementation == before
    torch.testing.assert_close(per_head, reference, atol=1e-5, rtol=1e-5)


def _lite_model():
    model = tiny_whisper(d_model=128, heads=2, layers=2, ffn=256, seed=4)
    for layer, ranks in zip(model.model.encoder.layers, [(16, 32, 16), (96, 48, 80)], strict=True):
        make_lowrank(layer.self_attn, ranks, seed=ranks[0])
    use_reduced_attention(model, mode="auto", backend="torch")
    return model


def test_lite_encoder_with_reduced_attention_exports_as_matmuls(tmp_path):
    model = _lite_model()
    assert type(model.model.encoder.layers[0].self_attn).__name__ == "ReducedDimSelfAttention"
    export_encoder(model, tmp_path / "enc.onnx")
    ops = [n.op_type for n in onnx.load(str(tmp_path / "enc.onnx")).graph.node]
    assert "Gemm" not in ops and ops.count("MatMul") >= 2 * 6  # factorised q/k/v: two MatMuls each
    feats = torch.randn(1, 80, 3000, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        want = model.get_encoder()(feats).last_hidden_state.numpy()
    got = _session(tmp_path / "enc.onnx").run(None, {"input_features": feats.numpy()})[0]
    np.testing.assert_allclose(got, want, atol=1e-4)


@pytest.fixture(scope="module")
def exports(tmp_path_factory):
    root = tmp_path_factory.mktemp("exports")
    bundle = _bundle(tiny_whisper(seed=5))
    return {q: export_model(bundle, root / q, quantize=q) for q in ("int8", "none")}


def test_int8_export_runs_and_is_smaller(exports):
    int8, fp32 = exports["int8"], exports["none"]
    graphs = ("encoder_model", "decoder_model_merged")  # the int8 export keeps the fp32 graphs (transformers.js)
    for result, suffixes in ((int8, ("_quantized.onnx", ".onnx")), (fp32, (".onnx",))):
        names = sorted(p.name for p in (result.path / "onnx").iterdir())
        assert names == sorted(f"{g}{suffix}" for g in graphs for suffix in suffixes)
        for name in (
            "config.json",
            "generation_config.json",
            "tokenizer.json",
            "preprocessor_config.json",
            "ctranslate2/model.bin",
            "ctranslate2/tokenizer.json",
        ):
            assert (result.path / name).is_file(), name
    sizes = {
        s: sum((int8.path / "onnx" / f"{g}{s}").stat().st_size for g in graphs) for s in ("_quantized.onnx", ".onnx")
    }
    assert sizes["_quantized.onnx"] < 0.6 * sizes[".onnx"]  # the int8 graphs, beside the fp32 ones
    assert fp32.max_abs_diff["fp32"] < 1e-4 and int8.max_abs_diff["int8"] < 1.0
    marker = json.loads((int8.path / EXPORT_MARKER).read_text())
    assert marker["precision"] == "int8" and marker["encoders"] == {
        "int8": "onnx/encoder_model_quantized.onnx",
        "fp32": "onnx/encoder_model.onnx",
    }
    model = load_model(int8.path, threads=1)  # load_model recognises an export
    from litewhisper.decode.options import DecodeOptions
    from litewhisper.decode.transcribe import transcribe

    options = DecodeOptions.preset("leaderboard", max_new_tokens=5)
    out = transcribe(model, [np.zeros(16000, np.float32) + 0.01, np.full(8000, 0.02, np.float32)], options)
    assert [o.duration_s for o in out] == [1.0, 0.5] and all(o.language == "en" for o in out)


def test_export_errors_leave_nothing_half_written(exports, tmp_path, monkeypatch):
    target = exports["none"].path
    before = sorted(p.name for p in target.iterdir())
    with pytest.raises(LiteWhisperError, match="overwrite=True"):  # the library names its argument
        export_model(_bundle(tiny_whisper()), target)
    assert sorted(p.name for p in target.iterdir()) == before
    with pytest.raises(ExportError, match="already an export"):
        export_model(target, tmp_path / "again")
    with pytest.raises(ExportError, match="cannot be exported"):
        export_model(WhisperBundle(torch.nn.Linear(2, 2), None, "linear", None), tmp_path / "linear")
    assert not (tmp_path / "linear").exists() and not (tmp_path / "again").exists()
    for bad in (0, -1, 1.5):
        with pytest.raises(LiteWhisperError, match="threads"):
            check_threads(bad)
    import importlib.util

    real_find = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda n, *a: None if n == "onnxruntime" else real_find(n, *a))
    with pytest.raises(LiteWhisperError, match=r"litewhisper\[onnx\]"):
        load_deployed(target)


def test_truncated_onnx_is_a_clear_error(exports, tmp_path):
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(exports["none"].path, copy)
    enc = copy / "onnx" / "encoder_model.onnx"
    enc.write_bytes(enc.read_bytes()[: enc.stat().st_size // 2])
    with pytest.raises(ModelSourceError, match="corrupt or truncated"):
        load_deployed(copy)


@pytest.mark.parametrize("remove", ["ctranslate2", "ctranslate2/model.bin"])
def test_missing_ctranslate2_decoder_names_the_folder_and_the_fix(exports, tmp_path, remove):
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(exports["none"].path, copy)
    target = copy / remove
    shutil.rmtree(target) if target.is_dir() else target.unlink()
    with pytest.raises(ModelSourceError) as exc:
        load_model(copy, threads=1)
    message = str(exc.value)
    assert message.startswith(
        f"{target} is missing: an export holds its decoder as a CTranslate2 model in ctranslate2/"
    )
    assert f"re-export the model with `litewhisper export MODEL -o {copy} --overwrite`" in message
    assert "Repo id" not in message


@pytest.mark.real
def test_real_tiny_en_export_transcribes_like_pytorch(real_tiny_en, tmp_path):
    from helpers import require_shared_data
    from litewhisper.decode.options import DecodeOptions
    from litewhisper.decode.transcribe import transcribe

    data = require_shared_data()
    # spelled-out letters and digit strings, where the runtimes used to part (issue 28: "Rub out, T.G.J. WB, 79.59"
    # vs "Robout, T.G.J. W.B. 79.59", "443 631 2" vs "443-6312."), and read speech
    names = ("an4/train/an89-fbbh-b", "an4/train/cen7-fbbh-b", "an4/train/an36-fejs-b", "timit_nltk/dr1-fvmh0_sa1")
    clips = [str(data / r["path"]) for r in shared_manifest("dev", "en") if r["path"].rsplit(".", 1)[0] in names]
    assert len(clips) == len(names)
    result = export_model(real_tiny_en, tmp_path / "tiny.en", quantize="none", onnx_decoder=False)
    assert result.max_abs_diff["fp32"] < 1e-3
    deployed = load_model(result.path, threads=2)
    # greedy without and with timestamps (and the no-speech rule); no fallback: a window that falls back samples,
    # from another generator in each runtime (on 120 dev clips with the default options: identical text except
    # two such windows)
    for options in (DecodeOptions.preset("leaderboard"), DecodeOptions(temperature=(0.0,))):
        want = transcribe(real_tiny_en, clips, options)
        got = transcribe(deployed, clips, options)
        # the same greedy tokens: the same text, segments and counts
        assert [(t.text, t.segments, t.n_tokens, t.hit_token_limit) for t in got] == [
            (t.text, t.segments, t.n_tokens, t.hit_token_limit) for t in want
        ]
