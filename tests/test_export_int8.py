"""int8 export of compressed models: rotation of the low-rank factors (exact, not mutating the user's model),
per-channel scales by default, encoder layer 0 kept fp32, options recorded and validated, and rotation's gain."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
import torch
from test_attention import lowrank_like, make_lowrank
from test_export import _bundle

from helpers import record_exports, tiny_whisper
from litewhisper.attention.reduced import use_reduced_attention
from litewhisper.cli import main
from litewhisper.errors import LiteWhisperError
from litewhisper.export.api import ExportError, ExportResult, export_model
from litewhisper.export.quantize import KEEP_FP32_AUTO, Int8Options
from litewhisper.export.rotate import rotate_low_rank, rotated_copy, rotation_matrix
from litewhisper.models.deployed import EXPORT_MARKER
from litewhisper.models.linears import LowRankLinear


def _lite_model(seed: int = 4) -> torch.nn.Module:
    """d_model 128: layer 0 reduced attention (q/k/v ranks 16, 32, 16) + fc1 rank 24, layer 1 q/k/v 96, 48, 80."""
    model = tiny_whisper(d_model=128, heads=2, layers=2, ffn=256, seed=seed)
    layers = model.model.encoder.layers
    for layer, ranks in zip(layers, [(16, 32, 16), (96, 48, 80)], strict=True):
        make_lowrank(layer.self_attn, ranks, seed=ranks[0])
    layers[0].fc1 = lowrank_like(layers[0].fc1, 24, gen=torch.Generator().manual_seed(1))
    use_reduced_attention(model, mode="auto", backend="torch")
    return model


def _encode(model, seed: int = 0) -> torch.Tensor:
    """Encoder output (1, 1500, d) on one window of clamped random features (seeded)."""
    feats = torch.randn(1, 80, 3000, generator=torch.Generator().manual_seed(seed)).clamp(-1.5, 1.5)
    with torch.no_grad():
        return model.get_encoder()(feats).last_hidden_state  # (1, 1500, d)


def test_rotation_matrices_are_orthogonal_hadamard_for_powers_of_two():
    h = rotation_matrix(16)
    assert torch.allclose(h.abs(), torch.full((16, 16), 0.25, dtype=torch.float64))  # normalised Hadamard
    for k in (1, 16, 24, 80):
        r = rotation_matrix(k)
        assert r.shape == (k, k) and torch.allclose(r @ r.T, torch.eye(k, dtype=torch.float64), atol=1e-12)
    assert torch.equal(rotation_matrix(24), rotation_matrix(24))  # seeded: reproducible exports
    assert rotation_matrix(24).abs().std() > 0.01  # not a Hadamard-like matrix of equal magnitudes
    with pytest.raises(ValueError, match="rank"):
        rotation_matrix(0)


def test_rotated_copy_is_exact_and_leaves_the_model_untouched():
    model = _lite_model()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    twin, count = rotated_copy(model)
    assert count == 7  # 3 + 3 attention projections, one fc1
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())
    fc1, twin_fc1 = model.model.encoder.layers[0].fc1, twin.model.encoder.layers[0].fc1
    r = rotation_matrix(24).float()
    assert torch.allclose(twin_fc1.weight1, fc1.weight1 @ r, atol=1e-6)
    assert torch.allclose(twin_fc1.weight2, r.T @ fc1.weight2, atol=1e-6)
    q = twin.model.encoder.layers[0].self_attn.q_proj  # rank 16: Hadamard
    assert torch.allclose(
        q.weight1.abs().sum(),
        (model.model.encoder.layers[0].self_attn.q_proj.weight1 @ rotation_matrix(16).float()).abs().sum(),
    )
    assert type(twin.model.encoder.layers[0].self_attn).__name__ == "ReducedDimSelfAttention"
    want, got = _encode(model), _encode(twin)  # buffers of reduced attention rebuilt from the rotated factors
    assert (got - want).abs().max() < 1e-5
    assert rotate_low_rank(tiny_whisper()) == 0  # an original Whisper: nothing to rotate


@pytest.fixture(scope="module")
def lite_int8(tmp_path_factory):
    model = _lite_model()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    result = export_model(_bundle(model), tmp_path_factory.mktemp("int8") / "lite", onnx_decoder=False)
    return model, before, result


def test_int8_defaults_are_recorded_and_the_model_is_not_mutated(lite_int8):
    model, before, result = lite_int8
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())
    assert result.max_abs_diff["fp32"] < 1e-4  # the rotated graph verified against the unrotated model
    int8 = json.loads((result.path / EXPORT_MARKER).read_text())["int8"]
    assert int8["rotate"] is True and int8["rotated_layers"] == 7
    assert int8["per_channel"] is True  # automatic: on
    assert int8["keep_fp32"] == KEEP_FP32_AUTO and int8["fp32_matmuls"]
    assert all("/layers.0/" in name for name in int8["fp32_matmuls"])


def test_layer0_matmuls_stay_fp32_and_the_rest_become_int8(lite_int8):
    _, _, result = lite_int8
    graph = onnx.load(str(result.path / "onnx" / "encoder_model_quantized.onnx")).graph
    floats = {i.name for i in graph.initializer if i.data_type == onnx.TensorProto.FLOAT}
    nodes = {n.name: n for n in graph.node}
    kept = json.loads((result.path / EXPORT_MARKER).read_text())["int8"]["fp32_matmuls"]
    assert "/encoder/layers.0/fc1/MatMul" in kept and "/encoder/layers.0/fc2/MatMul" in kept
    for name in kept:
        assert nodes[name].op_type == "MatMul"
    assert nodes["/encoder/layers.0/fc2/MatMul"].input[1] in floats  # fp32 weight, not quantized
    integer = [n.name for n in graph.node if n.op_type == "MatMulIntegerToFloat"]
    assert integer and not any("/layers.0/" in n for n in integer)
    assert {n.split("/rowq/")[0] for n in integer} >= {  # per-row int8 (the default): rowquant.py's nodes
        "/encoder/layers.1/fc1/MatMul",
        "/encoder/layers.1/self_attn/v_proj/MatMul",
    }
    assert not any(n.op_type == "DynamicQuantizeLinear" for n in graph.node)


def test_original_whisper_has_nothing_to_rotate(tmp_path):
    result = export_model(_bundle(tiny_whisper(seed=5)), tmp_path / "orig", onnx_decoder=False)
    int8 = json.loads((result.path / EXPORT_MARKER).read_text())["int8"]
    assert int8["per_channel"] is True and int8["rotated_layers"] == 0 and int8["fp32_matmuls"]
    none = export_model(_bundle(tiny_whisper(seed=5)), tmp_path / "fp32", quantize="none", onnx_decoder=False)
    assert json.loads((none.path / EXPORT_MARKER).read_text())["int8"] is None


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"keep_fp32": "layers.(0"}, r"keep_fp32 'layers.\(0' is not a valid regular expression"),
        ({"keep_fp32": ""}, r"keep_fp32 must be 'auto' \(the default: encoder layer 0, .*'none' .* or a regular"),
        ({"per_channel": "yes"}, r"per_channel must be True, False or None \(automatic\), got 'yes'"),
        ({"rotate": 1}, "rotate must be True or False, got 1"),
        ({"activations": "token"}, "activations must be one of row, tensor, got 'token'"),
        ({"per_channel": False}, r"per_channel=False needs activations='tensor' \(CLI: --activations tensor"),
    ],
)
def test_bad_options_are_clear_errors_before_any_work(kwargs, message, tmp_path):
    with pytest.raises(LiteWhisperError, match=message):
        export_model("no-such-model", tmp_path / "out", **kwargs)  # raised before the model is looked up
    assert not (tmp_path / "out").exists()


def test_keep_fp32_pattern_that_matches_nothing_is_an_error(tmp_path):
    with pytest.raises(ExportError, match="matches no MatMul node"):
        export_model(_bundle(tiny_whisper()), tmp_path / "out", keep_fp32="decoder_only", onnx_decoder=False)
    assert not (tmp_path / "out").exists()
    assert Int8Options(keep_fp32="None").pattern is None and Int8Options(keep_fp32=None).pattern is None
    assert Int8Options().resolved().as_dict() == {
        "rotate": True,
        "per_channel": True,
        "keep_fp32": KEEP_FP32_AUTO,
        "activations": "row",
        "merge_slow_factors": True,  # automatic: on with per-row scales
        "timing_threads": 2,
    }
    assert Int8Options(per_channel=False, keep_fp32="fc1", activations="tensor").resolved().as_dict() == {
        "rotate": True,
        "per_channel": False,
        "keep_fp32": "fc1",
        "activations": "tensor",
        "merge_slow_factors": False,  # automatic: off with per-tensor scales
        "timing_threads": 2,
    }


def test_cli_flags_reach_export_model(tmp_path, monkeypatch, capsys):
    seen = record_exports(monkeypatch, tmp_path)
    assert main(["export", "m", "-o", str(tmp_path / "a")]) == 0
    former = ["--no-rotate", "--no-per-channel", "--keep-fp32", "none", "--activations", "tensor"]
    assert main(["export", "m", "-o", str(tmp_path / "b"), *former]) == 0
    assert main(["export", "m", "-o", str(tmp_path / "c"), "--per-channel", "--keep-fp32", "fc1"]) == 0
    picked = [{k: s[k] for k in ("rotate", "per_channel", "keep_fp32", "activations")} for s in seen]
    assert picked == [
        {"rotate": True, "per_channel": None, "keep_fp32": "auto", "activations": "row"},
        {"rotate": False, "per_channel": False, "keep_fp32": "none", "activations": "tensor"},
        {"rotate": True, "per_channel": True, "keep_fp32": "fc1", "activations": "row"},
    ]
    assert main(["export", "m", "-o", str(tmp_path / "d"), "--no-per-channel"]) == 2  # needs --activations tensor
    assert "--no-per-channel needs --activations tensor" in capsys.readouterr().err and len(seen) == 3


@pytest.mark.parametrize("model", ["tiny.en", "no/such/model"])
def test_cli_bad_keep_fp32_fails_before_anything_loads_and_matches_help(model, tmp_path, monkeypatch, capsys):
    import subprocess
    import sys

    import litewhisper.models.load as load
    from litewhisper.cli import build_parser
    from litewhisper.export.quantize import KEEP_FP32_VALUES

    monkeypatch.setattr(load, "load_model", lambda *a, **k: pytest.fail("the model was loaded"))
    assert main(["export", model, "-o", str(tmp_path / "out"), "--keep-fp32", "(["]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --keep-fp32 '([' is not a valid regular expression (unterminated character set")
    assert f"expected {KEEP_FP32_VALUES}" in err and "Traceback" not in err and not (tmp_path / "out").exists()
    help_text = " ".join(build_parser()._subparsers._group_actions[0].choices["export"].format_help().split())
    assert "--keep-fp32 auto|none|PATTERN" in help_text and " ".join(KEEP_FP32_VALUES.split()) in help_text
    script = "import sys; from litewhisper.cli import main; rc = main(sys.argv[1:]); print(rc, 'torch' in sys.modules)"
    args = ["export", model, "-o", str(tmp_path / "out"), "--keep-fp32", "(["]
    out = subprocess.run([sys.executable, "-c", script, *args], capture_output=True, text=True, timeout=120)
    assert out.stdout.split() == ["2", "False"]  # rejected before torch (and so any model) was even imported


def _anisotropic(lin: torch.nn.Module, rank: int, gen: torch.Generator) -> LowRankLinear:
    """A LowRankLinear whose intermediate channels have scales 30 ... 0.3 (a PCA basis), each contributing
    equally to the output: per-tensor int8 of the intermediate loses the small channels."""
    m = lowrank_like(lin, rank, gen=gen)
    scale = torch.logspace(np.log10(30), np.log10(0.3), rank)  # (k,)
    with torch.no_grad():
        m.weight1.mul_(scale)  # (in, k): channel j of x @ weight1 scaled by scale[j]
        m.weight2.div_(scale[:, None])  # (k, out): undone in the product
    return m


def _relative_rms_error(model, result: ExportResult) -> float:
    """‖int8 encoder − PyTorch‖ / ‖PyTorch‖ (RMS over one window of random features)."""
    from litewhisper.models.deployed import encoder_session

    feats = torch.randn(1, 80, 3000, generator=torch.Generator().manual_seed(1)).clamp(-1.5, 1.5)
    want = _encode(model, seed=1).numpy()  # same features (seed 1)
    got = encoder_session(result.path / "onnx" / "encoder_model_quantized.onnx", threads=1).run(
        None, {"input_features": feats.numpy()}
    )[0]
    return float(np.sqrt(((got - want) ** 2).mean() / (want**2).mean()))


def test_rotation_reduces_int8_error_of_anisotropic_factors(tmp_path):
    model = tiny_whisper(d_model=128, heads=2, layers=2, ffn=256, seed=6)
    gen = torch.Generator().manual_seed(0)
    for layer in model.model.encoder.layers:  # ranks 32 (Hadamard) and 48 (random rotation)
        layer.fc1, layer.fc2 = _anisotropic(layer.fc1, 32, gen), _anisotropic(layer.fc2, 48, gen)
    bundle = _bundle(model)
    errors = {
        rotate: _relative_rms_error(
            model,
            export_model(
                bundle,
                tmp_path / str(rotate),
                rotate=rotate,
                per_channel=False,
                keep_fp32="none",
                activations="tensor",
                onnx_decoder=False,
            ),
        )
        for rotate in (False, True)
    }
    assert errors[True] < 0.6 * errors[False], errors  # measured: 0.42 without rotation, 0.20 with
