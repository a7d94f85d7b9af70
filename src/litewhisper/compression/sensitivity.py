"""Layer sensitivity: what one layer's lost variance costs at the encoder's output.

Plain budgeted allocation minimises Σ lost_l, the fraction of each layer's output variance dropped, as if every
layer mattered alike. They do not: an error in an early q_proj is softened by the softmax, one in a late fc2
goes straight into the final states. Here each candidate linear is factorized *alone* at a probe rank (the
smallest multiple keeping `probe_kept` of its variance), the encoder runs on a few calibration windows, and the
layer's weight is the relative error of the final states per unit of lost variance. Allocation then minimises
Σ weight_l · lost_l, a first-order model of the output error (cost: one encoder pass per layer).
"""
from __future__ import annotations

import logging

import torch
from torch import nn
from litewhisper.compression.factorize import factorize_linear
from litewhisper.compression.plan import decompose
from litewhisper.compression.refine import relative_mse
from litewhisper.compression.stats import ActivationStats
from litewhisper.errors import LiteWhisperError
from litewhisper.models.linears import encoder_linears, find_encoder
from litewhisper.swap import swap_modules
from litewhisper.progress import progress_bar

__all__ = ["probe_rank", "layer_sensitivities", "PROBE_WINDOWS"]

PROBE_WINDOWS = 8  # calibration windows the probes run on (compress's budget method)

log = logging.getLogger("litewhisper")


def probe_rank(explained: torch.Tensor, d_in: int, probe_kept: float, multiple_of: int) -> int | None:
    """Smallest multiple of `multiple_of` keeping ≥ probe_kept of the variance, if it is below full rank."""
    full = min(d_in, explained.numel())
    for rank in range(multiple_of, full, multiple_of):
        if explained[rank - 1] >= probe_kept:
            return rank
    return None


def _final_states(encoder: nn.Module, features: torch.Tensor) -> torch.Tensor:
    """(N, positions, d_model) final encoder states, one window at a time."""
    return torch.cat([encoder(features[i:i + 1]).last_hidden_state for i in range(len(features))])


@torch.no_grad()
def layer_sensitivities(bundle, stats: ActivationStats, features: torch.Tensor, probe_kept: float = 0.99,
                        multiple_of: int = 16) -> dict[str, float]:
    """{layer: relative final-state error per unit of lost variance fraction} for every layer of `stats`.

    features: (N, n_mels, frames) log-mel windows (a handful of calibration clips, one per window).
    A layer with no probe rank (already near full rank at probe_kept) gets the median weight of the others.
    """
    if not 0.0 < probe_kept < 1.0:
        raise LiteWhisperError(f"probe_kept must be in (0, 1), got {probe_kept}")
    encoder = find_encoder(bundle)
    linears = encoder_linears(encoder)
    stats.check_matches(linears)
    features = features.to(next(encoder.parameters()).device, next(encoder.parameters()).dtype)
    teacher = _final_states(encoder, features)
    weights: dict[str, float] = {}
    for name in progress_bar(list(stats.layers), desc="sensitivity", unit="layer"):
        spectrum = decompose(stats, name)
        explained = spectrum.explained()
        linear = linears[name]
        rank = probe_rank(explained, linear.in_features, probe_kept, multiple_of)
        lost = 1.0 - float(explained[rank - 1]) if rank is not None else 0.0
        if rank is None or lost <= 1e-9:
            continue
        probe = factorize_linear(linear, stats.mean(name), spectrum.eigenvectors[:, :rank])
        only = lambda m, n, name=name: n == name  # noqa: E731
        swap_modules(encoder, lambda *_: probe, only)
        try:
            weights[name] = float(relative_mse(_final_states(encoder, features), teacher)) / lost
        finally:
            swap_modules(encoder, lambda *_: linear, only)
    if not weights:
        raise LiteWhisperError("no layer could be probed: every layer is near full rank at "
                               f"probe_kept={probe_kept}; lower probe_kept")
    median = float(torch.tensor(list(weights.values())).median())
    for name in stats.layers:
        weights.setdefault(name, median)
    log.info("layer sensitivities: min %.3g, median %.3g, max %.3g", min(weights.values()), median,
             max(weights.values()))
    return weights
