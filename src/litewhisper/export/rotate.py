"""Rotate the factorised linears before int8 export: weight1 ← weight1 R, weight2 ← Rᵀ weight2.

A LowRankLinear computes y = (x @ weight1) @ weight2 + b with weight1 (in, k), weight2 (k, out). Compression puts
the k-dimensional intermediate x @ weight1 in a PCA basis, so its first channels carry most of the variance and
a per-tensor int8 scale (dynamic quantization) wastes almost all levels on them. An orthogonal R (k, k) spreads
the variance over all channels; since R Rᵀ = I the product is unchanged in exact arithmetic (QuaRot-style).
R is a normalised Hadamard matrix when k is a power of two, else the Q of a seeded Gaussian's QR, so an export
is reproducible.
"""

from __future__ import annotations

import copy
import logging

import torch
from torch import nn

from litewhisper.models.linears import LowRankLinear, find_encoder

__all__ = ["ROTATION_SEED", "count_low_rank", "rotation_matrix", "rotate_low_rank", "rotated_copy"]

log = logging.getLogger("litewhisper")

ROTATION_SEED = 14


def _hadamard(k: int) -> torch.Tensor:
    """Sylvester's Hadamard matrix (k, k), k a power of two, scaled to be orthogonal (float64)."""
    h = torch.ones(1, 1, dtype=torch.float64)
    while h.shape[0] < k:
        h = torch.cat([torch.cat([h, h], 1), torch.cat([h, -h], 1)], 0)  # (2n, 2n)
    return h / k**0.5


def rotation_matrix(k: int, seed: int = ROTATION_SEED) -> torch.Tensor:
    """An orthogonal (k, k) float64 matrix: Hadamard for a power of two, else a seeded random rotation."""
    if k < 1:
        raise ValueError(f"rank must be >= 1, got {k}")
    if k & (k - 1) == 0:
        return _hadamard(k)
    gen = torch.Generator().manual_seed(seed + k)
    q, r = torch.linalg.qr(torch.randn(k, k, generator=gen, dtype=torch.float64))  # (k, k) each
    return q * torch.sign(torch.diagonal(r))  # sign fix: Haar-distributed, deterministic


@torch.no_grad()
def _rotate(layer: LowRankLinear) -> None:
    w1, w2 = layer.weight1, layer.weight2  # (in, k), (k, out)
    r = rotation_matrix(w1.shape[1])  # (k, k)
    w1.copy_((w1.double() @ r).to(w1.dtype))  # (in, k): intermediate h ← h R
    w2.copy_((r.T @ w2.double()).to(w2.dtype))  # (k, out): (h R) Rᵀ W2 = h W2


def _low_rank_layers(model: nn.Module) -> list[LowRankLinear]:
    return [m for m in find_encoder(model).modules() if isinstance(m, LowRankLinear)]


def count_low_rank(model: nn.Module) -> int:
    """Number of LowRankLinear layers in the encoder (0 for an original Whisper)."""
    return len(_low_rank_layers(model))


def rotate_low_rank(model: nn.Module) -> int:
    """Rotate every LowRankLinear of the encoder **in place**; returns how many. See `rotated_copy`.

    Reduced-dimension attention modules precompute buffers from the factors: they are rebuilt here.
    """
    encoder = find_encoder(model)
    layers = _low_rank_layers(encoder)
    for layer in layers:
        _rotate(layer)
    for module in encoder.modules():
        if hasattr(module, "_build_buffers"):  # ReducedDimSelfAttention: w1, qk_mat, wv from the new factors
            module._build_buffers()
    if layers:
        log.info("rotated %d low-rank encoder linears (orthogonal R between the factors)", len(layers))
    return len(layers)


def rotated_copy(model: nn.Module) -> tuple[nn.Module, int]:
    """(a rotated deep copy of `model`, number of rotated linears); `model` itself is left untouched."""
    twin = copy.deepcopy(model)
    return twin, rotate_low_rank(twin)
