"""Decoder-aware distillation targets: what the decoder does, not what the encoder states are.

As distil-whisper does it: the original (teacher) model transcribes unlabeled calibration windows (greedy, with
timestamps, as `transcribe` decodes); the compressed (student) model is then teacher-forced on those
pseudo-labels and trained to match the teacher's next-token distributions (KL divergence) plus the cross-entropy
of the pseudo-labels. The decoder is never compressed, so both models share its weights and the only way the
student can lower the loss is through its encoder states, i.e. through the cross-attention the decoder reads.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from litewhisper.constants import DEFAULT_MAX_NEW_TOKENS, MULTILINGUAL_VOCAB_SIZE
from litewhisper.errors import LiteWhisperError
from litewhisper.progress import progress_bar, quiet_transformers

__all__ = ["PseudoLabels", "pseudo_labels", "decoder_loss"]

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


def _prompts(teacher: nn.Module, features: torch.Tensor) -> list[list[int]]:
    """Decoder prompt per window: <|sot|> (English-only) or <|sot|><|lang|><|transcribe|> with the language
    the teacher detects."""
    gen = teacher.generation_config
    sot = gen.decoder_start_token_id
    if teacher.config.vocab_size < MULTILINGUAL_VOCAB_SIZE or not getattr(gen, "lang_to_id", None):
        return [[sot] for _ in range(len(features))]
    with torch.no_grad(), quiet_transformers():
        langs = teacher.detect_language(input_features=features).view(-1).tolist()  # language token ids
    return [[sot, lang, gen.task_to_id["transcribe"]] for lang in langs]


def _language_codes(teacher: nn.Module, prompts: list[list[int]]) -> list[str] | None:
    id_to_code = {i: tok[2:-2] for tok, i in (getattr(teacher.generation_config, "lang_to_id", None) or {}).items()}
    return [id_to_code[p[1]] for p in prompts] if len(prompts[0]) > 1 else None


@torch.no_grad()
def pseudo_labels(
    teacher: nn.Module, features: torch.Tensor, batch_size: int = 8, max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS
) -> PseudoLabels:
    """The teacher's greedy transcripts (with timestamps) of `features` (N, n_mels, 3000) as PseudoLabels."""
    if not hasattr(teacher, "generate") or not hasattr(teacher, "proj_out"):
        raise LiteWhisperError(
            "decoder-aware refinement needs the whole Whisper model (encoder and decoder), "
            f"got {type(teacher).__name__}"
        )
    teacher.eval()
    eot = teacher.generation_config.eos_token_id
    tokens, states = [], []
    bar = progress_bar(total=len(features), desc="pseudo-labels", unit="window", leave=False)
    for start in range(0, len(features), batch_size):
        chunk = features[start : start + batch_size]  # (B, n_mels, 3000)
        prompts = _prompts(teacher, chunk)
        codes = _language_codes(teacher, prompts)
        with quiet_transformers():
            out = teacher.generate(
                chunk,
                return_timestamps=True,
                max_new_tokens=max_new_tokens,
                do_sample=False,
                num_beams=1,
                language=codes,
                task="transcribe" if codes else None,
            )
        for prompt, row in zip(prompts, out.tolist(), strict=True):
            text = [t for t in row if t != eot]  # generate pads with end-of-text and drops the prompt
            tokens.append(torch.tensor(prompt + text + [eot], dtype=torch.long))
        states.append(teacher.get_encoder()(chunk).last_hidden_state)
        bar.update(len(chunk))
    bar.close()
    return PseudoLabels(tokens, torch.cat(states), eot)


def _logits(model: nn.Module, inputs: torch.Tensor, states: torch.Tensor) -> torch.Tensor:
    """(B, T, vocab) next-token logits of `model`'s decoder reading encoder `states`."""
    hidden = model.get_decoder()(input_ids=inputs, encoder_hidden_states=states).last_hidden_state
    return model.proj_out(hidden)


def decoder_loss(
    student: nn.Module,
    teacher: nn.Module,
    labels: PseudoLabels,
    features: torch.Tensor,
    idx: list[int],
    ce_weight: float,
) -> torch.Tensor:
    """KL(teacher ‖ student) of the next-token distributions over pseudo-label positions
    + ce_weight × cross-entropy of the pseudo-labels; gradients reach the student's encoder only."""
    inputs, targets, teacher_states = labels.batch(idx)
    mask = targets != IGNORE  # (B, T)
    student_states = student.get_encoder()(features[idx]).last_hidden_state  # (B, P, d_model)
    log_p_student = F.log_softmax(_logits(student, inputs, student_states).float(), dim=-1)[mask]  # (M, vocab)
    with torch.no_grad():
        log_p_teacher = F.log_softmax(_logits(teacher, inputs, teacher_states).float(), dim=-1)[mask]
    kl = F.kl_div(log_p_student, log_p_teacher, log_target=True, reduction="batchmean")
    if ce_weight == 0:
        return kl
    return kl + ce_weight * F.nll_loss(log_p_student, targets[mask])
