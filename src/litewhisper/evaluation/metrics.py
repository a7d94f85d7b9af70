"""Corpus error rates: (S + D + I) / N over all utterances, per domain and pooled, with a bootstrap CI.

Per-utterance alignment counts come from jiwer; the totals are summed here, so the corpus WER is never the
mean of per-utterance WERs (which over-weights short clips). Japanese, Chinese and Korean are scored at the
character level (CER) because they are written without spaces between words.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np

__all__ = [
    "CER_LANGUAGES",
    "ErrorCounts",
    "total",
    "word_counts",
    "char_counts",
    "uses_cer",
    "UtteranceScore",
    "score_utterance",
    "bootstrap_ci",
    "relative_change",
    "paired_change_ci",
    "GroupScore",
    "CorpusScore",
    "corpus_score",
]

CER_LANGUAGES = frozenset({"ja", "zh", "ko", "yue", "th"})  # written without word spaces


@dataclass(frozen=True)
class ErrorCounts:
    """Alignment counts of one or more utterances; `n_ref` = hits + substitutions + deletions."""

    substitutions: int = 0
    deletions: int = 0
    insertions: int = 0
    hits: int = 0

    @property
    def errors(self) -> int:
        return self.substitutions + self.deletions + self.insertions

    @property
    def n_ref(self) -> int:
        return self.hits + self.substitutions + self.deletions

    @property
    def rate(self) -> float:
        """Error rate as a fraction; inf when there are errors but no reference units, 0 for nothing at all."""
        if self.n_ref == 0:
            return 0.0 if self.errors == 0 else math.inf
        return self.errors / self.n_ref

    def __add__(self, other: ErrorCounts) -> ErrorCounts:
        return ErrorCounts(
            self.substitutions + other.substitutions,
            self.deletions + other.deletions,
            self.insertions + other.insertions,
            self.hits + other.hits,
        )

    def to_dict(self) -> dict[str, int]:
        return {"s": self.substitutions, "d": self.deletions, "i": self.insertions, "h": self.hits}

    @classmethod
    def from_dict(cls, d: dict[str, int]) -> ErrorCounts:
        return cls(d["s"], d["d"], d["i"], d["h"])


def total(counts: Iterable[ErrorCounts]) -> ErrorCounts:
    """Sum of counts (the corpus totals)."""
    out = ErrorCounts()
    for c in counts:
        out = out + c
    return out


def word_counts(reference: str, hypothesis: str) -> ErrorCounts:
    """Word alignment counts of one (already normalised) reference/hypothesis pair."""
    import jiwer

    ref, hyp = reference.split(), hypothesis.split()
    if not ref or not hyp:  # jiwer needs something to align; the answer is trivial anyway
        return ErrorCounts(deletions=len(ref), insertions=len(hyp))
    out = jiwer.process_words(" ".join(ref), " ".join(hyp))
    return ErrorCounts(out.substitutions, out.deletions, out.insertions, out.hits)


def char_counts(reference: str, hypothesis: str) -> ErrorCounts:
    """Character alignment counts, whitespace ignored (for languages written without word spaces)."""
    import jiwer

    ref, hyp = "".join(reference.split()), "".join(hypothesis.split())
    if not ref or not hyp:
        return ErrorCounts(deletions=len(ref), insertions=len(hyp))
    out = jiwer.process_characters(ref, hyp)
    return ErrorCounts(out.substitutions, out.deletions, out.insertions, out.hits)


def uses_cer(lang: str | None) -> bool:
    """Whether clips in language `lang` are scored by character error rate."""
    return lang in CER_LANGUAGES


@dataclass(frozen=True)
class UtteranceScore:
    """Scored clip: `unit` is "word" (WER) or "char" (CER)."""

    id: str
    counts: ErrorCounts
    domain: str = "unknown"
    lang: str | None = None
    unit: str = "word"


def score_utterance(
    id: str, reference: str, hypothesis: str, domain: str | None = None, lang: str | None = None
) -> UtteranceScore:
    """Score one normalised pair, choosing CER for ja/zh/ko and WER otherwise."""
    unit = "char" if uses_cer(lang) else "word"
    counts = (char_counts if unit == "char" else word_counts)(reference, hypothesis)
    return UtteranceScore(id=id, counts=counts, domain=domain or "unknown", lang=lang, unit=unit)


def bootstrap_ci(
    counts: Sequence[ErrorCounts], n_resamples: int = 1000, seed: int = 0, level: float = 0.95
) -> tuple[float, float]:
    """Percentile bootstrap CI of the corpus error rate (in %), resampling utterances with replacement."""
    if not counts or n_resamples <= 0:
        return (math.nan, math.nan)
    errors = np.array([c.errors for c in counts], dtype=np.float64)  # (n,)
    refs = np.array([c.n_ref for c in counts], dtype=np.float64)  # (n,)
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(counts), size=(n_resamples, len(counts)))  # (B, n)
    num, den = errors[idx].sum(axis=1), refs[idx].sum(axis=1)  # (B,)
    rates = 100.0 * num / np.maximum(den, 1.0)
    lo, hi = np.percentile(rates, [100 * (1 - level) / 2, 100 * (1 + level) / 2])
    return (float(lo), float(hi))


def relative_change(base: Sequence[ErrorCounts], other: Sequence[ErrorCounts]) -> float:
    """Relative change (%) of `other`'s corpus error rate against `base`'s on the same utterances (same order)."""
    if len(base) != len(other) or not base:
        raise ValueError(f"paired scores need the same utterances, got {len(base)} and {len(other)}")
    return 100.0 * (sum(c.errors for c in other) / max(sum(c.errors for c in base), 1) - 1.0)


def paired_change_ci(
    base: Sequence[ErrorCounts],
    other: Sequence[ErrorCounts],
    n_resamples: int = 1000,
    seed: int = 0,
    level: float = 0.95,
) -> tuple[float, float, float]:
    """(relative change %, CI low, CI high) of `other`'s corpus error rate against `base`'s on the same
    utterances (same order), with a paired percentile bootstrap: utterances are resampled jointly, so what makes
    a clip hard for both models cancels and a few-percent change becomes visible."""
    change = relative_change(base, other)
    err_base = np.array([c.errors for c in base], dtype=np.float64)  # (n,)
    err_other = np.array([c.errors for c in other], dtype=np.float64)  # (n,)
    idx = np.random.default_rng(seed).integers(0, len(base), size=(max(n_resamples, 1), len(base)))  # (B, n)
    changes = 100.0 * (err_other[idx].sum(axis=1) / np.maximum(err_base[idx].sum(axis=1), 1.0) - 1.0)  # (B,)
    lo, hi = np.percentile(changes, [100 * (1 - level) / 2, 100 * (1 + level) / 2])
    return float(change), float(lo), float(hi)


@dataclass(frozen=True)
class GroupScore:
    """Corpus error rate (in %) of a group of utterances."""

    rate: float
    n: int
    n_ref: int
    counts: ErrorCounts


@dataclass(frozen=True)
class CorpusScore:
    """Corpus scores of one model: pooled and per-domain WER (word-scored clips), per-language rates."""

    wer: float  # pooled corpus WER in %, word-scored clips only
    n_utterances: int  # all scored clips (word and char)
    n_ref_words: int
    counts: ErrorCounts
    domains: dict[str, GroupScore] = field(default_factory=dict)
    macro_wer: float = math.nan  # unweighted mean of the domain WERs
    languages: dict[str, GroupScore] = field(default_factory=dict)  # CER for ja/zh/ko, WER otherwise
    cer: float | None = None  # pooled CER in % over char-scored clips, if any
    ci95: tuple[float, float] | None = None


def _group(scores: Sequence[UtteranceScore]) -> GroupScore:
    counts = total(s.counts for s in scores)
    return GroupScore(rate=100.0 * counts.rate, n=len(scores), n_ref=counts.n_ref, counts=counts)


def corpus_score(scores: Sequence[UtteranceScore], bootstrap: int = 0, seed: int = 0) -> CorpusScore:
    """Aggregate utterance scores into corpus rates; `bootstrap` > 0 adds a 95 % CI of the pooled WER."""
    words = [s for s in scores if s.unit == "word"]
    chars = [s for s in scores if s.unit == "char"]
    pooled = _group(words)
    domains = {d: _group([s for s in words if s.domain == d]) for d in sorted({s.domain for s in words})}
    langs = {
        lang: _group([s for s in scores if (s.lang or "unknown") == lang])
        for lang in sorted({s.lang or "unknown" for s in scores})
    }
    macro = float(np.mean([g.rate for g in domains.values()])) if domains else math.nan
    ci = bootstrap_ci([s.counts for s in words], bootstrap, seed) if bootstrap > 0 and words else None
    return CorpusScore(
        wer=pooled.rate if words else math.nan,
        n_utterances=len(scores),
        n_ref_words=pooled.n_ref,
        counts=pooled.counts,
        domains=domains,
        macro_wer=macro,
        languages=langs,
        cer=_group(chars).rate if chars else None,
        ci95=ci,
    )
