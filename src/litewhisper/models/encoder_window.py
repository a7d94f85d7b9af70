"""Let a Whisper encoder read fewer than 3000 mel frames, without changing transformers' code.

transformers' `WhisperEncoder.forward` refuses any input that is not exactly `2 * max_source_positions` frames and
adds all 1500 positional embeddings. Within `encoder_window(model)`:

    frames (b, n_mels, W) -> conv1, conv2 -> (b, W/2, d) + positions[:W/2] -> layers -> (b, W/2, d)

for any even W <= 3000 (lite-whisper encoders too: they share the forward). `window.frames = W` also cuts longer
inputs (the decoder's 30-s padded windows) to their first W frames; None reads the input as it is. Traced for ONNX
inside the context, the position slice follows the input's time axis, so one graph serves every window length.
The context manager puts the encoder back as it was on exit.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import nn

from litewhisper.errors import LiteWhisperError

__all__ = ["EncoderWindow", "encoder_window"]


class _Positions(nn.Module):
    """Stands in for the encoder's positional embedding: transformers asks for `arange(num_embeddings)` rows;
    `num_embeddings` here is the length conv2 just produced, so the rows are positions [:W/2]."""

    def __init__(self, table: nn.Embedding) -> None:
        super().__init__()
        self.table = table
        self.length: int | torch.Tensor = table.num_embeddings
        self.window: EncoderWindow | None = None  # the handle of the encoder_window that installed this

    @property
    def num_embeddings(self) -> int | torch.Tensor:
        return self.length

    @property
    def weight(self) -> torch.Tensor:
        return self.table.weight

    def forward(self, positions: torch.Tensor) -> torch.Tensor:  # (t,) -> (t, d)
        return self.table(positions)


class EncoderWindow:
    """The handle `encoder_window` yields: set `frames` to the mel frames the next encoder calls read."""

    def __init__(self, encoder: nn.Module) -> None:
        self.encoder = encoder
        self.frames: int | None = None
        self.limit = 2 * encoder.config.max_source_positions  # 3000

    def cut(self, features: torch.Tensor) -> torch.Tensor:
        """(b, n_mels, T) -> (b, n_mels, min(T, frames)), checked: an even count within the 30-s window."""
        if self.frames is not None and features.shape[-1] > self.frames:
            features = features[..., : self.frames]
        frames = features.shape[-1]
        if isinstance(frames, int) and (frames % 2 or not 2 <= frames <= self.limit):
            raise LiteWhisperError(
                f"the encoder reads an even number of mel frames between 2 and {self.limit}, got {frames}: "
                "pad or cut the log-mel features (10 ms per frame)"
            )
        return features


def _encoder_of(model: nn.Module) -> nn.Module:
    return model.get_encoder() if hasattr(model, "get_encoder") else model


@contextlib.contextmanager
def encoder_window(model: nn.Module) -> Iterator[EncoderWindow]:
    """Within: the model's encoder reads any even number of frames <= 3000 (see the module docstring)."""
    encoder = _encoder_of(model)
    if isinstance(encoder.embed_positions, _Positions):  # already inside one: share it
        yield encoder.embed_positions.window
        return
    window, table, config = EncoderWindow(encoder), encoder.embed_positions, encoder.config
    positions = _Positions(table)
    positions.window = window  # a nested encoder_window finds the handle here
    original = encoder.forward

    def forward(input_features: torch.Tensor, *args, **kwargs):
        input_features = window.cut(input_features)  # (b, n_mels, W)
        full = config.max_source_positions
        config.max_source_positions = int(input_features.shape[-1]) // 2  # the length transformers checks
        try:
            return original(input_features, *args, **kwargs)
        finally:
            config.max_source_positions = full

    def record_length(module: nn.Module, inputs, output: torch.Tensor) -> None:
        positions.length = output.shape[-1]  # conv2 output (b, d, W/2): traced, it follows the input

    hook = encoder.conv2.register_forward_hook(record_length)
    encoder.embed_positions, encoder.forward = positions, forward
    try:
        yield window
    finally:
        hook.remove()
        del encoder.forward  # the class's forward again
        encoder.embed_positions = table
