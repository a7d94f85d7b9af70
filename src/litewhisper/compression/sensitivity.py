"""Layer sensitivity: what one layer's lost variance costs at the encoder's output.

Plain budgeted allocation minimises Σ lost_l, the fraction of each layer's output variance dropped, as if every
layer mattered alike. They do not: an error in an early q_proj is softened by the softmax, one in a late fc2
goes straight into the final states. Here each candidate linear is factorized *alone* at a probe rank (the
smallest multiple keeping `probe_kept` of its variance), the encoder runs on a few calibration windows, and the
layer's weight is the relative error of the final states per unit of lost variance. Allocation then minimises
Σ weight_l · lost_l, a first-order model of the output error.

Cost: one teacher pass records every block's input and every block's mid-point (after self-attention); a probe
of an attention linear of block b re-runs blocks b.. from the cached input, a probe of fc1/fc2 only the MLP half
of block b and the blocks after it — the same numbers as a full encoder pass per layer, at about half the work.
Windows run in batches of `batch_size`.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator

import torch
from torch import nn

from litewhisper.compression.factorize import factorize_linear
from litewhisper.compression.plan import decompose
from litewhisper.compression.refine import relative_mse
from litewhisper.compression.stats import ActivationStats
from litewhisper.errors import LiteWhisperError
from litewhisper.models.linears import MLP_LAYERS, encoder_linears, find_encoder, layer_index, short_name
from litewhisper.progress import progress_bar
from litewhisper.swap import swap_modules

__all__ = ["probe_rank", "layer_sensitivities", "PROBE_WINDOWS"]

# Calibration windows the probes run on (compress's budget method). 6 instead of 8: on tiny.en at 0.9 / 0.8 two
# and four of 24 ranks move by one step of 16, weights within 10 %, encoder-output error on 12 dev clips
# 0.01198 vs 0.01209 (0.9) and 0.0375 vs 0.0371 (0.8); a quarter less probe time.
PROBE_WINDOWS = 6

log = logging.getLogger("litewhisper")


def probe_rank(explained: torch.Tensor, d_in: int, probe_kept: float, multiple_of: int) -> int | None:
    """Smallest multiple of `multiple_of` keeping ≥ probe_kept of the variance, if it is below full rank."""
    full = min(d_in, explained.numel())
    for rank in range(multiple_of, full, multiple_of):
        if explained[rank - 1] >= probe_kept:
            return rank
    return None


class _TeacherCache:
    """The unmodified encoder's block inputs, block mid-points and final states for every window.

    inputs[b]: (N, positions, d_model) input of block b; middles[b]: the residual stream after block b's
    self-attention (input of its MLP half); final: (N, positions, d_model) final states.
    """

    def __init__(self, encoder: nn.Module, features: torch.Tensor, batch_size: int):
        n_blocks = len(encoder.layers)
        inputs: list[list[torch.Tensor]] = [[] for _ in range(n_blocks)]
        middles: list[list[torch.Tensor]] = [[] for _ in range(n_blocks)]
        finals = []
        with self._recording(encoder, inputs, middles):
            for start in range(0, len(features), batch_size):
                finals.append(encoder(features[start : start + batch_size]).last_hidden_state)
        self.inputs = [torch.cat(x) for x in inputs]
        self.middles = [torch.cat(x) for x in middles]
        self.final = torch.cat(finals)

    @staticmethod
    @contextlib.contextmanager
    def _recording(encoder: nn.Module, inputs: list, middles: list) -> Iterator[None]:
        """Forward pre-hooks storing each block's input and each MLP half's input (final_layer_norm's)."""
        handles = []
        for b, block in enumerate(encoder.layers):
            handles.append(block.register_forward_pre_hook(lambda m, args, b=b: inputs[b].append(args[0])))
            handles.append(
                block.final_layer_norm.register_forward_pre_hook(lambda m, args, b=b: middles[b].append(args[0]))
            )
        try:
            yield
        finally:
            for handle in handles:
                handle.remove()


def _mlp_half(block: nn.Module, hidden: torch.Tensor) -> torch.Tensor:
    """The second half of a Whisper encoder block (pre-norm MLP + residual), as WhisperEncoderLayer.forward."""
    x = block.activation_fn(block.fc1(block.final_layer_norm(hidden)))  # (B, positions, ffn)
    out = hidden + block.fc2(x)
    if out.dtype == torch.float16:
        clamp = torch.finfo(out.dtype).max - 1000
        out = out.clamp(-clamp, clamp)
    return out


def _probe_error(encoder: nn.Module, cache: _TeacherCache, block: int, mlp: bool, batch_size: int) -> float:
    """Relative MSE of the final states when the encoder (already holding the probe) re-runs from `block`."""
    source = cache.middles[block] if mlp else cache.inputs[block]
    finals = []
    for start in range(0, len(source), batch_size):
        hidden = source[start : start + batch_size]  # (B, positions, d_model)
        if mlp:
            hidden = _mlp_half(encoder.layers[block], hidden)
        for layer in encoder.layers[block + int(mlp) :]:
            out = layer(hidden, None)
            hidden = out[0] if isinstance(out, tuple) else out  # older transformers return a tuple
        finals.append(encoder.layer_norm(hidden))
    return float(relative_mse(torch.cat(finals), cache.final))


@torch.no_grad()
def layer_sensitivities(
    bundle,
    stats: ActivationStats,
    features: torch.Tensor,
    probe_kept: float = 0.99,
    multiple_of: int = 16,
    batch_size: int = 4,
) -> dict[str, float]:
    """{layer: relative final-state error per unit of lost variance fraction} for every layer of `stats`.

    features: (N, n_mels, frames) log-mel windows (a handful of calibration clips, one per window).
    A layer with no probe rank (already near full rank at probe_kept) gets the median weight of the others.
    """
    if not 0.0 < probe_kept < 1.0:
        raise LiteWhisperError(f"probe_kept must be in (0, 1), got {probe_kept}")
    if batch_size < 1:
        raise LiteWhisperError(f"batch_size must be ≥ 1, got {batch_size}")
    encoder = find_encoder(bundle)
    linears = encoder_linears(encoder)
    stats.check_matches(linears)
    param = next(encoder.parameters())
    features = features.to(param.device, param.dtype)
    cache = _TeacherCache(encoder, features, batch_size)
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
        swap_modules(encoder, lambda *_, probe=probe: probe, only)
        try:
            error = _probe_error(encoder, cache, layer_index(name), short_name(name) in MLP_LAYERS, batch_size)
            weights[name] = error / lost
        finally:
            swap_modules(encoder, lambda *_, linear=linear: linear, only)
    if not weights:
        raise LiteWhisperError(
            f"no layer could be probed: every layer is near full rank at probe_kept {probe_kept:g}; skip the probes "
            "(--no-sensitivity; SizeBudget(sensitivity=False) in Python) or lower probe_kept"
        )
    median = float(torch.tensor(list(weights.values())).median())
    for name in stats.layers:
        weights.setdefault(name, median)
    log.info(
        "layer sensitivities: min %.3g, median %.3g, max %.3g", min(weights.values()), median, max(weights.values())
    )
    return weights
