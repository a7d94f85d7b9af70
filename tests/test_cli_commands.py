"""Every command of the README's command table, run as a command line end to end on a tiny random model.

One tiny random Whisper (real tiny.en tokenizer) saved as a model directory, three short synthetic clips in a
manifest with transcripts; the commands chain as a user's would: calibrate -> plan -> compress -> export ->
transcribe / evaluate / bench, and report on its own. Decoding is cut to a few tokens (a random model never stops).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from helpers import REPO_ROOT, save_random_model, tiny_whisper, with_tokenizer
from litewhisper.cli import main

FEW_TOKENS = ["--max-new-tokens", "3", "--temperature", "0", "--quiet"]


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    """A model directory `model/` and `audio/manifest.jsonl` (2 calib + 1 dev clip of 2-3 s noise bursts)."""
    root = tmp_path_factory.mktemp("cli")
    save_random_model(root / "model")
    audio = root / "audio"
    audio.mkdir()
    rng = np.random.default_rng(0)
    rows = []
    for i, (seconds, split) in enumerate(((2, "calib"), (3, "calib"), (2, "dev"))):
        samples = 0.1 * rng.standard_normal(16_000 * seconds) * np.sin(np.linspace(0, 20, 16_000 * seconds))
        sf.write(audio / f"clip{i}.wav", samples.astype(np.float32), 16_000)
        rows.append({"path": f"clip{i}.wav", "text": "hello world", "lang": "en", "split": split})
    (audio / "manifest.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return root


def run(argv: list, capsys) -> str:
    """Run the command line; it must exit 0. Returns what it printed on stdout."""
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    assert code == 0, f"{argv[0]} exited {code}: {err[-2000:]}"
    return out


def test_readme_lists_only_tested_commands():
    readme = (REPO_ROOT / "README.md").read_text()
    listed = set(re.findall(r"^\| `litewhisper (\w+)", readme, flags=re.M))
    tested = {name.removeprefix("test_command_") for name in globals() if name.startswith("test_command_")}
    assert listed == {"transcribe", "calibrate", "plan", "compress", "export", "evaluate", "bench", "report"}
    assert listed <= tested


def test_command_calibrate(work, capsys):
    manifest = work / "audio" / "manifest.jsonl"
    run(
        ["calibrate", work / "model", "--calibration", manifest, "--split", "calib", "-o", work / "stats.safetensors"]
        + ["--quiet"],
        capsys,
    )
    from litewhisper.compression.stats import ActivationStats

    stats = ActivationStats.load(work / "stats.safetensors")
    assert stats.metadata["clips"] == "2" and len(stats.layers) == 2 * 6  # 2 layers x q, k, v, out, fc1, fc2


def test_command_plan(work, capsys):
    if not (work / "stats.safetensors").exists():
        test_command_calibrate(work, capsys)
    out = run(
        ["plan", work / "stats.safetensors", "--theta-attn", "0.9", "--theta-mlp", "0.9", "--multiple-of", "4"]
        + ["--json", work / "plan.json"],
        capsys,
    )
    plan = json.loads((work / "plan.json").read_text())
    assert "layers.1.fc2" in out and len(plan["layers"]) == 12


def test_command_compress(work, capsys, caplog):
    caplog.set_level("INFO", logger="litewhisper")
    manifest = work / "audio" / "manifest.jsonl"
    out = run(
        ["compress", work / "model", "-o", work / "lite", "--calibration", manifest, "--split", "calib"]
        + ["--target-size", "0.8", "--multiple-of", "4", "--dtype", "float32", "--quiet"],
        capsys,
    )
    config = json.loads((work / "lite" / "config.json").read_text())
    assert config["model_type"] == "lite-whisper" and len(config["low_rank_config"]) == 2
    assert "encoder params" in out
    for stage in ("calibrate", "sensitivity", "plan", "factorize", "save"):  # each stage's time as it ends
        assert re.search(rf" {stage}: \d+\.\d s", caplog.text), stage


def _lite(work: Path, capsys) -> Path:
    if not (work / "lite" / "config.json").exists():
        test_command_compress(work, capsys)
    return work / "lite"


def test_command_export(work, capsys):
    run(["export", _lite(work, capsys), "-o", work / "exported", "--quiet"], capsys)
    marker = work / "exported"
    assert (marker / "ctranslate2" / "model.bin").is_file()
    assert any(p.suffix == ".onnx" for p in marker.rglob("*.onnx"))


def test_command_transcribe(work, capsys):
    clip = work / "audio" / "clip2.wav"
    if not (work / "exported").exists():
        test_command_export(work, capsys)
    for model in (work / "model", _lite(work, capsys), work / "exported"):
        out = run(["transcribe", model, clip, "--format", "json", *FEW_TOKENS], capsys)
        result = json.loads(out.splitlines()[0])
        assert result["path"] == str(clip) and result["duration_s"] == 2.0


def test_command_evaluate(work, capsys):
    manifest = work / "audio" / "manifest.jsonl"
    out = run(
        ["evaluate", work / "model", _lite(work, capsys), "--data", manifest, "--split", "dev"]
        + ["--json", work / "eval.json", *FEW_TOKENS],
        capsys,
    )
    results = json.loads((work / "eval.json").read_text())["results"]
    assert [r["n_utterances"] for r in results] == [1, 1] and "vs-first" in out


def test_command_bench(work, capsys):
    """`--batch-size 1,2` is the encoder's batch list, not the decoder's clip batch (it used to exit 2)."""
    out = run(
        ["bench", work / "model", _lite(work, capsys), "--batch-size", "1,2", "--repeats", "2"]
        + ["--warmup", "1", "--json", work / "bench.json", "--quiet"],
        capsys,
    )
    report = json.loads((work / "bench.json").read_text())
    assert sorted({(r["batch_size"]) for r in report["encoder"]}) == [1, 2] and "speedup" in out


def test_command_report(work, capsys):
    """On a wider model (d_model 64): rank 16 everywhere must fit in the 0.8 budget."""
    model, processor = with_tokenizer(tiny_whisper(d_model=64, ffn=128))
    model.save_pretrained(work / "model64")
    processor.save_pretrained(work / "model64")
    manifest = work / "audio" / "manifest.jsonl"
    run(
        ["report", "--model", work / "model64", "--calibration", manifest, "--data", manifest, "-o", work / "report"]
        + ["--presets", "fast", "--target-sizes", "0.8", "--thetas", "0.9", "--multilingual", "none"]
        + ["--bench-repeats", "1", *FEW_TOKENS],
        capsys,
    )
    text = (work / "report" / "README.md").read_text()
    assert "Table 1" in text and list((work / "report").glob("*.png"))
