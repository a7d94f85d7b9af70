"""The teacher-forced proxy (issue 30, item 1): KL of a variant's next-token distributions from the original's on
the original's transcripts; zero for the original itself, growing with the damage done to the encoder."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from helpers import tiny_whisper, with_tokenizer
from litewhisper.errors import LiteWhisperError
from litewhisper.evaluation.proxy import proxy_kl, rank_correlation, teacher_reference
from litewhisper.models.load import WhisperBundle

TEXTS = ["the cat sat on the mat", "one two three four"]


@pytest.fixture(scope="module")
def bundle() -> WhisperBundle:
    model, processor = with_tokenizer(tiny_whisper(seed=3))
    return WhisperBundle(model=model, processor=processor, name="tiny-random", path=None)


def _audio() -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    return [rng.standard_normal(16_000 * s).astype(np.float32) * 0.1 for s in (2, 3)]


def _damaged(bundle: WhisperBundle, scale: float) -> WhisperBundle:
    model = copy.deepcopy(bundle.model)
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in model.get_encoder().layers.parameters():
            p.add_(torch.randn(p.shape, generator=gen) * scale)
    return WhisperBundle(model=model, processor=bundle.processor, name=f"damaged-{scale}", path=None)


def test_the_original_scores_zero_and_damage_raises_the_proxy(bundle):
    reference = teacher_reference(bundle, _audio(), TEXTS)
    assert reference.prompt_len == 2  # start of transcript, no timestamps (English-only vocabulary)
    assert [ids.shape[1] for ids in reference.token_ids] == [reference.prompt_len + len(lp) for lp in
                                                            reference.log_probs]  # fmt: skip
    same = proxy_kl(reference, bundle)
    assert same.kl == pytest.approx(0.0, abs=1e-6) and same.windows == 2 and same.tokens > 10
    small, large = (proxy_kl(reference, _damaged(bundle, s)).kl for s in (0.02, 0.2))
    assert 0 < small < large


def test_rank_correlation():
    assert rank_correlation([1, 2, 3, 4], [10, 20, 30, 40]) == pytest.approx(1.0)
    assert rank_correlation([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)
    assert rank_correlation([0, 0, 1, 2], [0, 0, 5, 9]) == pytest.approx(1.0)  # ties share their rank
    with pytest.raises(LiteWhisperError, match="at least 3"):
        rank_correlation([1, 2], [1, 2])


def test_bad_reference_audio_is_refused(bundle):
    with pytest.raises(LiteWhisperError, match="at least one window"):
        teacher_reference(bundle, [], [])
    with pytest.raises(LiteWhisperError, match="at most 30 s"):
        teacher_reference(bundle, [np.zeros(31 * 16_000, dtype=np.float32)], ["x"])
    with pytest.raises(LiteWhisperError, match="2 transcripts for 1 windows"):
        teacher_reference(bundle, _audio()[:1], TEXTS)
