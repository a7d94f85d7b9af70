import copy
from dataclasses import replace

import numpy as np
import pytest
import torch

from litewhisper.compression.calibration import CalibrationConfig, calibrate
from litewhisper.compression.factorize import apply_plan, factorize_linear
from litewhisper.compression.plan import RankPolicy, plan_ranks
from litewhisper.compression.refit import refit_factors
from litewhisper.errors import CalibrationError
from litewhisper.models.linears import LowRankLinear, encoder_linears

CONFIG = CalibrationConfig(windowing="clip", batch_size=2)


def _clips(n: int = 3, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.standard_normal(16000 * (2 + i)).astype(np.float32) * 0.1 for i in range(n)]


def _compressed(model, overrides):
    stats = calibrate(model, _clips(), CONFIG)
    return apply_plan(copy.deepcopy(model), plan_ranks(stats, RankPolicy(overrides=overrides)), stats)


def _encode(model, clips) -> torch.Tensor:
    from transformers import WhisperFeatureExtractor

    feats = WhisperFeatureExtractor(feature_size=80)(clips, sampling_rate=16000, return_tensors="pt")
    with torch.no_grad():
        return model.model.encoder(feats.input_features).last_hidden_state


def _rel_error(student, teacher, clips) -> float:
    s, t = _encode(student, clips), _encode(teacher, clips)
    return float((s - t).pow(2).sum() / t.pow(2).sum())


def test_refit_lowers_the_encoder_error_and_keeps_ranks(tiny_model):
    student = _compressed(tiny_model, (("*fc1", 4), ("*fc2", 4), ("*", None)))
    before = _rel_error(student, tiny_model, _clips(2, seed=1))  # held-out clips
    dense = {n: m.weight.clone() for n, m in encoder_linears(student.model.encoder).items() if hasattr(m, "weight")}
    assert refit_factors(student, tiny_model, _clips(), CONFIG) == 4
    after = _rel_error(student, tiny_model, _clips(2, seed=1))
    assert after < 0.95 * before, (before, after)
    for name, m in encoder_linears(student.model.encoder).items():
        if isinstance(m, LowRankLinear):
            assert m.rank == 4 and m.weight1.requires_grad
        else:  # dense layers are left as they are
            torch.testing.assert_close(m.weight, dense[name], rtol=0, atol=0)


def test_full_rank_refit_without_error_before_recovers_the_layer(tiny_model):
    # layer 0's fc1 at full rank with a spoiled weight1: its inputs carry no error, so least squares finds W again
    # (a tiny ridge: inputs after LayerNorm have a null direction)
    student = copy.deepcopy(tiny_model)
    enc = student.model.encoder
    enc.layers[0].fc1 = factorize_linear(enc.layers[0].fc1, torch.zeros(64), torch.eye(64))
    enc.layers[0].fc1.weight1.data += 0.1 * torch.randn(32, 64)
    assert _rel_error(student, tiny_model, _clips()) > 1e-4
    refit_factors(student, tiny_model, _clips(), CONFIG, ridge=1e-7, basis="keep")
    assert _rel_error(student, tiny_model, _clips()) < 1e-8  # on the inputs it was fitted on


@pytest.mark.parametrize("basis", ["refit", "keep"])
def test_keep_basis_keeps_weight2(tiny_model, basis):
    student = _compressed(tiny_model, (("*fc2", 16), ("*", None)))
    w2 = student.model.encoder.layers[1].fc2.weight2.clone()
    refit_factors(student, tiny_model, _clips(), CONFIG, basis=basis)
    kept = torch.equal(student.model.encoder.layers[1].fc2.weight2, w2)
    assert kept == (basis == "keep")


def test_nothing_to_refit_and_bad_arguments(tiny_model):
    assert refit_factors(copy.deepcopy(tiny_model), tiny_model, _clips(), CONFIG) == 0
    with pytest.raises(CalibrationError, match="basis must be one of refit, keep"):
        refit_factors(tiny_model, tiny_model, _clips(), basis="pca")
    with pytest.raises(CalibrationError, match="ridge must be ≥ 0"):
        refit_factors(tiny_model, tiny_model, _clips(), ridge=-1.0)
    with pytest.raises(CalibrationError, match="at least one clip"):
        refit_factors(tiny_model, tiny_model, [])


def test_compress_with_refit_and_its_validation(tiny_model):
    from litewhisper.cli import build_parser
    from litewhisper.cli.compress import compress_policy
    from litewhisper.compression.api import compress
    from litewhisper.compression.policy import SizeBudget
    from litewhisper.constants import REFIT_RIDGE
    from litewhisper.errors import PlanError

    budget = SizeBudget(0.6, sensitivity=False, windows="clip", multiple_of=4)
    plain = compress(tiny_model, _clips(), budget)
    refitted = compress(tiny_model, _clips(), replace(budget, refit=0.1))
    assert "refit" in refitted.timings and "refit" not in plain.timings
    assert refitted.params_after == plain.params_after  # same ranks
    assert _rel_error(refitted.model, tiny_model, _clips(2, seed=1)) < _rel_error(plain.model, tiny_model, _clips(2, 1))
    for bad in (-0.1, True, "0.1"):
        with pytest.raises(PlanError, match="refit is a ridge strength"):
            SizeBudget(0.8, refit=bad)
    parse = build_parser().parse_args
    assert compress_policy(parse(["compress", "tiny.en", "-o", "x", "--refit"])).refit == REFIT_RIDGE
    assert compress_policy(parse(["compress", "tiny.en", "-o", "x", "--refit", "0.5"])).refit == 0.5
    assert compress_policy(parse(["compress", "tiny.en", "-o", "x"])).refit is None


def test_reduced_attention_is_refused_with_a_clear_error(tiny_model):
    from litewhisper.attention.reduced import use_reduced_attention

    student = use_reduced_attention(_compressed(tiny_model, (("*q_proj", 4), ("*k_proj", 4), ("*", None))), "reduced")
    with pytest.raises(CalibrationError, match="attention='standard'"):
        refit_factors(student, tiny_model, _clips(), CONFIG)
