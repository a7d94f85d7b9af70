"""Encoder size and analytic FLOPs per 30-s window (a multiply-add counts as 2 FLOPs).

Counted: the two convolutions, every linear (dense or low-rank) and the two attention matmuls (Q Kᵀ, A V).
Not counted: layer norms, GELU, softmax, bias adds and the positional-embedding add (all O(T·D)).
"""
from __future__ import annotations

from torch import nn

from litewhisper.models.linears import encoder_linears, find_encoder
from litewhisper.models.linears import LowRankLinear
from litewhisper.compression.plan import POSITIONS


def encoder_params(model, include_positional: bool = False) -> int:
    """Encoder parameter count; by default without the fixed positional-embedding table."""
    encoder = find_encoder(model)
    return sum(p.numel() for name, p in encoder.named_parameters()
               if include_positional or not name.startswith("embed_positions."))


def _linear_macs(module: nn.Module, positions: int) -> int:
    if isinstance(module, LowRankLinear):
        return positions * module.rank * (module.in_features + module.out_features)
    return positions * module.in_features * module.out_features


def _attention_macs(cfg, positions: int) -> int:
    """Q Kᵀ and A V: T·T·d_model multiply-adds each, summed over heads."""
    return 2 * positions * positions * cfg.d_model


def _conv_macs(cfg, positions: int) -> int:
    mel_frames = 2 * positions  # conv2 has stride 2
    k = 3
    return mel_frames * cfg.num_mel_bins * k * cfg.d_model + positions * cfg.d_model * k * cfg.d_model


def encoder_flops(model_or_config, frames: int = POSITIONS) -> int:
    """Encoder FLOPs for one window of `frames` positions (1500 = 30 s), aware of LowRankLinear layers.

    Given a config (WhisperConfig), the encoder is assumed dense.
    """
    if isinstance(model_or_config, nn.Module) or hasattr(model_or_config, "model"):
        encoder = find_encoder(model_or_config)
        cfg = encoder.config
        linear_macs = sum(_linear_macs(m, frames) for m in encoder_linears(encoder).values())
    else:
        cfg = model_or_config
        d, f = cfg.d_model, cfg.encoder_ffn_dim
        linear_macs = cfg.encoder_layers * frames * (4 * d * d + 2 * d * f)
    attention = cfg.encoder_layers * _attention_macs(cfg, frames)
    return 2 * (_conv_macs(cfg, frames) + linear_macs + attention)

