"""Rank plans: threshold edge cases, dense fallback, never growing a layer, policies, serialisation."""

import json

import pytest
import torch

from litewhisper.compression.plan import RankPlan, RankPolicy, Spectrum, _choose_rank, plan_ranks
from litewhisper.compression.stats import ActivationStats, LayerStats, Moments
from litewhisper.errors import CalibrationError, PlanError

# eigenvalue blocks of 16: explained variance 0.5 at k=16, 0.75 at 32, 0.875 at 48, 1 at 64 (exact in binary)
BLOCKS = [0.5, 0.25, 0.125, 0.125]


def spectrum(values, dim=None) -> Spectrum:
    values = torch.tensor(values, dtype=torch.float64)
    return Spectrum(values, torch.eye(dim or len(values), dtype=torch.float64))


def blocks_spectrum() -> Spectrum:
    return spectrum([v / 16 for v in BLOCKS for _ in range(16)])


def stats_with_spectrum(eigenvalues, d_in, name="layers.0.fc1", count=10_000, seed=0) -> ActivationStats:
    """Statistics whose output covariance is Q diag(eigenvalues) Qᵀ around a nonzero mean."""
    g = torch.Generator().manual_seed(seed)
    d = len(eigenvalues)
    q, _ = torch.linalg.qr(torch.randn(d, d, generator=g, dtype=torch.float64))
    cov = q @ torch.diag(torch.tensor(eigenvalues, dtype=torch.float64)) @ q.T
    mu = torch.randn(d, generator=g, dtype=torch.float64)
    gram = count * (cov + torch.outer(mu, mu))
    return ActivationStats(
        {name: LayerStats(d_in, True, Moments(count, count * mu, gram))},
        {"model": "synthetic", "signature": "synthetic"},
    )


@pytest.mark.parametrize("theta, rank", [(0.5, 16), (0.5000001, 32), (0.75, 32), (0.76, 48), (0.875, 48)])
def test_rank_is_smallest_multiple_reaching_theta(theta, rank):
    # d_in 256, d_out 64: break-even k(320) >= 16384 at k >= 51.2, so 16/32/48 shrink the layer
    assert _choose_rank(blocks_spectrum(), 256, 64, theta, 16)[0] == rank


def test_kept_variance_reported():
    assert _choose_rank(blocks_spectrum(), 256, 64, 0.6, 16) == (32, 0.75)


def test_dense_when_only_full_rank_reaches_theta():
    assert _choose_rank(blocks_spectrum(), 256, 64, 0.9, 16) == (None, 1.0)  # k=64 > break-even
    assert _choose_rank(blocks_spectrum(), 256, 64, 1.0, 16) == (None, 1.0)


def test_never_grow_a_square_layer():
    # square 64: k=32 costs 32*128 = 4096 = 64*64 -> dense even though it reaches θ
    assert _choose_rank(blocks_spectrum(), 64, 64, 0.75, 16) == (None, 1.0)
    assert _choose_rank(blocks_spectrum(), 64, 64, 0.5, 16) == (16, 0.5)
    assert _choose_rank(blocks_spectrum(), 64, 64, 40, 16) == (None, 1.0)  # fixed rank that would grow


def test_multiple_of_one_and_fixed_rank():
    assert _choose_rank(blocks_spectrum(), 256, 64, 0.5, 1)[0] == 16
    assert _choose_rank(blocks_spectrum(), 256, 64, 0.51, 1)[0] == 17
    assert _choose_rank(blocks_spectrum(), 256, 64, 20, 16) == (20, pytest.approx(0.5 + 4 * 0.25 / 16))


def test_no_multiple_within_layer_width_is_dense():
    # d_out 40 with multiple_of 32: only k=32 exists and it keeps 32/40 < 0.9
    assert _choose_rank(spectrum([1.0] * 40), 4096, 40, 0.9, 32) == (None, 1.0)


def test_plan_from_stats_uses_eigendecomposition():
    stats = stats_with_spectrum([v / 16 for v in BLOCKS for _ in range(16)], d_in=256)
    plan = plan_ranks(stats, RankPolicy(theta_mlp=0.74))
    entry = plan["layers.0.fc1"]
    assert entry.rank == 32 and entry.kept_variance == pytest.approx(0.75, abs=1e-12)
    assert entry.params_before == 256 * 64 + 64 and entry.params_after == 32 * (256 + 64) + 64
    assert entry.flops_before == 2 * 1500 * 256 * 64 and entry.flops_after == 2 * 1500 * 32 * 320
    assert entry.basis.shape == (64, 32)
    assert stats.spectra  # decomposed once, reused by the next plan
    # not θ = 0.5: eigh gives the first 16 eigenvalues' share as 0.5 ± a few ulp, a machine-dependent side of θ
    assert plan_ranks(stats, RankPolicy(theta_mlp=0.45))["layers.0.fc1"].rank == 16


def test_theta_one_keeps_everything_dense():
    stats = stats_with_spectrum([1.0] * 32, d_in=128)
    assert plan_ranks(stats, RankPolicy(1.0, 1.0)).low_rank == ()


def test_too_few_frames_is_an_error():
    stats = stats_with_spectrum([1.0] * 64, d_in=256, count=63)
    expected = r"63 frames but the widest layer \(layers.0.fc1\) has 64 outputs.*at least 1.3 s of audio"
    with pytest.raises(CalibrationError, match=expected):
        plan_ranks(stats, RankPolicy())


def test_policy_validation():
    for bad in (0, 0.0, -0.1, 1.5, True, "0.9"):
        with pytest.raises(PlanError, match="theta_attn"):
            RankPolicy(theta_attn=bad)
    with pytest.raises(PlanError, match="theta_mlp"):
        RankPolicy(theta_mlp=1.01)
    for bad in (0, -16, 2.5):
        with pytest.raises(PlanError, match="multiple_of"):
            RankPolicy(multiple_of=bad)
    with pytest.raises(PlanError, match="θ must be in"):
        RankPolicy(overrides={"layers.0.*": 1.5})
    with pytest.raises(PlanError, match="rank must be"):
        RankPolicy(overrides={"layers.0.*": 0})
    with pytest.raises(PlanError, match="unknown preset"):
        RankPolicy.preset("tiny")


def test_presets_and_overrides():
    assert (RankPolicy.preset("acc").theta_attn, RankPolicy.preset("acc").theta_mlp) == (0.999, 0.999)
    assert (RankPolicy.preset("balanced").theta_attn, RankPolicy.preset("balanced").theta_mlp) == (0.99, 0.999)
    assert (RankPolicy.preset("fast").theta_attn, RankPolicy.preset("fast").theta_mlp) == (0.99, 0.995)
    policy = RankPolicy(0.9, 0.95, overrides={"layers.0.*": 32, "*.fc2": None, "layers.1.self_attn.q_proj": 0.5})
    assert policy.target("layers.0.fc2") == 32  # first match wins
    assert policy.target("layers.3.fc2") is None
    assert policy.target("layers.1.self_attn.q_proj") == 0.5
    assert policy.target("layers.1.self_attn.k_proj") == 0.9 and policy.target("layers.1.fc1") == 0.95
    assert hash(policy)  # frozen and hashable


def _two_layer_plan():
    a = stats_with_spectrum([v / 16 for v in BLOCKS for _ in range(16)], d_in=256, name="layers.1.fc1")
    b = stats_with_spectrum([1.0] * 64, d_in=64, name="layers.0.self_attn.q_proj", seed=1)
    stats = ActivationStats({**a.layers, **b.layers}, a.metadata)
    return plan_ranks(stats, RankPolicy(theta_mlp=0.7))


def test_low_rank_config_and_table():
    plan = _two_layer_plan()
    assert plan.to_low_rank_config() == [{}, {"fc1": 32}]
    assert plan.to_low_rank_config(num_layers=3) == [{}, {"fc1": 32}, {}]
    table = plan.table()
    assert "layers.1.fc1" in table and "dense" in table and "theta_mlp=0.7" in table


def test_json_round_trip(tmp_path):
    plan = _two_layer_plan()
    path = plan.save(tmp_path / "plan.json")
    loaded = RankPlan.load(path)
    assert loaded == plan and loaded["layers.1.fc1"].basis is None
    assert json.loads(path.read_text())["low_rank_config"] == [{}, {"fc1": 32}]
    with pytest.raises(PlanError, match="cannot read rank plan"):
        RankPlan.load(tmp_path / "missing.json")
