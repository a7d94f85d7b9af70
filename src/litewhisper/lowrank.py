"""The low-rank linear of the lite-whisper format (defined once, in the shipped remote code)."""
from .hf_lite.modeling_lite_whisper import LinearLowRank as LowRankLinear

__all__ = ["LowRankLinear"]
