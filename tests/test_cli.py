"""CLI polish: --version, --quiet on every command (--no-progress a hidden alias; no Hugging Face bars either),
third-party warnings silenced, python -m litewhisper."""

import json
import logging
import os
import subprocess
import sys
import warnings

import numpy as np
import pytest

from helpers import save_random_model
from litewhisper import __version__
from litewhisper.cli import COMMANDS, build_parser, main


def test_version(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["--version"])
    assert exc.value.code == 0 and capsys.readouterr().out.strip() == f"litewhisper {__version__}"


@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_takes_quiet(command):
    sub = build_parser()._subparsers._group_actions[0].choices[command]
    help_text = sub.format_help()
    assert "--quiet" in help_text and "--no-progress" not in help_text


def test_no_progress_is_a_hidden_alias_of_quiet(monkeypatch):
    import litewhisper.cli.evaluate as cli_evaluate
    from litewhisper.progress import progress_enabled

    seen = {}
    monkeypatch.setattr(cli_evaluate, "run", lambda args: seen.update(quiet=args.quiet, on=progress_enabled()))
    parser_args = ["evaluate", "tiny.en", "--data", "x.jsonl"]
    for flag in ("--no-progress", "--quiet"):
        build = build_parser()
        build._subparsers._group_actions[0].choices["evaluate"].set_defaults(func=cli_evaluate.run)
        monkeypatch.setattr("litewhisper.cli.build_parser", lambda build=build: build)
        assert main([*parser_args, flag]) == 0
        assert seen == {"quiet": True, "on": False}


def test_python_dash_m():
    out = subprocess.run([sys.executable, "-m", "litewhisper", "--version"], capture_output=True, text=True)
    assert out.returncode == 0 and out.stdout.strip() == f"litewhisper {__version__}"


def test_report_refuses_a_non_empty_output_before_any_work(tmp_path, capsys):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "keep").write_text("x")
    assert main(["report", "--calibration", "c.jsonl", "--data", "d.jsonl", "-o", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert "pass --overwrite to replace" in err and "overwrite=True" not in err


def _cli(*args: str) -> subprocess.CompletedProcess:
    """`python -m litewhisper ARGS` in a fresh process (which first imports transformers inside --quiet)."""
    return subprocess.run([sys.executable, "-m", "litewhisper", *args], capture_output=True, text=True, timeout=600)


BAR = "%|"  # tqdm's percentage and bar, in every bar


def test_quiet_turns_off_hugging_face_bars_and_restores_them(monkeypatch):
    from transformers.utils import logging as hf_logging

    from litewhisper.progress import progress_enabled, quiet

    monkeypatch.delenv("HF_HUB_DISABLE_PROGRESS_BARS", raising=False)
    was_on = hf_logging.is_progress_bar_enabled()
    hf_logging.enable_progress_bar()
    with quiet():
        assert not hf_logging.is_progress_bar_enabled() and not progress_enabled()
        assert os.environ["HF_HUB_DISABLE_PROGRESS_BARS"] == "1"  # for libraries imported inside
        with quiet():
            assert not hf_logging.is_progress_bar_enabled()
        assert not hf_logging.is_progress_bar_enabled()
    assert hf_logging.is_progress_bar_enabled() and "HF_HUB_DISABLE_PROGRESS_BARS" not in os.environ
    with quiet(False):
        assert hf_logging.is_progress_bar_enabled() and progress_enabled()
    if not was_on:
        hf_logging.disable_progress_bar()


def test_foreign_noise_is_dropped_and_nothing_else(caplog):
    from litewhisper.progress import foreign_noise_silenced

    deprecation = "`past_key_values` is deprecated and will be removed in version 5.40.0"
    ort = "/site-packages/onnxruntime/quantization/quantize.py"
    advice = "Please consider to run pre-processing before quantization. Refer to example: https://..."

    def emit() -> None:
        warnings.warn_explicit(deprecation, FutureWarning, "output_capturing.py", 1, "transformers.utils.x")
        warnings.warn_explicit(deprecation, FutureWarning, "mine.py", 1, "mine")  # not transformers'
        warnings.warn_explicit("something else", FutureWarning, "output_capturing.py", 2, "transformers.utils.x")
        for path, msg in ((ort, advice), (ort, "other"), ("/mine.py", advice)):
            logging.getLogger().handle(logging.makeLogRecord({"pathname": path, "msg": msg, "levelno": 30}))

    with warnings.catch_warnings(record=True) as seen, caplog.at_level(logging.INFO):
        warnings.simplefilter("always")
        with foreign_noise_silenced():
            emit()
        assert [(w.filename, str(w.message)[:9]) for w in seen] == [
            ("mine.py", "`past_key"),
            ("output_capturing.py", "something"),
        ]
        assert [(r.pathname, r.getMessage()) for r in caplog.records] == [(ort, "other"), ("/mine.py", advice)]
        emit()  # outside the block nothing is filtered
        assert len(seen) == 2 + 3 and len(caplog.records) == 2 + 3


@pytest.fixture(scope="module")
def random_model_dir(tmp_path_factory):
    return save_random_model(tmp_path_factory.mktemp("model") / "random")


def test_export_quiet_prints_no_bars_and_no_foreign_warnings(random_model_dir, tmp_path):
    out = _cli("export", str(random_model_dir), "-o", str(tmp_path / "exported"), "--quiet")
    assert out.returncode == 0, out.stderr
    assert "int8" in out.stdout and (tmp_path / "exported" / "ctranslate2" / "model.bin").is_file()
    for noise in (BAR, "Loading weights", "Writing model shards", "FutureWarning", "pre-processing", "Warning:"):
        assert noise not in out.stderr, noise
    assert "INFO: converting the decoder to CTranslate2" in out.stderr  # our own log stays


def test_evaluate_quiet_prints_no_loading_bar(random_model_dir, tmp_path):
    import soundfile as sf
    import transformers

    sf.write(tmp_path / "a.wav", 0.1 * np.sin(np.arange(16000) / 8).astype(np.float32), 16000)
    (tmp_path / "m.jsonl").write_text(json.dumps({"path": "a.wav", "text": "hello", "lang": "en"}) + "\n")
    args = ["evaluate", str(random_model_dir), "--data", str(tmp_path / "m.jsonl"), "--max-new-tokens", "2"]
    loud, silent = _cli(*args), _cli(*args, "--quiet")
    assert loud.returncode == silent.returncode == 0, silent.stderr
    assert BAR in loud.stderr  # litewhisper's own bar: the check sees bars
    assert "Loading weights" in loud.stderr or int(transformers.__version__.split(".")[0]) < 5  # a bar since 5.0
    assert "Loading weights" not in silent.stderr and BAR not in silent.stderr
    assert "WER%" in silent.stdout
