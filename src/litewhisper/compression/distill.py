"""Decoder-aware distillation targets: what the decoder does, not what the encoder states are.

As distil-whisper does it: the original (teacher) model transcribes unlabeled calibration windows with the one
decoder (`transcribe` and its defaults: timestamps, temperature fallback), so training sees what users get; the
compressed (student) model is then teacher-forced on those
pseudo-labels and trained to match the teacher's next-token distributions (KL divergence) plus the cross-entropy
of the pseudo-labels. The decoder is never compressed, so both models share its weights and the only way the
student can lower the loss is through its encoder states, i.e. through the cross-attention the decoder reads.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from litewhisper.constants import MAX_TIMESTAMP_STEPS, SAMPLE_RATE, TIMESTAMP_STEP_S, WINDOW_S
from litewhisper.errors import LiteWhisperError
from litewhisper.models.encoder_window import encoder_window
from litewhisper.models.linears import unwrap_model
from litewhisper.models.processor import prompt_ids

__all__ = [
    "PseudoLabels",
    "transcript_tokens",
    "window_transcripts",
    "Transcriber",
    "pseudo_labels",
    "decoder_loss",
    "relative_mse",
]

IGNORE = -100  # label of padding positions


class PseudoLabels:
    """Per window: the teacher's transcript as decoder tokens (prompt + text/timestamps + end-of-text) and the
    teacher's encoder states (computed once), so each step only runs the teacher's decoder."""

    def __init__(self, tokens: list[torch.Tensor], states: torch.Tensor, eot: int):
        self.tokens = tokens  # each (T_i,) int64, starting with <|startoftranscript|>
        self.states = states  # (N, positions, d_model) teacher encoder output
        self.eot = eot

    def batch(self, idx: list[int]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(decoder input ids (B, T), labels (B, T) with IGNORE on padding, teacher states (B, P, d))."""
        seqs = [self.tokens[i] for i in idx]
        width = max(len(s) for s in seqs) - 1
        inputs = torch.full((len(seqs), width), self.eot, dtype=torch.long)
        labels = torch.full((len(seqs), width), IGNORE, dtype=torch.long)
        for row, seq in enumerate(seqs):
            inputs[row, : len(seq) - 1] = seq[:-1]
            labels[row, : len(seq) - 1] = seq[1:]
        return inputs, labels, self.states[idx]


def _timestamp(tokenizer, seconds: float) -> int:
    """The timestamp token nearest `seconds` (Whisper's 20-ms steps, <|0.00|> … <|30.00|>)."""
    first = tokenizer.convert_tokens_to_ids("<|0.00|>")
    return first + min(MAX_TIMESTAMP_STEPS, max(0, round(seconds / TIMESTAMP_STEP_S)))


def transcript_tokens(bundle, transcription, max_tokens: int) -> torch.Tensor:
    """One window's transcript (a `Transcription`: `language`, `segments` with start, end, text) as decoder
    tokens: prompt, then <|start|> text <|end|> per segment, then end-of-text; at most `max_tokens` tokens (the
    decoder's positions), truncated at a segment's end."""
    tokenizer = bundle.processor.tokenizer
    eot = tokenizer.convert_tokens_to_ids("<|endoftext|>")
    ids = prompt_ids(tokenizer, bundle.is_multilingual, transcription.language or "en")
    for seg in transcription.segments:
        text = tokenizer.encode(" " + seg.text.strip(), add_special_tokens=False)
        piece = [_timestamp(tokenizer, seg.start), *text, _timestamp(tokenizer, seg.end)]
        if len(ids) + len(piece) + 1 > max_tokens:
            break
        ids += piece
    return torch.tensor(ids + [eot], dtype=torch.long)


Transcriber = Callable[[Any, list[np.ndarray]], Sequence[Any]]  # (bundle, windows) -> Transcriptions


def window_transcripts(bundle, windows: Sequence[np.ndarray], transcriber: Transcriber | None) -> list[torch.Tensor]:
    """The transcripts of 16 kHz windows of at most 30 s each by `transcriber` — the one decoder,
    `litewhisper.transcribe` with its defaults (passed in: decoding is a later stage than compression) — as
    decoder token sequences (`transcript_tokens`): the labels of decoder-aware refinement."""
    if transcriber is None:
        raise LiteWhisperError(
            "decoder-aware refinement labels its windows with the one decoder: pass transcriber=litewhisper.transcribe "
            "(compress(..., transcriber=transcribe); the CLI does this)"
        )
    if not hasattr(bundle, "processor") or not hasattr(unwrap_model(bundle), "proj_out"):
        raise LiteWhisperError(
            "decoder-aware refinement needs the whole Whisper model with its processor (a WhisperBundle from "
            f"load_model), got {type(bundle).__name__}"
        )
    if any(w.size > WINDOW_S * SAMPLE_RATE for w in windows):
        raise LiteWhisperError(f"pseudo-labels are per window: give windows of at most {WINDOW_S} s")
    max_tokens = unwrap_model(bundle).config.max_target_positions
    return [transcript_tokens(bundle, t, max_tokens) for t in transcriber(bundle, list(windows))]


@torch.no_grad()
def pseudo_labels(teacher: nn.Module, features: torch.Tensor, tokens: list[torch.Tensor], batch_size: int = 8):
    """PseudoLabels of windows `features` (N, n_mels, frames) with their transcripts `tokens` (one per window,
    from `window_transcripts`); the teacher's encoder states are computed here, once."""
    if len(tokens) != len(features):
        raise LiteWhisperError(f"got {len(tokens)} transcripts for {len(features)} windows: give one per window")
    if not hasattr(teacher, "proj_out"):
        raise LiteWhisperError(
            "decoder-aware refinement needs the whole Whisper model (encoder and decoder), "
            f"got {type(teacher).__name__}"
        )
    teacher.eval()
    encoder = teacher.get_encoder()
    states = [encoder(features[i : i + batch_size]).last_hidden_state for i in range(0, len(features), batch_size)]
    return PseudoLabels(list(tokens), torch.cat(states), int(tokens[0][-1]))


def relative_mse(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """Mean squared error relative to the teacher's mean square (0 = identical states)."""
    return ((student - teacher) ** 2).mean() / (teacher**2).mean().clamp_min(1e-12)


def _decoded(model: nn.Module, inputs: torch.Tensor, states: torch.Tensor) -> list[torch.Tensor]:
    """[each decoder layer's output (B, T, d_model)..., next-token logits (B, T, vocab)] of `model`'s decoder
    reading encoder `states`."""
    out = model.get_decoder()(input_ids=inputs, encoder_hidden_states=states, output_hidden_states=True)
    return [*out.hidden_states[1:-1], out.last_hidden_state, model.proj_out(out.last_hidden_state)]


def _encoded(model: nn.Module, features: torch.Tensor, frames: int | None) -> torch.Tensor:
    """(B, P, d_model) encoder states of `features`, reading only the first `frames` mel frames when given (the
    `--window auto` encoder: positions [:frames/2])."""
    if frames is None or frames >= features.shape[-1]:
        return model.get_encoder()(features).last_hidden_state
    with encoder_window(model) as window:
        window.frames = frames
        return model.get_encoder()(features).last_hidden_state


def decoder_loss(
    student: nn.Module,
    teacher: nn.Module,
    labels: PseudoLabels,
    features: torch.Tensor,
    idx: list[int],
    ce_weight: float,
    frames: list[int] | None = None,
    hidden_weight: float = 0.0,
) -> torch.Tensor:
    """KL(teacher ‖ student) of the next-token distributions over pseudo-label positions
    + ce_weight × cross-entropy of the pseudo-labels
    + hidden_weight × the decoder layers' outputs' mean relative squared error (ACFT's objective);
    gradients reach the student's encoder only.

    frames: mel frames the student's encoder reads per window (index as `features`; None: the whole window), so
    a student encoding short windows learns to decode as the teacher does on full ones."""
    inputs, targets, teacher_states = labels.batch(idx)
    mask = targets != IGNORE  # (B, T)
    if frames is None:
        student_out = _decoded(student, inputs, _encoded(student, features[idx], None))
    else:
        rows = [
            _decoded(student, inputs[r : r + 1], _encoded(student, features[i : i + 1], frames[i]))
            for r, i in enumerate(idx)
        ]
        student_out = [torch.cat(parts) for parts in zip(*rows, strict=True)]
    with torch.no_grad():
        teacher_out = _decoded(teacher, inputs, teacher_states)
    log_p_student = F.log_softmax(student_out[-1].float(), dim=-1)[mask]  # (M, vocab)
    log_p_teacher = F.log_softmax(teacher_out[-1].float(), dim=-1)[mask]
    loss = F.kl_div(log_p_student, log_p_teacher, log_target=True, reduction="batchmean")
    if ce_weight:
        loss = loss + ce_weight * F.nll_loss(log_p_student, targets[mask])
    if hidden_weight:
        errors = [
            ((s[mask] - t[mask]) ** 2).mean() / (t[mask] ** 2).mean()
            for s, t in zip(student_out[:-1], teacher_out[:-1], strict=True)
        ]
        loss = loss + hidden_weight * torch.stack(errors).mean()
    return loss
