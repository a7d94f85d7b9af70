"""Run a `litewhisper export` directory: the ONNX encoder (onnxruntime) in front of CTranslate2's decoder.

faster-whisper's pipeline (its numpy log-mel, tokenizer, timestamps, temperature fallback, VAD) runs with
`WhisperModel.encode` replaced by the exported encoder, whose output is handed to CTranslate2 as a `StorageView`,
and the decoder asked for the length PyTorch decodes (`_Decoder`); decode/deployed_backend.py pads short clips and
passes the model's suppression lists so that the loop transcribes as PyTorch does. With the encoder window policy
(`DecodeOptions.window="auto"`) the encoder reads only a window's first W frames; CTranslate2's decoder
cross-attends the W/2 positions as they come (it tells encoder outputs from features by shape), and its word
alignment (`align`) clamps faster-whisper's `num_frames` (3000 for a padded short clip) to them. Nothing here
imports torch or transformers, so a deployed model costs what faster-whisper costs.

Directory (written by litewhisper.export):
    litewhisper_export.json     marker: format, precision, which encoder file the runtime uses
    onnx/encoder_model[_quantized].onnx, onnx/decoder_model_merged[_quantized].onnx (transformers.js; unused here)
    ctranslate2/                the decoder as a CTranslate2 Whisper model (model.bin, tokenizer.json, ...)
    config.json, generation_config.json, tokenizer + preprocessor files (Hugging Face layout)
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from litewhisper.constants import SAMPLE_RATE, window_seconds
from litewhisper.cpu import free_cpus
from litewhisper.errors import LiteWhisperError, ModelSourceError
from litewhisper.models.deployed_batch import FeatureMemo, FirstWindow
from litewhisper.models.processor import read_ct2_config

__all__ = [
    "EXPORT_MARKER",
    "EXPORT_FORMAT",
    "ENCODER_WINDOW",
    "CT2_DIR",
    "ONNX_DIR",
    "EXTRA_HINT",
    "DeployedWhisper",
    "is_export",
    "read_marker",
    "load_deployed",
    "check_threads",
    "require_onnx_extra",
]

log = logging.getLogger("litewhisper")

EXPORT_MARKER = "litewhisper_export.json"
EXPORT_FORMAT = 1
ENCODER_WINDOW = "dynamic"  # the marker's `encoder_window`: the encoder reads any even number of frames <= 3000
ONNX_DIR = "onnx"
CT2_DIR = "ctranslate2"
EXTRA_HINT = 'install the "onnx" extra: pip install "litewhisper[onnx]" (onnxruntime, ctranslate2, faster-whisper)'


def require_onnx_extra(what: str) -> None:
    """LiteWhisperError naming the extra if onnxruntime / ctranslate2 / faster-whisper is missing."""
    import importlib.util

    missing = [m for m in ("onnxruntime", "ctranslate2", "faster_whisper") if importlib.util.find_spec(m) is None]
    if missing:
        raise LiteWhisperError(f"{what} needs {', '.join(missing)} (not installed); {EXTRA_HINT}")


def check_threads(threads: int | None) -> int:
    """`threads` (intra-op threads) validated; None -> min(4, the cores other processes leave free)."""
    if threads is None:
        return min(4, free_cpus())
    if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
        raise LiteWhisperError(f"threads must be a positive integer (intra-op threads), got {threads!r}")
    return threads


def is_export(path: str | os.PathLike) -> bool:
    return (Path(path) / EXPORT_MARKER).is_file()


def read_marker(path: Path) -> dict[str, Any]:
    try:
        marker = json.loads((path / EXPORT_MARKER).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as e:
        raise ModelSourceError(
            f"{path / EXPORT_MARKER} is unreadable ({e}); re-export the model with "
            "`litewhisper export MODEL -o DIR --overwrite`"
        ) from e
    if marker.get("format") != EXPORT_FORMAT:
        raise ModelSourceError(
            f"{path} was exported in format {marker.get('format')!r}, this litewhisper reads "
            f"format {EXPORT_FORMAT}; re-export it with --overwrite"
        )
    return marker


def encoder_session(path: Path, threads: int):
    """An onnxruntime session for one .onnx file; a corrupt or truncated file is a clear error."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads, opts.inter_op_num_threads = threads, 1
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.enable_mem_pattern = False  # with per-head attention: 162 vs 189 MiB peak for base@0.8, same speed
    if not path.is_file():
        raise ModelSourceError(f"{path} is missing; re-export the model with --overwrite")
    try:
        return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    except Exception as e:  # onnxruntime raises its own Fail / InvalidProtobuf / InvalidGraph types
        raise ModelSourceError(
            f"{path} is not a loadable ONNX graph (corrupt or truncated?): "
            f"{str(e)[:200]}; re-export the model with --overwrite"
        ) from e


@dataclass
class DeployedWhisper:
    """An exported model ready to run. `pipeline` is a faster_whisper.WhisperModel whose encoder is ours."""

    path: Path
    name: str
    precision: str
    threads: int
    session: Any  # onnxruntime.InferenceSession of the encoder
    pipeline: Any  # faster_whisper.WhisperModel
    runtime: str = "deployed"  # decode.backend_for picks the deployed backend by this
    suppress_tokens: tuple[int, ...] | None = None  # the model's own lists (None: faster-whisper's defaults)
    begin_suppress_tokens: tuple[int, ...] | None = None
    fixed_frames: int | None = None  # an encoder exported before issue 31 reads exactly this many frames

    def check_window(self, window: str) -> None:
        """A clear error if the encoder cannot read the windows of policy `window` (DecodeOptions.window)."""
        if window != "full" and self.fixed_frames is not None:
            raise LiteWhisperError(
                f"{self.path} has an encoder that reads exactly {self.fixed_frames} mel frames (exported by an "
                f"older litewhisper), so it cannot encode shorter windows (window {window!r}); re-export it with "
                f"`litewhisper export MODEL -o {self.path} --overwrite`, or decode with --window full"
            )

    @property
    def suppression(self) -> dict[str, Any]:
        """faster-whisper arguments that suppress what PyTorch's generation config suppresses: `suppress_tokens`
        everywhere, `begin_suppress_tokens` (" " and end-of-text) at a window's first token (`suppress_blank`)."""
        out: dict[str, Any] = {}
        if self.suppress_tokens is not None:
            out["suppress_tokens"] = list(self.suppress_tokens)
        if self.begin_suppress_tokens is not None:
            out["suppress_blank"] = bool(self.begin_suppress_tokens)
        return out

    @property
    def is_multilingual(self) -> bool:
        return bool(self.pipeline.model.is_multilingual)

    def encode(self, features):
        """(b, n_mels, W) float32 log-mel -> (b, W/2, d) float32 encoder output (numpy); W = 3000, or any even
        W <= 3000 unless `fixed_frames`."""
        import numpy as np

        features = np.ascontiguousarray(features, dtype=np.float32)
        if features.ndim == 2:
            features = features[None]
        return self.session.run(None, {"input_features": features})[0]

    def transcribe(
        self,
        audio,
        *,
        seconds: float | None = None,
        budget: Callable[[float], int] | None = None,
        frames: Callable[[float, int], int] | None = None,
        first: FirstWindow | None = None,
        **kwargs,
    ):
        """faster-whisper's `transcribe(audio, **kwargs)` -> (segments generator, info).

        budget: new tokens allowed to a window given the seconds of the clip it holds (`DecodeOptions.window_budget`),
        applied to every decode of the window (greedy and fallback); frames: the mel frames the encoder reads for
        the window starting at a frame of a clip of so many seconds (`DecodeOptions.encoder_frames(seconds, seek)`;
        None: all 3000); seconds: the clip's duration (default: the
        audio's; the deployed backend pads short clips to 30 s); first: what a batch computed for this clip's first
        window (models/deployed_batch.py), used for the identical calls only."""
        if frames is not None:
            self.check_window("auto")
        self.pipeline.audio_seconds = len(audio) / SAMPLE_RATE if seconds is None else seconds
        self.pipeline.budget, self.pipeline.frames = budget, frames
        self.pipeline.model.first = first
        return self.pipeline.transcribe(audio, **kwargs)

    @property
    def eot(self) -> int:
        """The end-of-text token id (text tokens are below it, timestamps above)."""
        return int(self.pipeline.hf_tokenizer.token_to_id("<|endoftext|>"))

    @property
    def window_tokens(self) -> int:
        """Tokens (text and timestamps, without end-of-text) of the last window decoded: the token limit was hit
        when they reach `window_budget`."""
        return self.pipeline.window_tokens

    @property
    def window_budget(self) -> int:
        """The new tokens the last window decoded was allowed (its budget, at most max_new_tokens)."""
        return self.pipeline.window_budget

    def reseed(self, seed: int) -> None:
        """Sampling (temperature fallback) in the next decodes draws from a generator seeded with `seed`.

        CTranslate2 seeds a worker thread's generator once, from the global seed, when the thread first samples,
        and cannot re-seed it (`set_random_seed` only changes the seed of generators not yet made). So after a
        decode that sampled, the decoder is loaded again (a new worker thread): each clip then samples from
        `seed` whatever was decoded before it, at the cost of one decoder load after each clip that fell back.
        """
        import ctranslate2

        ctranslate2.set_random_seed(seed)
        if self.pipeline.model.sampled:
            self.pipeline.reload_decoder()


class _Decoder:
    """The CTranslate2 Whisper model as faster-whisper calls it, with three changes.

    Length: faster-whisper asks for `max_length = len(prompt) + max_new_tokens`, but CTranslate2 decodes at most
    min(max_length // 2, max_length - len(prompt) + 1) tokens (CTranslate2 issue #1856), so a window stopped at
    ~113 tokens where PyTorch (and openai-whisper) allow 224; it is given the max_length that yields exactly
    max_new_tokens. Sampling: `sampled` notes whether a call drew random numbers (faster-whisper samples with
    `sampling_topk=0` on a fallback and decodes greedily, top-1, otherwise) — see `DeployedWhisper.reseed`.
    Batches: `first` (models/deployed_batch.py) answers the clip's first-window calls that a batch made already.
    """

    def __init__(self, model, first: FirstWindow | None = None) -> None:
        self.model, self.sampled, self.first = model, False, first

    def generate(self, features, prompts, *, max_length: int | None = None, **kwargs):
        if self.first is not None and (done := self.first.generated(prompts, max_length, kwargs)) is not None:
            return [done]  # the batch decoded this very call (models/deployed_batch.py)
        self.sampled = self.sampled or kwargs.get("sampling_topk", 1) != 1
        if max_length is not None:
            prompt = max(len(p) for p in prompts)
            new = max_length - prompt  # max_new_tokens
            kwargs["max_length"] = max(2 * new, new + prompt - 1)
        return self.model.generate(features, prompts, **kwargs)

    def detect_language(self, features):
        if self.first is not None and self.first.language is not None:  # detected in the batch
            return [self.first.language]
        return self.model.detect_language(features)

    def __getattr__(self, name: str):
        return getattr(self.model, name)


def _window_seek(frame, reader: str) -> int:
    """The log-mel frame where the window being decoded starts: `seek` in faster-whisper's `generate_segments`,
    which calls `encode` and `generate_with_fallback` without it; `frame` is their caller's. Language detection
    (`detect_language`, called from faster-whisper's `transcribe`) encodes the first window: 0."""
    if frame.f_code.co_name == "detect_language":
        return 0
    seek = frame.f_locals.get("seek")
    if not isinstance(seek, int):
        raise LiteWhisperError(
            "this faster-whisper version does not keep the window start as `seek` in generate_segments, which "
            f"{reader} reads: install faster-whisper 1.x or decode with {_READER_FLAGS[reader]}"
        )
    return seek


_READER_FLAGS = {"the token budget": "--tokens-per-second none", "the encoder window": "--window full"}


def _pipeline(ct2_dir: Path, session, threads: int, precision: str):
    import ctranslate2
    from faster_whisper import WhisperModel

    compute = "int8" if precision == "int8" else "float32"

    class _Pipeline(WhisperModel):
        window_tokens = window_budget = 0
        audio_seconds = 0.0
        budget: Callable[[float], int] | None = None
        frames: Callable[[float, int], int] | None = None

        def encode(self, features):  # ours, instead of CTranslate2's encoder
            import numpy as np

            features = features[None] if features.ndim == 2 else features  # (b, n_mels, 3000): padded window
            if self.frames is not None:  # the window policy: its first W frames
                seek = _window_seek(sys._getframe(1), "the encoder window")
                features = features[..., : self.frames(self.audio_seconds, seek)]  # (b, n_mels, W)
            features = np.ascontiguousarray(features, dtype=np.float32)
            first = self.model.first
            if first is not None and (states := first.encoded(features)) is not None:
                return ctranslate2.StorageView.from_array(states)  # encoded in the batch
            return ctranslate2.StorageView.from_array(session.run(None, {"input_features": features})[0])

        def generate_with_fallback(self, encoder_output, prompt, tokenizer, options):
            if self.budget is not None:  # every decode of this window (greedy and fallback) gets its budget
                seconds = window_seconds(self.audio_seconds, _window_seek(sys._getframe(1), "the token budget"))
                options = dataclasses.replace(options, max_new_tokens=min(options.max_new_tokens, self.budget(seconds)))
            self.window_budget = options.max_new_tokens
            out = super().generate_with_fallback(encoder_output, prompt, tokenizer, options)
            self.window_tokens = len(out[0].sequences_ids[0])  # the kept decode of this window
            return out

        def reload_decoder(self) -> None:
            """The CTranslate2 model loaded again (the old one freed first): a new worker thread."""
            first = self.model.first
            self.model.unload_model()
            self.model = None  # freed before the new one loads (else both live at once: base int8, 30 short
            # clips of which 7 sampled: whole-process peak RSS 805-1003 -> 591-597 MiB, same time)
            self.model = _Decoder(
                ctranslate2.models.Whisper(str(ct2_dir), device="cpu", compute_type=compute, intra_threads=threads),
                first,
            )

    if not (ct2_dir / "model.bin").is_file():  # else faster-whisper takes the path for a hub repo id
        missing = ct2_dir if not ct2_dir.is_dir() else ct2_dir / "model.bin"
        raise ModelSourceError(
            f"{missing} is missing: an export holds its decoder as a CTranslate2 model in {ct2_dir.name}/; "
            f"re-export the model with `litewhisper export MODEL -o {ct2_dir.parent} --overwrite`"
        )
    logging.getLogger("faster_whisper").setLevel(logging.WARNING)  # it logs every clip's duration at INFO
    try:
        pipeline = _Pipeline(str(ct2_dir), device="cpu", compute_type=compute, cpu_threads=threads)
    except (RuntimeError, ValueError, OSError) as e:
        raise ModelSourceError(
            f"cannot load the CTranslate2 decoder in {ct2_dir}: {str(e)[:200]}; re-export the model with --overwrite"
        ) from e
    pipeline.model = _Decoder(pipeline.model)
    pipeline.feature_extractor = FeatureMemo(pipeline.feature_extractor)
    return pipeline


def load_deployed(path: str | os.PathLike, threads: int | None = None, precision: str | None = None) -> DeployedWhisper:
    """Load an export directory. precision: "int8" or "fp32" encoder (default: what the export made)."""
    path, threads = Path(path), check_threads(threads)
    require_onnx_extra(f"running the exported model {path}")
    marker = read_marker(path)
    precision = precision or marker["precision"]
    encoders = marker.get("encoders", {})
    if precision not in encoders:
        raise LiteWhisperError(
            f"{path} has no {precision!r} encoder (it has: {', '.join(encoders)}); "
            "export it again with the matching --quantize"
        )
    session = encoder_session(path / encoders[precision], threads)
    pipeline = _pipeline(path / CT2_DIR, session, threads, marker["precision"])
    ct2_config = read_ct2_config(path / CT2_DIR)  # suppress_ids(_begin): the generation config's lists
    return DeployedWhisper(
        path=path,
        name=marker.get("name", path.name),
        precision=precision,
        threads=threads,
        session=session,
        pipeline=pipeline,
        suppress_tokens=_ids(ct2_config.get("suppress_ids")),
        begin_suppress_tokens=_ids(ct2_config.get("suppress_ids_begin")),
        fixed_frames=_fixed_frames(session),
    )


def _fixed_frames(session) -> int | None:
    """The frame count an encoder graph's input is fixed to (exports before issue 31: 3000), None if dynamic."""
    frames = session.get_inputs()[0].shape[-1]  # a name ("encoder_frames") for a dynamic axis
    return frames if isinstance(frames, int) else None


def _ids(value) -> tuple[int, ...] | None:
    return None if value is None else tuple(int(i) for i in value)
