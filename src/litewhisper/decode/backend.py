"""The decoder's backend interface: what a runtime (PyTorch, ONNX, CTranslate2...) implements to decode.

`litewhisper.decode.transcribe.decode` does everything that is the same for every runtime — reading and
probing inputs, voice-activity filtering, batching, progress, failures, result assembly — and hands each batch of
16 kHz arrays to a backend:

    class MyBackend:
        name: str                      # shown in messages, e.g. the model name
        is_multilingual: bool          # False: English-only (no language / task tokens)
        def check(self, options: DecodeOptions) -> None:
            ...                        # raise LiteWhisperError for options it cannot honour (before any audio)
        def decode_batch(self, arrays: list[np.ndarray], options: DecodeOptions,
                         on_seconds: Callable[[float], None] | None = None) -> list[DecodedClip]:
            ...                        # one DecodedClip per array (arrays of any length: long ones are
                                       # decoded window by window); on_seconds(s): seconds of the batch done

`backend_for(model)` returns `model` itself when it has `decode_batch`, the PyTorch (Hugging Face `generate`)
backend for a `WhisperBundle`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import numpy as np

from litewhisper.decode.options import DecodeOptions
from litewhisper.decode.results import Segment

__all__ = ["Backend", "DecodedClip", "backend_for"]


@dataclass(frozen=True)
class DecodedClip:
    """A backend's output for one array: text, segments (times in seconds from the array's start; with words
    when asked), the language used or detected, text tokens decoded and whether a window hit the token limit."""

    text: str
    segments: list[Segment]
    language: str | None
    n_tokens: int
    hit_token_limit: bool


@runtime_checkable
class Backend(Protocol):
    name: str
    is_multilingual: bool

    def check(self, options: DecodeOptions) -> None: ...

    def decode_batch(
        self, arrays: list[np.ndarray], options: DecodeOptions, on_seconds: Callable[[float], None] | None = None
    ) -> list[DecodedClip]: ...


def backend_for(model: Any) -> Backend:
    """The backend that decodes with `model`: itself if it is one, else PyTorch for a WhisperBundle."""
    if hasattr(model, "decode_batch"):
        return model
    if getattr(model, "runtime", None) == "deployed":  # a `litewhisper export` directory (models/deployed.py)
        from litewhisper.decode.deployed_backend import DeployedBackend

        return DeployedBackend(model)
    from litewhisper.decode.torch_backend import TorchBackend

    return TorchBackend(model)
