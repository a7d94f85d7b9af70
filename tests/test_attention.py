"""Reduced-dimension self-attention (PyTorch path): equals the standard path, per-part mode decisions, swap."""

from __future__ import annotations

import copy

import pytest
import torch

from helpers import tiny_whisper
from litewhisper.attention.reduced import (
    AttentionConfigError,
    ReducedAttentionConfig,
    ReducedDimSelfAttention,
    plan_attention,
    use_reduced_attention,
)
from litewhisper.errors import LiteWhisperError
from litewhisper.models.linears import LowRankLinear


def lowrank_like(lin: torch.nn.Module, rank: int, bias: bool = True, gen: torch.Generator | None = None):
    """A LowRankLinear with random factors scaled so that q·kᵀ/√D_h is O(1) (a peaked, non-uniform softmax)."""
    m = LowRankLinear(lin.in_features, lin.out_features, rank, bias=bias)
    with torch.no_grad():
        m.weight1.copy_(torch.randn(lin.in_features, rank, generator=gen) * lin.in_features**-0.5)
        m.weight2.copy_(torch.randn(rank, lin.out_features, generator=gen) * rank**-0.5)
        if bias:
            m.bias.copy_(torch.randn(lin.out_features, generator=gen) * 0.5)
    return m


def make_lowrank(attn, ranks: tuple[int | None, int | None, int | None], q_bias: bool = True, seed: int = 0):
    """Replace q/k/v of a WhisperAttention by random LowRankLinear (None keeps that projection dense)."""
    gen = torch.Generator().manual_seed(seed)
    for name, rank in zip(("q_proj", "k_proj", "v_proj"), ranks, strict=True):
        if rank is not None:
            bias = q_bias if name == "q_proj" else True  # k gets a bias too: compressed k_proj has one
            setattr(attn, name, lowrank_like(getattr(attn, name), rank, bias, gen))
    return attn


def tiny_attention(ranks, d_model: int = 256, heads: int = 4, q_bias: bool = True):
    """A WhisperAttention (head size d_model/heads) with low-rank q/k/v."""
    model = tiny_whisper(d_model=d_model, heads=heads, layers=1, ffn=2 * d_model)
    return make_lowrank(model.model.encoder.layers[0].self_attn, ranks, q_bias)


def reduced(attn, mode="reduced", backend="torch") -> ReducedDimSelfAttention:
    return ReducedDimSelfAttention(attn, ReducedAttentionConfig(mode=mode, backend=backend))


# ranks below and above the head size (64); q<k -> key-side fold, q>k -> query-side fold
RANKS = [
    ((16, 16, 16), "reduced_query"),
    ((16, 48, 32), "reduced_key"),
    ((48, 16, 80), "reduced_query"),
    ((96, 128, 112), "reduced_key"),
]


@pytest.mark.parametrize("seq", [7, 33, 1500])
@pytest.mark.parametrize("ranks,fold", RANKS)
def test_reduced_equals_standard_fp32(ranks, fold, seq):
    attn = tiny_attention(ranks)
    red = reduced(attn)
    assert (red.plan.scores, red.plan.values) == (fold, "reduced")
    x = torch.randn(2, seq, 256, generator=torch.Generator().manual_seed(seq))  # (B, L, D), batch > 1
    with torch.no_grad():
        want, _ = attn(x)
        got, weights = red(x)
    assert weights is None and got.shape == want.shape == (2, seq, 256)
    torch.testing.assert_close(got, want, rtol=1e-4, atol=2e-5)
    assert want.std() > 0.1  # a non-degenerate output, not a trivially small one


@pytest.mark.parametrize("fold_ranks", [(16, 48, 32), (48, 16, 32)])
def test_query_without_bias_both_folds(fold_ranks):
    attn = tiny_attention(fold_ranks, q_bias=False)
    red = reduced(attn)
    assert red.qk_vec is None
    x = torch.randn(3, 33, 256)
    with torch.no_grad():
        torch.testing.assert_close(red(x)[0], attn(x)[0], rtol=1e-4, atol=2e-5)


@pytest.mark.parametrize("ranks", [(16, 48, 32), (96, 32, 128)])
def test_reduced_bf16_close_to_fp32(ranks):
    attn = tiny_attention(ranks)
    x = torch.randn(2, 1500, 256)
    with torch.no_grad():
        ref, _ = attn(x)  # fp32 standard reference
        attn16 = copy.deepcopy(attn).to(torch.bfloat16)
        std16, _ = attn16(x.bfloat16())
        red16, _ = reduced(attn16)(x.bfloat16())
    assert red16.dtype == torch.bfloat16
    err_std = (std16.float() - ref).abs().max().item()
    err_red = (red16.float() - ref).abs().max().item()
    assert err_red < 0.05 * ref.abs().max().item()
    assert err_red < 3 * err_std + 1e-3  # no worse than bf16 rounding of the standard path itself


def test_mixed_dense_and_lowrank_parts():
    attn = tiny_attention((None, 32, 16))  # dense q: scores stay standard; values reduced
    red = reduced(attn)
    assert (red.plan.scores, red.plan.values) == ("standard", "reduced")
    x = torch.randn(2, 33, 256)
    with torch.no_grad():
        torch.testing.assert_close(red(x)[0], attn(x)[0], rtol=1e-4, atol=2e-5)


def _encoder_model():
    model = tiny_whisper(d_model=128, heads=2, layers=3, ffn=256)
    for layer, ranks in zip(model.model.encoder.layers, [(16, 32, 16), (96, 48, 80), (128, 128, 128)], strict=True):
        make_lowrank(layer.self_attn, ranks, seed=ranks[0])
    return model


@pytest.mark.parametrize("mode", ["auto", "reduced"])
def test_full_encoder_with_swapped_attention(mode):
    model = _encoder_model()
    feats = torch.randn(2, 80, 3000, generator=torch.Generator().manual_seed(1))  # (B, mels, frames)
    with torch.no_grad():
        want = model.model.encoder(feats).last_hidden_state  # (2, 1500, 128)
        keys = set(model.state_dict())
        use_reduced_attention(model, mode=mode, backend="torch")
        got = model.model.encoder(feats).last_hidden_state
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)
    assert set(model.state_dict()) == keys  # checkpoints stay loadable
    kinds = [type(layer.self_attn).__name__ for layer in model.model.encoder.layers]
    # auto: layer 3 (ranks 128 > head size 64) saves nothing and keeps the original module
    expected = (
        ["ReducedDimSelfAttention"] * 3 if mode == "reduced" else ["ReducedDimSelfAttention"] * 2 + ["WhisperAttention"]
    )
    assert kinds == expected
    assert all(type(layer.self_attn).__name__ == "WhisperAttention" for layer in model.model.decoder.layers)
    assert all(type(layer.encoder_attn).__name__ == "WhisperAttention" for layer in model.model.decoder.layers)
    if mode == "auto":  # layer 2: ranks 96/48 -> reduced scores, k_V 80 > 64 -> standard values
        plan = model.model.encoder.layers[1].self_attn.plan
        assert (plan.scores, plan.values) == ("reduced_query", "standard")


def test_dense_model_is_left_untouched():
    model = tiny_whisper(d_model=128, heads=2)
    use_reduced_attention(model)
    assert all(type(layer.self_attn).__name__ == "WhisperAttention" for layer in model.model.encoder.layers)


def test_filter_fn_selects_modules_by_name():
    model = _encoder_model()
    use_reduced_attention(
        model, mode="reduced", filter_fn=lambda m, name: name.endswith("layers.0.self_attn") and "encoder" in name
    )
    kinds = [type(layer.self_attn).__name__ for layer in model.model.encoder.layers]
    assert kinds == ["ReducedDimSelfAttention", "WhisperAttention", "WhisperAttention"]


@pytest.mark.parametrize(
    "ranks,mode,expected",
    [
        ((16, 16, 16), "auto", ("reduced_query", "reduced")),
        ((32, 48, 32), "auto", ("reduced_key", "reduced")),  # L² term uses min(k_Q, k_K) = k_Q
        ((48, 32, 48), "auto", ("reduced_query", "reduced")),
        ((128, 128, 128), "auto", ("standard", "standard")),  # above the head size: no saving
        ((64, 64, 64), "auto", ("reduced_query", "standard")),  # scores skip the Q/K up-projections; values tie
        ((96, 128, 48), "auto", ("standard", "reduced")),
        ((None, 16, 16), "auto", ("standard", "reduced")),  # dense q: scores cannot be reduced
        ((16, 16, None), "auto", ("reduced_query", "standard")),
        ((128, 128, 128), "reduced", ("reduced_query", "reduced")),
        ((16, 16, 16), "standard", ("standard", "standard")),
    ],
)
def test_mode_selection(ranks, mode, expected):
    plan = plan_attention(*ranks, head_dim=64, seq_len=1500, mode=mode)
    assert (plan.scores, plan.values) == expected
    assert plan.scores_macs[1] <= plan.scores_macs[0] or mode == "reduced"


def test_plan_counts_macs():
    plan = plan_attention(16, 32, 16, head_dim=64, seq_len=1500)
    L = 1500
    assert plan.scores_macs == (L * 64 * 48 + L * L * 64, L * 16 * 32 + L * L * 16)
    assert plan.values_macs == (L * 16 * 64 + L * L * 64, L * L * 16 + L * 16 * 64)
    assert plan.reduced


@pytest.mark.parametrize("kwargs", [{"mode": "fast"}, {"backend": "cuda"}, {"seq_len": 0}])
def test_bad_config_is_a_clear_error(kwargs):
    with pytest.raises(AttentionConfigError) as err:
        use_reduced_attention(tiny_whisper(), **kwargs)
    assert isinstance(err.value, LiteWhisperError)
    assert str(list(kwargs.values())[0]) in str(err.value)


def test_cross_attention_call_is_rejected():
    red = reduced(tiny_attention((16, 16, 16)))
    x = torch.randn(1, 5, 256)
    with pytest.raises(ValueError, match="self-attention only"):
        red(x, key_value_states=x)


@pytest.mark.real
def test_real_tiny_en_encoder_on_real_speech(real_tiny_en):
    """Real tiny.en weights with q/k/v factorized (LiteASR form, so k_proj gains a bias) on a real calib clip."""
    from helpers import SHARED_DATA, shared_manifest
    from litewhisper.audio.load import load_audio
    from litewhisper.compression.factorize import factorize_linear

    row = shared_manifest(split="calib", lang="en")[0]
    audio = load_audio(SHARED_DATA / row["path"])
    feats = real_tiny_en.processor.feature_extractor(audio, sampling_rate=16000, return_tensors="pt").input_features
    model = copy.deepcopy(real_tiny_en.model)
    gen = torch.Generator().manual_seed(0)
    for layer in model.model.encoder.layers:
        for name, rank in (("q_proj", 32), ("k_proj", 48), ("v_proj", 16)):
            lin = getattr(layer.self_attn, name)
            # orthonormal basis: the `rank` output coordinates of largest weight norm (no LAPACK call: those are
            # pathologically slow under pytest on this busy 2-core machine); exactness does not depend on it
            top = lin.weight.detach().norm(dim=1).topk(rank).indices  # (k,)
            basis = torch.eye(lin.out_features, dtype=torch.float64)[:, top]  # (out, k)
            mean = torch.randn(lin.out_features, generator=gen, dtype=torch.float64) * 0.1
            setattr(layer.self_attn, name, factorize_linear(lin, mean, basis))
    with torch.no_grad():
        want = model.model.encoder(feats).last_hidden_state  # (1, 1500, 384)
        use_reduced_attention(model, backend="torch")
        got = model.model.encoder(feats).last_hidden_state
    assert all(isinstance(layer.self_attn, ReducedDimSelfAttention) for layer in model.model.encoder.layers)
    plans = {(layer.self_attn.plan.scores, layer.self_attn.plan.values) for layer in model.model.encoder.layers}
    assert plans == {("reduced_key", "reduced")}
    torch.testing.assert_close(got, want, rtol=1e-4, atol=2e-4)
