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

from litewhisper.errors import LiteWhisperError

log = logging.getLogger("litewhisper")


# --preset for the budget method: target encoder size (fraction of the original parameters)
BUDGET_PRESETS = {"acc": 0.9, "balanced": 0.8, "fast": 0.7}


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
        return self.d_in * self.d_out + (self.d_out if self.dense_bias else 0)

    def lowrank_params(self, rank: int) -> int:
        return rank * (self.d_in + self.d_out) + self.d_out  # weight1 + weight2 + bias

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


def allocate_ranks(spectra: list[LayerSpectrum], budget: int, multiple_of: int = 16,
                   min_kept: float = 0.0) -> Allocation:
    """Ranks for all layers whose total size (weights + biases) stays within `budget` parameters.

    min_kept: a floor on each low-rank layer's kept variance (a layer whose spectrum is dominated by a few
    outlier dimensions, like tiny.en's last fc2, otherwise looks cheap to cut and is cut too far)."""
    options = {s.name: layer_options(s, multiple_of, min_kept) for s in spectra}
    choice = {name: 0 for name in options}
    used = sum(opts[0].params for opts in options.values())
    if used > budget:
        raise BudgetError(f"budget of {budget:,} parameters is below the smallest allocation ({used:,}: rank "
                          f"{multiple_of} everywhere); ask for a larger target size")
    while True:
        candidates = [(up, name) for name, opts in options.items()
                      if (up := _best_upgrade(opts, choice[name], budget - used)) is not None]
        if not candidates:
            break
        (_, j), name = max(candidates, key=lambda c: (c[0][0], -options[c[1]][c[0][1]].params))
        used += options[name][j].params - options[name][choice[name]].params
        choice[name] = j
    ranks = {name: options[name][i].rank for name, i in choice.items()}
    lost = {name: options[name][i].lost for name, i in choice.items()}
    log.info("allocated %d layers: %d / %d parameters, %d dense", len(ranks), used, budget,
             sum(r is None for r in ranks.values()))
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
        raise LiteWhisperError(f"candidate layers hold {dense:,} parameters, more than the encoder's "
                               f"{encoder_params:,}: pass the encoder size without the positional table")
    return int(target_size * encoder_params) - (encoder_params - dense)


def allocate_for_size(spectra: list[LayerSpectrum], encoder_params: int, target_size: float,
                      multiple_of: int = 16, min_kept: float = 0.0) -> Allocation:
    """Ranks that bring the encoder to `target_size` × `encoder_params` parameters (or just below)."""
    return allocate_ranks(spectra, linear_budget(spectra, encoder_params, target_size), multiple_of, min_kept)


def spectra_from_stats(stats, weights: dict[str, float] | None = None) -> list[LayerSpectrum]:
    """One LayerSpectrum per layer of ActivationStats (eigendecompositions cached on `stats`), weighted by
    `weights` (e.g. `sensitivity.layer_sensitivities`; default 1 for every layer)."""
    from litewhisper.compression.plan import decompose
    weights = weights or {}
    return [LayerSpectrum(name, s.d_in, s.d_out, decompose(stats, name).eigenvalues, dense_bias=s.bias,
                          weight=weights.get(name, 1.0))
            for name, s in stats.layers.items()]


def budget_policy(stats, encoder_params: int, target_size: float, multiple_of: int = 16, min_kept: float = 0.0,
                  weights: dict[str, float] | None = None):
    """A RankPolicy fixing every layer's rank (or dense) so the encoder is `target_size` of `encoder_params`."""
    from litewhisper.compression.plan import RankPolicy
    alloc = allocate_for_size(spectra_from_stats(stats, weights), encoder_params, target_size, multiple_of,
                              min_kept)
    return RankPolicy(multiple_of=multiple_of, overrides=tuple(alloc.ranks.items()))


def refine_windows(bundle, audio, max_windows: int = 48, seed: int = 0) -> torch.Tensor:
    """(N, n_mels, 3000) log-mel windows, one calibration clip each (as the model sees clips in real use)."""
    import random

    from litewhisper.compression.calibration import _feature_extractor, _load, iter_windows
    from litewhisper.models.linears import find_encoder
    clips = list(audio)
    clips = random.Random(seed).sample(clips, min(max_windows, len(clips)))
    windows = [w.samples for w in iter_windows(clips, "clip")][:max_windows]
    extractor = _feature_extractor(bundle, find_encoder(bundle))
    param = next(find_encoder(bundle).parameters())
    return extractor(windows, sampling_rate=16000, return_tensors="pt").input_features.to(param.device, param.dtype)


def _cached_sensitivities(bundle, stats, audio, multiple_of: int, progress: bool) -> dict[str, float]:
    """Layer sensitivities, cached on `stats` per (audio, multiple_of): a sweep over sizes probes once."""
    from litewhisper.compression.sensitivity import layer_sensitivities
    key = (multiple_of, tuple(str(getattr(a, "path", id(a))) for a in audio))
    cache = stats._cache.setdefault("sensitivity", {})
    if key not in cache:
        cache[key] = layer_sensitivities(bundle, stats, refine_windows(bundle, audio, max_windows=8),
                                         multiple_of=multiple_of, progress=progress)
    return cache[key]


def compress_to_size(bundle, audio, target_size: float, *, stats=None, config=None, sequential: bool = False,
                     refine_config=None, multiple_of: int = 16, min_kept: float = 0.0, sensitivity: bool = True,
                     progress: bool = True):
    """Compress the encoder to `target_size` × its parameters: budgeted ranks from calibration statistics,
    optionally weighting layers by measured sensitivity, re-fitting the bases sequentially and distilling the
    factors. Returns a CompressionResult; the input bundle is left untouched."""
    import copy
    import time

    from litewhisper.compression.calibration import CalibrationConfig
    from litewhisper.compression.api import CompressionResult, _replace_model, compress, measured_calibration
    from litewhisper.models.cost import encoder_flops, encoder_params
    from litewhisper.models.linears import unwrap_model
    from litewhisper.compression.refine import refine
    from litewhisper.compression.sequential import compress_sequential

    config = config or CalibrationConfig(windowing="pack")  # packed windows: lower WER on tiny.en and base here
    if audio is None and (stats is None or sequential or sensitivity or refine_config is not None):
        raise LiteWhisperError("calibration audio is needed (statistics alone serve only the plain budget method)")
    model = unwrap_model(bundle)
    timings, memory = {}, {}
    if stats is None:
        stats = measured_calibration(bundle, audio, config, timings, memory, progress)
    weights = None
    if sensitivity:
        start = time.perf_counter()
        weights = _cached_sensitivities(bundle, stats, audio, multiple_of, progress)
        timings["sensitivity"] = time.perf_counter() - start
    policy = budget_policy(stats, encoder_params(model), target_size, multiple_of, min_kept, weights)
    if not sequential:
        result = compress(bundle, policy=policy, stats=stats, progress=progress)
        student = result.model
        plan = result.plan
    else:
        start = time.perf_counter()
        student = copy.deepcopy(model)
        plan, stats = compress_sequential(student, audio, policy, config, progress=progress)
        timings["sequential"] = time.perf_counter() - start
    if refine_config is not None:
        start = time.perf_counter()
        refine(student.get_encoder(), model.get_encoder(), refine_windows(bundle, audio), refine_config)
        timings["refine"] = time.perf_counter() - start
    result = CompressionResult(_replace_model(bundle, student), plan, stats, timings, memory, encoder_params(model),
                               encoder_params(student), encoder_flops(model), encoder_flops(student))
    log.info("%s", result.summary())
    return result
