"""Budgeted rank allocation: one encoder-size budget shared by all layers instead of one θ for all.

Each low-rank candidate layer offers a few options — rank k = multiple_of, 2·multiple_of, ... while the factors
are smaller than the dense weight, then the dense layer itself (variance kept 1). Choosing one option per layer
so that the total size meets the budget and the summed *lost* variance fraction is smallest is a multiple-choice
knapsack; we solve it greedily along each layer's lower convex hull: repeatedly take the affordable upgrade with
the largest drop in lost variance per added parameter (looking past non-convex steps such as the jump to dense).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import torch

from litewhisper.compression.plan import RankPlan, decompose, plan_fixed_ranks
from litewhisper.compression.policy import BUDGET_PRESETS, SizeBudget
from litewhisper.compression.stats import ActivationStats
from litewhisper.errors import LiteWhisperError
from litewhisper.models.cost import linear_params

__all__ = [
    "BUDGET_PRESETS",
    "BudgetError",
    "LayerSpectrum",
    "Option",
    "Allocation",
    "layer_options",
    "allocate_ranks",
    "linear_budget",
    "allocate_for_size",
    "spectra_from_stats",
    "plan_budget",
]

log = logging.getLogger("litewhisper")


class BudgetError(LiteWhisperError):
    """The requested size cannot be reached (even the smallest rank everywhere is too big)."""


@dataclass(frozen=True)
class LayerSpectrum:
    """Eigenvalues (any order, ≥ 0 after clamping) of one linear's output covariance, and its shape."""

    name: str
    d_in: int
    d_out: int
    eigenvalues: torch.Tensor  # (d_out,)
    dense_bias: bool = True  # the dense layer has a bias (Whisper's k_proj has none; low-rank layers always do)
    weight: float = 1.0  # importance of this layer's lost variance in the objective

    def __post_init__(self) -> None:
        if self.d_in < 1 or self.d_out < 1:
            raise LiteWhisperError(f"{self.name}: shape must be positive, got {self.d_in}x{self.d_out}")
        if self.eigenvalues.numel() != self.d_out:
            raise LiteWhisperError(f"{self.name}: expected {self.d_out} eigenvalues, got {self.eigenvalues.numel()}")

    @property
    def dense_params(self) -> int:
        return linear_params(self.d_in, self.d_out, None, self.dense_bias)

    def lowrank_params(self, rank: int) -> int:
        return linear_params(self.d_in, self.d_out, rank)

    def kept_variance(self) -> torch.Tensor:
        """(d_out,) fraction of variance kept by rank 1..d_out."""
        eig = self.eigenvalues.detach().double().clamp_min(0).sort(descending=True).values
        total = eig.sum()
        if total <= 0:
            return torch.ones_like(eig)
        return (eig.cumsum(0) / total).clamp(max=1.0)


@dataclass(frozen=True)
class Option:
    rank: int | None  # None = dense
    params: int
    lost: float  # weighted fraction of variance lost


def layer_options(spec: LayerSpectrum, multiple_of: int = 16, min_kept: float = 0.0) -> list[Option]:
    """Low-rank options strictly smaller than dense that keep ≥ `min_kept` of the variance, then dense."""
    if multiple_of < 1:
        raise LiteWhisperError(f"multiple_of must be ≥ 1, got {multiple_of}")
    kept = spec.kept_variance()
    options = []
    for rank in range(multiple_of, min(spec.d_in, spec.d_out) + 1, multiple_of):
        params = spec.lowrank_params(rank)
        if params >= spec.dense_params:
            break
        if kept[rank - 1] < min_kept:
            continue
        options.append(Option(rank, params, spec.weight * float(1.0 - kept[rank - 1])))
    options.append(Option(None, spec.dense_params, 0.0))
    return options


@dataclass(frozen=True)
class Allocation:
    """The chosen rank per layer (None = dense) and the bookkeeping behind it."""

    ranks: dict[str, int | None]
    params: int  # total size of the allocated layers
    budget: int
    lost: dict[str, float] = field(default_factory=dict)

    def low_rank_config(self) -> dict[str, int]:
        return {name: rank for name, rank in self.ranks.items() if rank is not None}


def _best_upgrade(options: list[Option], current: int, room: int) -> tuple[float, int] | None:
    """(gain per parameter, option index) of the best affordable upgrade from `current`, or None."""
    here = options[current]
    best = None
    for j in range(current + 1, len(options)):
        extra = options[j].params - here.params
        if extra > room:
            break
        ratio = (here.lost - options[j].lost) / max(extra, 1)
        if best is None or ratio > best[0]:
            best = (ratio, j)
    return best


def allocate_ranks(
    spectra: list[LayerSpectrum], budget: int, multiple_of: int = 16, min_kept: float = 0.0
) -> Allocation:
    """Ranks for all layers whose total size (weights + biases) stays within `budget` parameters.

    min_kept: a floor on each low-rank layer's kept variance (a layer whose spectrum is dominated by a few
    outlier dimensions, like tiny.en's last fc2, otherwise looks cheap to cut and is cut too far)."""
    options = {s.name: layer_options(s, multiple_of, min_kept) for s in spectra}
    choice = {name: 0 for name in options}
    used = sum(opts[0].params for opts in options.values())
    if used > budget:
        raise BudgetError(
            f"budget of {budget:,} parameters is below the smallest allocation ({used:,}: rank "
            f"{multiple_of} everywhere); ask for a larger target size"
        )
    while True:
        candidates = [
            (up, name)
            for name, opts in options.items()
            if (up := _best_upgrade(opts, choice[name], budget - used)) is not None
        ]
        if not candidates:
            break
        (_, j), name = max(candidates, key=lambda c: (c[0][0], -options[c[1]][c[0][1]].params))
        used += options[name][j].params - options[name][choice[name]].params
        choice[name] = j
    ranks = {name: options[name][i].rank for name, i in choice.items()}
    lost = {name: options[name][i].lost for name, i in choice.items()}
    log.info(
        "allocated %d layers: %d / %d parameters, %d dense",
        len(ranks),
        used,
        budget,
        sum(r is None for r in ranks.values()),
    )
    return Allocation(ranks=ranks, params=used, budget=budget, lost=lost)


def linear_budget(spectra: list[LayerSpectrum], encoder_params: int, target_size: float) -> int:
    """Parameters left for the candidate layers when the whole encoder must be `target_size` of its size.

    `encoder_params` is the original encoder size (without the positional table); everything that is not a
    candidate layer (convolutions, layer norms, ...) is kept as is and counted against the budget.
    """
    if not 0.0 < target_size <= 1.0:
        raise LiteWhisperError(f"target size must be a fraction in (0, 1], got {target_size}")
    dense = sum(s.dense_params for s in spectra)
    if dense > encoder_params:
        raise LiteWhisperError(
            f"candidate layers hold {dense:,} parameters, more than the encoder's "
            f"{encoder_params:,}: pass the encoder size without the positional table"
        )
    return int(target_size * encoder_params) - (encoder_params - dense)


def allocate_for_size(
    spectra: list[LayerSpectrum], encoder_params: int, target_size: float, multiple_of: int = 16, min_kept: float = 0.0
) -> Allocation:
    """Ranks that bring the encoder to `target_size` × `encoder_params` parameters (or just below)."""
    return allocate_ranks(spectra, linear_budget(spectra, encoder_params, target_size), multiple_of, min_kept)


def spectra_from_stats(stats: ActivationStats, weights: dict[str, float] | None = None) -> list[LayerSpectrum]:
    """One LayerSpectrum per layer of ActivationStats (eigendecompositions cached on `stats`), weighted by
    `weights` (e.g. `sensitivity.layer_sensitivities`; default 1 for every layer)."""
    weights = weights or {}
    return [
        LayerSpectrum(
            name, s.d_in, s.d_out, decompose(stats, name).eigenvalues, dense_bias=s.bias, weight=weights.get(name, 1.0)
        )
        for name, s in stats.layers.items()
    ]


def plan_budget(
    stats: ActivationStats, budget: SizeBudget, encoder_params: int, weights: dict[str, float] | None = None
) -> RankPlan:
    """The rank plan that brings the encoder (of `encoder_params` parameters, positional table excluded) to
    `budget.target_size` of its size: every layer's rank (or dense) chosen by the allocation, explicitly."""
    alloc = allocate_for_size(
        spectra_from_stats(stats, weights), encoder_params, budget.target_size, budget.multiple_of, budget.min_kept
    )
    return plan_fixed_ranks(stats, alloc.ranks, budget)
