"""The PyTorch backend: Hugging Face `WhisperForConditionalGeneration.generate` with the options of
`DecodeOptions` (temperature fallback, compression-ratio / log-prob / no-speech thresholds, beams, prompt,
token timestamps from the alignment heads), short-form (<= 30 s, padded window) or long-form (sequential
30-s windows with an attention mask) per batch.
"""

from __future__ import annotations

import contextlib
import inspect
import logging
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import torch

from litewhisper.constants import MAX_TARGET_POSITIONS, SAMPLE_RATE, WINDOW_SAMPLES
from litewhisper.decode.backend import DecodedClip
from litewhisper.decode.languages import language_code
from litewhisper.decode.options import DecodeOptions
from litewhisper.decode.results import Segment, Word
from litewhisper.decode.torch_windows import WindowPlan
from litewhisper.errors import LiteWhisperError
from litewhisper.progress import quiet_transformers

__all__ = ["TorchBackend", "features"]

log = logging.getLogger("litewhisper")


def features(processor, arrays: list[np.ndarray], long_form: bool) -> dict[str, torch.Tensor]:
    """Log-mel inputs: padded to 30 s (short form), or each clip at its own length plus a mask (long form)."""
    fe = processor.feature_extractor
    if not long_form:  # padded / truncated to exactly 30 s
        return {"input_features": fe(arrays, sampling_rate=SAMPLE_RATE, return_tensors="pt").input_features}
    # Each clip computed alone so that a batch gives exactly the features of one-at-a-time decoding (padding
    # the waveforms would change each clip's last frames); the mask says where each ends.
    feats = [
        fe([a], sampling_rate=SAMPLE_RATE, truncation=False, padding="longest", return_tensors="pt").input_features[0]
        for a in arrays
    ]  # each (n_mels, frames_i)
    frames = max(f.shape[-1] for f in feats)
    mask = torch.zeros(len(feats), frames, dtype=torch.long)
    for i, f in enumerate(feats):
        mask[i, : f.shape[-1]] = 1
    stacked = torch.stack([torch.nn.functional.pad(f, (0, frames - f.shape[-1])) for f in feats])
    return {"input_features": stacked, "attention_mask": mask}  # (batch, n_mels, frames), (batch, frames)


@contextlib.contextmanager
def _seeded(seed: int) -> Iterator[None]:
    """Sampled fallback draws from a generator seeded per batch, leaving the global RNG as it was."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


@contextlib.contextmanager
def _eager_attention(model, enabled: bool) -> Iterator[None]:
    """Token timestamps need attention weights; `generate` switches to eager attention — switch back after."""
    old = model.config._attn_implementation
    try:
        yield
    finally:
        if enabled and model.config._attn_implementation != old:
            model.config._attn_implementation = old


class TorchBackend:
    """Decodes with a `WhisperBundle` (any model `load_model` gives, lite-whisper checkpoints included)."""

    def __init__(self, bundle):
        self.bundle = bundle
        self.name = bundle.name
        self.is_multilingual = bundle.is_multilingual
        gen = bundle.model.generation_config
        self.eot = gen.eos_token_id
        self.timestamp_begin = gen.no_timestamps_token_id + 1
        lang_to_id = getattr(gen, "lang_to_id", None) or {}
        self.id_to_lang = {i: tok[2:-2] for tok, i in lang_to_id.items()}

    def check(self, options: DecodeOptions) -> None:
        """LiteWhisperError for options this model cannot honour."""
        self.language_and_task(options)
        if options.word_timestamps and not getattr(self.bundle.model.generation_config, "alignment_heads", None):
            raise LiteWhisperError(
                f"model {self.name} has no alignment heads in its generation config, which word "
                "timestamps need: convert it again with this version of litewhisper"
            )
        if (
            options.initial_prompt is not None
            and len(self._prompt_ids(options)) + options.max_new_tokens + 4 > MAX_TARGET_POSITIONS
        ):
            raise LiteWhisperError(
                f"initial prompt too long for --max-new-tokens {options.max_new_tokens}: prompt and "
                f"output must fit {MAX_TARGET_POSITIONS} tokens; shorten the prompt or lower --max-new-tokens"
            )

    def language_and_task(self, options: DecodeOptions) -> tuple[str | None, str | None]:
        """The (language, task) to pass to `generate`."""
        code = language_code(options.language) if options.language is not None else None
        if not self.is_multilingual:
            if code not in (None, "en"):
                raise LiteWhisperError(
                    f"model {self.name} is English-only and cannot transcribe language {code!r}: "
                    "use a multilingual model (e.g. base) or drop --language"
                )
            if options.task == "translate":
                raise LiteWhisperError(
                    f"model {self.name} is English-only and cannot translate: use a multilingual model (e.g. base)"
                )
            return None, None  # English-only models take no language/task tokens
        if code is not None and f"<|{code}|>" not in {f"<|{c}|>" for c in self.id_to_lang.values()}:
            raise LiteWhisperError(f"model {self.name} does not support language {code!r}")
        return code, options.task

    def _prompt_ids(self, options: DecodeOptions) -> torch.Tensor:
        return self.bundle.processor.get_prompt_ids(options.initial_prompt.strip(), return_tensors="pt")

    def generate_kwargs(self, options: DecodeOptions, long_form: bool) -> dict[str, Any]:
        """`generate` arguments for the options (the thresholds as openai-whisper defines them)."""
        language, task = self.language_and_task(options)
        kwargs: dict[str, Any] = dict(
            language=language,
            task=task,
            return_timestamps=options.timestamps or long_form,
            return_segments=True,
            num_beams=options.beam_size,
            do_sample=False,
            max_new_tokens=options.max_new_tokens,
            temperature=options.temperature if len(options.temperature) > 1 else options.temperature[0],
            compression_ratio_threshold=options.compression_ratio_threshold,
            logprob_threshold=options.logprob_threshold,
            no_speech_threshold=options.no_speech_threshold,
            return_token_timestamps=options.word_timestamps or None,
        )
        if options.temperature[0] > 0 and len(options.temperature) == 1:
            kwargs["do_sample"] = True
        if long_form:
            kwargs["condition_on_prev_tokens"] = options.condition_on_previous_text
        if options.initial_prompt is not None:
            kwargs["prompt_ids"] = self._prompt_ids(options).to(self.bundle.device)
        return kwargs

    def decode_batch(
        self, arrays: list[np.ndarray], options: DecodeOptions, on_seconds: Callable[[float], None] | None = None
    ) -> list[DecodedClip]:
        """Decode a batch of 16 kHz arrays (long-form when any is longer than one window)."""
        model = self.bundle.model
        long_form = any(a.size > WINDOW_SAMPLES for a in arrays)
        inputs = {k: v.to(self.bundle.device) for k, v in features(self.bundle.processor, arrays, long_form).items()}
        inputs["input_features"] = inputs["input_features"].to(self.bundle.dtype)  # (batch, n_mels, frames)
        kwargs = self.generate_kwargs(options, long_form)
        plan = WindowPlan(model, [a.size / SAMPLE_RATE for a in arrays], options)
        kwargs["stopping_criteria"] = plan.stopping_criteria
        if long_form and on_seconds is not None and "monitor_progress" in inspect.signature(model.generate).parameters:
            # state: (batch, 2) = frames decoded so far, total frames, per clip; a frame is 10 ms
            kwargs["monitor_progress"] = lambda state: on_seconds(float(state.min(dim=1).values.sum()) / 100)
        with (
            torch.inference_mode(),
            quiet_transformers(),
            _seeded(options.seed),
            _eager_attention(model, options.word_timestamps),
            plan.installed(),
        ):
            out = model.generate(**inputs, **kwargs)
        return [
            self._clip(segs, a.size / SAMPLE_RATE, options, hit)
            for a, segs, hit in zip(arrays, out["segments"], plan.hit, strict=True)
        ]

    # ------------------------------------------------------------------------------------------ results

    @staticmethod
    def _sequence(seg: dict) -> torch.Tensor | None:
        """The whole decoded window a segment came from (decoder prompt + output)."""
        result = seg.get("result")
        if isinstance(result, dict):
            result = result.get("sequences")
        return result if isinstance(result, torch.Tensor) else None

    def _clip(self, segments: list[dict], duration: float, options: DecodeOptions, hit_limit: bool) -> DecodedClip:
        """Text tokens of the segments inside the audio -> DecodedClip (`hit_limit`: a window of the clip reached
        its token budget, as `WindowPlan` saw it).

        Segments that start at or after the end of the audio were decoded from the padding of the last window
        (transformers keeps decoding a short clip's padded 30 s window) and are dropped.
        """
        tokenizer = self.bundle.processor.tokenizer
        all_tokens: list[int] = []
        out: list[Segment] = []
        language = None
        for seg in segments:
            seq = self._sequence(seg)
            if seq is not None:
                language = language or next((self.id_to_lang[t] for t in seq.tolist() if t in self.id_to_lang), None)
            start, end = float(seg["start"]), min(float(seg["end"]), duration)
            if start >= duration:
                continue
            tokens = [t for t in seg["tokens"].tolist() if t < self.eot]
            all_tokens += tokens
            text = tokenizer.decode(tokens, skip_special_tokens=True).strip()
            if text:
                words = self._words(seg, duration) if options.word_timestamps else None
                out.append(Segment(round(start, 3), round(max(start, end), 3), text, words))
        language = (
            "en" if not self.is_multilingual else (language_code(options.language) if options.language else language)
        )
        return DecodedClip(
            text=tokenizer.decode(all_tokens, skip_special_tokens=True).strip(),
            segments=out,
            language=language,
            n_tokens=len(all_tokens),
            hit_token_limit=hit_limit,
        )

    def _words(self, seg: dict, duration: float) -> list[Word]:
        """Words of a segment, timed by the alignment-head token timestamps (token i spans ts[i]..ts[i+1])."""
        tokenizer = self.bundle.processor.tokenizer
        tokens = seg["tokens"].tolist()
        times = [float(t) for t in seg.get("token_timestamps", torch.zeros(0)).tolist()]
        if len(times) != len(tokens):
            return []
        words: list[list] = []  # [text, start, end]
        for i, tok in enumerate(tokens):
            if tok >= self.eot:
                continue
            piece = tokenizer.decode([tok])
            end = times[i + 1] if i + 1 < len(times) else float(seg["end"])
            if not words or piece.startswith(" ") or not piece.strip():
                words.append([piece, times[i], end])
            else:
                words[-1][0] += piece
                words[-1][2] = end
        return [
            Word(round(min(s, duration), 3), round(min(max(s, e), duration), 3), w.strip())
            for w, s, e in words
            if w.strip()
        ]
