"""Corpus WER/CER arithmetic (checked against jiwer), bootstrap CI, and the text normalisers."""

import math

import jiwer
import pytest

from litewhisper.errors import LiteWhisperError
from litewhisper.evaluation.metrics import (
    ErrorCounts,
    bootstrap_ci,
    char_counts,
    corpus_score,
    paired_change_ci,
    score_utterance,
    word_counts,
)
from litewhisper.evaluation.normalize import describe, english_spelling_mapping, normalize, resolve_normalizer

REFS = ["the cat sat on the mat", "hello", "a b c d e f g h i j"]
HYPS = ["the cat sat on mat", "yellow there", "a b c d e f g h i j"]


def test_word_counts_match_jiwer():
    for ref, hyp in zip(REFS, HYPS, strict=True):
        c, out = word_counts(ref, hyp), jiwer.process_words(ref, hyp)
        assert (c.substitutions, c.deletions, c.insertions, c.hits) == (
            out.substitutions,
            out.deletions,
            out.insertions,
            out.hits,
        )
        assert c.rate == pytest.approx(jiwer.wer(ref, hyp))


def test_corpus_wer_is_total_errors_over_total_words_not_mean_of_utterances():
    scores = [score_utterance(str(i), r, h, domain="d") for i, (r, h) in enumerate(zip(REFS, HYPS, strict=True))]
    result = corpus_score(scores)
    # 1 deletion + (1 sub + 1 ins) + 0 = 3 errors over 6 + 1 + 10 = 17 reference words
    assert result.wer == pytest.approx(100 * 3 / 17)
    assert result.wer == pytest.approx(100 * jiwer.wer(REFS, HYPS))  # jiwer's corpus WER agrees
    mean_of_utts = 100 * sum(jiwer.wer(r, h) for r, h in zip(REFS, HYPS, strict=True)) / 3
    assert mean_of_utts == pytest.approx(100 * (1 / 6 + 2 + 0) / 3)
    assert abs(result.wer - mean_of_utts) > 50  # the short clip dominates the mean, not the corpus WER
    assert result.n_ref_words == 17 and result.n_utterances == 3


def test_domains_pooled_and_macro():
    scores = [
        score_utterance("a", "one two three four", "one two three four", domain="x"),
        score_utterance("b", "one two", "one", domain="y"),
    ]
    result = corpus_score(scores)
    assert result.domains["x"].rate == 0.0 and result.domains["y"].rate == pytest.approx(50.0)
    assert result.wer == pytest.approx(100 * 1 / 6)
    assert result.macro_wer == pytest.approx(25.0)
    assert result.domains["y"].n == 1 and result.domains["x"].n_ref == 4


def test_empty_reference_or_hypothesis():
    assert word_counts("", "a b") == ErrorCounts(insertions=2)
    assert word_counts("a b", "") == ErrorCounts(deletions=2)
    assert ErrorCounts(insertions=2).rate == math.inf and ErrorCounts().rate == 0.0


def test_cer_for_japanese_ignores_spaces_and_matches_jiwer():
    c = char_counts("今日は 良い天気", "今日は良い天木")
    assert c == ErrorCounts(substitutions=1, hits=6)
    assert c.rate == pytest.approx(jiwer.cer("今日は良い天気", "今日は良い天木"))
    ja = score_utterance("j", "今日は良い天気", "今日は良い天木", lang="ja", domain="d")
    en = score_utterance("e", "good day", "good day", lang="en", domain="d")
    result = corpus_score([ja, en])
    assert ja.unit == "char" and en.unit == "word"
    assert result.wer == 0.0 and result.cer == pytest.approx(100 / 7)  # CER kept out of the pooled WER
    assert result.languages["ja"].rate == pytest.approx(100 / 7) and result.n_utterances == 2


def test_bootstrap_ci_is_seeded_and_brackets_the_estimate():
    counts = [ErrorCounts(substitutions=i % 3, hits=10 - i % 3) for i in range(40)]
    lo, hi = bootstrap_ci(counts, 500, seed=1)
    assert (lo, hi) == bootstrap_ci(counts, 500, seed=1)
    point = 100 * sum(c.errors for c in counts) / sum(c.n_ref for c in counts)
    assert lo < point < hi and hi - lo < 10


def test_paired_change_ci_sees_a_small_consistent_change():
    """A 5 % relative change spread over every clip is invisible to two unpaired CIs (they overlap) but the
    paired interval excludes zero; identical systems give exactly 0 with a zero-width interval."""
    import random

    rng = random.Random(0)
    base = [ErrorCounts(substitutions=rng.randint(0, 20), hits=40) for _ in range(300)]  # clips of varied difficulty
    other = [ErrorCounts(substitutions=c.substitutions + (1 if i % 4 == 0 else 0), hits=40) for i, c in enumerate(base)]
    change, lo, hi = paired_change_ci(base, other, 1000, seed=0)
    assert change == pytest.approx(100 * (sum(c.errors for c in other) / sum(c.errors for c in base) - 1))
    assert 0 < lo < change < hi
    (_, hi_a), (lo_b, _) = bootstrap_ci(base, 1000), bootstrap_ci(other, 1000, seed=1)
    assert lo_b < hi_a  # unpaired intervals overlap
    assert paired_change_ci(base, base, 200) == (0.0, 0.0, 0.0)
    with pytest.raises(ValueError, match="same utterances"):
        paired_change_ci(base, other[:-1])


def test_english_normalizer_whisper_behaviour():
    assert len(english_spelling_mapping()) == 1739
    assert (
        normalize("Mr. Smith's colour, isn't it?", "english") == "mister smith is color is not it"
    )  # whisper expands 's
    assert normalize("I have twenty-five apples", "english") == "i have 25 apples"
    assert normalize("Hello, World! [noise] (laughs)", "english") == "hello world"


def test_basic_normalizer_and_resolution():
    assert normalize("¡Hola, Señor!  ¿Qué tal?", "basic") == "hola señor qué tal"
    assert resolve_normalizer("auto", "en") == "english" and resolve_normalizer("auto", "fr") == "basic"
    assert resolve_normalizer("basic", "en") == "basic"
    assert describe({"english"}) == "english" and describe({"basic", "english"}).startswith("basic+english")
    with pytest.raises(LiteWhisperError, match="unknown normalizer"):
        resolve_normalizer("fancy", "en")
