"""Factorization: exact at full rank, PCA projection at lower rank, one generic name-driven swap."""

import numpy as np
import pytest
import torch
from torch import nn

from helpers import tiny_whisper
from litewhisper.compression.calibration import calibrate
from litewhisper.compression.factorize import apply_plan, factorize_linear, swap_modules
from litewhisper.compression.plan import RankPolicy, decompose, plan_ranks
from litewhisper.errors import CalibrationError
from litewhisper.models.cost import encoder_flops, encoder_params
from litewhisper.models.linears import LowRankLinear, encoder_linears


@pytest.fixture(scope="module")
def calibrated():
    model = tiny_whisper()
    rng = np.random.default_rng(0)
    audio = [(0.1 * rng.standard_normal(16_000 * s)).astype(np.float32) for s in (4, 9)]
    return model, calibrate(model, audio)


def test_full_rank_factorization_reproduces_every_layer(calibrated):
    model, stats = calibrated
    torch.manual_seed(1)
    for name, linear in encoder_linears(model.model.encoder).items():
        spec = decompose(stats, name)
        low = factorize_linear(linear, stats.mean(name), spec.eigenvectors)
        assert isinstance(low, LowRankLinear) and low.rank == linear.out_features
        assert low.weight1.shape == (linear.in_features, low.rank) and low.weight2.shape == (
            low.rank,
            linear.out_features,
        )
        x = torch.randn(3, 50, linear.in_features)
        torch.testing.assert_close(low(x), linear(x), rtol=1e-5, atol=1e-5)


def test_low_rank_is_the_pca_projection_of_outputs():
    torch.manual_seed(0)
    linear = nn.Linear(12, 8)
    basis, _ = torch.linalg.qr(torch.randn(8, 3, dtype=torch.float64))  # (out, k) orthonormal
    mean = torch.randn(8, dtype=torch.float64)
    low = factorize_linear(linear, mean, basis)
    x = torch.randn(20, 12)
    y = linear(x).double()
    expected = mean + (y - mean) @ basis @ basis.T  # μ + (Y − μ) V Vᵀ
    torch.testing.assert_close(low(x).double(), expected, rtol=1e-5, atol=1e-5)


def test_k_proj_without_bias_gets_one():
    linear = nn.Linear(6, 6, bias=False)
    low = factorize_linear(linear, torch.ones(6, dtype=torch.float64), torch.eye(6, dtype=torch.float64)[:, :2])
    assert low.bias is not None
    torch.testing.assert_close(low.bias, torch.tensor([0, 0, 1, 1, 1, 1.0]))  # μ − μ V Vᵀ


def test_apply_plan_swaps_planned_layers_by_name(calibrated):
    model, stats = calibrated
    plan = plan_ranks(stats, RankPolicy(0.9, 0.9, multiple_of=4))
    compressed = apply_plan(tiny_whisper(), plan, stats)
    linears = encoder_linears(compressed.model.encoder)
    assert len(plan.low_rank) > 0
    for entry in plan.entries:
        module = linears[entry.name]
        if entry.rank is None:
            assert isinstance(module, nn.Linear)
        else:
            assert isinstance(module, LowRankLinear) and module.rank == entry.rank
    assert not any(isinstance(m, LowRankLinear) for m in compressed.model.decoder.modules())
    saved = plan.totals()["params_before"] - plan.totals()["params_after"]
    assert encoder_params(model) - encoder_params(compressed) == saved
    flops_saved = plan.totals()["flops_before"] - plan.totals()["flops_after"]
    assert encoder_flops(model) - encoder_flops(compressed) == flops_saved
    mel = torch.randn(1, 80, 3000)
    with torch.no_grad():
        out = compressed.model.encoder(mel).last_hidden_state
    assert out.shape == (1, 1500, 32) and torch.isfinite(out).all()


def test_apply_plan_without_cached_basis_gives_same_weights(calibrated, tmp_path):
    model, stats = calibrated
    plan = plan_ranks(stats, RankPolicy(0.9, 0.9, multiple_of=4))
    plan.save(tmp_path / "plan.json")
    from litewhisper.compression.plan import RankPlan

    a = apply_plan(tiny_whisper(), plan, stats)
    b = apply_plan(tiny_whisper(), RankPlan.load(tmp_path / "plan.json"), stats)
    for (na, pa), (nb, pb) in zip(a.model.encoder.named_parameters(), b.model.encoder.named_parameters(), strict=True):
        assert na == nb and torch.equal(pa, pb)


def test_apply_plan_refuses_stats_of_another_model(calibrated):
    _, stats = calibrated
    plan = plan_ranks(stats, RankPolicy(0.9, 0.9, multiple_of=4))
    with pytest.raises(CalibrationError, match="do not match"):
        apply_plan(tiny_whisper(d_model=48), plan, stats)


def test_swap_modules_is_generic():
    net = nn.Sequential(nn.Linear(2, 2), nn.ReLU(), nn.Sequential(nn.Linear(2, 2)))
    swapped = swap_modules(net, lambda m, name: nn.Identity(), lambda m, name: isinstance(m, nn.Linear))
    assert swapped == ["0", "2.0"] and isinstance(net[0], nn.Identity) and isinstance(net[2][0], nn.Identity)


def test_encoder_params_and_flops_tiny_en_shape():
    from transformers.models.whisper.modeling_whisper import WhisperEncoder

    from helpers import tiny_whisper_config

    cfg = tiny_whisper_config(d_model=384, layers=4, heads=6, ffn=1536)
    encoder = WhisperEncoder(cfg)
    assert encoder_params(encoder) == 7_632_384  # whisper tiny encoder without the positional table
    assert encoder_params(encoder, include_positional=True) == 7_632_384 + 1500 * 384
    d, t = 384, 1500
    convs = 3000 * 80 * 3 * d + t * d * 3 * d
    per_layer = t * (4 * d * d + 2 * d * 1536) + 2 * t * t * d
    assert encoder_flops(encoder) == encoder_flops(cfg) == 2 * (convs + 4 * per_layer)


def test_widening_layers_use_the_cheaper_factor_pca(calibrated):
    """fc1's spectrum from the SVD of its input-side factor equals the eigh of its output covariance."""
    from litewhisper.compression.stats import ActivationStats

    _, stats = calibrated
    assert set(stats.factors) == {"layers.0.fc1", "layers.1.fc1"}
    plain = ActivationStats(stats.layers, stats.metadata)  # no cached factors: eigh path
    for name in stats.factors:
        fast, slow = decompose(stats, name), decompose(plain, name)
        torch.testing.assert_close(fast.eigenvalues, slow.eigenvalues, rtol=0, atol=1e-12)
        v, w = fast.eigenvectors[:, :16], slow.eigenvectors[:, :16]
        torch.testing.assert_close(v @ v.T, w @ w.T, rtol=0, atol=1e-9)
