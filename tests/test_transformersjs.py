"""An export loads in the runtimes that know Whisper in ONNX (issue 32): the merged decoder run by onnxruntime's
Python API (both values of use_cache_branch) and transformers.js in Node give PyTorch's greedy tokens; the layout
and the config files are those transformers.js reads."""

from __future__ import annotations

import importlib.util
import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from test_export import _bundle

from helpers import REPO_ROOT, tiny_whisper, tiny_whisper_config
from litewhisper.errors import LiteWhisperError
from litewhisper.export.api import export_model
from litewhisper.export.merge import USE_CACHE_BRANCH, run_merged

STEPS = 8  # greedy tokens after the prompt
SOT, NO_TIMESTAMPS = 50257, 50362  # tiny.en's <|startoftranscript|> and <|notimestamps|>


def _transformersjs_module():
    """benchmarks/transformersjs.py: finds the npm package and runs benchmarks/transformersjs.mjs in Node."""
    path = REPO_ROOT / "benchmarks" / "transformersjs.py"
    spec = importlib.util.spec_from_file_location("bench_transformersjs", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _varied_model():
    """A tiny random Whisper whose greedy tokens change from step to step and from clip to clip (the default init
    scale, 0.02, repeats one token whatever the audio)."""
    from transformers import WhisperForConditionalGeneration

    config = tiny_whisper_config()
    config.init_std = 0.5
    torch.manual_seed(7)
    return WhisperForConditionalGeneration(config).eval()


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """A tiny random Whisper (real tiny.en tokenizer) exported with the defaults: int8 and fp32 graphs."""
    model = _varied_model()
    result = export_model(_bundle(model), tmp_path_factory.mktemp("tjs") / "export")
    return model, result.path


def _features(seed: int = 0) -> np.ndarray:
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(1, 80, 3000, generator=gen).clamp(-1.5, 1.5).numpy()  # (1, n_mels, 3000) log-mel-like


def _session(path):
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def _greedy(logits_of, prompt: list[int], steps: int = STEPS) -> list[int]:
    """Greedy tokens: `logits_of(ids (1, t))` -> logits (1, t, vocab); the prompt included."""
    ids = list(prompt)
    for _ in range(steps):
        ids.append(int(logits_of(np.array([ids]))[0, -1].argmax()))
    return ids


def _pytorch_logits(model, features: np.ndarray):
    with torch.no_grad():
        states = model.get_encoder()(torch.from_numpy(features)).last_hidden_state

    def logits_of(ids: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return model(encoder_outputs=(states,), decoder_input_ids=torch.from_numpy(ids)).logits.numpy()

    return logits_of


def test_layout_and_config_files_are_what_transformersjs_reads(exported):
    _, path = exported
    assert sorted(p.name for p in (path / "onnx").iterdir()) == [
        "decoder_model_merged.onnx",
        "decoder_model_merged_quantized.onnx",
        "encoder_model.onnx",
        "encoder_model_quantized.onnx",
    ]
    marker = json.loads((path / "litewhisper_export.json").read_text())
    assert set(marker["encoders"]) == {"int8", "fp32"} and marker["verify"]["decoder_max_abs_diff"] < 1e-4
    config = json.loads((path / "config.json").read_text())
    assert "transformers.js_config" not in config  # both dtypes present: transformers.js picks by device
    assert config["model_type"] == "whisper" and config["decoder_layers"] == 2
    generation = json.loads((path / "generation_config.json").read_text())
    assert generation["no_timestamps_token_id"] == NO_TIMESTAMPS and generation["decoder_start_token_id"] == SOT
    assert generation["is_multilingual"] is False and generation["begin_suppress_tokens"] == [220, 50256]
    assert isinstance(generation["suppress_tokens"], list)
    assert json.loads((path / "preprocessor_config.json").read_text())["feature_size"] == 80
    assert json.loads((path / "tokenizer_config.json").read_text())["tokenizer_class"] == "WhisperTokenizer"
    graph = onnx.load(str(path / "onnx" / "decoder_model_merged.onnx"), load_external_data=False).graph
    assert [n.op_type for n in graph.node][-1] == "If" and graph.input[-1].name == USE_CACHE_BRANCH
    names = [i.name for i in graph.initializer]
    assert len(names) == len(set(names)) and not any(n.endswith("_merged1") for n in names)  # weights stored once


def test_merged_decoder_in_onnxruntime_gives_pytorch_greedy_tokens(exported):
    model, path = exported
    features = _features(1)
    states = _session(path / "onnx" / "encoder_model.onnx").run(None, {"input_features": features})[0]
    merged = _session(path / "onnx" / "decoder_model_merged.onnx")
    prompt = [SOT, NO_TIMESTAMPS]
    want = _greedy(_pytorch_logits(model, features), prompt)
    cached = _greedy(lambda ids: run_merged(merged, states, ids, prompt=len(prompt)), prompt)  # False, then True
    uncached = _greedy(lambda ids: run_merged(merged, states, ids, prompt=ids.shape[1]), prompt)  # False only
    assert cached == want and uncached == want and len(set(want[2:])) > 3  # not one token repeated
    ids = np.array([want])
    reference = _pytorch_logits(model, features)(ids)
    # fp32 kernels differ across CPUs (one logit of ~3.8 off by 1.01e-4 on an AVX-512 machine): relative tolerance too
    np.testing.assert_allclose(run_merged(merged, states, ids, prompt=2), reference, atol=1e-4, rtol=1e-4)
    quantized = _session(path / "onnx" / "decoder_model_merged_quantized.onnx")
    q_logits = run_merged(quantized, states, ids, prompt=2)  # both branches of the int8 graph run
    assert q_logits.shape == reference.shape and np.isfinite(q_logits).all()


def test_int8_only_leaves_out_the_fp32_graphs_and_tells_transformersjs(tmp_path):
    result = export_model(_bundle(tiny_whisper(seed=7)), tmp_path / "q8", int8_only=True, rotate=False)
    assert sorted(p.name for p in (result.path / "onnx").iterdir()) == [
        "decoder_model_merged_quantized.onnx",
        "encoder_model_quantized.onnx",
    ]
    assert json.loads((result.path / "config.json").read_text())["transformers.js_config"] == {"dtype": "q8"}
    assert set(json.loads((result.path / "litewhisper_export.json").read_text())["encoders"]) == {"int8"}
    with pytest.raises(LiteWhisperError, match="int8_only"):
        export_model(_bundle(tiny_whisper()), tmp_path / "bad", quantize="none", int8_only=True)


def test_transformersjs_in_node_gives_pytorch_greedy_tokens(request, tmp_path):
    tjs = _transformersjs_module()
    package, why = tjs.find_transformersjs()
    if package is None:
        pytest.skip(why)
    model, path = request.getfixturevalue("exported")  # after the skip: no export when Node cannot run it
    features = [_features(seed) for seed in (1, 2)]
    for i, f in enumerate(features):
        np.asarray(f, dtype="<f4").tofile(tmp_path / f"features{i}.f32")
    items = [{"id": str(i), "features": str(tmp_path / f"features{i}.f32")} for i in range(len(features))]
    options = {"max_new_tokens": STEPS, "min_new_tokens": STEPS}  # a random model may end early: it may not here
    got = {}
    for dtype in ("fp32", "q8"):
        job = {"model": str(path), "dtype": dtype, "mode": "generate", "items": items, "options": options}
        got[dtype] = [r["tokens"] for r in tjs.run_transformersjs(job, tmp_path, timeout=120)]
    with torch.no_grad():  # the generated tokens (Hugging Face's generate leaves out the prompt)
        want = model.generate(torch.from_numpy(np.concatenate(features)), **options).tolist()
    assert want[0] != want[1] and len(set(want[0])) > 3
    # transformers.js's prompt and suppression (from generation_config.json) and its cached decoding = PyTorch's
    assert got["fp32"] == [[SOT, NO_TIMESTAMPS, *w] for w in want]
    assert all(len(t) == 2 + STEPS and t[:2] == [SOT, NO_TIMESTAMPS] for t in got["q8"])
    job = {"model": str(path), "dtype": "q8", "mode": "pipeline", "options": {"max_new_tokens": 4}}
    np.zeros(16000, "<f4").tofile(tmp_path / "silence.f32")
    job["items"] = [{"id": "silence", "audio": str(tmp_path / "silence.f32")}]
    (record,) = tjs.run_transformersjs(job, tmp_path, timeout=120)  # processor + tokenizer files load and decode
    assert isinstance(record["text"], str)


def test_cli_int8_only_reaches_export_model_and_needs_int8(tmp_path, monkeypatch, capsys):
    from helpers import record_exports
    from litewhisper.cli import main

    seen = record_exports(monkeypatch, tmp_path)
    assert main(["export", "m", "-o", str(tmp_path / "a"), "--int8-only"]) == 0
    assert main(["export", "m", "-o", str(tmp_path / "b")]) == 0
    assert [s["int8_only"] for s in seen] == [True, False]
    assert main(["export", "m", "-o", str(tmp_path / "c"), "--int8-only", "--quantize", "none"]) == 2
    assert "--int8-only needs --quantize int8" in capsys.readouterr().err and len(seen) == 2


def _toy_decoder(path, weight: np.ndarray, with_past: bool) -> None:
    """A decoder-shaped toy: logits = embed[input_ids] @ W, the self-attention "cache" = the embedded tokens.
    Both graphs name their weight "W" (different values) and share the embedding (same values)."""
    from onnx import TensorProto, helper, numpy_helper

    def value(name, shape):
        return helper.make_tensor_value_info(name, TensorProto.FLOAT, shape)

    embed = np.arange(12, dtype=np.float32).reshape(4, 3)  # (vocab 4, d 3)
    inits = [numpy_helper.from_array(embed, "embed"), numpy_helper.from_array(weight, "W")]
    inits.append(numpy_helper.from_array(np.array([1], np.int64), "axes"))  # 1-D int64: stays in its branch
    nodes = [
        helper.make_node("Gather", ["embed", "input_ids"], ["h"]),  # (b, t, 3)
        helper.make_node("MatMul", ["h", "W"], ["logits"]),  # (b, t, 2)
        helper.make_node("Unsqueeze", ["h", "axes"], ["new"]),  # (b, 1, t, 3)
    ]
    inputs = [helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["batch_size", "seq"])]
    outputs = [value("logits", ["batch_size", "seq", 2]), value("present.0.decoder.key", ["batch_size", 1, "t", 3])]
    if with_past:
        inputs += [value(f"past_key_values.0.{p}.key", ["batch_size", 1, "past", 3]) for p in ("decoder", "encoder")]
        nodes.append(
            helper.make_node("Concat", ["past_key_values.0.decoder.key", "new"], ["present.0.decoder.key"], axis=2)
        )
    else:
        inputs.append(value("encoder_hidden_states", ["batch_size", 1, 3]))
        outputs.append(value("present.0.encoder.key", ["batch_size", 1, "t", 3]))
        nodes += [
            helper.make_node("Identity", ["new"], [o]) for o in ("present.0.decoder.key", "present.0.encoder.key")
        ]
    graph = helper.make_graph(nodes, "toy", inputs, outputs, inits)
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))


def test_merge_keeps_same_named_different_weights_apart_and_shares_equal_ones(tmp_path):
    from litewhisper.export.merge import merge_export_decoders

    first, step = np.eye(3, 2, dtype=np.float32), -np.ones((3, 2), np.float32)
    _toy_decoder(tmp_path / "decoder_model.onnx", first, with_past=False)
    _toy_decoder(tmp_path / "decoder_with_past_model.onnx", step, with_past=True)
    (merged,) = merge_export_decoders(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["decoder_model_merged.onnx"]  # the pair is removed
    graph = onnx.load(str(merged)).graph
    assert sorted(i.name for i in graph.initializer) == ["W", "W_merged1", "embed"]
    ids = np.array([[1, 2, 3]])
    logits = run_merged(_session(merged), np.zeros((1, 1, 3), np.float32), ids, prompt=2)
    embed = np.arange(12, dtype=np.float32).reshape(4, 3)
    np.testing.assert_array_equal(logits[0, :2], embed[[1, 2]] @ first)  # use_cache_branch false: decoder_model
    np.testing.assert_array_equal(logits[0, 2], embed[3] @ step)  # true: decoder_with_past_model
