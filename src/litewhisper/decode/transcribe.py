"""Transcribe audio with a Whisper bundle: batched greedy decoding, long-form (> 30 s) audio, dataclass results.

Clips up to 30 s are decoded in short-form batches (log-mel padded to 30 s); longer clips are decoded in
long-form batches (sorted by length, un-truncated features + attention mask) by transformers' sequential
30-second-window algorithm, so every clip is transcribed completely. A bad input never stops the others:
`transcribe_iter` yields a `TranscriptionFailure` for it and carries on; `transcribe` raises instead.
"""
from __future__ import annotations

import contextlib
import inspect
import logging
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Iterator, Sequence, Union

import numpy as np
import torch

from litewhisper.audio.load import SAMPLE_RATE, load_audio
from litewhisper.constants import WINDOW_S
from litewhisper.errors import AudioError, LiteWhisperError

log = logging.getLogger("litewhisper")

CHUNK_S = WINDOW_S  # Whisper's window: longer clips need long-form decoding
TASKS = ("transcribe", "translate")
AudioInput = Union[str, os.PathLike, np.ndarray]


@dataclass(frozen=True)
class Segment:
    """A piece of the transcript with its time span in seconds."""
    start: float
    end: float
    text: str


@dataclass(frozen=True)
class Transcription:
    """The transcript of one clip; `language` is the given or detected code (e.g. "en")."""
    path: str
    text: str
    language: str | None
    segments: list[Segment]
    duration_s: float


@dataclass(frozen=True)
class TranscriptionFailure:
    """An input that could not be transcribed (missing, corrupt, empty...); `error` says why."""
    path: str
    error: str


@dataclass(frozen=True)
class DecodeOptions:
    """How to decode; validated here, checked against the model by `check_options`."""
    language: str | None = None
    task: str = "transcribe"
    batch_size: int = 8
    return_segments: bool = True
    max_new_tokens: int | None = None

    def __post_init__(self) -> None:
        if self.language is not None:
            language_code(self.language)
        if self.task not in TASKS:
            raise LiteWhisperError(f"task {self.task!r} is not supported: expected one of {', '.join(TASKS)}")
        if self.batch_size < 1:
            raise LiteWhisperError(f"batch_size must be a positive integer, got {self.batch_size}")
        if self.max_new_tokens is not None and not 1 <= self.max_new_tokens <= 444:
            raise LiteWhisperError(f"max_new_tokens must be between 1 and 444, got {self.max_new_tokens}")


@dataclass(frozen=True)
class _Clip:
    index: int
    name: str
    source: AudioInput
    duration_s: float


def language_code(language: str) -> str:
    """'en', 'English' or '<|en|>' -> 'en'; LiteWhisperError for an unknown language."""
    from transformers.models.whisper.tokenization_whisper import LANGUAGES, TO_LANGUAGE_CODE

    lang = language.strip().lower().removeprefix("<|").removesuffix("|>")
    code = lang if lang in LANGUAGES else TO_LANGUAGE_CODE.get(lang)
    if code is None:
        raise LiteWhisperError(
            f"unknown language {language!r}: expected a Whisper language code such as en, de, fr, es, ja "
            f"(one of {len(LANGUAGES)}) or its English name such as 'german'")
    return code


def check_options(bundle, options: DecodeOptions) -> tuple[str | None, str | None]:
    """The (language, task) to pass to `generate`; LiteWhisperError if the model cannot honour them."""
    code = language_code(options.language) if options.language is not None else None
    if not bundle.is_multilingual:
        if code not in (None, "en"):
            raise LiteWhisperError(
                f"model {bundle.name} is English-only and cannot transcribe language {code!r}: "
                "use a multilingual model (e.g. base) or drop --language")
        if options.task == "translate":
            raise LiteWhisperError(
                f"model {bundle.name} is English-only and cannot translate: use a multilingual model (e.g. base)")
        return None, None  # English-only models take no language/task tokens
    lang_to_id = getattr(bundle.model.generation_config, "lang_to_id", None) or {}
    if code is not None and f"<|{code}|>" not in lang_to_id:
        raise LiteWhisperError(f"model {bundle.name} does not support language {code!r}")
    return code, options.task


def _probe(index: int, item: AudioInput) -> _Clip | TranscriptionFailure:
    """Name and duration of an input, read from the file header (no decoding) or the array."""
    if isinstance(item, np.ndarray):
        name = f"<array {index}>"
        if item.ndim != 1 or item.size == 0:
            return TranscriptionFailure(name, f"audio array {index} has shape {item.shape}: expected a "
                                        "non-empty 1-D float array of 16 kHz mono samples")
        return _Clip(index, name, item, item.size / SAMPLE_RATE)
    import soundfile as sf

    path = Path(item)
    if not path.is_file():
        return TranscriptionFailure(str(path), f"audio file not found: {path}")
    try:
        info = sf.info(str(path))
    except (sf.LibsndfileError, RuntimeError, TypeError) as exc:
        return TranscriptionFailure(str(path), f"cannot read audio {path}: {exc}")
    if info.frames <= 0:
        return TranscriptionFailure(str(path), f"audio file {path} is empty (0 samples)")
    return _Clip(index, str(path), item, info.frames / info.samplerate)


def _load(clip: _Clip) -> np.ndarray:
    if not isinstance(clip.source, np.ndarray):
        return load_audio(clip.source)
    samples = np.ascontiguousarray(clip.source, dtype=np.float32)
    if not np.isfinite(samples).all():
        raise AudioError(f"{clip.name} contains NaN or infinite samples")
    return samples


def plan_batches(clips: Sequence[_Clip], batch_size: int) -> list[tuple[bool, list[_Clip]]]:
    """(long_form, clips) batches: short clips in input order, then long clips sorted by duration."""
    short = [c for c in clips if c.duration_s <= CHUNK_S]
    long = sorted((c for c in clips if c.duration_s > CHUNK_S), key=lambda c: c.duration_s)
    return ([(False, short[i:i + batch_size]) for i in range(0, len(short), batch_size)]
            + [(True, long[i:i + batch_size]) for i in range(0, len(long), batch_size)])


def _features(processor, arrays: list[np.ndarray], long_form: bool) -> dict[str, torch.Tensor]:
    fe = processor.feature_extractor
    if not long_form:  # padded / truncated to exactly 30 s
        return {"input_features": fe(arrays, sampling_rate=SAMPLE_RATE, return_tensors="pt").input_features}
    # Each clip at its own length, computed alone so that a batch gives exactly the features of one-at-a-time
    # decoding (padding the waveforms would change each clip's last frames); the mask says where each ends.
    feats = [fe([a], sampling_rate=SAMPLE_RATE, truncation=False, padding="longest",
                return_tensors="pt").input_features[0] for a in arrays]  # each (n_mels, frames_i)
    frames = max(f.shape[-1] for f in feats)
    mask = torch.zeros(len(feats), frames, dtype=torch.long)
    for i, f in enumerate(feats):
        mask[i, :f.shape[-1]] = 1
    features = torch.stack([torch.nn.functional.pad(f, (0, frames - f.shape[-1])) for f in feats])
    return {"input_features": features, "attention_mask": mask}  # (batch, n_mels, frames), (batch, frames)


def _generate(bundle, arrays: list[np.ndarray], long_form: bool, language: str | None, task: str | None,
              options: DecodeOptions, on_seconds: Callable[[float], None] | None = None) -> list[list[dict]]:
    """Greedy decoding of one batch -> transformers' segment dicts per clip.

    `on_seconds(s)`: called during long-form decoding with the seconds of the batch decoded so far.
    """
    inputs = _features(bundle.processor, arrays, long_form)
    inputs = {k: v.to(bundle.device) for k, v in inputs.items()}
    inputs["input_features"] = inputs["input_features"].to(bundle.dtype)  # (batch, n_mels, frames)
    limits = {"max_new_tokens": options.max_new_tokens} if options.max_new_tokens is not None else {}
    if long_form and on_seconds is not None and _has_monitor(bundle.model):  # transformers >= 4.52
        # state: (batch, 2) = frames decoded so far, total frames, per clip; a frame is 10 ms
        limits["monitor_progress"] = lambda state: on_seconds(float(state.min(dim=1).values.sum()) / 100)
    with torch.inference_mode(), _quiet_transformers():
        out = bundle.model.generate(
            **inputs, language=language, task=task, return_timestamps=long_form or options.return_segments,
            return_segments=True, return_dict_in_generate=False, num_beams=1, do_sample=False, **limits)
    return out["segments"]


def _has_monitor(model) -> bool:
    return "monitor_progress" in inspect.signature(model.generate).parameters


@contextlib.contextmanager
def _quiet_transformers() -> Iterator[None]:
    """Silence transformers' per-call generation warnings (max_length vs max_new_tokens, decoder masks)."""
    from transformers.utils import logging as hf_logging

    level = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        yield
    finally:
        hf_logging.set_verbosity(level)


def _detected_language(bundle, segments: list[dict]) -> str | None:
    """The language token the decoder prompt used (forced or detected by `generate`)."""
    lang_to_id = getattr(bundle.model.generation_config, "lang_to_id", None) or {}
    id_to_lang = {i: tok[2:-2] for tok, i in lang_to_id.items()}
    for seg in segments:
        result = seg.get("result")
        prompt = result if isinstance(result, torch.Tensor) else None
        if prompt is not None:
            return next((id_to_lang[t] for t in prompt[:4].tolist() if t in id_to_lang), None)
    return None


def _to_transcription(bundle, clip: _Clip, samples: np.ndarray, segments: list[dict],
                      language: str | None, options: DecodeOptions) -> Transcription:
    """Decode segment tokens (timestamps dropped) into text and `Segment`s within the audio's duration.

    Segments that start at or after the end of the audio were decoded from the padding of the last window
    (transformers keeps decoding a short clip's padded 30 s window) and are dropped.
    """
    tokenizer = bundle.processor.tokenizer
    timestamp_begin = bundle.model.generation_config.no_timestamps_token_id + 1
    duration = samples.size / SAMPLE_RATE
    all_tokens: list[int] = []
    out: list[Segment] = []
    for seg in segments:
        start, end = float(seg["start"]), min(float(seg["end"]), duration)
        if start >= duration:
            continue
        tokens = [t for t in seg["tokens"].tolist() if t < timestamp_begin]
        all_tokens += tokens
        text = tokenizer.decode(tokens, skip_special_tokens=True).strip()
        if text:
            out.append(Segment(round(start, 3), round(max(start, end), 3), text))
    if bundle.is_multilingual:
        language = language or _detected_language(bundle, segments)
    else:
        language = "en"
    text = tokenizer.decode(all_tokens, skip_special_tokens=True).strip()
    return Transcription(path=clip.name, text=text, language=language,
                         segments=out if options.return_segments else [], duration_s=round(duration, 3))


def transcribe_iter(bundle, audio: AudioInput | Iterable[AudioInput], *, language: str | None = None,
                    task: str = "transcribe", batch_size: int = 8, return_segments: bool = True,
                    max_new_tokens: int | None = None, progress: bool = True,
                    ) -> Iterator[tuple[int, Transcription | TranscriptionFailure]]:
    """Transcribe many inputs, yielding `(input index, Transcription | TranscriptionFailure)` as batches finish.

    `audio`: paths (any format `load_audio` reads) or 1-D float arrays of 16 kHz mono samples. Unreadable
    inputs are yielded first as failures, then short clips in input order, then long clips by length.
    Raises LiteWhisperError up front for options the model cannot honour (e.g. translate on tiny.en).
    """
    options = DecodeOptions(language, task, batch_size, return_segments, max_new_tokens)
    gen_language, gen_task = check_options(bundle, options)  # raise now, not at the first next()
    items = [audio] if isinstance(audio, (str, os.PathLike, np.ndarray)) else list(audio)
    return _run(bundle, items, options, gen_language, gen_task, progress)


def _run(bundle, items: list[AudioInput], options: DecodeOptions, language: str | None, task: str | None,
         progress: bool) -> Iterator[tuple[int, Transcription | TranscriptionFailure]]:
    from tqdm.auto import tqdm

    clips = []
    for index, item in enumerate(items):
        probed = _probe(index, item)
        if isinstance(probed, TranscriptionFailure):
            yield index, probed
        else:
            clips.append(probed)
    total = round(sum(c.duration_s for c in clips), 1)
    with tqdm(total=total, unit="audio-s", desc="transcribing", disable=not progress, file=sys.stderr) as bar:
        for long_form, batch in plan_batches(clips, options.batch_size):
            yield from _decode_batch(bundle, batch, long_form, options, language, task, bar)


def _decode_batch(bundle, batch: list[_Clip], long_form: bool, options: DecodeOptions, language: str | None,
                  task: str | None, bar) -> Iterator[tuple[int, Transcription | TranscriptionFailure]]:
    """Load and decode one batch; the progress bar advances by the batch's seconds of audio."""
    start = bar.n

    def advance(seconds: float) -> None:
        bar.n = round(start + seconds, 1)
        bar.refresh()

    loaded = []
    for clip in batch:
        try:
            loaded.append((clip, _load(clip)))
        except AudioError as exc:
            yield clip.index, TranscriptionFailure(clip.name, str(exc))
    if loaded:
        segments = _generate(bundle, [s for _, s in loaded], long_form, language, task, options, advance)
        for (clip, samples), segs in zip(loaded, segments):
            yield clip.index, _to_transcription(bundle, clip, samples, segs, language, options)
    advance(sum(c.duration_s for c in batch))


def transcribe(bundle, audio: AudioInput | Iterable[AudioInput], *, language: str | None = None,
               task: str = "transcribe", batch_size: int = 8, return_segments: bool = True,
               max_new_tokens: int | None = None, progress: bool = True) -> list[Transcription]:
    """Transcribe paths or 16 kHz mono arrays; results in input order.

    Raises AudioError for the first input that cannot be read (use `transcribe_iter` to skip bad inputs
    and keep the others), LiteWhisperError for options the model cannot honour.
    """
    results: dict[int, Transcription] = {}
    for index, result in transcribe_iter(bundle, audio, language=language, task=task, batch_size=batch_size,
                                         return_segments=return_segments, max_new_tokens=max_new_tokens,
                                         progress=progress):
        if isinstance(result, TranscriptionFailure):
            raise AudioError(result.error)
        results[index] = result
    return [results[i] for i in sorted(results)]
