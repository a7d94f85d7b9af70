"""`litewhisper transcribe`: stdout and file outputs, folders and manifests, bad files, exit codes."""

from __future__ import annotations

import io
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import soundfile as sf
from test_transcribe import SR, make_tiny_bundle, noise

from helpers import REPO_ROOT, require_shared_data
from litewhisper.cli import main
from litewhisper.cli.transcribe import output_names


@pytest.fixture
def fake_models(monkeypatch):
    """Make `load_model` return a tiny random bundle (decoding capped at a few tokens) and record the call."""
    calls = []
    bundle = make_tiny_bundle()
    import litewhisper.cli.transcribe as cli

    flags = cli.decoding_options  # random models babble: a few tokens, no temperature fallback
    monkeypatch.setattr(
        cli, "decoding_options", lambda args, **kw: flags(args, **kw).replace(max_new_tokens=5, temperature=(0.0,))
    )

    def load_model(source, device="cpu", dtype=None):
        calls.append((source, device, dtype))
        return bundle

    monkeypatch.setattr("litewhisper.models.load.load_model", load_model)
    return calls


@pytest.fixture
def audio_dir(tmp_path):
    """a.wav, b.flac and sub/c.wav (2, 1 and 3 s of noise), plus list.jsonl listing a.wav and sub/c.wav."""
    root = tmp_path / "audio"
    (root / "sub").mkdir(parents=True)
    for i, (name, secs) in enumerate((("a.wav", 2.0), ("b.flac", 1.0), ("sub/c.wav", 3.0))):
        sf.write(root / name, noise(secs, i), SR)
    rows = [{"path": "a.wav", "text": "x", "split": "dev"}, {"path": "sub/c.wav", "text": "y", "split": "calib"}]
    (root / "list.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return root


def test_stdout_one_line_per_file_in_input_order(fake_models, audio_dir, capsys):
    files = [str(audio_dir / n) for n in ("sub/c.wav", "a.wav", "b.flac")]
    assert main(["transcribe", "tiny.en", *files, "--quiet", "--batch-size", "2"]) == 0
    out, err = capsys.readouterr()
    lines = out.splitlines()
    assert [line.split(": ", 1)[0] for line in lines] == files
    assert all(line.split(": ", 1)[1] for line in lines)
    assert err == ""  # --quiet: no progress bar
    assert fake_models == [("tiny.en", "cpu", __import__("torch").float32)]


def test_single_file_prints_bare_text_and_progress_bar(fake_models, audio_dir, capsys):
    assert main(["transcribe", "tiny.en", str(audio_dir / "a.wav")]) == 0
    out, err = capsys.readouterr()
    assert len(out.splitlines()) == 1 and not out.startswith(str(audio_dir))
    assert "transcribing" in err and "100%" in err


def test_bad_files_reported_skipped_exit_1(fake_models, audio_dir, tmp_path, capsys):
    (tmp_path / "empty.wav").write_bytes(b"")
    (tmp_path / "corrupt.wav").write_bytes(b"RIFF" + bytes(200))
    out_dir = tmp_path / "out"
    args = [
        "transcribe",
        "tiny.en",
        str(tmp_path / "missing.wav"),
        str(tmp_path / "empty.wav"),
        str(tmp_path / "corrupt.wav"),
        str(audio_dir),
        "--output-dir",
        str(out_dir),
        "--quiet",
    ]
    assert main(args) == 1
    out, err = capsys.readouterr()
    assert out == ""
    assert re.search(r"skipped .*missing\.wav: audio file not found", err)
    assert "empty.wav" in err and "corrupt.wav" in err
    assert "3 of 6 inputs failed; the other 3 were transcribed" in err
    written = sorted(p.relative_to(out_dir).as_posix() for p in out_dir.rglob("*") if p.is_file())
    assert written == ["a.txt", "b.txt", "sub/c.txt"]  # folder structure kept, nothing for bad files
    assert (out_dir / "a.txt").read_text().strip()


@pytest.mark.parametrize("fmt", ["json", "srt", "vtt"])
def test_output_dir_formats_from_manifest(fake_models, audio_dir, tmp_path, fmt, capsys):
    out_dir = tmp_path / "out"
    assert (
        main(
            [
                "transcribe",
                "tiny.en",
                str(audio_dir / "list.jsonl"),
                "--split",
                "dev",
                "--format",
                fmt,
                "--output-dir",
                str(out_dir),
                "--quiet",
            ]
        )
        == 0
    )
    assert capsys.readouterr().out == ""
    assert [p.name for p in out_dir.rglob("*") if p.is_file()] == [f"a.{fmt}"]  # split filter applied
    text = (out_dir / f"a.{fmt}").read_text(encoding="utf-8")
    if fmt == "json":
        obj = json.loads(text)
        assert {"path", "text", "language", "segments"} <= set(obj) and obj["language"] == "en"
        assert obj["path"] == str(audio_dir / "a.wav") and obj["duration_s"] == 2.0
    elif fmt == "srt":
        assert re.match(r"1\n\d\d:\d\d:\d\d,\d\d\d --> \d\d:\d\d:\d\d,\d\d\d\n", text)
    else:
        assert text.startswith("WEBVTT\n\n") and re.search(r"\d\d:\d\d:\d\d\.\d\d\d --> ", text)


def test_json_to_stdout_is_json_lines(fake_models, audio_dir, capsys):
    assert main(["transcribe", "tiny.en", str(audio_dir), "--format", "json", "--quiet"]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [r["path"] for r in rows] == [str(audio_dir / n) for n in ("a.wav", "b.flac", "sub/c.wav")]


def test_user_errors_exit_2_without_traceback(fake_models, audio_dir, tmp_path, capsys):
    assert main(["transcribe", "tiny.en", str(audio_dir / "a.wav"), "--language", "de"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: model tiny-random is English-only") and "Traceback" not in err
    assert main(["transcribe", "tiny.en", str(audio_dir / "a.wav"), "--task", "translate"]) == 2
    assert "cannot translate" in capsys.readouterr().err
    assert main(["transcribe", "tiny.en", str(tmp_path / "empty_dir"), "--batch-size", "0"]) == 2


@pytest.mark.real
def test_real_tiny_en_cli_writes_srt_and_skips_bad_file(real_tiny_en, monkeypatch, tmp_path, capsys):
    monkeypatch.setattr("litewhisper.models.load.load_model", lambda source, device, dtype: real_tiny_en)
    jfk = require_shared_data() / "misc" / "jfk.flac"
    out_dir = tmp_path / "out"
    code = main(
        [
            "transcribe",
            "tiny.en",
            str(jfk),
            str(tmp_path / "nope.flac"),
            "--format",
            "srt",
            "--output-dir",
            str(out_dir),
            "--quiet",
        ]
    )
    assert code == 1
    assert "nope.flac" in capsys.readouterr().err
    srt = (out_dir / "jfk.srt").read_text(encoding="utf-8")
    assert srt.startswith("1\n00:00:00,000 --> ")
    assert "ask not what your country can do for you" in srt.lower()
    ends = re.findall(r" --> 00:00:(\d\d),(\d\d\d)", srt)
    assert 9.0 <= float(".".join(ends[-1])) <= 11.0  # the clip is 11 s long


def test_missing_audio_fails_before_the_model_loads(fake_models, tmp_path, capsys):
    assert main(["transcribe", "tiny.en", str(tmp_path / "typo.wav"), "--quiet"]) == 2
    assert fake_models == []  # no model load for nothing to transcribe
    assert re.search(r"error: audio not found: .*typo\.wav; check the path", capsys.readouterr().err)


@pytest.fixture
def same_stems(tmp_path):
    """talk/jfk.wav, talk/jfk.flac, talk/jfk.ogg and talk/notes.wav, plus other/jfk.wav (1 s of noise each)."""
    for i, name in enumerate(("talk/jfk.wav", "talk/jfk.flac", "talk/jfk.ogg", "talk/notes.wav", "other/jfk.wav")):
        (tmp_path / name).parent.mkdir(exist_ok=True)
        sf.write(tmp_path / name, noise(1.0, i), SR)
    return tmp_path


def test_same_stems_to_stdout_are_all_transcribed(fake_models, same_stems, capsys):
    talk = same_stems / "talk"
    files = [str(talk / "jfk.wav"), str(talk / "jfk.flac"), str(same_stems / "other" / "jfk.wav")]
    assert main(["transcribe", "tiny.en", *files, str(talk), "--quiet"]) == 0
    out, err = capsys.readouterr()
    labels = [line.split(": ", 1)[0] for line in out.splitlines()]
    assert labels == files + [str(talk / n) for n in ("jfk.flac", "jfk.ogg", "jfk.wav", "notes.wav")]
    assert err == ""


def test_same_stems_in_output_dir_keep_their_extension(fake_models, same_stems, tmp_path, capsys):
    out_dir = tmp_path / "out"
    talk, other = same_stems / "talk", same_stems / "other" / "jfk.wav"
    args = ["transcribe", "tiny.en", str(talk), str(other), "--format", "json", "--output-dir", str(out_dir)]
    assert main([*args, "--quiet"]) == 0
    assert capsys.readouterr().out == ""
    written = {p.name: json.loads(p.read_text())["path"] for p in out_dir.iterdir()}
    assert written == {
        "jfk.flac.json": str(talk / "jfk.flac"),
        "jfk.ogg.json": str(talk / "jfk.ogg"),
        "jfk.wav.json": str(talk / "jfk.wav"),
        "jfk.wav-2.json": str(other),  # the same file name in another folder: numbered in input order
        "notes.json": str(talk / "notes.wav"),  # no clash: the extension is dropped
    }


def test_output_names_rule():
    inputs = [
        (Path("a/jfk.wav"), "jfk.wav"),
        (Path("a/JFK.m4a"), "JFK.m4a"),  # clashes ignoring case (macOS / Windows disks)
        (Path("b/jfk.wav"), "jfk.wav"),
        (Path("a/jfk.wav"), "jfk.wav"),  # the same file again: the same name
        (Path("-"), "stdin"),
        (Path("a/sub/talk.opus"), "sub/talk.opus"),
        (Path("b/sub/talk.opus"), "sub/talk.opus"),
        (Path("b/jfk.wav-2.webm"), "jfk.wav-2.webm"),  # its wanted name is taken by then: numbered too
    ]
    assert output_names(inputs) == [
        "jfk.wav",
        "JFK.m4a",
        "jfk.wav-2",
        "jfk.wav",
        "stdin",
        "sub/talk.opus",
        "sub/talk.opus-2",
        "jfk.wav-2-2",
    ]
    assert output_names([(Path("x.wav"), "x.wav"), (Path("sub/x.wav"), "sub/x.wav")]) == ["x", "sub/x"]


def test_empty_standard_input_fails_before_the_model_loads(tmp_path):
    done = subprocess.run(
        [sys.executable, "-m", "litewhisper", "transcribe", "tiny.en", "-"],
        stdin=subprocess.DEVNULL,  # `litewhisper transcribe tiny.en - < /dev/null`
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(REPO_ROOT / "src"), "LITEWHISPER_CACHE": str(tmp_path / "cache")},
        timeout=300,
    )
    assert done.returncode == 2 and done.stdout == ""
    last = done.stderr.splitlines()[-1]  # a busy machine adds an INFO line on threads before it
    assert last.startswith("error: standard input (-) is empty (0 bytes): pipe audio into it")
    assert "Traceback" not in done.stderr and not (tmp_path / "cache").exists()  # no model was converted


def test_empty_standard_input_is_skipped_beside_other_files(fake_models, audio_dir, monkeypatch, capsys):
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(b"")))
    assert main(["transcribe", "tiny.en", "-", str(audio_dir / "a.wav"), "--quiet"]) == 1
    out, err = capsys.readouterr()
    assert [line.split(": ", 1)[0] for line in out.splitlines()] == [str(audio_dir / "a.wav")]
    assert "skipped -: standard input (-) is empty (0 bytes)" in err
    assert "1 of 2 inputs failed; the other 1 were transcribed" in err
