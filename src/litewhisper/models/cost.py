"""The cost model: encoder parameters and analytic FLOPs per 30-s window (a multiply-add counts as 2 FLOPs).

The one place that counts encoders: plan (per-layer table), budget (layer sizes), bench (the "ideal speedup"
column) and report all ask this module. The per-head cost of each attention part, standard or reduced, is
`attention.reduced.attention_macs` (reduced attention chooses its paths by it; this module sums it up).

Counted: the two convolutions, every linear (dense or low-rank, x·W1·W2 for low-rank) and the attention matmuls:
Q Kᵀ and A V per head in the standard path, or the reduced-dimension paths of `attention.reduced` (which replace
the q/k/v second factors and the L² products by products in the rank dimensions).
Not counted (all O(T·D) or smaller): layer norms, GELU, softmax, scaling, bias adds, the positional-embedding add,
and the reduced key-side path's per-key bias (B u_iᵀ, L·k_K per head).

Measured: the int8 time of factorised linears against their dense int8 forms (`PairShape` -> `PairTiming`, from a
`TimingSource`: export/layer_timing.py times them on this CPU and caches them), with the rule by which the int8
export merges a pair back to dense (`PairTiming.merged`) and the sum over a plan's linears (`int8_linear_cost`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

from torch import nn

from litewhisper.attention.reduced import ReducedDimSelfAttention, attention_macs
from litewhisper.constants import ENCODER_POSITIONS
from litewhisper.errors import LiteWhisperError
from litewhisper.models.linears import LowRankLinear, encoder_linears, find_encoder

__all__ = [
    "linear_params",
    "linear_macs",
    "encoder_params",
    "encoder_macs",
    "encoder_flops",
    "PairShape",
    "PairTiming",
    "TimingSource",
    "Int8LinearCost",
    "int8_linear_cost",
]

CONV_KERNEL = 3  # Whisper's two encoder convolutions (conv2 has stride 2)


def linear_params(d_in: int, d_out: int, rank: int | None = None, bias: bool = True) -> int:
    """Weights + bias of a dense (rank None) or low-rank linear; a low-rank linear always has a bias."""
    if rank is None:
        return d_in * d_out + (d_out if bias else 0)
    return rank * (d_in + d_out) + d_out  # weight1 + weight2 + bias


def linear_macs(d_in: int, d_out: int, rank: int | None, positions: int) -> int:
    """Multiply-adds of one linear over `positions` vectors (x·W, or (x·W1)·W2 when low-rank)."""
    return positions * (d_in * d_out if rank is None else rank * (d_in + d_out))


def _rank(module: nn.Module) -> int | None:
    return module.rank if isinstance(module, LowRankLinear) else None


def _reduced_parts(attn: nn.Module) -> tuple[bool, bool]:
    """(scores reduced, values reduced) of a self-attention module (standard unless ReducedDimSelfAttention)."""
    if not isinstance(attn, ReducedDimSelfAttention):
        return False, False
    return attn.plan.scores != "standard", attn.plan.values != "standard"


def _attention_core_macs(attn: nn.Module, positions: int) -> int:
    """Q Kᵀ and A V over all heads, adjusted for the reduced paths a module runs."""
    heads, head_dim = attn.num_heads, attn.head_dim
    d_model = heads * head_dim
    macs = 2 * positions * positions * d_model  # standard Q Kᵀ and A V, summed over heads
    scores_reduced, values_reduced = _reduced_parts(attn)
    if scores_reduced or values_reduced:
        cost = attention_macs(_rank(attn.q_proj), _rank(attn.k_proj), _rank(attn.v_proj), head_dim, positions)
        for reduced, (standard, red) in ((scores_reduced, cost.scores), (values_reduced, cost.values)):
            if reduced:  # the standard count includes the second factors (in the linears) and the L² product
                macs += heads * (red - standard)
    return macs


def _conv_macs(num_mel_bins: int, d_model: int, positions: int) -> int:
    mel_frames = 2 * positions  # conv2 has stride 2
    return mel_frames * num_mel_bins * CONV_KERNEL * d_model + positions * d_model * CONV_KERNEL * d_model


def encoder_params(model, include_positional: bool = False) -> int:
    """Encoder parameter count; by default without the fixed positional-embedding table."""
    encoder = find_encoder(model)
    return sum(
        p.numel()
        for name, p in encoder.named_parameters()
        if include_positional or not name.startswith("embed_positions.")
    )


def encoder_macs(model_or_config, positions: int = ENCODER_POSITIONS) -> int:
    """Encoder multiply-adds for one window of `positions` (1500 = 30 s): see the module docstring.

    Given a config (WhisperConfig), the encoder is assumed dense with standard attention.
    """
    if isinstance(model_or_config, nn.Module) or hasattr(model_or_config, "model"):
        encoder = find_encoder(model_or_config)
        cfg = encoder.config
        linears = sum(
            linear_macs(m.in_features, m.out_features, _rank(m), positions) for m in encoder_linears(encoder).values()
        )
        attention = sum(_attention_core_macs(layer.self_attn, positions) for layer in encoder.layers)
    else:
        cfg = model_or_config
        d, f = cfg.d_model, cfg.encoder_ffn_dim
        linears = cfg.encoder_layers * positions * (4 * d * d + 2 * d * f)
        attention = cfg.encoder_layers * 2 * positions * positions * d
    return _conv_macs(cfg.num_mel_bins, cfg.d_model, positions) + linears + attention


def encoder_flops(model_or_config, frames: int = ENCODER_POSITIONS) -> int:
    """Encoder FLOPs (2 per multiply-add) for one window of `frames` positions, dense, low-rank or with
    reduced-dimension attention."""
    return 2 * encoder_macs(model_or_config, frames)


@dataclass(frozen=True)
class PairShape:
    """A factorised linear Din -> k -> Dout over `tokens` positions (1500: one 30-s window)."""

    d_in: int
    d_out: int
    rank: int
    tokens: int = ENCODER_POSITIONS

    def __post_init__(self) -> None:
        if min(self.d_in, self.d_out, self.rank, self.tokens) < 1:
            raise LiteWhisperError(f"a linear's shape must be positive, got {self}")

    @property
    def key(self) -> str:
        return f"{self.d_in}x{self.d_out} k{self.rank} tokens {self.tokens}"


@dataclass(frozen=True)
class PairTiming:
    """Median ms of one run: the dense int8 MatMul of W1·W2 and the factorised pair, both with bias."""

    dense_ms: float
    factored_ms: float

    @property
    def speedup(self) -> float:
        """dense / factorised time: > 1 where the factors pay."""
        return self.dense_ms / self.factored_ms

    def merged(self, margin: float) -> bool:
        """Whether the int8 export merges the pair back to dense: unless it is at least `margin` faster."""
        return not self.factored_ms < (1 - margin) * self.dense_ms

    def exported_ms(self, margin: float) -> float:
        """The time of the form the int8 export writes (`merged`: dense, else factorised)."""
        return self.dense_ms if self.merged(margin) else self.factored_ms


TimingSource = Callable[[PairShape], PairTiming]


@dataclass(frozen=True)
class Int8LinearCost:
    """Measured int8 time (ms per 30-s window, on one CPU) and FLOPs of a set of factorised linears."""

    layers: int
    merged: int  # those the int8 export merges back to dense (not faster factorised: export/densify.py)
    dense_ms: float  # all of them dense
    factored_ms: float  # all of them factorised
    exported_ms: float  # as the int8 export writes them: factorised, or dense where merged
    dense_flops: int
    factored_flops: int

    def describe(self) -> str:
        return (
            f"{self.layers} linears: dense {self.dense_ms:.1f} ms, factorised {self.factored_ms:.1f} ms "
            f"({self.dense_ms / max(self.factored_ms, 1e-9):.2f}×; FLOPs "
            f"{self.dense_flops / max(self.factored_flops, 1):.2f}×), as exported {self.exported_ms:.1f} ms "
            f"({self.merged} merged back to dense) per 30-s window"
        )


def int8_linear_cost(
    shapes: Iterable[tuple[int, int, int]], timings: TimingSource, margin: float, positions: int = ENCODER_POSITIONS
) -> Int8LinearCost:
    """Int8 time and FLOPs of factorised linears (Din, Dout, rank) over `positions`; `timings`: a TimingSource
    (export/layer_timing.py measures one on this CPU and caches it; or a fixed table)."""
    shapes = list(shapes)
    times = [timings(PairShape(d_in, d_out, rank, positions)) for d_in, d_out, rank in shapes]
    return Int8LinearCost(
        layers=len(shapes),
        merged=sum(t.merged(margin) for t in times),
        dense_ms=sum(t.dense_ms for t in times),
        factored_ms=sum(t.factored_ms for t in times),
        exported_ms=sum(t.exported_ms(margin) for t in times),
        dense_flops=2 * sum(linear_macs(d_in, d_out, None, positions) for d_in, d_out, _ in shapes),
        factored_flops=2 * sum(linear_macs(d_in, d_out, rank, positions) for d_in, d_out, rank in shapes),
    )
