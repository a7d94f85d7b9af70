"""Shared test helpers: tiny random Whisper models built in-process, and the shared real-speech data."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from transformers import WhisperConfig, WhisperForConditionalGeneration

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO_ROOT.parent / "shared" / "data"


def tiny_whisper_config(
    d_model: int = 32, layers: int = 2, heads: int = 4, ffn: int = 64, vocab_size: int = 51864, num_mel_bins: int = 80
) -> WhisperConfig:
    """A Whisper config small enough for unit tests (tiny.en's vocabulary and special tokens)."""
    return WhisperConfig(
        vocab_size=vocab_size,
        num_mel_bins=num_mel_bins,
        d_model=d_model,
        encoder_layers=layers,
        decoder_layers=layers,
        encoder_attention_heads=heads,
        decoder_attention_heads=heads,
        encoder_ffn_dim=ffn,
        decoder_ffn_dim=ffn,
        max_source_positions=1500,
        max_target_positions=448,
        decoder_start_token_id=50257,
        pad_token_id=50256,
        bos_token_id=50256,
        eos_token_id=50256,
    )


def tiny_whisper(seed: int = 0, **kwargs) -> WhisperForConditionalGeneration:
    """A randomly initialised tiny Whisper in eval mode, deterministic for a given seed."""
    torch.manual_seed(seed)
    return WhisperForConditionalGeneration(tiny_whisper_config(**kwargs)).eval()


def require_shared_data() -> Path:
    """The real-speech folder beside the checkout; fail (never skip) with a clear message if absent."""
    if not (SHARED_DATA / "manifest.jsonl").is_file():
        pytest.fail(
            f"real-speech data not found at {SHARED_DATA}: these tests need ../shared/data "
            "beside the repository checkout"
        )
    return SHARED_DATA


def shared_manifest(split: str | None = None, lang: str | None = None) -> list[dict]:
    """Manifest rows of ../shared/data, optionally filtered by split and language."""
    rows = [
        json.loads(line) for line in (require_shared_data() / "manifest.jsonl").read_text().splitlines() if line.strip()
    ]
    return [r for r in rows if (split is None or r["split"] == split) and (lang is None or r["lang"] == lang)]


def with_tokenizer(model: WhisperForConditionalGeneration):
    """(model, processor): the real tiny.en processor, and the model's generation config made from it."""
    from litewhisper.models.builtin import builtin_source
    from litewhisper.models.processor import build_generation_config, build_processor

    _, meta = builtin_source("tiny.en")
    processor = build_processor(meta, vocab_size=model.config.vocab_size)
    model.generation_config = build_generation_config(processor.tokenizer, vocab_size=model.config.vocab_size)
    return model, processor


def save_random_model(path: Path) -> Path:
    """A tiny random Whisper with the real tiny.en tokenizer, saved as a model directory (for CLI workers)."""
    model, processor = with_tokenizer(tiny_whisper())
    model.save_pretrained(path)
    processor.save_pretrained(path)
    return path


# Prepended to the scripts run_without_litewhisper runs: `import litewhisper` fails in that process.
BLOCK_LITEWHISPER = textwrap.dedent("""
    import sys
    class _Block:  # litewhisper must not be importable here
        def find_spec(self, name, path=None, target=None):
            if name == "litewhisper" or name.startswith("litewhisper."):
                raise ImportError("litewhisper is blocked in this process")
    sys.meta_path.insert(0, _Block())
    try:
        import litewhisper
    except ImportError:
        pass
    else:
        raise SystemExit("litewhisper was importable")
""")


def run_without_litewhisper(script: str, args: list, tmp_path: Path, timeout: int = 300) -> subprocess.CompletedProcess:
    """Run `script` in a fresh Python that cannot import litewhisper: isolated mode (-I: no PYTHONPATH, no cwd,
    no user site; the blocker covers the editable install), hub offline, stdin not a terminal."""
    file = tmp_path / "clean_script.py"
    file.write_text(BLOCK_LITEWHISPER + textwrap.dedent(script))
    env = {**os.environ, "HF_HOME": str(tmp_path / "hf"), "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    return subprocess.run(
        [sys.executable, "-I", str(file), *map(str, args)],
        cwd=tmp_path,
        env=env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def record_exports(monkeypatch, tmp_path: Path) -> list[dict]:
    """Replace export_model by a recorder: the CLI's `export` then returns at once, and each call's keyword
    arguments are appended to the returned list."""
    import litewhisper.export.api as api
    from litewhisper.export.api import ExportResult

    seen: list[dict] = []

    def fake(model, out, **kwargs):
        seen.append(kwargs)
        return ExportResult(path=tmp_path, precision="int8", max_abs_diff={"int8": 0.1}, size_bytes=1)

    monkeypatch.setattr(api, "export_model", fake)
    return seen
