"""CLI polish: --version, --quiet on every command (--no-progress a hidden alias), python -m litewhisper."""

import subprocess
import sys

import pytest

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
