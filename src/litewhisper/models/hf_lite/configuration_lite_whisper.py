"""Lite-Whisper configuration (remote code shipped inside lite-whisper checkpoints; transformers only)."""

from transformers import WhisperConfig


class LiteWhisperConfig(WhisperConfig):
    """A WhisperConfig plus `low_rank_config`: one dict per encoder layer mapping a linear's name
    (q_proj, k_proj, v_proj, out_proj, fc1, fc2) to its rank; layers kept dense are omitted."""

    model_type = "lite-whisper"

    def __init__(self, low_rank_config: list = None, **kwargs):
        super().__init__(**kwargs)
        self.low_rank_config = low_rank_config
