"""CTranslate2 model.bin reader: exact round trip of tiny random Whispers written by ctranslate2's converter."""

from __future__ import annotations

import shutil
import struct

import ctranslate2
import pytest
import torch

from helpers import tiny_whisper
from litewhisper.errors import ModelSourceError
from litewhisper.models.builtin import builtin_source
from litewhisper.models.ct2 import load_ct2_directory, read_model_bin, whisper_config, whisper_state_dict
from litewhisper.models.processor import build_processor


def _tokenizer_json():
    return builtin_source("tiny.en")[1] / "tokenizer.json"


def write_ct2(model, root, quantization: str):
    """Save `model` as a HF dir, convert it with ctranslate2 (`quantization`), add tokenizer.json; return dir."""
    hf_dir, out = root / "hf", root / f"ct2_{quantization}"
    if not hf_dir.exists():
        model.save_pretrained(hf_dir)
        build_processor(_tokenizer_json(), model.config.num_mel_bins, model.config.vocab_size).save_pretrained(hf_dir)
    ctranslate2.converters.TransformersConverter(str(hf_dir)).convert(str(out), quantization=quantization)
    shutil.copy(_tokenizer_json(), out / "tokenizer.json")
    return out


@pytest.fixture(scope="module")
def ct2_dirs(tmp_path_factory):
    """{quantization: CTranslate2 dir} for one tiny random Whisper, plus the model itself under "model"."""
    root = tmp_path_factory.mktemp("ct2")
    model = tiny_whisper(seed=1)
    dirs = {q: write_ct2(model, root, q) for q in ("float32", "float16", "int8")}
    return {"model": model, **dirs}


@pytest.mark.parametrize("quantization,dtype", [("float32", torch.float32), ("float16", torch.float16)])
def test_round_trip_reproduces_hf_state_dict_exactly(ct2_dirs, quantization, dtype):
    ref = ct2_dirs["model"].state_dict()
    ct2 = read_model_bin(ct2_dirs[quantization] / "model.bin")
    assert (ct2.spec, ct2.revision, ct2.version) == ("WhisperSpec", 3, 6)
    state = whisper_state_dict(ct2)
    assert set(state) == set(ref)
    for key, value in ref.items():
        assert state[key].dtype == dtype, key
        assert torch.equal(state[key], value.to(dtype)), key


def test_no_two_parameters_share_memory_except_the_tied_projection(ct2_dirs):
    model, _ = load_ct2_directory(ct2_dirs["float32"])
    ptrs = [p.data_ptr() for p in model.parameters()]  # parameters() lists tied weights once
    assert len(ptrs) == len(set(ptrs))
    assert model.proj_out.weight is model.model.decoder.embed_tokens.weight


def test_float16_checkpoint_read_as_float32_on_request(ct2_dirs):
    ct2 = read_model_bin(ct2_dirs["float16"] / "model.bin", dtype=torch.float32)
    state = whisper_state_dict(ct2)
    q = ct2_dirs["model"].model.encoder.layers[1].self_attn.q_proj.weight
    assert state["model.encoder.layers.1.self_attn.q_proj.weight"].dtype == torch.float32
    assert torch.equal(state["model.encoder.layers.1.self_attn.q_proj.weight"], q.detach().half().float())


def test_config_from_shapes_and_stored_heads(ct2_dirs):
    cfg = whisper_config(read_model_bin(ct2_dirs["float32"] / "model.bin"))
    ref = ct2_dirs["model"].config
    for field in (
        "vocab_size",
        "num_mel_bins",
        "d_model",
        "encoder_layers",
        "decoder_layers",
        "encoder_attention_heads",
        "decoder_attention_heads",
        "encoder_ffn_dim",
        "decoder_ffn_dim",
        "max_source_positions",
        "max_target_positions",
        "decoder_start_token_id",
        "eos_token_id",
    ):
        assert getattr(cfg, field) == getattr(ref, field), field


def test_converted_model_computes_the_same_logits(ct2_dirs):
    model, processor = load_ct2_directory(ct2_dirs["float32"])
    ref = ct2_dirs["model"]
    torch.manual_seed(0)
    feats = torch.randn(1, 80, 3000)
    tokens = torch.tensor([[50257, 50362, 400, 318]])
    with torch.inference_mode():
        a = model(input_features=feats, decoder_input_ids=tokens).logits
        b = ref(input_features=feats, decoder_input_ids=tokens).logits
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
    gen = model.generation_config
    assert (gen.decoder_start_token_id, gen.no_timestamps_token_id, gen.is_multilingual) == (50257, 50362, False)
    assert len(processor.tokenizer) == ref.config.vocab_size


def test_128_mel_bins(tmp_path):
    d = write_ct2(tiny_whisper(seed=2, num_mel_bins=128), tmp_path, "float32")
    model, processor = load_ct2_directory(d)
    assert model.config.num_mel_bins == 128
    assert processor.feature_extractor.feature_size == 128


def test_int8_checkpoint_is_a_clear_error(ct2_dirs):
    with pytest.raises(ModelSourceError, match="int8 checkpoints are not supported yet"):
        load_ct2_directory(ct2_dirs["int8"])


def test_split_parts_read_like_the_whole_file(ct2_dirs, tmp_path):
    data = (ct2_dirs["float16"] / "model.bin").read_bytes()
    (tmp_path / "p1").write_bytes(data[:1000])
    (tmp_path / "p2").write_bytes(data[1000:])
    whole = read_model_bin(ct2_dirs["float16"] / "model.bin").variables
    parts = read_model_bin([tmp_path / "p1", tmp_path / "p2"]).variables
    assert whole.keys() == parts.keys()
    assert all(torch.equal(whole[k], parts[k]) for k in whole)


@pytest.mark.parametrize(
    "damage,message",
    [
        (lambda b: b[: len(b) // 2], "truncated"),
        (lambda b: b[:7], "truncated"),
        (lambda b: struct.pack("<I", 99) + b[4:], "binary version 99"),
        (lambda b: b + b"\0\0\0", "trailing bytes"),
        (lambda b: b"", "truncated"),
    ],
)
def test_corrupt_model_bin_is_a_clear_error(ct2_dirs, tmp_path, damage, message):
    bad = tmp_path / "model.bin"
    bad.write_bytes(damage((ct2_dirs["float32"] / "model.bin").read_bytes()))
    with pytest.raises(ModelSourceError, match=message):
        read_model_bin(bad)


def test_missing_model_bin_is_a_clear_error(tmp_path):
    with pytest.raises(ModelSourceError, match="not found"):
        read_model_bin(tmp_path / "model.bin")
