"""compress() end to end on a tiny random model, CLI plan/calibrate, and the real tiny.en on real speech."""

import re

import numpy as np
import pytest
import torch

from helpers import SHARED_DATA, require_shared_data, tiny_whisper
from litewhisper.cli import main
from litewhisper.compression.api import CompressionResult, compress
from litewhisper.compression.calibration import calibrate
from litewhisper.compression.plan import RankPolicy
from litewhisper.compression.stats import ActivationStats
from litewhisper.errors import CalibrationError
from litewhisper.models.linears import LowRankLinear, encoder_linears


def audio(seconds=(4, 6), seed=0):
    rng = np.random.default_rng(seed)
    return [(0.1 * rng.standard_normal(16_000 * s)).astype(np.float32) for s in seconds]


def test_compress_leaves_the_input_untouched(tiny_model):
    before = {k: v.clone() for k, v in tiny_model.state_dict().items()}
    result = compress(tiny_model, audio(), RankPolicy(0.9, 0.9, multiple_of=4))
    assert isinstance(result, CompressionResult) and result.model is not tiny_model
    assert all(torch.equal(before[k], v) for k, v in tiny_model.state_dict().items())
    n_low = sum(isinstance(m, LowRankLinear) for m in encoder_linears(result.model.model.encoder).values())
    assert n_low == len(result.plan.low_rank) > 0
    assert result.params_after < result.params_before and result.flops_after < result.flops_before
    assert set(result.timings) == {"calibrate", "plan", "factorize"}
    assert result.peak_memory["calibrate_rss_peak"] > 0
    assert "encoder params" in result.summary()


def test_compress_reuses_statistics(tiny_model):
    stats = calibrate(tiny_model, audio())
    a = compress(tiny_model, None, RankPolicy(0.9, 0.9, multiple_of=4), stats=stats)
    b = compress(tiny_model, None, RankPolicy(0.8, 0.8, multiple_of=4), stats=stats)
    assert "calibrate" not in a.timings and a.stats is stats
    assert b.params_after <= a.params_after


def test_compress_bad_input(tiny_model):
    with pytest.raises(CalibrationError, match="calibration audio or precomputed statistics"):
        compress(tiny_model, None)
    other = calibrate(tiny_whisper(d_model=48), audio((2,)))
    with pytest.raises(CalibrationError, match="do not match this model"):
        compress(tiny_model, None, stats=other)


@pytest.mark.parametrize(
    "ffn, frames, needed",
    [
        (1536, "all", "more than 30 s of audio in all (packed into 2 windows)"),  # tiny.en's widest layer
        (64, "audio", "at least 1.3 s of audio (50 frames per second), or count the padding too"),
    ],
)
def test_too_little_calibration_audio_fails_before_the_probes(monkeypatch, ffn, frames, needed):
    """Two 0.5-s clips: the frame count is checked right after calibration, before any sensitivity probe."""
    import litewhisper.compression.api as api
    from litewhisper.compression.calibration import CalibrationConfig
    from litewhisper.compression.policy import SizeBudget

    monkeypatch.setattr(api, "layer_sensitivities", lambda *a, **k: pytest.fail("probed before the frame check"))
    clips = [np.full(8000, 0.1, np.float32), np.full(8000, -0.1, np.float32)]
    with pytest.raises(CalibrationError) as exc:
        compress(tiny_whisper(ffn=ffn), clips, SizeBudget(0.8), config=CalibrationConfig("pack", frames))
    message = str(exc.value)
    expected = 1500 if frames == "all" else 50  # one padded window, or 2 x 25 frames of audio
    assert f"calibration gave {expected} frames (1 window(s) of 30 s; frames='{frames}' counts" in message
    assert f"the widest layer (layers.0.fc1) has {ffn} outputs" in message and needed in message
    assert ("frames='all'" in message.split("Calibrate on")[1]) == (frames == "audio")  # offered only if it helps


def test_cli_compress_with_too_little_audio_says_how_much_is_needed(tmp_path, monkeypatch, capsys):
    import soundfile as sf

    import litewhisper.cli.compress as cli_compress
    import litewhisper.compression.api as api

    folder = tmp_path / "calib"
    folder.mkdir()
    for i in range(2):
        sf.write(folder / f"{i}.wav", np.full(8000, 0.1, np.float32), 16_000)  # two 0.5-s clips
    monkeypatch.setattr(cli_compress, "load_bundle", lambda *a, **k: tiny_whisper(ffn=2048))  # base's widest
    monkeypatch.setattr(api, "layer_sensitivities", lambda *a, **k: pytest.fail("probed before the frame check"))
    assert main(["compress", "m", "--calibration", str(folder), "-o", str(tmp_path / "out"), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "calibration gave 1500 frames" in err and "has 2048 outputs" in err and "Traceback" not in err
    assert "Calibrate on more than 30 s of audio in all (packed into 2 windows)" in err


def test_compress_inplace(tiny_model):
    result = compress(tiny_model, audio(), RankPolicy(0.9, 0.9, multiple_of=4), inplace=True)
    assert result.model is tiny_model
    assert result.params_after < result.params_before


def test_cli_plan_prints_table_and_validates(tiny_model, tmp_path, capsys):
    stats_file = calibrate(tiny_model, audio()).save(tmp_path / "s.safetensors")
    assert (
        main(
            [
                "plan",
                str(stats_file),
                "--theta-attn",
                "0.9",
                "--theta-mlp",
                "0.9",
                "--multiple-of",
                "4",
                "--json",
                str(tmp_path / "plan.json"),
            ]
        )
        == 0
    )
    out = capsys.readouterr().out
    assert "layers.0.fc1" in out and "theta_attn=0.9" in out and (tmp_path / "plan.json").is_file()
    assert main(["plan", str(stats_file), "--theta-mlp", "1.5"]) == 2
    assert "theta_mlp must be in (0, 1]" in capsys.readouterr().err
    assert main(["plan", str(stats_file), "--multiple-of", "0"]) == 2
    assert main(["plan", str(tmp_path / "missing.safetensors")]) == 2


def test_cli_compress_refuses_non_empty_output(tmp_path, capsys):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "x").write_text("keep me")
    assert main(["compress", "tiny.en", "-o", str(tmp_path / "out"), "--stats", str(tmp_path / "none")]) == 2
    assert "not empty" in capsys.readouterr().err and (tmp_path / "out" / "x").read_text() == "keep me"


def _words(text: str) -> str:
    return re.sub(r"[^a-z ]", "", text.lower()).split()


@pytest.mark.real
def test_real_tiny_en_cli_compress_still_transcribes_jfk(tmp_path, capsys, litewhisper_cache):
    """Real tiny.en, 16 real `calib` clips packed into 2 windows, `acc` plan: the checkpoint transcribes jfk.flac.

    (8 clips one per window, padding counted, gave "And so am I fellow Americans": padding dominates the PCA.)
    """
    from litewhisper.decode.transcribe import transcribe
    from litewhisper.models.cost import encoder_params
    from litewhisper.models.load import load_model

    data = require_shared_data()
    out, stats = tmp_path / "lite-tiny.en", tmp_path / "stats.safetensors"
    assert (
        main(
            [
                "compress",
                "tiny.en",
                "-o",
                str(out),
                "--calibration",
                str(data / "manifest.jsonl"),
                "--split",
                "calib",
                "--max-clips",
                "16",
                "--windows",
                "pack",
                "--preset",
                "acc",
                "--save-stats",
                str(stats),
                "--quiet",
            ]
        )
        == 0
    )
    printed = capsys.readouterr().out
    assert "encoder params 7.63M" in printed and "layers.3.fc2" in printed
    bundle = load_model(out)
    n_low = sum(isinstance(m, LowRankLinear) for m in encoder_linears(bundle.encoder).values())
    assert n_low > 0 and encoder_params(bundle.model) < 7_632_384
    text = transcribe(bundle, SHARED_DATA / "misc" / "jfk.flac")[0].text
    assert _words(text) == _words(
        "And so my fellow Americans, ask not what your country can do for you, ask what you can do for your country."
    )


def test_cli_calibrate_then_compress_from_stats(tiny_model, tmp_path, monkeypatch, capsys):
    """CLI wiring with a tiny random model standing in for `load_model` (audio from a folder of wav files)."""
    import soundfile as sf

    import litewhisper.cli.calibrate as cli_calibrate
    import litewhisper.cli.compress as cli_compress

    folder = tmp_path / "calib"
    folder.mkdir()
    for i, clip in enumerate(audio((3, 4, 5))):
        sf.write(folder / f"{i}.wav", clip, 16_000)
    monkeypatch.setattr(cli_calibrate, "load_bundle", lambda args: tiny_model)
    stats_file = tmp_path / "stats.safetensors"
    assert (
        main(
            [
                "calibrate",
                "random",
                "--calibration",
                str(folder),
                "--max-clips",
                "2",
                "--windows",
                "pack",
                "--frames",
                "audio",
                "-o",
                str(stats_file),
                "--quiet",
            ]
        )
        == 0
    )
    stats = ActivationStats.load(stats_file)
    assert stats.metadata["clips"] == "2" and stats.frames == (3 + 4) * 50 and stats.metadata["windowing"] == "pack"
    assert "wrote" in capsys.readouterr().out

    saved = {}
    monkeypatch.setattr(cli_compress, "load_bundle", lambda args, dtype=None: tiny_model)
    monkeypatch.setattr(
        "litewhisper.models.checkpoint.save_checkpoint",
        lambda bundle, out, overwrite=False, dtype=None: saved.update(model=bundle, out=out),
    )
    assert (
        main(
            [
                "compress",
                "random",
                "-o",
                str(tmp_path / "out"),
                "--stats",
                str(stats_file),
                "--theta-attn",
                "0.9",
                "--theta-mlp",
                "0.9",
                "--multiple-of",
                "4",
                "--quiet",
            ]
        )
        == 0
    )
    assert saved["out"] == tmp_path / "out" and saved["model"] is not tiny_model
    assert any(isinstance(m, LowRankLinear) for m in saved["model"].modules())
    assert "encoder params" in capsys.readouterr().out

    # budgeted method (sensitivity-weighted by default): statistics reused, audio read for the probes
    from litewhisper.models.cost import encoder_params

    assert (
        main(
            [
                "compress",
                "random",
                "-o",
                str(tmp_path / "out"),
                "--stats",
                str(stats_file),
                "--calibration",
                str(folder),
                "--target-size",
                "0.9",
                "--multiple-of",
                "4",
                "--quiet",
            ]
        )
        == 0
    )
    assert encoder_params(saved["model"]) <= 0.9 * encoder_params(tiny_model)
    assert "sensitivity" in capsys.readouterr().out


@pytest.mark.parametrize(
    "args, message",
    [
        (["--target-size", "0.8", "--theta-attn", "0.99"], "not both"),
        (["--method", "liteasr", "--target-size", "0.8"], "--target-size is for --method budget"),
        (["--method", "budget", "--theta-mlp", "0.99"], "are for --method liteasr"),
    ],
)
def test_cli_method_conflicts_are_clear_errors(tmp_path, capsys, args, message):
    assert main(["compress", "tiny.en", "-o", str(tmp_path / "out"), *args]) == 2
    assert message in capsys.readouterr().err


@pytest.mark.parametrize(
    "args, message",
    [
        (["--target-size", "0"], "target size must be a fraction in (0, 1]"),
        (["--target-size", "1.5"], "got 1.5"),
        (["--target-size", "-1"], "got -1.0"),
        (["--refine-steps", "-3"], "--refine-steps must be ≥ 0, got -3"),
        (["--multiple-of", "0"], "multiple_of must be an integer ≥ 1"),
        (["--batch-size", "0"], "batch_size must be a positive integer"),
    ],
)
def test_cli_compress_validates_before_the_model_loads(tmp_path, monkeypatch, capsys, args, message):
    import litewhisper.cli.compress as cli_compress

    loads = []
    monkeypatch.setattr(cli_compress, "load_bundle", lambda *a, **k: loads.append(a) or pytest.fail("loaded"))
    assert main(["compress", "tiny.en", "-o", str(tmp_path / "out"), *args]) == 2
    err = capsys.readouterr().err
    assert message in err and loads == [] and "Traceback" not in err


def test_cli_errors_name_flags_not_python_arguments(tmp_path, capsys):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "x").write_text("keep me")
    assert main(["compress", "tiny.en", "-o", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert "pass --overwrite to replace" in err and "overwrite=True" not in err


def test_cli_plan_previews_what_compress_applies(tiny_model, tmp_path, monkeypatch, capsys):
    """`plan MODEL` with compress's flags gives compress's ranks (budget method, sensitivity probes); validation
    comes before anything loads."""
    import soundfile as sf

    import litewhisper.cli.compress as cli_compress
    from litewhisper.compression.plan import RankPlan
    from litewhisper.models.checkpoint import low_rank_config_of

    folder = tmp_path / "calib"
    folder.mkdir()
    for i, clip in enumerate(audio((3, 4, 5))):
        sf.write(folder / f"{i}.wav", clip, 16_000)
    loads, saved = [], {}
    monkeypatch.setattr(cli_compress, "load_bundle", lambda args, dtype=None: loads.append(dtype) or tiny_model)
    monkeypatch.setattr(
        "litewhisper.models.checkpoint.save_checkpoint",
        lambda bundle, out, overwrite=False, dtype=None: saved.update(model=bundle),
    )
    flags = ["--calibration", str(folder), "--target-size", "0.85", "--multiple-of", "4", "--quiet"]
    assert main(["plan", "random", *flags, "--json", str(tmp_path / "plan.json")]) == 0
    assert main(["compress", "random", "-o", str(tmp_path / "out"), *flags]) == 0
    planned = {e.name: e.rank for e in RankPlan.load(tmp_path / "plan.json").entries}
    applied = {
        f"layers.{i}.{'self_attn.' if n.endswith('proj') else ''}{n}": r
        for i, ranks in enumerate(low_rank_config_of(saved["model"]))
        for n, r in ranks.items()
    }
    assert {n: r for n, r in planned.items() if r is not None} == applied and applied
    assert loads == ["float32", "float32"]
    assert main(["plan", "random", "--target-size", "1.5"]) == 2 and len(loads) == 2  # refused before loading
    assert "got 1.5" in capsys.readouterr().err


def test_cli_compress_from_stats_summary_once_no_calibration_warning(tiny_model, tmp_path, monkeypatch, capsys, caplog):
    import litewhisper.audio.synth as synth
    import litewhisper.cli.compress as cli_compress

    stats_file = calibrate(tiny_model, audio()).save(tmp_path / "s.safetensors")
    monkeypatch.setattr(cli_compress, "load_bundle", lambda args, dtype=None: tiny_model)
    monkeypatch.setattr(synth, "builtin_calibration_audio", lambda: audio((3, 4)))  # probes' audio
    monkeypatch.setattr("litewhisper.models.checkpoint.save_checkpoint", lambda *a, **k: None)
    with caplog.at_level("INFO", logger="litewhisper"):
        assert (
            main(
                [
                    "compress",
                    "random",
                    "-o",
                    str(tmp_path / "out"),
                    "--stats",
                    str(stats_file),
                    "--target-size",
                    "0.9",
                    "--multiple-of",
                    "4",
                    "--quiet",
                ]
            )
            == 0
        )
    out = capsys.readouterr().out
    assert not [r for r in caplog.records if r.levelname == "WARNING"]  # the statistics were given
    assert "sensitivity probes run on the built-in synthetic" in caplog.text
    summaries = out.count("encoder params") + caplog.text.count("encoder params")
    assert summaries == 1 and "time sensitivity" in out
