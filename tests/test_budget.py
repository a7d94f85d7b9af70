"""The per-window token budget (issue 29, item 2): min(max_new_tokens, ceil(rate * seconds) + floor) new tokens per
window, from the seconds of the clip the window holds, in the greedy pass and in every fallback re-decode, the same
in both runtimes; a window at its budget counts as a token-limit hit. A tiny random model never ends a window, so
every window decodes up to its budget."""

from __future__ import annotations

import argparse
import math

import numpy as np
import pytest
from transformers import WhisperForConditionalGeneration

from helpers import tiny_whisper, with_tokenizer
from litewhisper.cli.decoding import add_decoding_args, decoding_options
from litewhisper.constants import BUDGET_FLOOR_TOKENS, TOKENS_PER_SECOND, window_seconds
from litewhisper.decode.options import DecodeOptions
from litewhisper.decode.transcribe import transcribe
from litewhisper.errors import LiteWhisperError
from litewhisper.export.api import export_model
from litewhisper.models.deployed import _Decoder
from litewhisper.models.load import WhisperBundle, load_model

SECONDS = (2.0, 3.5, 6.0)
RATE = 2.0
GREEDY = DecodeOptions.preset("leaderboard", max_new_tokens=60, tokens_per_second=RATE)  # greedy, no timestamps
# every window fails the log-probability test (< 0): decoded greedily, then at 0.5 and 1.0
FALLBACK = DecodeOptions(
    temperature=(0.0, 0.5, 1.0),
    logprob_threshold=0.0,
    no_speech_threshold=None,
    timestamps=False,
    max_new_tokens=60,
    tokens_per_second=RATE,
)


def _budget(seconds: float) -> int:
    return min(60, math.ceil(RATE * seconds) + BUDGET_FLOOR_TOKENS)


def _clips(seconds=SECONDS) -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    return [rng.standard_normal(int(16000 * s)).astype(np.float32) * 0.1 for s in seconds]


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    model, processor = with_tokenizer(tiny_whisper(seed=11))
    model.generation_config.suppress_tokens = list(range(50257, 50363))  # never end-of-text, never special
    bundle = WhisperBundle(model=model, processor=processor, name="tiny-random", path=None)
    export = export_model(bundle, tmp_path_factory.mktemp("export") / "fp32", quantize="none", onnx_decoder=False)
    return bundle, load_model(export.path, threads=1)


def test_budget_formula_and_window_seconds():
    opts = DecodeOptions()
    assert opts.tokens_per_second == TOKENS_PER_SECOND
    assert opts.window_budget(2.0) == math.ceil(TOKENS_PER_SECOND * 2) + BUDGET_FLOOR_TOKENS
    assert opts.window_budget(0.0) == BUDGET_FLOOR_TOKENS
    assert opts.window_budget(30.0) == opts.max_new_tokens == 224  # a full window: max_new_tokens binds
    assert DecodeOptions(tokens_per_second=None).window_budget(1.0) == 224
    assert DecodeOptions(max_new_tokens=20).window_budget(5.0) == 20
    assert DecodeOptions(tokens_per_second=10).window_budget(10.0) == 100 + BUDGET_FLOOR_TOKENS  # no float ceil slip
    assert (window_seconds(40.0, 0), window_seconds(40.0, 3000), window_seconds(5.0, 0)) == (30.0, 10.0, 5.0)
    assert window_seconds(5.0, 600) == 0.0
    assert "budget 9.7 tokens/s" in opts.describe()


@pytest.mark.parametrize("bad", [0, -1.0, float("nan"), float("inf"), True, "9"])
def test_tokens_per_second_is_validated_naming_the_flag(bad):
    with pytest.raises(LiteWhisperError, match="--tokens-per-second"):
        DecodeOptions(tokens_per_second=bad)


def test_cli_flag():
    p = argparse.ArgumentParser()
    add_decoding_args(p)
    assert decoding_options(p.parse_args([])).tokens_per_second == TOKENS_PER_SECOND
    assert decoding_options(p.parse_args(["--tokens-per-second", "none"])).tokens_per_second is None
    assert decoding_options(p.parse_args(["--tokens-per-second", "5"])).tokens_per_second == 5.0
    with pytest.raises(LiteWhisperError, match="--tokens-per-second"):
        decoding_options(p.parse_args(["--tokens-per-second", "-2"]))


def test_short_clips_stop_at_their_budget_in_both_runtimes(models):
    want = [_budget(s) for s in SECONDS]  # 20, 23, 28: each clip of the batch its own
    for model in models:
        out = transcribe(model, _clips(), GREEDY)
        assert [t.n_tokens for t in out] == want, model
        assert all(t.hit_token_limit for t in out)
        off = transcribe(model, _clips(), GREEDY.replace(tokens_per_second=None))
        assert [t.n_tokens for t in off] == [60] * 3 and all(t.hit_token_limit for t in off)


@pytest.fixture
def window_sizes(monkeypatch) -> list[list[int]]:
    """[PyTorch's, the deployed runtime's] tokens of every decode of a window (fallback re-decodes included)."""
    sizes: list[list[int]] = [[], []]
    judge, decode = WhisperForConditionalGeneration._need_fallback, _Decoder.generate

    def judged(self, seq, *args, **kwargs):  # transformers judges every decode (end-of-text stripped at a limit)
        sizes[0].append(len(seq) - int(int(seq[-1]) == self.generation_config.eos_token_id))
        return judge(self, seq, *args, **kwargs)

    def decoded(self, *args, **kwargs):  # every CTranslate2 decode, across decoder reloads (reseeding)
        out = decode(self, *args, **kwargs)
        sizes[1].extend(len(r.sequences_ids[0]) for r in out)
        return out

    monkeypatch.setattr(WhisperForConditionalGeneration, "_need_fallback", judged)
    monkeypatch.setattr(_Decoder, "generate", decoded)
    return sizes


def test_a_long_clips_last_window_gets_the_budget_of_what_it_holds(models, window_sizes):
    # the first window ends at the timestamp 29.98 s (both runtimes), so the second holds 40 - 29.98 s
    want = [_budget(30.0), _budget(window_seconds(40.0, 2998))]  # 60, 37
    for i, model in enumerate(models):
        (out,) = transcribe(model, _clips((40.0,)), GREEDY.replace(timestamps=True))
        assert out.hit_token_limit and window_sizes[i] == want, model


def test_every_fallback_re_decode_is_bounded_in_both_runtimes(models, window_sizes):
    want = [_budget(s) for s in SECONDS]
    for i, model in enumerate(models):  # clip by clip: an export's batch decodes the clips' greedy passes together
        # at the largest budget and keeps a clip's decode only below its own (tests/test_deployed_batch.py)
        out = transcribe(model, _clips(), FALLBACK.replace(batch_size=1))
        assert sorted(window_sizes[i]) == sorted(want * 3), model  # 3 clips x 3 temperatures
        assert all(t.hit_token_limit for t in out)
        assert all(t.n_tokens <= b for t, b in zip(out, want, strict=True))  # a sampled timestamp is no text


def test_long_clips_batched_with_fallback_get_the_same_budgets_in_both_runtimes(models, window_sizes):
    """Clips of different lengths in one PyTorch batch (rows leave it as they finish, fallback re-decodes a subset
    of them): every window's every decode holds the tokens the deployed runtime's does."""
    clips = [np.random.default_rng(i).standard_normal(int(16000 * s)).astype(np.float32) * 0.1 for i, s in
             enumerate((45.0, 31.0, 62.0, 5.0))]  # fmt: skip
    options = FALLBACK.replace(temperature=(0.0, 1.0), timestamps=True)
    for model in models:
        assert all(t.hit_token_limit for t in transcribe(model, clips, options))
    assert sorted(window_sizes[0]) == sorted(window_sizes[1])
    assert _budget(5.0) in window_sizes[0] and _budget(45.0 - 29.98) in window_sizes[0]  # 26, 47
