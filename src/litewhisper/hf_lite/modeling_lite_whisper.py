"""Lite-Whisper modeling (remote code shipped inside lite-whisper checkpoints; torch + transformers only)."""
import torch
from torch import nn


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
