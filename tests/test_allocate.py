import pytest
import torch

from litewhisper.compression.budget import (
    BudgetError,
    LayerSpectrum,
    allocate_for_size,
    allocate_ranks,
    layer_options,
    linear_budget,
)
from litewhisper.errors import LiteWhisperError


def _spectrum(name: str, d: int, decay: float, d_in: int | None = None) -> LayerSpectrum:
    return LayerSpectrum(name, d_in or d, d, torch.tensor([decay**i for i in range(d)], dtype=torch.float64))


def test_options_step_and_dense_fallback():
    opts = layer_options(_spectrum("a", 128, 0.9), multiple_of=16)
    ranks = [o.rank for o in opts]
    assert ranks == [16, 32, 48, None]  # rank 64 would cost 64·256 + 128 ≥ 128·128 + 128
    assert opts[-1].params == 128 * 128 + 128 and opts[-1].lost == 0.0
    assert all(a.params < b.params and a.lost >= b.lost for a, b in zip(opts, opts[1:], strict=False))


def test_budget_and_step_respected():
    spectra = [_spectrum(f"l{i}", 96, 0.8 + 0.04 * i) for i in range(5)]
    dense = sum(s.dense_params for s in spectra)
    for frac in (0.35, 0.5, 0.7, 0.9, 1.0):
        alloc = allocate_ranks(spectra, int(frac * dense), multiple_of=16)
        assert alloc.params <= alloc.budget
        assert all(r is None or r % 16 == 0 for r in alloc.ranks.values())
        total = sum(
            s.dense_params if alloc.ranks[s.name] is None else s.lowrank_params(alloc.ranks[s.name]) for s in spectra
        )
        assert total == alloc.params
    assert all(r is None for r in allocate_ranks(spectra, dense).ranks.values())


def test_picks_higher_variance_layer():
    # layer "flat" spreads its variance over all directions, "peaked" has nearly everything in a few;
    # with room for one upgrade the flat layer must get it
    flat = LayerSpectrum("flat", 128, 128, torch.ones(128, dtype=torch.float64))
    peaked = _spectrum("peaked", 128, 0.5)
    smallest = flat.lowrank_params(16) + peaked.lowrank_params(16)
    alloc = allocate_ranks([flat, peaked], smallest + 16 * 256)
    assert alloc.ranks == {"flat": 32, "peaked": 16}
    assert alloc.lost["flat"] == pytest.approx(1 - 32 / 128)


def test_weight_shifts_allocation():
    a, b = _spectrum("a", 128, 0.95), _spectrum("b", 128, 0.95)
    b = LayerSpectrum("b", 128, 128, b.eigenvalues, weight=10.0)
    alloc = allocate_ranks([a, b], a.lowrank_params(16) + b.lowrank_params(16) + 16 * 256)
    assert alloc.ranks == {"a": 16, "b": 32}


def test_target_size_accounts_for_fixed_params():
    spectra = [_spectrum(f"l{i}", 64, 0.7) for i in range(3)]
    fixed = 10_000
    encoder = fixed + sum(s.dense_params for s in spectra)
    assert linear_budget(spectra, encoder, 1.0) == encoder - fixed
    alloc = allocate_for_size(spectra, encoder, 0.8)
    assert fixed + alloc.params <= 0.8 * encoder


def test_errors():
    spectra = [_spectrum("a", 64, 0.7)]
    with pytest.raises(BudgetError, match="larger target"):
        allocate_ranks(spectra, 100)
    with pytest.raises(LiteWhisperError, match="fraction"):
        linear_budget(spectra, 10**6, 1.5)
    with pytest.raises(LiteWhisperError, match="eigenvalues"):
        LayerSpectrum("x", 4, 4, torch.ones(3))


def test_plan_budget_from_stats(tiny_model):
    import numpy as np

    from litewhisper.compression.budget import plan_budget
    from litewhisper.compression.calibration import CalibrationConfig, calibrate
    from litewhisper.compression.policy import SizeBudget
    from litewhisper.models.cost import encoder_params

    clips = [np.random.default_rng(i).standard_normal(16000 * 3).astype(np.float32) for i in range(2)]
    stats = calibrate(tiny_model, clips, CalibrationConfig(windowing="pack"))
    total = encoder_params(tiny_model)
    # tiny model: d_model 32, ffn 64 -> only rank 16 on the 32x64 / 64x32 MLP layers can shrink anything
    plan = plan_budget(stats, SizeBudget(0.95, multiple_of=16), total)
    assert total - plan.totals()["params_before"] + plan.totals()["params_after"] <= 0.95 * total
    assert {e.rank for e in plan.low_rank} == {16}


def test_size_budget_sequential_and_refined(tiny_model):
    import numpy as np

    from litewhisper.compression.api import compress
    from litewhisper.compression.policy import SizeBudget
    from litewhisper.compression.refine import RefineConfig
    from litewhisper.models.cost import encoder_params
    from litewhisper.models.linears import LowRankLinear

    clips = [np.random.default_rng(i).standard_normal(16000 * 3).astype(np.float32) for i in range(3)]
    total = encoder_params(tiny_model)
    budget = SizeBudget(0.95, sequential=True, refine=RefineConfig(max_steps=2, eval_every=1, val_fraction=0.34))
    result = compress(tiny_model, clips, budget)
    assert result.params_before == total and result.params_after <= 0.95 * total
    assert result.params_after == encoder_params(result.model)
    assert any(isinstance(m, LowRankLinear) for m in result.model.modules())
    assert not any(isinstance(m, LowRankLinear) for m in tiny_model.modules())  # input untouched


def test_min_kept_floor():
    spec = _spectrum("a", 128, 0.9)
    kept = spec.kept_variance()
    opts = layer_options(spec, 16, min_kept=float(kept[31]))
    assert [o.rank for o in opts] == [32, 48, None]


def test_size_budget_is_validated_in_one_place():
    from litewhisper.compression.policy import SizeBudget
    from litewhisper.compression.refine import RefineConfig
    from litewhisper.errors import PlanError

    assert SizeBudget(0.8, refine=5).refine == RefineConfig(max_steps=5) and SizeBudget(0.8, refine=0).refine is None
    assert SizeBudget.preset("balanced").target_size == 0.8 and SizeBudget(0.8).windows == "pack"
    assert SizeBudget(0.8).needs_audio and not SizeBudget(0.8, sensitivity=False).needs_audio
    for kwargs, message in (
        ({"target_size": 1.5}, "fraction in"),
        ({"target_size": 0.8, "windows": "x"}, "windows"),
        ({"target_size": 0.8, "multiple_of": 0}, "multiple_of"),
        ({"target_size": 0.8, "refine": -1}, "refine steps"),
        ({"target_size": 0.8, "min_kept": 1.0}, "min_kept"),
    ):
        with pytest.raises(PlanError, match=message):
            SizeBudget(**kwargs)


def test_budget_plan_round_trips_and_policy_conflicts(tiny_model, tmp_path):
    import numpy as np

    from litewhisper.compression.api import compress
    from litewhisper.compression.calibration import CalibrationConfig, calibrate
    from litewhisper.compression.plan import RankPlan
    from litewhisper.compression.policy import SizeBudget
    from litewhisper.errors import PlanError

    clips = [np.random.default_rng(i).standard_normal(16000 * 3).astype(np.float32) for i in range(2)]
    stats = calibrate(tiny_model, clips, CalibrationConfig(windowing="pack"))
    budget = SizeBudget(0.9, sensitivity=False, multiple_of=8, refine=3)
    plan = compress(tiny_model, None, SizeBudget(0.9, sensitivity=False, multiple_of=8), stats=stats).plan
    assert all(e.target == e.rank for e in plan.entries)  # explicit ranks, no θ
    loaded = RankPlan.load(RankPlan(plan.entries, budget, plan.metadata).save(tmp_path / "plan.json"))
    assert loaded.policy == budget and [e.rank for e in loaded.entries] == [e.rank for e in plan.entries]
    assert "fixed rank per layer (budget allocation)" in plan.table()
    with pytest.raises(PlanError, match="windows"):
        compress(tiny_model, clips, SizeBudget(0.9), config=CalibrationConfig(windowing="clip"))
    with pytest.raises(PlanError, match="RankPolicy .* or a SizeBudget"):
        compress(tiny_model, clips, 0.9)
