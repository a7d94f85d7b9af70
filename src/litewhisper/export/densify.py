"""Merge factorised linears back to dense where their int8 pair is not faster than one dense int8 MatMul.

For each LowRankLinear of the encoder whose MatMuls the int8 export quantizes, `decide_merges` asks a
TimingSource (export/layer_timing.py: measured on this CPU, cached) for the int8 time of the pair x·W1·W2 and of
the dense x·(W1 W2), and merges the layer when the pair is not at least MERGE_MARGIN faster. `merge_factors`
replaces those layers of a (traced) copy by nn.Linear with W = W1 W2 and the same bias: the same function in
exact arithmetic, traced as one MatMul. Left as they are: layers whose MatMuls stay fp32 (keep_fp32) and
q/k/v factors that a reduced-dimension attention module reads directly (attention/reduced.py).
"""

from __future__ import annotations

import logging
import re
from dataclasses import asdict, dataclass

import torch
from torch import nn

from litewhisper.attention.reduced import ReducedDimSelfAttention
from litewhisper.models.cost import PairShape, TimingSource, int8_linear_cost
from litewhisper.models.linears import LowRankLinear, find_encoder

__all__ = [
    "MERGE_MARGIN",
    "FactorDecision",
    "node_prefix",
    "kept_fp32",
    "mergeable",
    "decide_merges",
    "merge_factors",
]

log = logging.getLogger("litewhisper")

MERGE_MARGIN = 0.05  # keep the factors only where their int8 time is at least 5 % below the dense layer's


@dataclass(frozen=True)
class FactorDecision:
    """One factorised linear: its shape, both int8 times (ms per window) and whether it is merged to dense."""

    name: str  # relative to the encoder: layers.3.fc1
    d_in: int
    d_out: int
    rank: int
    dense_ms: float
    factored_ms: float
    merged: bool

    def as_dict(self) -> dict:
        return {**asdict(self), "dense_ms": round(self.dense_ms, 4), "factored_ms": round(self.factored_ms, 4)}


def node_prefix(name: str) -> str:
    """The ONNX node-name prefix of an encoder linear: layers.3.fc1 -> /encoder/layers.3/fc1/ (its MatMuls are
    /encoder/layers.3/fc1/MatMul and, factorised, MatMul_1), as keep_fp32 patterns see them."""
    layer, _, rest = name.partition(".")[2].partition(".")
    return f"/encoder/layers.{layer}/{rest.replace('.', '/')}/"


def kept_fp32(name: str, keep_fp32: str | None) -> bool:
    """Whether the export keeps encoder linear `name`'s MatMuls fp32 (the regex `keep_fp32` finds its nodes)."""
    return keep_fp32 is not None and re.search(keep_fp32, node_prefix(name)) is not None


def _read_by_reduced_attention(encoder: nn.Module) -> set[str]:
    """Names of q/k/v linears whose factors a reduced-dimension attention module uses directly."""
    names = set()
    for path, module in encoder.named_modules():
        if isinstance(module, ReducedDimSelfAttention):
            if module.plan.scores != "standard":
                names |= {f"{path}.q_proj", f"{path}.k_proj"}
            if module.plan.values == "reduced":
                names.add(f"{path}.v_proj")
    return names


def mergeable(model: nn.Module, keep_fp32: str | None) -> dict[str, LowRankLinear]:
    """The encoder's LowRankLinears that trace as an int8 MatMul pair: not kept fp32 by the `keep_fp32` regex
    (searched in their node-name prefix) and not read by reduced attention; by name (layers.3.fc1)."""
    encoder = find_encoder(model)
    skip = _read_by_reduced_attention(encoder)
    return {
        name: m
        for name, m in encoder.named_modules()
        if isinstance(m, LowRankLinear) and name not in skip and not kept_fp32(name, keep_fp32)
    }


def decide_merges(
    model: nn.Module, timings: TimingSource, keep_fp32: str | None, margin: float = MERGE_MARGIN
) -> list[FactorDecision]:
    """One decision per `mergeable` layer: merged unless factored_ms < (1 - margin) · dense_ms."""
    decisions = []
    for name, layer in mergeable(model, keep_fp32).items():
        shape = (layer.in_features, layer.out_features, layer.rank)
        t = timings(PairShape(*shape))
        decisions.append(FactorDecision(name, *shape, t.dense_ms, t.factored_ms, t.merged(margin)))
    if decisions:
        cost = int8_linear_cost([(d.d_in, d.d_out, d.rank) for d in decisions], timings, margin)
        log.info("int8 timing of the factorised linears: %s", cost.describe())
    return decisions


@torch.no_grad()
def _dense(layer: LowRankLinear) -> nn.Linear:
    """nn.Linear computing x·W1·W2 + b as x·(W1 W2) + b (product in float64)."""
    w = layer.weight1.double() @ layer.weight2.double()  # (in, out)
    dense = nn.Linear(layer.in_features, layer.out_features, bias=layer.bias is not None)
    dense = dense.to(device=layer.weight1.device, dtype=layer.weight1.dtype)
    dense.weight.copy_(w.T.to(layer.weight1.dtype))  # nn.Linear keeps (out, in)
    if layer.bias is not None:
        dense.bias.copy_(layer.bias)
    return dense


def merge_factors(model: nn.Module, names: list[str]) -> int:
    """Replace the encoder's LowRankLinears named in `names` by their dense nn.Linear **in place**; returns how
    many."""
    encoder = find_encoder(model)
    for name in names:
        parent, _, attr = name.rpartition(".")
        owner = encoder.get_submodule(parent)
        setattr(owner, attr, _dense(getattr(owner, attr)))
    return len(names)
