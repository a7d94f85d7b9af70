"""The cost model (models/cost.py) against FLOPs counted on a real forward pass (torch's FlopCounterMode).

FlopCounterMode counts matrix products (2·m·n·k FLOPs: mm, addmm, bmm) and convolutions, exactly what the cost
model counts. Both ignore the O(T·D) element-wise work: layer norms, GELU, softmax, scaling, bias and positional
adds. SDPA runs on its math backend here so that its two products are counted as bmm (FlopCounterMode has no
formula for the fused CPU kernel). q/k/v share one rank in the reduced case: the PyTorch reference path pads the
narrower of the score and value operands (a backend detail the ideal count leaves out).
"""

import pytest
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from helpers import tiny_whisper
from litewhisper.attention.reduced import ReducedDimSelfAttention, attention_macs, use_reduced_attention
from litewhisper.constants import ENCODER_POSITIONS, WINDOW_FRAMES
from litewhisper.models.cost import encoder_flops, encoder_params, linear_macs, linear_params
from litewhisper.models.linears import LowRankLinear, encoder_linears
from litewhisper.swap import swap_modules


def _counted_flops(model) -> int:
    encoder = model.model.encoder
    mel = torch.randn(1, encoder.config.num_mel_bins, WINDOW_FRAMES)
    with torch.no_grad(), sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
        encoder(mel)
    return counter.get_total_flops()


def _low_rank(model, ranks: dict[str, int]):
    """Every encoder linear whose short name is in `ranks` becomes a random LowRankLinear of that rank."""

    def make(linear, name):
        low = LowRankLinear(linear.in_features, linear.out_features, ranks[name.rsplit(".", 1)[-1]])
        torch.nn.init.normal_(low.weight1, std=0.1), torch.nn.init.normal_(low.weight2, std=0.1)
        return low

    linears = encoder_linears(model.model.encoder)
    swap_modules(model.model.encoder, make, lambda m, name: name in linears and name.rsplit(".", 1)[-1] in ranks)
    return model


@pytest.fixture
def model():
    return tiny_whisper(d_model=64, heads=4, layers=2, ffn=128)


def test_dense_encoder_flops_equal_counted(model):
    assert encoder_flops(model) == encoder_flops(model.config) == _counted_flops(model)


def test_low_rank_encoder_flops_equal_counted(model):
    _low_rank(model, {"q_proj": 8, "k_proj": 16, "v_proj": 8, "out_proj": 24, "fc1": 16, "fc2": 8})
    dense = encoder_flops(model.config)
    assert encoder_flops(model) == _counted_flops(model) < dense


def test_reduced_attention_encoder_flops_equal_counted(model):
    _low_rank(model, {"q_proj": 4, "k_proj": 4, "v_proj": 4, "fc1": 16})
    low_rank = encoder_flops(model)
    use_reduced_attention(model, mode="reduced", backend="torch")
    attn = model.model.encoder.layers[0].self_attn
    assert isinstance(attn, ReducedDimSelfAttention) and attn.plan.scores == "reduced_query"
    assert encoder_flops(model) == _counted_flops(model) < low_rank
    # per layer the reduced paths save exactly heads × (standard − reduced) multiply-adds of each part
    cost = attention_macs(4, 4, 4, attn.head_dim, ENCODER_POSITIONS)
    saved = sum(standard - reduced for standard, reduced in (cost.scores, cost.values))
    assert low_rank - encoder_flops(model) == 2 * 2 * attn.num_heads * saved


def test_params_and_linear_counts(model):
    before = encoder_params(model)
    _low_rank(model, {"fc1": 16})
    d, f = model.config.d_model, model.config.encoder_ffn_dim
    assert linear_params(d, f, 16) == 16 * (d + f) + f and linear_params(d, f, None, bias=False) == d * f
    assert encoder_params(model) == before - 2 * (linear_params(d, f) - linear_params(d, f, 16))
    assert linear_macs(d, f, 16, 10) == 10 * 16 * (d + f)
