"""Issue 29: the int8 export merges factorised linears back to dense where their int8 pair is not faster.

The timings that drive the decision come from a table given to the export (deterministic: nothing here asserts
a time); the timing graphs compute the linear, the cache is written atomically and re-read, the decisions are
recorded in litewhisper_export.json, a merged layer's graphs agree with the factorised one, and the flags work.
"""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
import torch
from test_attention import lowrank_like
from test_export import _bundle
from test_export_int8 import _encode, _lite_model

from helpers import record_exports, tiny_whisper
from litewhisper.cli import main
from litewhisper.errors import LiteWhisperError
from litewhisper.export import layer_timing
from litewhisper.export.api import export_model
from litewhisper.export.densify import decide_merges, merge_factors, mergeable, node_prefix
from litewhisper.export.layer_timing import PairShape, PairTiming, table_source
from litewhisper.export.quantize import KEEP_FP32_AUTO, Int8Options
from litewhisper.models.deployed import EXPORT_MARKER, encoder_session
from litewhisper.models.linears import LowRankLinear

# (Din, Dout, k) -> (dense ms, factorised ms) for `_factored_model`: layer 1 fc1 is slower factorised, fc2 and
# out_proj faster; layer 0 fc1 (kept fp32 by default) must not even be asked
REAL_CACHED_SOURCE = layer_timing.cached_source  # bound at import, before conftest's fixture replaces it
TABLE = {(128, 256, 96): (1.0, 1.2), (256, 128, 32): (1.0, 0.5), (128, 128, 64): (1.0, 0.97)}


def _factored_model(seed: int = 7) -> torch.nn.Module:
    """d_model 128, 2 layers, standard attention: layer 0 fc1 rank 24, layer 1 fc1 96, fc2 32, out_proj 64."""
    model = tiny_whisper(d_model=128, heads=2, layers=2, ffn=256, seed=seed)
    gen = torch.Generator().manual_seed(seed)
    layers = model.model.encoder.layers
    layers[0].fc1 = lowrank_like(layers[0].fc1, 24, gen=gen)
    layers[1].fc1, layers[1].fc2 = lowrank_like(layers[1].fc1, 96, gen=gen), lowrank_like(layers[1].fc2, 32, gen=gen)
    layers[1].self_attn.out_proj = lowrank_like(layers[1].self_attn.out_proj, 64, gen=gen)
    return model


def test_pair_graphs_compute_the_linear(tmp_path):
    shape = PairShape(d_in=64, d_out=48, rank=16, tokens=40)
    dense, factored = layer_timing.write_pair_graphs(shape, tmp_path)
    x = np.random.default_rng(3).standard_normal((1, 40, 64)).astype(np.float32)
    fp32 = [encoder_session(tmp_path / f"{n}_fp32.onnx", 1).run(None, {"x": x})[0] for n in ("dense", "factored")]
    assert fp32[0].shape == (1, 40, 48) and np.abs(fp32[0] - fp32[1]).max() < 1e-4  # W1·W2 is the same linear
    for path in (dense, factored):
        ops = {n.op_type for n in onnx.load(str(path)).graph.node}
        assert "MatMulIntegerToFloat" in ops and "MatMul" not in ops  # the export's per-row int8 form
        got = encoder_session(path, 1).run(None, {"x": x})[0]
        assert np.linalg.norm(got - fp32[0]) / np.linalg.norm(fp32[0]) < 0.05
    timing = layer_timing.measure_pair(shape, threads=1, rounds=2)
    assert timing.dense_ms > 0 and timing.factored_ms > 0  # times are measured, never asserted on


def test_cache_is_written_atomically_reread_and_keyed_by_runtime(tmp_path, monkeypatch):
    import litewhisper.atomic as atomic

    calls, writes = [], []
    monkeypatch.setattr(layer_timing, "measure_pair", lambda s, t, r: calls.append(s) or PairTiming(3.0, s.rank / 10))
    monkeypatch.setattr(
        layer_timing, "atomic_write_text", lambda p, text: writes.append(p) or atomic.atomic_write_text(p, text)
    )
    path = tmp_path / "cache" / "layer_timing.json"
    source = REAL_CACHED_SOURCE(2, path)  # the real one (conftest replaces it in exports)
    assert source(PairShape(512, 512, 128)) == PairTiming(3.0, 12.8)
    assert source(PairShape(512, 512, 128)) == PairTiming(3.0, 12.8) and len(calls) == 1  # remembered
    assert writes == [path] and [p.name for p in path.parent.iterdir()] == ["layer_timing.json"]  # no temporary
    again = REAL_CACHED_SOURCE(2, path)
    assert again(PairShape(512, 512, 128)) == PairTiming(3.0, 12.8) and len(calls) == 1  # read back from the file
    REAL_CACHED_SOURCE(1, path)(PairShape(512, 512, 128))  # other threads: measured again
    runtimes = layer_timing.load_cache(path)
    assert len(calls) == 2 and set(runtimes) == {layer_timing.runtime_key(2), layer_timing.runtime_key(1)}
    assert "onnxruntime" in layer_timing.runtime_key(2) and "threads 2" in layer_timing.runtime_key(2)
    assert runtimes[layer_timing.runtime_key(2)] == {"512x512 k128 tokens 1500": {"dense_ms": 3.0, "factored_ms": 12.8}}
    path.write_text("{not json")
    assert layer_timing.load_cache(path) == {}  # a damaged cache is measured anew, not an error


def test_decisions_follow_the_table_and_skip_fp32_and_reduced_attention_factors():
    model = _factored_model()
    decisions = {d.name: d for d in decide_merges(model, table_source(TABLE), KEEP_FP32_AUTO)}
    assert set(decisions) == {"layers.1.fc1", "layers.1.fc2", "layers.1.self_attn.out_proj"}  # layer 0 stays fp32
    assert decisions["layers.1.fc1"].merged and not decisions["layers.1.fc2"].merged
    assert decisions["layers.1.self_attn.out_proj"].merged  # 3 % faster: within the margin, merged
    assert decisions["layers.1.fc1"].as_dict() == {
        "name": "layers.1.fc1",
        "d_in": 128,
        "d_out": 256,
        "rank": 96,
        "dense_ms": 1.0,
        "factored_ms": 1.2,
        "merged": True,
    }
    assert "layers.0.fc1" in mergeable(model, None)  # keep_fp32 none: layer 0 is int8 too
    assert node_prefix("layers.1.self_attn.out_proj") == "/encoder/layers.1/self_attn/out_proj/"
    reduced = mergeable(_lite_model(), None)  # layer 0: reduced attention reads q/k/v's factors
    assert "layers.0.fc1" in reduced and not any(n.startswith("layers.0.self_attn") for n in reduced)
    with pytest.raises(LiteWhisperError, match=r"no timing for the linear 128x128 k64 tokens 1500 in the given table"):
        decide_merges(model, table_source({}), KEEP_FP32_AUTO)


def test_merged_linear_is_the_same_function():
    model = _factored_model()
    want = _encode(model)
    assert merge_factors(model, ["layers.1.fc1", "layers.1.self_attn.out_proj"]) == 2
    layer = model.model.encoder.layers[1]
    assert type(layer.fc1) is torch.nn.Linear and isinstance(layer.fc2, LowRankLinear)
    assert type(layer.self_attn.out_proj) is torch.nn.Linear
    assert (_encode(model) - want).abs().max() < 1e-5


def _matmul_names(path) -> set[str]:
    return {n.name for n in onnx.load(str(path)).graph.node if n.op_type in ("MatMul", "MatMulIntegerToFloat")}


@pytest.fixture(scope="module")
def merged_and_not(tmp_path_factory):
    """The same model exported with the merge (table: layer 1 fc1 and out_proj merged) and without it."""
    tmp, model = tmp_path_factory.mktemp("merge"), _factored_model()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    on = export_model(_bundle(model), tmp / "on", onnx_decoder=False, rotate=False, layer_timings=table_source(TABLE))
    off = export_model(_bundle(model), tmp / "off", onnx_decoder=False, merge_slow_factors=False)
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())  # the user's model unchanged
    return model, on, off


def test_marker_records_each_decision(merged_and_not):
    _, on, off = merged_and_not
    int8 = json.loads((on.path / EXPORT_MARKER).read_text())["int8"]
    assert int8["merge_slow_factors"] is True and int8["timing_threads"] == 2
    timing = int8["factor_timing"]
    assert timing["runtime"] == "given timings" and timing["margin"] == 0.05
    assert {d["name"]: d["merged"] for d in timing["layers"]} == {
        "layers.1.fc1": True,
        "layers.1.fc2": False,
        "layers.1.self_attn.out_proj": True,
    }
    assert timing["densified_max_abs_diff"] < 1e-4  # the merged fp32 graph checked against PyTorch
    assert sorted(p.name for p in (on.path / "onnx").iterdir()) == [
        "encoder_model.onnx",
        "encoder_model_quantized.onnx",
    ]
    off_int8 = json.loads((off.path / EXPORT_MARKER).read_text())["int8"]
    assert off_int8["merge_slow_factors"] is False and off_int8["factor_timing"] is None


def test_merged_layers_are_one_int8_matmul_and_agree_with_the_factors(merged_and_not):
    model, on, off = merged_and_not
    q_on, q_off = (r.path / "onnx" / "encoder_model_quantized.onnx" for r in (on, off))
    on_nodes = {n.split("/rowq/")[0] for n in _matmul_names(q_on)}
    off_nodes = {n.split("/rowq/")[0] for n in _matmul_names(q_off)}
    for prefix in ("/encoder/layers.1/fc1/", "/encoder/layers.1/self_attn/out_proj/"):
        assert {n for n in on_nodes if n.startswith(prefix)} == {prefix + "MatMul"}  # one dense MatMul
        assert {n for n in off_nodes if n.startswith(prefix)} == {prefix + "MatMul", prefix + "MatMul_1"}
    assert "/encoder/layers.1/fc2/MatMul_1" in on_nodes  # kept factorised
    fp32 = _matmul_names(on.path / "onnx" / "encoder_model.onnx")  # the fp32 graph is not merged
    assert "/encoder/layers.1/fc1/MatMul_1" in fp32
    feats = torch.randn(1, 80, 3000, generator=torch.Generator().manual_seed(1)).clamp(-1.5, 1.5).numpy()
    want = _encode(model, seed=1).numpy()
    got = {p: encoder_session(p, 1).run(None, {"input_features": feats})[0] for p in (q_on, q_off)}
    errors = {p.parent.parent.name: np.linalg.norm(g - want) / np.linalg.norm(want) for p, g in got.items()}
    assert errors["on"] < 0.05 and errors["off"] < 0.05, errors  # both int8 forms track PyTorch
    assert on.max_abs_diff["int8"] < 10 * max(off.max_abs_diff["int8"], 1e-3)


def test_flags_reach_export_and_bad_values_fail_early(tmp_path, monkeypatch, capsys):
    seen = record_exports(monkeypatch, tmp_path)
    assert main(["export", "m", "-o", str(tmp_path / "a")]) == 0
    assert main(["export", "m", "-o", str(tmp_path / "b"), "--no-merge-slow-factors", "--timing-threads", "1"]) == 0
    assert main(["export", "m", "-o", str(tmp_path / "c"), "--merge-slow-factors"]) == 0
    picked = [(s["merge_slow_factors"], s["timing_threads"]) for s in seen]
    assert picked == [(None, 2), (False, 1), (True, 2)]
    assert main(["export", "m", "-o", str(tmp_path / "d"), "--timing-threads", "0"]) == 2
    assert "timing_threads must be a positive integer (CLI: --timing-threads N), got 0" in capsys.readouterr().err
    assert main(["export", "m", "-o", str(tmp_path / "e"), "--activations", "tensor", "--merge-slow-factors"]) == 2
    assert "(CLI: --no-merge-slow-factors)" in capsys.readouterr().err and len(seen) == 3
    for bad, message in (
        ({"merge_slow_factors": "yes"}, "merge_slow_factors must be True, False or None"),
        ({"timing_threads": True}, "timing_threads must be a positive integer"),
    ):
        with pytest.raises(LiteWhisperError, match=message):
            Int8Options(**bad)


def test_cost_model_sums_measured_int8_time_beside_flops():
    from litewhisper.models.cost import int8_linear_cost

    cost = int8_linear_cost(list(TABLE), table_source(TABLE), margin=0.05)
    assert (cost.layers, cost.merged) == (3, 2)  # 128x256 k96 slower, 128x128 k64 within the margin
    assert cost.dense_ms == 3.0 and cost.factored_ms == pytest.approx(2.67) and cost.exported_ms == 2.5
    assert cost.dense_flops == 2 * 1500 * (2 * 128 * 256 + 128 * 128)
    assert cost.factored_flops == 2 * 1500 * (96 * 384 + 32 * 384 + 64 * 256)
    assert "3 linears: dense 3.0 ms, factorised 2.7 ms" in cost.describe()
    assert "as exported 2.5 ms (2 merged back to dense)" in cost.describe()


def test_plan_prints_the_int8_time_of_its_factorised_linears(capsys):
    from test_plan import _two_layer_plan

    from litewhisper.cli.plan import int8_time

    line = int8_time(_two_layer_plan(), threads=2)  # conftest's timings: every pair twice as fast as dense
    assert line.startswith("int8 time (") and "threads 2; layer 0 stays fp32)" in line
    assert "1 linears: dense 2.0 ms, factorised 1.0 ms (2.00×; FLOPs" in line and "(0 merged back" in line
    with pytest.raises(SystemExit):
        main(["plan", "stats.safetensors", "--int8-time", "--timing-threads", "x"])
    assert main(["plan", "stats.safetensors", "--int8-time", "--timing-threads", "0"]) == 2
    assert "timing_threads must be a positive integer" in capsys.readouterr().err
