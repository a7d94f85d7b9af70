"""Recovery: refinement as `compress` runs it — windows drawn from unlabeled audio, labelled by the original
model through the one decoder, trained with `refine`, resumable from a state directory — and what it will cost.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from litewhisper.atomic import atomic_file
from litewhisper.compression.calibration import clip_windows, window_features
from litewhisper.compression.distill import Transcriber, decoder_loss, pseudo_labels, window_transcripts
from litewhisper.compression.refine import RefineConfig, RefineResult, refine
from litewhisper.constants import SAMPLE_RATE
from litewhisper.models.linears import find_encoder, replace_model, unwrap_model

__all__ = ["recover", "windows_key", "RecoveryEstimate", "estimate_recovery", "LABELS_FILE", "STATE_FILE"]

log = logging.getLogger("litewhisper")

LABELS_FILE = "labels.pt"  # the original's transcripts of the windows, in a recovery state directory
STATE_FILE = "refine-state.pt"  # the training state


def windows_key(windows: Sequence) -> str:
    """A digest of 16 kHz windows' samples: which windows a set of labels belongs to."""
    return hashlib.sha1(b"".join(w.tobytes() for w in windows)).hexdigest()


def _labels(bundle, windows: list, state_dir: Path | None, transcriber: Transcriber | None) -> list[torch.Tensor]:
    """The teacher bundle's transcripts of `windows`, read from / written to `state_dir` when given."""
    key = windows_key(windows)
    path = None if state_dir is None else Path(state_dir) / LABELS_FILE
    if path is not None and path.is_file():
        saved = torch.load(path, weights_only=True)
        if saved["windows"] == key:
            log.info("refinement labels read from %s", path)
            return saved["tokens"]
    tokens = window_transcripts(bundle, windows, transcriber)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_file(path) as tmp:
            torch.save({"windows": key, "tokens": tokens}, tmp)
    return tokens


def recover(
    bundle,
    student,
    teacher,
    audio: Sequence,
    config: RefineConfig,
    state_dir: str | Path | None = None,
    transcriber: Transcriber | None = None,
) -> RefineResult:
    """Refine `student` toward `teacher` on `config.windows` clips of `audio`, one clip per window; the decoder
    objective's labels are the teacher's transcripts by `transcriber` (the one decoder: `litewhisper.transcribe`)
    with `bundle`'s processor. state_dir: labels and training state are kept there, so an interrupted run
    resumes (the caller removes it when done)."""
    windows = clip_windows(audio, config.windows)
    transcripts = None
    if config.objective == "decoder":
        teacher_bundle = bundle if unwrap_model(bundle) is teacher else replace_model(bundle, teacher)
        transcripts = _labels(teacher_bundle, windows, state_dir, transcriber)
    state_file = None if state_dir is None else Path(state_dir) / STATE_FILE
    seconds = [w.size / SAMPLE_RATE for w in windows]
    return refine(student, teacher, window_features(bundle, windows), config, transcripts, state_file, seconds)


@dataclass(frozen=True)
class RecoveryEstimate:
    """What refinement will cost on this machine, from one window decoded and one training step timed here."""

    decode_s: float  # one window transcribed by the one decoder (the labels)
    step_s: float  # one window's forward + backward of the decoder objective
    minutes: float

    def describe(self, config: RefineConfig, windows: int) -> str:
        return (
            f"refinement: about {self.minutes:.0f} min here ({windows} windows transcribed at {self.decode_s:.1f} s, "
            f"{config.max_steps} steps of {config.batch_size} windows at {self.step_s:.1f} s per window, "
            "validations included)"
        )


def estimate_recovery(bundle, config: RefineConfig, windows: int, transcriber: Transcriber) -> RecoveryEstimate:
    """Time one built-in synthetic clip's transcription and one decoder-objective training step on it with the
    bundle's model, and scale by the labels, steps and validations `config` asks for on `windows` windows."""
    from litewhisper.audio.synth import builtin_calibration_audio

    model = bundle.model
    clip = builtin_calibration_audio(1)
    start = time.perf_counter()
    tokens = window_transcripts(bundle, clip, transcriber)
    decode_s = time.perf_counter() - start
    features = window_features(bundle, clip)
    labels = pseudo_labels(model, features, tokens)
    params = list(find_encoder(model).parameters())
    saved = [p.requires_grad for p in params]
    try:
        for p in params:
            p.requires_grad_(True)
        for _ in range(2):  # the second is timed (the first allocates)
            start = time.perf_counter()
            decoder_loss(model, model, labels, features, [0], config.ce_weight).backward()
            step_s = time.perf_counter() - start
    finally:
        model.zero_grad(set_to_none=True)
        for p, flag in zip(params, saved, strict=True):
            p.requires_grad_(flag)
    validations = config.max_steps // config.eval_every + 1
    forward_s = step_s / 3  # no backward
    n_val = max(1, round(windows * config.val_fraction))
    seconds = windows * (decode_s + forward_s) + config.max_steps * config.batch_size * step_s
    seconds += validations * n_val * forward_s
    return RecoveryEstimate(decode_s, step_s, seconds / 60)
