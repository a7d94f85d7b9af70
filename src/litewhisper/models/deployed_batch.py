"""Clips batched across files in the deployed runtime (issue 29): the first windows of several clips encoded in
onnxruntime batches, their languages detected and their greedy temperature-0 passes decoded in one CTranslate2 call
per window length; then every clip is decoded by faster-whisper's loop exactly as alone, which is handed those
results in place of the calls it makes.

faster-whisper decides everything, as for a clip decoded alone. Each clip's loop is run twice up to a call and
stopped there (`Captured`): once at its first encoder call (the window's features, cut to the encoder window), once
at its first decoder call (the prompt and every generation argument: suppression, timestamp rules, the token
budget's `max_length`). The batch makes those calls for all clips; the clip's own decode then gets a result back
only for the identical call (`FirstWindow` compares the features and the arguments), and runs everything after it
itself: the fallback tests and no-speech rule, segment splitting, a second window, temperature fallback (sampled,
seeded per clip), word alignment. A group is decoded with its largest token budget; a clip keeps that decode only
if it ended below its own budget (greedy decoding is prefix-deterministic, so its own call gives the same tokens),
else its decoder runs again alone. Greedy only: a beam or a first temperature above 0 decodes each clip alone
(its encoder output is still batched).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = ["ENCODER_RUN_FRAMES", "Captured", "FirstWindow", "FeatureMemo", "prefetch_first_windows"]

log = logging.getLogger("litewhisper")

# Frames one onnxruntime run encodes (60 s: two 30-s windows, five of 10 s): its working memory grows with the
# batch (8 full windows: 515 MiB peak, one: ~180 MiB) while its time per window falls by ~10 % at most (base int8,
# 2 threads), so a batch's first windows are encoded a few at a time; the decoder takes them all at once.
ENCODER_RUN_FRAMES = 6000


class Captured(Exception):
    """Raised by a hooked call to stop a clip's loop there; `payload` holds the call's inputs."""

    def __init__(self, payload: Any) -> None:
        super().__init__("captured")
        self.payload = payload


@dataclass
class FirstWindow:
    """One clip's first window as the batch computed it, consulted by the hooked encoder and decoder calls
    (models/deployed.py) while that clip decodes; filled step by step, so not frozen."""

    capture: str | None = None  # "features" | "generate": stop the loop at that call
    features: np.ndarray | None = None  # (1, n_mels, W) the encoder's input
    encoder_output: np.ndarray | None = None  # (1, W/2, d)
    language: list | None = None  # CTranslate2's detect_language of this window: [(token, probability), ...]
    request: tuple | None = None  # (prompts, max_length, kwargs) of the first decoder call
    result: Any = None  # its WhisperGenerationResult

    def encoded(self, features: np.ndarray) -> np.ndarray | None:
        """The batch's encoder output for these features (None: encode them); a mismatch drops every result."""
        if self.capture == "features":
            raise Captured(features)
        if self.encoder_output is None:
            return None
        if np.array_equal(features, self.features):
            return self.encoder_output
        self.encoder_output = self.language = self.result = None  # not this window: nothing here applies
        return None

    def generated(self, prompts: list, max_length: int | None, kwargs: dict[str, Any]) -> Any:
        """The batch's decode for this exact call, once (None: decode)."""
        if self.capture == "generate":
            raise Captured((prompts, max_length, kwargs))
        if self.result is None or self.request != (prompts, max_length, kwargs):
            return None
        result, self.result = self.result, None
        return result


class FeatureMemo:
    """faster-whisper's feature extractor, remembering each audio array's log-mel while `remember()` is open (a
    batched clip's loop runs three times; its features are computed once)."""

    def __init__(self, extractor) -> None:
        self.extractor = extractor
        self.memo: dict[int, tuple[np.ndarray, dict, np.ndarray]] | None = None

    def __call__(self, audio, **kwargs):
        if self.memo is None or not isinstance(audio, np.ndarray):
            return self.extractor(audio, **kwargs)
        seen = self.memo.get(id(audio))
        if seen is not None and seen[0] is audio and seen[1] == kwargs:
            return seen[2]
        features = self.extractor(audio, **kwargs)
        self.memo[id(audio)] = (audio, kwargs, features)
        return features

    @contextlib.contextmanager
    def remember(self) -> Iterator[None]:
        self.memo = {}
        try:
            yield
        finally:
            self.memo = None

    def __getattr__(self, name: str):
        return getattr(self.extractor, name)


def _capture(start: Callable[[FirstWindow], None], first: FirstWindow, what: str) -> Any:
    """Run a clip's loop until the call `what` and return that call's inputs (None: it never came)."""
    first.capture = what
    try:
        start(first)
    except Captured as stop:
        return stop.payload
    finally:
        first.capture = None
    return None


def _groups(items: list[FirstWindow], key: Callable[[FirstWindow], Any]) -> list[list[FirstWindow]]:
    out: dict[Any, list[FirstWindow]] = {}
    for item in items:
        out.setdefault(key(item), []).append(item)
    return list(out.values())


def _encode(model, firsts: list[FirstWindow], detect: bool) -> None:
    """Encoder outputs of `firsts` (onnxruntime runs of one window length W and at most ENCODER_RUN_FRAMES frames)
    and, if asked, their languages (one CTranslate2 call per W)."""
    import ctranslate2

    for group in _groups(firsts, lambda f: f.features.shape):
        rows = max(1, ENCODER_RUN_FRAMES // group[0].features.shape[-1])
        for run in (group[i : i + rows] for i in range(0, len(group), rows)):
            states = model.encode(np.concatenate([f.features for f in run]))  # (b, W/2, d)
            for i, first in enumerate(run):
                first.encoder_output = np.ascontiguousarray(states[i : i + 1])
        if detect:
            states = ctranslate2.StorageView.from_array(np.concatenate([f.encoder_output for f in group]))
            for first, language in zip(group, model.pipeline.model.detect_language(states), strict=True):
                first.language = language


def _greedy(request: tuple | None) -> bool:
    return request is not None and "sampling_topk" not in request[2] and request[2].get("beam_size", 1) == 1


def _generate(decoder, firsts: list[FirstWindow]) -> None:
    """One greedy decode per group of equal window length, prompt length and arguments, at the group's largest
    `max_length`; each clip keeps its result where its own call would have given the same."""
    import ctranslate2

    key = lambda f: (f.encoder_output.shape, len(f.request[0][0]), repr(sorted(f.request[2].items())))  # noqa: E731
    for group in _groups(firsts, key):
        lengths = [f.request[1] for f in group]
        longest = None if None in lengths else max(lengths)
        states = ctranslate2.StorageView.from_array(np.concatenate([f.encoder_output for f in group]))
        results = decoder.generate(states, [f.request[0][0] for f in group], max_length=longest, **group[0].request[2])
        for first, result in zip(group, results, strict=True):
            own = first.request[1]
            if own == longest or len(result.sequences_ids[0]) < own - len(first.request[0][0]):
                first.result = result


def prefetch_first_windows(model, starts: list[Callable[[FirstWindow], None]], detect: bool) -> list[FirstWindow]:
    """The first windows of the clips that `starts` begin to decode (`start(first)`: the clip's faster-whisper loop
    with `first` installed), computed in batches. detect: the loops detect the language (batched here too)."""
    firsts = [FirstWindow() for _ in starts]
    for start, first in zip(starts, firsts, strict=True):
        first.features = _capture(start, first, "features")
    model.pipeline.model.first = None  # the batch's own calls go to onnxruntime and CTranslate2
    _encode(model, [f for f in firsts if f.features is not None], detect)
    for start, first in zip(starts, firsts, strict=True):
        if first.encoder_output is not None:
            first.request = _capture(start, first, "generate")
    model.pipeline.model.first = None
    greedy = [f for f in firsts if f.encoder_output is not None and _greedy(f.request)]
    _generate(model.pipeline.model, greedy)
    log.debug(
        "batched %d first windows, %d greedy decodes kept", len(greedy), sum(f.result is not None for f in firsts)
    )
    return firsts
