"""A cheap stand-in for WER when choosing among compressed variants (issue 30, item 1).

Decoding all of `dev` costs tens of minutes per model. The proxy costs seconds: the original model transcribes a
few held-out windows once with the one decoder (`transcribe`'s defaults), then every variant is run
teacher-forced on those transcripts and its next-token distributions are compared with the original's:

    proxy = mean over text tokens (and end-of-text) of KL(p_original || p_variant)      [nats per token]

Both models see the same log-mel windows (30 s, padded) and the same decoder prompt (start of transcript, language
and task for a multilingual model, no timestamps). A variant that decodes like the original scores ~0.
`benchmarks/proxy.py` reports how well it ranks variants against their measured `dev` WER.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from functools import partial

import numpy as np
import torch

from litewhisper.constants import SAMPLE_RATE
from litewhisper.errors import LiteWhisperError
from litewhisper.models.processor import english_prompt_ids

__all__ = ["ProxyResult", "Reference", "teacher_reference", "proxy_kl", "rank_correlation"]


@dataclass(frozen=True)
class Reference:
    """The original's side of the proxy: log-mel windows, decoder inputs and its next-token log-probabilities."""

    features: list[torch.Tensor]  # each (1, n_mels, 3000)
    token_ids: list[torch.Tensor]  # each (1, t): prompt + transcript + end-of-text
    prompt_len: int  # tokens before the transcript
    log_probs: list[torch.Tensor]  # each (t - prompt_len, vocab): the original's, at the scored positions
    texts: list[str]


@dataclass(frozen=True)
class ProxyResult:
    kl: float  # mean KL(original || variant) per scored token, nats
    tokens: int  # scored tokens
    windows: int


def _decoder_inputs(bundle, texts: Sequence[str]) -> tuple[list[torch.Tensor], int]:
    """Prompt (start of transcript [, en, transcribe], no timestamps) + text tokens + end-of-text, per text."""
    tokenizer = bundle.processor.tokenizer
    prompt = english_prompt_ids(tokenizer, bundle.is_multilingual)
    eot = tokenizer.convert_tokens_to_ids("<|endoftext|>")
    encode = partial(tokenizer.encode, add_special_tokens=False)
    return [torch.tensor([prompt + encode(" " + t.strip()) + [eot]]) for t in texts], len(prompt)


def _log_probs(bundle, features: torch.Tensor, ids: torch.Tensor, prompt_len: int) -> torch.Tensor:
    """(t - prompt_len, vocab) log-probabilities of the tokens after the prompt, teacher-forced."""
    with torch.inference_mode():
        logits = bundle.model(input_features=features.to(bundle.dtype), decoder_input_ids=ids[:, :-1]).logits
    return torch.log_softmax(logits[0, prompt_len - 1 :].float(), dim=-1)  # predicts ids[prompt_len:]


def teacher_reference(bundle, audio: Sequence[np.ndarray], texts: Sequence[str] | None = None) -> Reference:
    """The original model's reference on `audio` (16 kHz arrays up to 30 s each); `texts`: its transcripts if
    already known, else it transcribes them with the one decoder's defaults (English)."""
    if not audio:
        raise LiteWhisperError("the proxy needs at least one window of audio")
    if any(a.size > 30 * SAMPLE_RATE for a in audio):
        raise LiteWhisperError("the proxy scores single windows: give clips of at most 30 s")
    if texts is None:
        from litewhisper.decode.transcribe import transcribe

        texts = [t.text for t in transcribe(bundle, list(audio), language="en")]
    if len(texts) != len(audio):
        raise LiteWhisperError(f"the proxy got {len(texts)} transcripts for {len(audio)} windows: give one per window")
    extractor = bundle.processor.feature_extractor
    features = [extractor([a], sampling_rate=SAMPLE_RATE, return_tensors="pt").input_features for a in audio]
    ids, prompt_len = _decoder_inputs(bundle, texts)
    log_probs = [_log_probs(bundle, f, i, prompt_len) for f, i in zip(features, ids, strict=True)]
    return Reference(features, ids, prompt_len, log_probs, list(texts))


def proxy_kl(reference: Reference, variant) -> ProxyResult:
    """Mean KL(original || variant) per token over the reference's windows (variant: a WhisperBundle)."""
    total, tokens = 0.0, 0
    for features, ids, ref in zip(reference.features, reference.token_ids, reference.log_probs, strict=True):
        got = _log_probs(variant, features, ids, reference.prompt_len)  # (t', vocab)
        total += float((ref.exp() * (ref - got)).sum())
        tokens += ref.shape[0]
    return ProxyResult(kl=total / max(tokens, 1), tokens=tokens, windows=len(reference.features))


def rank_correlation(xs: Sequence[float], ys: Sequence[float]) -> float:
    """Spearman's rank correlation (average ranks for ties)."""
    if len(xs) != len(ys) or len(xs) < 3:
        raise LiteWhisperError("rank correlation needs two equally long lists of at least 3 values")

    def ranks(v: Sequence[float]) -> np.ndarray:
        order = np.argsort(v, kind="stable")
        out = np.empty(len(v))
        values = np.asarray(v)[order]
        i = 0
        while i < len(v):
            j = i
            while j + 1 < len(v) and values[j + 1] == values[i]:
                j += 1
            out[order[i : j + 1]] = (i + j) / 2
            i = j + 1
        return out

    rx, ry = ranks(xs), ranks(ys)
    rx, ry = rx - rx.mean(), ry - ry.mean()
    denom = math.sqrt(float((rx * rx).sum() * (ry * ry).sum()))
    return float((rx * ry).sum() / denom) if denom else 0.0
