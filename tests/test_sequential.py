import copy

import numpy as np
import pytest
import torch

from litewhisper.compression.calibration import CalibrationConfig, calibrate
from litewhisper.compression.plan import RankPolicy
from litewhisper.compression.sequential import compress_sequential
from litewhisper.errors import CalibrationError
from litewhisper.models.linears import LowRankLinear


def _clips(n: int = 2) -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    return [rng.standard_normal(16000 * (2 + i)).astype(np.float32) * 0.1 for i in range(n)]


@pytest.mark.parametrize("frames", ["all", "audio"])
def test_full_rank_equals_plain_calibration(tiny_model, frames):
    config = CalibrationConfig(windowing="clip", frames=frames, batch_size=2)
    plain = calibrate(tiny_model, _clips(), config)
    dense = RankPolicy(overrides=(("*", None),))
    plan, seq = compress_sequential(copy.deepcopy(tiny_model), _clips(), dense, config)
    assert not plan.low_rank and seq.layers.keys() == plain.layers.keys()
    for name, s in plain.layers.items():
        assert seq.layers[name].moments.count == s.moments.count
        torch.testing.assert_close(seq.layers[name].moments.sum, s.moments.sum, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(seq.layers[name].moments.gram, s.moments.gram, rtol=1e-5, atol=1e-5)


def test_low_rank_is_sequential(tiny_model):
    config = CalibrationConfig(windowing="pack", batch_size=1)
    model = copy.deepcopy(tiny_model)
    policy = RankPolicy(overrides=(("*fc1", 16), ("*", None)))
    plan, seq = compress_sequential(model, _clips(), policy, config)
    enc = model.model.encoder
    assert [e.name for e in plan.low_rank] == ["layers.0.fc1", "layers.1.fc1"]
    assert all(isinstance(layer.fc1, LowRankLinear) and layer.fc1.rank == 16 for layer in enc.layers)
    assert all(p.requires_grad for p in enc.layers[0].fc1.parameters())  # trainable, not inference tensors
    plain = calibrate(tiny_model, _clips(), config)
    # layer 0 saw the original model's inputs; layer 0's fc2 and everything after saw a compressed fc1
    torch.testing.assert_close(seq.layers["layers.0.fc1"].moments.gram, plain.layers["layers.0.fc1"].moments.gram)
    assert not torch.allclose(seq.layers["layers.0.fc2"].moments.gram, plain.layers["layers.0.fc2"].moments.gram)
    assert not torch.allclose(
        seq.layers["layers.1.self_attn.q_proj"].moments.gram, plain.layers["layers.1.self_attn.q_proj"].moments.gram
    )


def test_empty_audio(tiny_model):
    with pytest.raises(CalibrationError, match="empty"):
        compress_sequential(tiny_model, [])
