"""Lite-Whisper modeling (remote code shipped inside lite-whisper checkpoints; torch + transformers only).

The encoder linears named in `config.low_rank_config` are `LinearLowRank` modules, so the state dict reads
`model.encoder.layers.N.self_attn.q_proj.weight1` (in x k), `.weight2` (k x out) and `.bias`, exactly as in
the published efficient-speech/lite-whisper-* checkpoints. The standard Whisper model is built first and the
listed linears are swapped in `__init__`, before any weights load.
"""

import torch
from torch import nn
from transformers.models.whisper.modeling_whisper import (
    WhisperEncoder,
    WhisperForConditionalGeneration,
    WhisperModel,
)

from .configuration_lite_whisper import LiteWhisperConfig

LOW_RANK_NAMES = ("q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2")
ATTENTION_NAMES = ("q_proj", "k_proj", "v_proj", "out_proj")


class LinearLowRank(nn.Module):
    """y = (x @ weight1) @ weight2 + bias; weight1: (in_features, rank), weight2: (rank, out_features)."""

    def __init__(self, in_features: int, out_features: int, low_rank_features: int, bias: bool = True):
        super().__init__()
        self.in_features, self.out_features, self.rank = in_features, out_features, low_rank_features
        self.weight1 = nn.Parameter(torch.zeros(in_features, low_rank_features))
        self.weight2 = nn.Parameter(torch.zeros(low_rank_features, out_features))
        self.bias = nn.Parameter(torch.zeros(out_features)) if bias else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (..., in) -> (..., out)
        y = (x @ self.weight1) @ self.weight2
        return y if self.bias is None else y + self.bias

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, rank={self.rank}"


def apply_low_rank_config(encoder: nn.Module, low_rank_config) -> None:
    """Replace the linears listed in `low_rank_config` (one dict per encoder layer) by LinearLowRank."""
    if low_rank_config is None:
        return
    if len(low_rank_config) != len(encoder.layers):
        raise ValueError(
            f"low_rank_config has {len(low_rank_config)} entries but the encoder has "
            f"{len(encoder.layers)} layers; expected one dict per encoder layer"
        )
    for i, (layer, ranks) in enumerate(zip(encoder.layers, low_rank_config, strict=True)):
        for name, rank in (ranks or {}).items():
            if name not in LOW_RANK_NAMES:
                raise ValueError(f"low_rank_config[{i}] names {name!r}; expected one of {LOW_RANK_NAMES}")
            parent = layer.self_attn if name in ATTENTION_NAMES else layer
            dense = getattr(parent, name)
            setattr(parent, name, LinearLowRank(dense.in_features, dense.out_features, int(rank)))


class LiteWhisperEncoder(WhisperEncoder):
    config_class = LiteWhisperConfig

    def __init__(self, config: LiteWhisperConfig, low_rank_config=None):
        super().__init__(config)
        apply_low_rank_config(
            self, low_rank_config if low_rank_config is not None else getattr(config, "low_rank_config", None)
        )


class LiteWhisperModel(WhisperModel):
    config_class = LiteWhisperConfig

    def __init__(self, config: LiteWhisperConfig, low_rank_config=None):
        super().__init__(config)
        apply_low_rank_config(
            self.encoder, low_rank_config if low_rank_config is not None else getattr(config, "low_rank_config", None)
        )


class LiteWhisperForConditionalGeneration(WhisperForConditionalGeneration):
    config_class = LiteWhisperConfig

    def __init__(self, config: LiteWhisperConfig):
        super().__init__(config)
        apply_low_rank_config(self.model.encoder, getattr(config, "low_rank_config", None))


__all__ = [
    "LiteWhisperConfig",
    "LinearLowRank",
    "LiteWhisperEncoder",
    "LiteWhisperModel",
    "LiteWhisperForConditionalGeneration",
]
