"""Layer sensitivities: one probe per layer, model left untouched, weights = output error per lost variance."""

import math

import numpy as np
import pytest
import torch

from litewhisper.compression.calibration import CalibrationConfig, calibrate
from litewhisper.compression.factorize import factorize_linear
from litewhisper.compression.plan import decompose
from litewhisper.compression.sensitivity import layer_sensitivities, probe_rank
from litewhisper.errors import LiteWhisperError
from litewhisper.models.linears import LowRankLinear


def _clips(n: int) -> list[np.ndarray]:
    return [np.random.default_rng(i).standard_normal(16000 * 3).astype(np.float32) for i in range(n)]


@pytest.fixture(scope="module")
def setup():
    from helpers import tiny_whisper

    model = tiny_whisper()
    stats = calibrate(model, _clips(2), CalibrationConfig(windowing="pack"))
    from litewhisper.compression.calibration import feature_extractor
    from litewhisper.models.linears import find_encoder

    extractor = feature_extractor(model, find_encoder(model))
    features = extractor(_clips(2), sampling_rate=16000, return_tensors="pt").input_features
    return model, stats, features


def test_probe_rank():
    explained = torch.tensor([0.5, 0.8, 0.95, 0.99, 1.0, 1.0, 1.0, 1.0], dtype=torch.float64)
    assert probe_rank(explained, 8, 0.9, multiple_of=2) == 4  # explained[3] = 0.99 ≥ 0.9, first even rank
    assert probe_rank(explained, 8, 0.99, multiple_of=4) == 4
    assert probe_rank(explained, 8, 0.999, multiple_of=4) is None  # only full rank keeps it


def test_weights_match_a_single_layer_probe(setup):
    model, stats, features = setup
    before = {k: v.clone() for k, v in model.state_dict().items()}
    weights = layer_sensitivities(model, stats, features, probe_kept=0.9, multiple_of=8)
    assert set(weights) == set(stats.layers)
    assert all(math.isfinite(w) and w > 0 for w in weights.values())
    # the model is exactly as it was
    assert not any(isinstance(m, LowRankLinear) for m in model.modules())
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    # recompute layers' weights by hand with full encoder passes (the cached partial re-runs must agree)
    encoder = model.model.encoder
    with torch.no_grad():
        teacher = torch.cat([encoder(f[None]).last_hidden_state for f in features])
    for block, parent, child in ((1, "", "fc2"), (0, "self_attn.", "out_proj"), (0, "", "fc1")):
        name = f"layers.{block}.{parent}{child}"
        spectrum = decompose(stats, name)
        rank = probe_rank(spectrum.explained(), 64, 0.9, 8)
        lost = 1 - float(spectrum.explained()[rank - 1])
        owner = encoder.get_submodule(f"layers.{block}.{parent}".rstrip("."))
        original = getattr(owner, child)
        with torch.no_grad():
            setattr(owner, child, factorize_linear(original, stats.mean(name), spectrum.eigenvectors[:, :rank]))
            student = torch.cat([encoder(f[None]).last_hidden_state for f in features])
            setattr(owner, child, original)
        expected = float(((student - teacher) ** 2).mean() / (teacher**2).mean()) / lost
        assert weights[name] == pytest.approx(expected, rel=1e-4), name


def test_batching_does_not_change_weights(setup):
    model, stats, features = setup
    one = layer_sensitivities(model, stats, features, probe_kept=0.9, multiple_of=8, batch_size=1)
    two = layer_sensitivities(model, stats, features, probe_kept=0.9, multiple_of=8, batch_size=2)
    assert one == pytest.approx(two, rel=1e-4)


def test_bad_probe_is_refused(setup):
    model, stats, features = setup
    with pytest.raises(LiteWhisperError, match="probe_kept must be in"):
        layer_sensitivities(model, stats, features, probe_kept=1.0)


def test_size_budget_with_sensitivity(tiny_model):
    from litewhisper.compression.api import compress
    from litewhisper.compression.policy import SizeBudget
    from litewhisper.models.cost import encoder_params

    result = compress(tiny_model, _clips(3), SizeBudget(0.95, sensitivity=True))
    assert result.params_after <= 0.95 * result.params_before
    assert "sensitivity" in result.timings
    with pytest.raises(LiteWhisperError, match="calibration audio is needed"):
        compress(tiny_model, None, SizeBudget(0.95, sensitivity=True), stats=result.stats)
    assert encoder_params(result.model) == result.params_after


def test_sensitivities_are_reused_when_passed_back(tiny_model, monkeypatch):
    import litewhisper.compression.api as api
    from litewhisper.compression.policy import SizeBudget

    clips = _clips(3)
    calls = []
    real = api.layer_sensitivities
    monkeypatch.setattr(api, "layer_sensitivities", lambda *a, **k: calls.append(1) or real(*a, **k))
    first = api.compress(tiny_model, clips, SizeBudget(0.95))
    again = api.compress(tiny_model, clips, SizeBudget(0.96), stats=first.stats, sensitivities=first.sensitivities)
    assert len(calls) == 1 and again.sensitivities is first.sensitivities and "sensitivity" not in again.timings
    api.compress(tiny_model, clips[:2], SizeBudget(0.96), stats=first.stats)  # not passed back: probed again
    assert len(calls) == 2
    assert api.compress(tiny_model, clips, SizeBudget(0.95, sensitivity=False)).sensitivities is None
