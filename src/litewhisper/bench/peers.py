"""Peer runtime for `bench --peer`: the same original checkpoint in CTranslate2 (the engine behind
faster-whisper), in int8 and float32, timed on the same windows and clips as our models."""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from litewhisper.constants import DEFAULT_MAX_NEW_TOKENS, SAMPLE_RATE, WINDOW_FRAMES
from litewhisper.errors import LiteWhisperError

__all__ = ["PeerUnavailable", "CT2Peer", "ct2_files", "ct2_peers"]

COMPUTE_TYPES = ("int8", "float32")


class PeerUnavailable(LiteWhisperError):
    """The peer cannot run here (not installed, or no CTranslate2 checkpoint for the model)."""


def ct2_files(first: Any) -> tuple[str, dict[str, bytes] | None, Path]:
    """(model path, in-memory files or None, config/tokenizer dir) of the CTranslate2 form of `first`."""
    from litewhisper.models.builtin import builtin_source, is_builtin

    name = first if isinstance(first, (str, os.PathLike)) else getattr(first, "name", None)
    if is_builtin(name):
        parts, meta = builtin_source(str(name))
        if len(parts) == 1:
            return str(parts[0].parent), None, meta
        files = {"model.bin": b"".join(p.read_bytes() for p in parts)}  # split across packages
        for extra in ("config.json", "vocabulary.txt", "vocabulary.json", "tokenizer.json"):
            if (meta / extra).is_file():
                files[extra] = (meta / extra).read_bytes()
        return str(name), files, meta
    path = Path(first) if isinstance(first, (str, os.PathLike)) else getattr(first, "path", None)
    if path is not None and (Path(path) / "model.bin").is_file():
        return str(path), None, Path(path)
    raise PeerUnavailable(
        f"the first model ({name}) has no CTranslate2 checkpoint: the peer runs the original "
        "built-in models (tiny.en, base) or a CTranslate2 directory given first"
    )


class CT2Peer:
    """One CTranslate2 Whisper instance; callables mirror the torch ones in `bench`."""

    def __init__(self, first: Any, compute_type: str, device: str = "cpu", threads: int | None = None):
        try:
            import ctranslate2
        except ImportError as exc:
            raise PeerUnavailable("ctranslate2 is not installed (pip install ctranslate2 or faster-whisper)") from exc
        from litewhisper.models.processor import build_processor, english_prompt_ids

        path, files, meta = ct2_files(first)
        self.ct2 = ctranslate2
        self.model = ctranslate2.models.Whisper(
            path, device=device, compute_type=compute_type, intra_threads=threads or 0, files=files
        )
        self.processor = build_processor(meta, num_mel_bins=self.model.n_mels)
        tok = self.processor.tokenizer
        self.prompt = english_prompt_ids(tok, self.model.is_multilingual)
        self.eot = tok.convert_tokens_to_ids("<|endoftext|>")

    def _features(self, arrays: list[np.ndarray]):
        feats = self.processor.feature_extractor(arrays, sampling_rate=SAMPLE_RATE, return_tensors="np")
        return self.ct2.StorageView.from_array(np.ascontiguousarray(feats.input_features, dtype=np.float32))

    def encoder_fn(self, batch_size: int, seed: int = 0) -> Callable[[], None]:
        rng = np.random.default_rng(seed)
        feats = rng.standard_normal((batch_size, self.model.n_mels, WINDOW_FRAMES)).astype(
            np.float32
        )  # (B, n_mels, 3000)
        view = self.ct2.StorageView.from_array(feats)
        return lambda: self.model.encode(view, to_cpu=True)

    def e2e_fn(self, max_new_tokens: int) -> Callable[[list[np.ndarray]], tuple[float, float]]:
        def run(arrays: list[np.ndarray]) -> tuple[float, float]:
            features = self._features(arrays)
            t0 = time.perf_counter()
            encoded = self.model.encode(features, to_cpu=False)
            t1 = time.perf_counter()
            self.model.generate(
                encoded, [self.prompt] * len(arrays), beam_size=1, max_length=max_new_tokens + len(self.prompt)
            )
            return t1 - t0, time.perf_counter() - t1

        return run

    def transcribe(self, arrays: list[np.ndarray], max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS) -> list[str]:
        """Greedy transcripts (for checking the peer decodes sensibly)."""
        out = self.model.generate(
            self._features(arrays),
            [self.prompt] * len(arrays),
            beam_size=1,
            max_length=max_new_tokens + len(self.prompt),
        )
        tok = self.processor.tokenizer
        return [
            tok.decode([t for t in r.sequences_ids[0] if t < self.eot], skip_special_tokens=True).strip() for r in out
        ]


def ct2_peers(first: Any, device: str = "cpu", threads: int | None = None) -> dict[str, CT2Peer]:
    """{"ct2-int8": ..., "ct2-float32": ...} for the first model's original checkpoint."""
    return {f"ct2-{ct}": CT2Peer(first, ct, device, threads) for ct in COMPUTE_TYPES}
