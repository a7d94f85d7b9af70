"""lite-whisper checkpoints: export, exact reload, remote-code loading without litewhisper, published layout."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file
from transformers import WhisperForConditionalGeneration

import litewhisper
from helpers import run_without_litewhisper, tiny_whisper_config
from litewhisper.errors import LiteWhisperError, ModelSourceError
from litewhisper.models.checkpoint import (
    AUTO_MAP,
    HF_LITE_DIR,
    CheckpointError,
    check_checkpoint,
    load_lite_whisper_model,
    save_checkpoint,
)
from litewhisper.models.linears import LowRankLinear

# (layer, linear) -> rank of the test model; layer 1's k_proj has no bias, as Whisper's dense k_proj.
RANKS = [{"q_proj": 8, "k_proj": 4, "fc1": 16, "fc2": 12}, {"v_proj": 8, "out_proj": 16, "k_proj": 8}]
ATTN = ("q_proj", "k_proj", "v_proj", "out_proj")


def _parent(layer, name):
    return layer.self_attn if name in ATTN else layer


def lite_model(seed: int = 0, ranks=RANKS):
    """A tiny random Whisper (64 encoder positions) whose listed encoder linears are random LowRankLinear."""
    config = tiny_whisper_config()
    config.max_source_positions = 64  # 128 input frames: keeps every forward pass cheap
    torch.manual_seed(seed)
    model = WhisperForConditionalGeneration(config)
    gen = torch.Generator().manual_seed(seed + 1)
    for i, layer_ranks in enumerate(ranks):
        layer = model.model.encoder.layers[i]
        for name, k in layer_ranks.items():
            dense = getattr(_parent(layer, name), name)
            low = LowRankLinear(dense.in_features, dense.out_features, k, bias=not (i == 1 and name == "k_proj"))
            for p in low.parameters():
                p.data.copy_(torch.randn(p.shape, generator=gen) * 0.2)
            setattr(_parent(layer, name), name, low)
    return model.eval()


def features(model, seed: int = 0) -> torch.Tensor:
    """(1, mel bins, 2 * max_source_positions) random log-mel features."""
    cfg = model.config
    return torch.randn(1, cfg.num_mel_bins, 2 * cfg.max_source_positions, generator=torch.Generator().manual_seed(seed))


@torch.no_grad()
def encode(model, x: torch.Tensor) -> torch.Tensor:
    return model.model.encoder(x).last_hidden_state


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    model = lite_model()
    out = tmp_path_factory.mktemp("ckpt") / "lite"
    assert save_checkpoint(model, out) == out
    return model, out


def test_round_trip_is_exact(saved):
    model, out = saved
    loaded = load_lite_whisper_model(out)
    assert type(loaded).__name__ == "LiteWhisperForConditionalGeneration"
    original, reloaded = model.state_dict(), loaded.state_dict()
    for key, value in original.items():
        assert torch.equal(value, reloaded[key]), key
    # the only extra tensor is the explicit zero bias of the bias-free low-rank k_proj
    extra = set(reloaded) - set(original)
    assert extra == {"model.encoder.layers.1.self_attn.k_proj.bias"}
    assert torch.count_nonzero(reloaded["model.encoder.layers.1.self_attn.k_proj.bias"]) == 0
    x = features(model)
    assert torch.equal(encode(model, x), encode(loaded, x))
    tokens = torch.tensor([[50257, 50362, 440, 2068]])
    with torch.no_grad():
        a = model(input_features=x, decoder_input_ids=tokens).logits
        b = loaded(input_features=x, decoder_input_ids=tokens).logits
    assert torch.equal(a, b)


def test_config_and_files(saved):
    _, out = saved
    config = json.loads((out / "config.json").read_text())
    assert config["model_type"] == "lite-whisper"
    assert config["architectures"] == ["LiteWhisperForConditionalGeneration"]
    assert config["auto_map"] == AUTO_MAP and set(AUTO_MAP) == {"AutoConfig", "AutoModel", "AutoModelForSpeechSeq2Seq"}
    assert config["low_rank_config"] == RANKS
    assert config["d_model"] == 32 and config["encoder_layers"] == 2
    for name in (
        "model.safetensors",
        "generation_config.json",
        "configuration_lite_whisper.py",
        "modeling_lite_whisper.py",
    ):
        assert (out / name).is_file(), name
    for name in ("configuration_lite_whisper.py", "modeling_lite_whisper.py"):
        assert (out / name).read_bytes() == (HF_LITE_DIR / name).read_bytes()
    assert check_checkpoint(out)["low_rank_config"] == RANKS


CLEAN_LOADER = """
    import sys
    import numpy as np, torch
    from transformers import AutoModel, AutoModelForSpeechSeq2Seq
    ckpt, feats, out = sys.argv[1:4]
    x = torch.from_numpy(np.load(feats))
    outs = []
    for auto in (AutoModel, AutoModelForSpeechSeq2Seq):
        model = auto.from_pretrained(ckpt, trust_remote_code=True).eval()
        assert type(model).__name__ == "LiteWhisperForConditionalGeneration", type(model)
        assert not any(m.startswith("litewhisper") for m in sys.modules)
        with torch.no_grad():
            outs.append(model.model.encoder(x).last_hidden_state.numpy())
    np.save(out, np.stack(outs))
"""


def test_automodel_loads_without_litewhisper(saved, tmp_path):
    model, out = saved
    x = features(model, seed=3)
    np.save(tmp_path / "x.npy", x.numpy())
    proc = run_without_litewhisper(CLEAN_LOADER, [out, tmp_path / "x.npy", tmp_path / "y.npy"], tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    got = np.load(tmp_path / "y.npy")
    expected = encode(model, x).numpy()
    for y in got:
        np.testing.assert_allclose(y, expected, rtol=0, atol=1e-6)


def published_layout(tmp_path, seed: int = 5):
    """A checkpoint written by hand the way efficient-speech/lite-whisper-* look, and its reference model."""
    ranks = [{"fc1": 16, "fc2": 16, "k_proj": 8, "out_proj": 8, "q_proj": 8, "v_proj": 8}, {"fc1": 32}]
    reference = lite_model(seed, ranks)
    state = {k: v.clone() for k, v in reference.state_dict().items() if k != "proj_out.weight"}
    config = reference.config.to_dict()
    config.update(
        model_type="lite-whisper",
        architectures=["LiteWhisperForConditionalGeneration"],
        low_rank_config=ranks,
        torch_dtype="float32",
        transformers_version="4.46.3",
        auto_map={
            "AutoConfig": "configuration_lite_whisper.LiteWhisperConfig",
            "AutoModel": "modeling_lite_whisper.LiteWhisperForConditionalGeneration",
        },
    )
    config.pop("dtype", None)
    path = tmp_path / "published"
    path.mkdir()
    (path / "config.json").write_text(json.dumps(config, indent=2))
    save_file(state, str(path / "model.safetensors"), metadata={"format": "pt"})
    return reference, path


def test_published_layout_loads(tmp_path):
    reference, path = published_layout(tmp_path)
    loaded = load_lite_whisper_model(path)
    x = features(reference, seed=4)
    assert torch.equal(encode(reference, x), encode(loaded, x))
    assert isinstance(loaded.model.encoder.layers[0].self_attn.k_proj, LowRankLinear)
    assert isinstance(loaded.model.encoder.layers[1].self_attn.k_proj, torch.nn.Linear)


def test_sharded_published_layout_loads(tmp_path):
    reference, path = published_layout(tmp_path)
    state = load_file(str(path / "model.safetensors"))
    (path / "model.safetensors").unlink()
    keys = sorted(state)
    shards = {
        "model-00001-of-00002.safetensors": keys[: len(keys) // 2],
        "model-00002-of-00002.safetensors": keys[len(keys) // 2 :],
    }
    for name, part in shards.items():
        save_file({k: state[k] for k in part}, str(path / name), metadata={"format": "pt"})
    index = {"metadata": {}, "weight_map": {k: name for name, part in shards.items() for k in part}}
    (path / "model.safetensors.index.json").write_text(json.dumps(index))
    x = features(reference, seed=7)
    assert torch.equal(encode(reference, x), encode(load_lite_whisper_model(path), x))


def test_published_layout_loads_through_load_model(tmp_path):
    from litewhisper.models.builtin import builtin_source

    reference, path = published_layout(tmp_path)
    shutil.copyfile(builtin_source("tiny.en")[1] / "tokenizer.json", path / "tokenizer.json")
    bundle = litewhisper.load_model(str(path), attention="standard")
    assert type(bundle.model).__name__ == "LiteWhisperForConditionalGeneration"
    x = features(reference, seed=6)
    assert torch.equal(encode(reference, x), encode(bundle.model, x))
    assert bundle.processor is not None
    # default attention="auto": layer 0's q/k ranks (8, 4) are below the head size -> reduced-dimension attention
    fast = litewhisper.load_model(str(path))
    swapped = [n for n, m in fast.model.named_modules() if isinstance(m, litewhisper.ReducedDimSelfAttention)]
    assert swapped == ["model.encoder.layers.0.self_attn"]
    assert fast.model.state_dict().keys() == bundle.model.state_dict().keys()
    torch.testing.assert_close(encode(fast.model, x), encode(reference, x), rtol=1e-4, atol=1e-5)
    with pytest.raises(LiteWhisperError, match="attention must be one of"):
        litewhisper.load_model(str(path), attention="fast")


class _Bundle:
    """A WhisperBundle stand-in: a model, no processor, and the source directory its config.json is read from."""

    def __init__(self, model, path):
        self.model, self.processor, self.path = model, None, path


@pytest.mark.parametrize(
    "source_dtype, asked, stored",
    [
        ("float16", None, torch.float16),
        ("bfloat16", None, torch.bfloat16),
        (None, None, torch.float32),
        ("float16", "float32", torch.float32),
        (None, torch.float16, torch.float16),
    ],
)
def test_checkpoint_dtype_follows_the_source_unless_asked(tmp_path, source_dtype, asked, stored):
    model = lite_model()
    source = tmp_path / "source"
    source.mkdir()
    (source / "config.json").write_text(json.dumps({"dtype": source_dtype} if source_dtype else {}))
    out = save_checkpoint(_Bundle(model, source), tmp_path / "out", dtype=asked)
    weights = load_file(str(out / "model.safetensors"))
    assert {v.dtype for v in weights.values() if v.is_floating_point()} == {stored}
    assert json.loads((out / "config.json").read_text())["dtype"] == str(stored).removeprefix("torch.")
    full = save_checkpoint(model, tmp_path / "full", dtype="float32")
    ratio = (out / "model.safetensors").stat().st_size / (full / "model.safetensors").stat().st_size
    assert ratio == pytest.approx(1.0 if stored == torch.float32 else 0.5, abs=0.02)
    reloaded = load_lite_whisper_model(out)
    for key, value in model.state_dict().items():
        if key in reloaded.state_dict() and value.is_floating_point():
            assert torch.equal(reloaded.state_dict()[key], value.to(stored).float()), key


def test_existing_output_refused_unless_overwrite(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("precious")
    model = lite_model()
    with pytest.raises(LiteWhisperError, match="not empty"):
        save_checkpoint(model, out)
    assert (out / "keep.txt").read_text() == "precious"
    save_checkpoint(model, out, overwrite=True)
    assert not (out / "keep.txt").exists() and (out / "model.safetensors").is_file()


def test_interrupted_save_leaves_nothing(tmp_path, monkeypatch):
    import litewhisper.models.checkpoint as ckpt

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt  # after config and weights were written

    monkeypatch.setattr(ckpt.shutil, "copyfile", interrupted)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(lite_model(), tmp_path / "out")
    assert list(tmp_path.iterdir()) == []


def test_failed_verification_writes_nothing(tmp_path, monkeypatch):
    import litewhisper.models.checkpoint as ckpt

    export = ckpt._export_state_dict

    def corrupted(model, low_rank_config, dtype):
        state = export(model, low_rank_config, dtype)
        state["model.encoder.layers.0.fc1.weight1"] = state["model.encoder.layers.0.fc1.weight1"] * 1.5
        return state

    monkeypatch.setattr(ckpt, "_export_state_dict", corrupted)
    with pytest.raises(CheckpointError, match="verification failed"):
        save_checkpoint(lite_model(), tmp_path / "out")
    assert list(tmp_path.iterdir()) == []


def _edit_config(path, edit):
    config = json.loads((path / "config.json").read_text())
    edit(config)
    (path / "config.json").write_text(json.dumps(config))


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda c: c["low_rank_config"][0].update(q_proj=16), r"q_proj\.weight1: shape \(32, 8\), expected \(32, 16\)"),
        (lambda c: c["low_rank_config"][1].pop("v_proj"), r"v_proj\.weight: missing"),
        (lambda c: c["low_rank_config"][1].update(fc2=8), r"fc2\.weight1: missing"),
        (lambda c: c["low_rank_config"].pop(), r"list of 2 dicts"),
        (lambda c: c["low_rank_config"][0].update(conv1=4), r"expected a dict with keys among"),
        (lambda c: c["low_rank_config"][0].update(q_proj=0), r"positive integer rank"),
    ],
)
def test_mismatched_low_rank_config_is_a_clear_error(saved, tmp_path, edit, message):
    path = tmp_path / "bad"
    shutil.copytree(saved[1], path)
    _edit_config(path, edit)
    with pytest.raises(CheckpointError, match=message) as info:
        load_lite_whisper_model(path)
    assert "low_rank_config does not match the weights" in str(info.value)
    assert isinstance(info.value, ModelSourceError)


def test_low_rank_decoder_cannot_be_exported(tmp_path):
    model = lite_model()
    dense = model.model.decoder.layers[0].fc1
    model.model.decoder.layers[0].fc1 = LowRankLinear(dense.in_features, dense.out_features, 4)
    with pytest.raises(CheckpointError, match="outside the encoder linears"):
        save_checkpoint(model, tmp_path / "out")
    assert list(tmp_path.iterdir()) == []


def test_not_a_whisper_model_is_refused(tmp_path):
    with pytest.raises(CheckpointError, match="expected a WhisperForConditionalGeneration"):
        save_checkpoint(torch.nn.Linear(2, 2), tmp_path / "out")


@pytest.mark.real
def test_real_tiny_en_bundle_round_trip(tmp_path, monkeypatch):
    """Real tiny.en: low-rank (SVD) a few encoder linears, save with its processor, reload via load_model."""
    prompts = []  # transformers asks "Do you wish to run the custom code?" on input() when unsure
    monkeypatch.setattr("builtins.input", lambda *args: prompts.append(args) or "n")
    bundle = litewhisper.load_model("tiny.en")
    layer = bundle.model.model.encoder.layers[0]
    for parent, name in ((layer.self_attn, "k_proj"), (layer, "fc1")):
        dense = getattr(parent, name)
        u, s, vh = torch.linalg.svd(dense.weight.detach(), full_matrices=False)  # W: (out, in)
        low = LowRankLinear(dense.in_features, dense.out_features, 64)
        low.weight1.data = (vh[:64].T * s[:64]).contiguous()  # (in, k)
        low.weight2.data = u[:, :64].T.contiguous()  # (k, out)
        if dense.bias is not None:
            low.bias.data = dense.bias.detach().clone()
        setattr(parent, name, low)
    out = save_checkpoint(bundle, tmp_path / "lite-tiny.en")  # float16, as the source (loaded as float32)
    assert (out / "tokenizer.json").is_file()
    assert json.loads((out / "config.json").read_text())["dtype"] == "float16"
    source_size = (bundle.path / "model.safetensors").stat().st_size
    assert 0.9 * source_size < (out / "model.safetensors").stat().st_size < 1.05 * source_size  # not twice
    reloaded = litewhisper.load_model(str(out))
    assert reloaded.model.config.low_rank_config == [{"fc1": 64, "k_proj": 64}, {}, {}, {}]
    original, loaded = bundle.model.state_dict(), reloaded.model.state_dict()
    assert set(original) == set(loaded)  # both low-rank linears had a bias: nothing added
    assert all(torch.equal(value.half().float(), loaded[key]) for key, value in original.items())
    assert prompts == []  # loading our own checkpoint never asks about remote code
    assert reloaded.processor.tokenizer.decode([1770, 13]) == bundle.processor.tokenizer.decode([1770, 13])
    from transformers import AutoProcessor, WhisperProcessor

    processor = AutoProcessor.from_pretrained(out)  # no trust_remote_code: a stock Whisper processor
    assert isinstance(processor, WhisperProcessor) and prompts == []
    assert processor.tokenizer.decode([1770, 13]) == bundle.processor.tokenizer.decode([1770, 13])
