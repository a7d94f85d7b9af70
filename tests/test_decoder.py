"""The one decoder: options, loops, splits, CLI flags; real tiny.en: transcribe == evaluate, WER vs jiwer,
silence -> no text, word timestamps, VAD."""

from __future__ import annotations

import argparse
import json

import numpy as np
import pytest

from helpers import require_shared_data, shared_manifest
from litewhisper.audio.datasets import discover_audio
from litewhisper.cli import main
from litewhisper.cli.decoding import add_decoding_args, decoding_options
from litewhisper.decode.options import DecodeOptions
from litewhisper.decode.results import compression_ratio
from litewhisper.errors import LiteWhisperError
from litewhisper.evaluation.evaluate import Hypothesis, loop_stats, read_hypotheses


def test_options_validate_and_presets():
    assert DecodeOptions().fallback and DecodeOptions().max_new_tokens == 224
    board = DecodeOptions.preset("leaderboard")
    assert not board.fallback and not board.timestamps and board.no_speech_threshold is None
    assert DecodeOptions(temperature=0.2).temperature == (0.2,)
    for bad in (
        dict(temperature=()),
        dict(temperature=(-1.0,)),
        dict(beam_size=0),
        dict(max_new_tokens=445),
        dict(no_speech_threshold=1.5),
        dict(task="summarize"),
        dict(language="xx"),
    ):
        with pytest.raises(LiteWhisperError):
            DecodeOptions(**bad)
    with pytest.raises(LiteWhisperError, match="leaderboard"):
        DecodeOptions.preset("fast")
    assert json.loads(json.dumps(DecodeOptions().to_dict()))["temperature"][-1] == 1.0


def test_cli_flags_build_options_and_none_switches_a_threshold_off():
    p = argparse.ArgumentParser()
    add_decoding_args(p)
    assert decoding_options(p.parse_args([])) == DecodeOptions()
    opts = decoding_options(
        p.parse_args(
            [
                "--beam-size",
                "3",
                "--temperature",
                "0,0.5",
                "--logprob-threshold",
                "none",
                "--word-timestamps",
                "--initial-prompt",
                "Hi.",
            ]
        ),
        language="en",
    )
    assert (opts.beam_size, opts.temperature, opts.logprob_threshold, opts.word_timestamps, opts.language) == (
        3,
        (0.0, 0.5),
        None,
        True,
        "en",
    )
    assert decoding_options(
        p.parse_args(["--decoding", "leaderboard", "--max-new-tokens", "9"])
    ) == DecodeOptions.preset("leaderboard", max_new_tokens=9)


def test_loop_stats_count_high_compression_and_their_error_share():
    loop = "the cat sat " * 40
    hyps = [
        Hypothesis("m", "a", "hello world", "hello world"),
        Hypothesis("m", "b", loop, "the cat sat"),
        Hypothesis("m", "c", "x", "red green blue", hit_token_limit=True),
    ]
    assert compression_ratio(loop) > 2.4 > compression_ratio("hello world")
    stats = loop_stats(hyps, "english")
    assert stats.high_compression_ids == ("b",) and stats.hit_token_limit_ids == ("c",) and stats.ids == ("c", "b")
    assert stats.total_errors == stats.loop_errors == 117 + 3  # 39 × 3 insertions; 1 substitution + 2 deletions
    assert stats.error_share == 1.0


def test_unknown_split_lists_the_splits_and_default_is_every_row(tmp_path):
    (tmp_path / "a.wav").write_bytes(b"")
    rows = [{"path": "a.wav", "split": "calib"}, {"path": "a.wav", "split": "test"}]
    (tmp_path / "manifest.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    with pytest.raises(LiteWhisperError, match="split 'dev' not in .*calib, test"):
        discover_audio(tmp_path, split="dev")
    assert len(discover_audio(tmp_path)) == 2


# ----------------------------------------------------------------------------------------------- real tiny.en


def _real_manifest(tmp_path, n: int = 3):
    data = require_shared_data()
    by_domain: dict[str, dict] = {}
    for r in shared_manifest("dev", "en"):
        if r["duration_s"] < 6 and r["domain"] not in by_domain:
            by_domain[r["domain"]] = r
    rows = list(by_domain.values())[:n]
    path = tmp_path / "m.jsonl"
    path.write_text("".join(json.dumps({**r, "path": str(data / r["path"])}) + "\n" for r in rows))
    return path, rows


@pytest.mark.real
def test_transcribe_and_evaluate_agree_and_wer_matches_jiwer(real_tiny_en, tmp_path, capsys):
    """Acceptance (a) and (c): the same hypotheses from both commands; evaluate's pooled WER = jiwer's."""
    import jiwer

    from litewhisper.evaluation.normalize import normalize

    manifest, rows = _real_manifest(tmp_path)
    assert main(["transcribe", "tiny.en", str(manifest), "--format", "json", "--quiet"]) == 0
    printed = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert (
        main(
            [
                "evaluate",
                "tiny.en",
                "--data",
                str(manifest),
                "--quiet",
                "--json",
                str(tmp_path / "r.json"),
                "--hypotheses",
                str(tmp_path / "h.jsonl"),
            ]
        )
        == 0
    )
    hyps = {h.id: h.hypothesis for h in read_hypotheses(tmp_path / "h.jsonl")}
    assert [p["text"] for p in printed] == [hyps[r.get("utt_id") or r["path"]] for r in rows]
    result = json.loads((tmp_path / "r.json").read_text())["results"][0]
    assert result["settings"]["decoding"] == DecodeOptions().to_dict()
    refs = [normalize(r["text"], "english") for r in rows]
    independent = 100 * jiwer.wer(refs, [normalize(p["text"], "english") for p in printed])
    assert result["wer"] == pytest.approx(independent, abs=0.1)
    assert result["n_loops"] == 0 and result["wer"] < 30


@pytest.mark.real
def test_silence_gives_an_empty_transcript(real_tiny_en, tmp_path, capsys):
    """Issue 13 item 2: 10 s of digital silence is not "you"."""
    from litewhisper.decode.transcribe import transcribe

    (r,) = transcribe(real_tiny_en, [np.zeros(160_000, dtype=np.float32)])
    assert r.text == "" and r.segments == [] and r.duration_s == 10.0
    (board,) = transcribe(real_tiny_en, [np.zeros(160_000, dtype=np.float32)], DecodeOptions.preset("leaderboard"))
    assert board.text  # without the no-speech rule Whisper hallucinates on silence


@pytest.mark.real
def test_word_timestamps_and_vad_map_times_back(real_tiny_en, tmp_path):
    from litewhisper.audio.load import load_audio
    from litewhisper.decode.formats import render
    from litewhisper.decode.transcribe import transcribe

    jfk = load_audio(require_shared_data() / "misc" / "jfk.flac")  # 11 s
    padded = np.concatenate([np.zeros(4 * 16_000, dtype=np.float32), jfk])
    plain, vad = transcribe(real_tiny_en, [jfk, padded], word_timestamps=True, vad=True)
    words = [w for s in plain.segments for w in s.words]
    assert [w.word for w in words][:4] == ["And", "so", "my", "fellow"] or "Americans" in plain.text
    assert all(0 <= a.start <= a.end <= plain.duration_s for a in words)
    assert all(a.start <= b.start for a, b in zip(words, words[1:], strict=False))
    assert vad.text == plain.text
    shifted = [w for s in vad.segments for w in s.words]
    assert shifted[0].start >= 3.0 and vad.segments[0].start >= 3.0  # times of the original (padded) audio
    srt = render(plain, "srt")
    assert srt.count(" --> ") == len(words)  # one cue per word
    assert json.loads(render(plain, "json"))["segments"][0]["words"][0]["word"] == words[0].word


def test_vad_without_the_extra_names_it(monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_faster_whisper(name, *args, **kwargs):
        if name.startswith("faster_whisper"):
            raise ModuleNotFoundError("No module named 'faster_whisper'", name="faster_whisper")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_faster_whisper)
    from litewhisper.decode.vad import SpeechFilter

    with pytest.raises(LiteWhisperError, match=r"litewhisper\[vad\]"):
        SpeechFilter()
