"""Factorize linear layers onto the principal subspace of their outputs, and swap them in by name
(`litewhisper.swap.swap_modules`).

Y ≈ μ + (Y − μ) V Vᵀ with Y = X Wᵀ + b gives  Y ≈ X (Wᵀ V) Vᵀ + μ + (b − μ) V Vᵀ:
    weight1 = Wᵀ V (D_in×k), weight2 = Vᵀ (k×D_out), bias = μ + (b − μ) V Vᵀ.
"""

from __future__ import annotations

import logging

import torch
from torch import nn

from litewhisper.compression.plan import RankPlan, decompose
from litewhisper.compression.stats import ActivationStats
from litewhisper.errors import PlanError
from litewhisper.models.linears import LowRankLinear, encoder_linears, find_encoder, unwrap_model
from litewhisper.progress import progress_bar
from litewhisper.swap import swap_modules

__all__ = ["factorize_linear", "apply_plan"]

log = logging.getLogger("litewhisper")


@torch.no_grad()
def factorize_linear(linear: nn.Linear, mean: torch.Tensor, basis: torch.Tensor) -> LowRankLinear:
    """LowRankLinear projecting `linear`'s outputs onto `basis` (D_out×k orthonormal columns) around `mean`."""
    w = linear.weight.detach().to("cpu", torch.float64)  # (out, in)
    v = basis.to(torch.float64)  # (out, k)
    mu = mean.to(torch.float64)  # (out,)
    if v.shape[0] != w.shape[0] or mu.shape != (w.shape[0],):
        raise PlanError(
            f"basis {tuple(v.shape)} / mean {tuple(mu.shape)} do not fit a linear with {w.shape[0]} outputs"
        )
    b = linear.bias.detach().to("cpu", torch.float64) if linear.bias is not None else torch.zeros_like(mu)
    low = LowRankLinear(linear.in_features, linear.out_features, v.shape[1], bias=True)
    dtype, device = linear.weight.dtype, linear.weight.device
    low.weight1.data = (w.T @ v).to(device, dtype)  # (in, k)
    low.weight2.data = v.T.contiguous().to(device, dtype)  # (k, out)
    low.bias.data = (mu + ((b - mu) @ v) @ v.T).to(device, dtype)  # (out,)
    return low


def apply_plan(model, plan: RankPlan, stats: ActivationStats) -> nn.Module:
    """Swap each planned encoder linear for its factorization (in place); returns the model.

    Eigenvectors come from the plan when it holds them, else from the (cached) decomposition of `stats`.
    """
    encoder = find_encoder(model)
    linears = encoder_linears(encoder)
    stats.check_matches(linears)
    planned = {e.name: e for e in plan.low_rank}
    missing = sorted(set(planned) - set(linears))
    if missing:
        raise PlanError(f"the plan names layers this model lacks: {missing[:3]}")
    bar = progress_bar(total=len(planned), desc="factorizing", unit="layer")

    def make(linear: nn.Module, name: str) -> nn.Module:
        entry = planned[name]
        basis = entry.basis if entry.basis is not None else decompose(stats, name).eigenvectors[:, : entry.rank]
        bar.update()
        return factorize_linear(linear, stats.mean(name), basis)

    swapped = swap_modules(encoder, make, lambda m, name: name in planned and isinstance(m, nn.Linear))
    bar.close()
    log.debug("factorized %d encoder layers", len(swapped))
    return unwrap_model(model)
