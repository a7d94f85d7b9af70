"""evaluate: JSONL written per clip, resume after interruption, token-limit count, JSON schema, real tiny.en."""

import json

import pytest

import litewhisper.evaluation.evaluate as ev
from helpers import require_shared_data, shared_manifest, tiny_whisper
from litewhisper.audio.datasets import read_manifest
from litewhisper.cli import main
from litewhisper.decode.options import DecodeOptions
from litewhisper.errors import LiteWhisperError
from litewhisper.evaluation.evaluate import EvalConfig, Hypothesis, HypothesisLog, evaluate, read_hypotheses
from litewhisper.models.cost import encoder_params


@pytest.fixture(scope="module")
def random_bundle():
    """Tiny random Whisper with the real tiny.en tokenizer: never emits end-of-text within a few tokens."""
    from litewhisper.models.builtin import builtin_source
    from litewhisper.models.load import WhisperBundle
    from litewhisper.models.processor import build_generation_config, build_processor

    model = tiny_whisper()
    _, meta = builtin_source("tiny.en")
    processor = build_processor(meta, vocab_size=model.config.vocab_size)
    model.generation_config = build_generation_config(processor.tokenizer, vocab_size=model.config.vocab_size)
    return WhisperBundle(model=model, processor=processor, name="random", path=None)


@pytest.fixture(scope="module")
def short_clips(tmp_path_factory):
    """A manifest of 6 short real English dev clips from two domains (paths point into ../shared/data)."""
    data = require_shared_data()
    rows = [r for r in shared_manifest("dev", "en") if r["duration_s"] < 4][:6]
    path = tmp_path_factory.mktemp("m") / "manifest.jsonl"
    path.write_text("".join(json.dumps({**r, "path": str(data / r["path"])}) + "\n" for r in rows))
    return path


def test_random_model_hits_token_limit_and_json_schema(random_bundle, short_clips, tmp_path):
    config = EvalConfig(decoding=DecodeOptions(max_new_tokens=4, batch_size=4, temperature=0.0))
    report = evaluate([random_bundle, random_bundle], short_clips, config, hypotheses=tmp_path / "h.jsonl")
    out = report.to_dict()
    assert set(out) == {"normalizer", "data", "results"} and out["normalizer"] == "english"
    assert len(out["results"]) == 2
    r = out["results"][0]
    for key in (
        "model",
        "wer",
        "n_utterances",
        "n_ref_words",
        "encoder_params",
        "domains",
        "macro_wer",
        "n_hit_token_limit",
    ):
        assert key in r
    assert r["n_utterances"] == 6 and r["n_hit_token_limit"] == 6  # random model: no end-of-text in 4 tokens
    assert r["n_loops"] == 6 and r["loop_error_share"] == 1.0  # every clip looped: all errors are loop errors
    assert r["settings"]["decoding"] == config.decoding.to_dict() and r["settings"]["decoding"]["max_new_tokens"] == 4
    assert r["encoder_params"] == encoder_params(random_bundle.model) > 0
    assert sum(d["n"] for d in r["domains"].values()) == 6
    assert r["wer"] >= 50  # garbage hypotheses
    records = read_hypotheses(tmp_path / "h.jsonl")
    assert len(records) == 6 and all(h.n_tokens <= 4 and h.hit_token_limit for h in records)
    ev.write_json(report, tmp_path / "r.json")
    assert json.loads((tmp_path / "r.json").read_text()) == out


def test_paired_change_against_the_first_model(random_bundle, short_clips, tmp_path):
    """With --bootstrap, every model after the first carries its paired relative WER change and interval."""
    config = EvalConfig(bootstrap=50, decoding=DecodeOptions(max_new_tokens=4, batch_size=4, temperature=0.0))
    report = evaluate([random_bundle, random_bundle], short_clips, config, hypotheses=tmp_path / "h.jsonl")
    first, second = report.to_dict()["results"]
    assert "relative_change" not in first
    assert second["relative_change"] == {"vs": "random", "percent": 0.0, "ci95": [0.0, 0.0], "paired_bootstrap": True}
    assert "vs-first%" in ev.format_table(report) and "+0.0 [+0.0,+0.0]" in ev.format_table(report)
    hyps = read_hypotheses(tmp_path / "h.jsonl")
    worse = [Hypothesis(**{**h.__dict__, "hypothesis": h.hypothesis + " extra words"}) for h in hyps]
    change, lo, hi = ev.paired_change(hyps, worse, bootstrap=100)
    assert change > 0 and lo <= change <= hi
    with pytest.raises(LiteWhisperError, match="same clips"):
        ev.paired_change(hyps, worse[::-1])


def test_vs_first_is_the_plain_change_without_bootstrap_and_has_an_interval_with_it(
    random_bundle, short_clips, tmp_path
):
    """vs-first% is always the relative change of corpus WER; --bootstrap adds its paired interval."""
    from dataclasses import replace

    items = read_manifest(short_clips)
    log = tmp_path / "h.jsonl"  # the second model's hypotheses, already "decoded": one inserted word per clip
    log.write_text(
        "".join(
            Hypothesis("scripted", it.id, it.text + " extra", it.text, it.domain, it.lang).to_json() + "\n"
            for it in items
        )
    )
    models = [random_bundle, replace(random_bundle, name="scripted")]
    decoding = DecodeOptions(max_new_tokens=4, batch_size=4, temperature=0.0)
    plain = evaluate(models, short_clips, EvalConfig(decoding=decoding), hypotheses=log, resume=True)
    first, second = plain.results
    expected = 100 * (second.score.wer / first.score.wer - 1)  # English clips only: every clip is word-scored
    assert second.change[0] == "random" and second.change[1] == pytest.approx(expected) and expected < -50
    assert second.to_dict()["relative_change"] == {
        "vs": "random",
        "percent": round(expected, 4),
        "ci95": None,
        "paired_bootstrap": False,
    }
    row = ev.format_table(plain).splitlines()[-1].split()
    assert row[0] == "scripted" and row[2] == f"{expected:+.1f}" and "[" not in row[3]  # next column: macro WER
    with_ci = evaluate(models, short_clips, EvalConfig(decoding=decoding, bootstrap=50), hypotheses=log, resume=True)
    change = with_ci.results[1].change
    assert change[1] == pytest.approx(expected) and change[2] <= change[1] <= change[3]
    assert f"{expected:+.1f} [{change[2]:+.1f},{change[3]:+.1f}]" in ev.format_table(with_ci)


def test_evaluate_help_says_what_vs_first_shows():
    from litewhisper.cli import build_parser

    text = "".join(build_parser()._subparsers._group_actions[0].choices["evaluate"].format_help().split())
    for said in (
        "vs-first% is each model's relative change of corpus WER against the first model",
        "default 0: no intervals, vs-first% is the plain relative change",
    ):
        assert "".join(said.split()) in text  # compared without the line breaks argparse puts anywhere


def test_resume_after_interruption_decodes_only_missing_clips(short_clips, tmp_path, monkeypatch):
    items = read_manifest(short_clips)
    hyp_path = tmp_path / "h.jsonl"
    done = [Hypothesis("m", it.id, it.text, it.text, it.domain, it.lang, 3, False, 1.5, 2.0) for it in items[:2]]
    # two complete records, then a line cut mid-write by the interruption
    hyp_path.write_text(done[0].to_json() + "\n" + done[1].to_json() + "\n" + done[1].to_json()[:25])
    decoded = []

    def fake_decode(bundle, batch, config, name):
        for it in batch:
            decoded.append(it.id)
            yield Hypothesis(name, it.id, "wrong words", it.text, it.domain, it.lang, 2, False, 0.5, 2.0)

    monkeypatch.setattr(ev, "decode", fake_decode)
    monkeypatch.setattr(ev, "encoder_param_count", lambda model: 1)
    fake_bundle = type("B", (), {"is_multilingual": False, "model": None, "name": "m"})()
    with pytest.raises(LiteWhisperError, match="--resume"):
        HypothesisLog(hyp_path, resume=False)
    log_file = HypothesisLog(hyp_path, resume=True)
    result = ev.evaluate_model(fake_bundle, items, EvalConfig(), name="m", log_file=log_file)
    assert decoded == [it.id for it in items[2:]]
    records = read_hypotheses(hyp_path)
    assert [h.id for h in records] == [it.id for it in items]  # partial line dropped, no duplicates
    assert result.score.n_utterances == 6
    assert result.decode_seconds == pytest.approx(2 * 1.5 + 4 * 0.5)  # cumulative over both runs
    assert result.audio_seconds == pytest.approx(12.0) and not result.timing_partial
    n_words = [len(ev.normalize(it.text, "english").split()) for it in items]
    # first two perfect; each wrong one: 2 hypothesis words against n reference words -> max(n, 2) errors
    errors = sum(max(n, 2) for n in n_words[2:])
    assert result.score.wer == pytest.approx(100 * errors / sum(n_words))


def test_resume_truncates_at_first_invalid_record_and_keeps_timings(short_clips, tmp_path, monkeypatch):
    """Issue 13 items 3 and 6: a complete junk line is cut off before appending (so a later resume still reads
    the file), and a resume with nothing left reports the cumulative decode time, not ~0 s."""
    items = read_manifest(short_clips)
    hyp_path = tmp_path / "h.jsonl"
    done = [Hypothesis("m", it.id, it.text, it.text, it.domain, it.lang, 3, False, 2.0, 4.0) for it in items]
    hyp_path.write_text(done[0].to_json() + "\n" + '{"junk": 1}\n' + done[1].to_json() + "\n")
    monkeypatch.setattr(ev, "encoder_param_count", lambda model: 1)
    fake_bundle = type("B", (), {"is_multilingual": False, "model": None, "name": "m"})()
    log_file = HypothesisLog(hyp_path, resume=True)
    assert list(log_file.done) == [("m", items[0].id)] and hyp_path.read_text() == done[0].to_json() + "\n"
    for h in done[1:]:
        log_file.append(h)
    again = HypothesisLog(hyp_path, resume=True)  # the next resume reads every record
    assert len(again.done) == 6
    monkeypatch.setattr(ev, "decode", lambda *a: iter(()))  # nothing left to decode
    result = ev.evaluate_model(fake_bundle, items, EvalConfig(), name="m", log_file=again)
    out = result.to_dict()
    assert out["decode_seconds"] == 12.0 and out["rtf"] == 0.5 and "timing_partial" not in out
    old = [Hypothesis("m", it.id, it.text, it.text, it.domain, it.lang) for it in items]  # records without timings
    hyp_path.write_text("".join(h.to_json() + "\n" for h in old[:3] + done[3:]))
    result = ev.evaluate_model(fake_bundle, items, EvalConfig(), name="m", log_file=HypothesisLog(hyp_path, True))
    assert result.to_dict()["timing_partial"] is True and result.decode_seconds == 6.0


def test_english_only_model_refuses_other_languages(random_bundle):
    items = [it for it in read_manifest(require_shared_data() / "manifest.jsonl", split="dev") if it.lang == "de"]
    with pytest.raises(LiteWhisperError, match="English-only"):
        ev.evaluate_model(random_bundle, items, EvalConfig(), name="random")


@pytest.mark.real
def test_real_tiny_en_cli_on_five_clips(tmp_path, capsys):
    data = require_shared_data()
    rows = [r for r in shared_manifest("dev", "en") if r["path"] == "misc/jfk.flac"]
    rows += [r for r in shared_manifest("dev", "en") if r["domain"] == "audiobook-nonfiction-single-speaker"][:4]
    manifest = tmp_path / "m.jsonl"
    manifest.write_text("".join(json.dumps({**r, "path": str(data / r["path"])}) + "\n" for r in rows))
    rc = main(
        [
            "evaluate",
            "tiny.en",
            "--data",
            str(manifest),
            "--json",
            str(tmp_path / "r.json"),
            "--hypotheses",
            str(tmp_path / "h.jsonl"),
            "--no-progress",
        ]
    )
    assert rc == 0
    out = json.loads((tmp_path / "r.json").read_text())
    r = out["results"][0]
    assert r["model"] == "tiny.en" and r["n_utterances"] == 5 and r["n_hit_token_limit"] == 0
    assert r["wer"] < 15 and out["normalizer"] == "english"
    jfk = [h for h in read_hypotheses(tmp_path / "h.jsonl") if h.id == rows[0].get("utt_id", rows[0]["path"])]
    assert ev.normalize(jfk[0].hypothesis, "english") == ev.normalize(rows[0]["text"], "english")
    assert "tiny.en" in capsys.readouterr().out


def test_max_clips_spread_round_robin_over_domains():
    from litewhisper.audio.datasets import AudioItem

    items = [AudioItem(path=f"{d}{i}.wav", text="x", domain=d, id=f"{d}{i}") for d in "aab" for i in range(3)]
    items = list(dict((it.id, it) for it in items).values())  # a0 a1 a2 b0 b1 b2
    picked = ev.spread_over_domains(items, 4)
    assert [it.id for it in picked] == ["a0", "b0", "a1", "b1"]
    assert len(ev.spread_over_domains(items, 10)) == 6
