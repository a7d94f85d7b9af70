"""Messages speak to people: CLI flags (and the Python name where both apply), never bare Python syntax."""

from __future__ import annotations

import json

import pytest
import soundfile as sf
import torch

from litewhisper.bench.latency import _english_arrays
from litewhisper.cli import main
from litewhisper.decode.options import DecodeOptions
from litewhisper.errors import LiteWhisperError
from litewhisper.evaluation.evaluate import EvalConfig, select_clips
from litewhisper.models.load import load_model

NO_CUDA = "device 'cuda' requested but CUDA is not available here: use --device cpu (device='cpu' in Python)"


@pytest.fixture
def clips(tmp_path):
    """manifest.jsonl: two German dev clips (0.5 s of silence) without transcripts."""
    for name in ("a.wav", "b.wav"):
        sf.write(tmp_path / name, torch.zeros(8000).numpy(), 16_000)
    rows = [{"path": n, "split": "dev", "lang": "de"} for n in ("a.wav", "b.wav")]
    (tmp_path / "manifest.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return tmp_path / "manifest.jsonl"


def test_unavailable_cuda_names_the_flag(monkeypatch, clips, capsys):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(LiteWhisperError) as info:
        load_model("tiny.en", device="cuda")  # refused before the built-in model is converted
    assert str(info.value) == NO_CUDA
    assert main(["transcribe", "tiny.en", str(clips.parent / "a.wav"), "--device", "cuda", "--quiet"]) == 2
    assert capsys.readouterr().err == f"error: {NO_CUDA}\n"


def test_no_split_reads_as_every_split(clips):
    with pytest.raises(LiteWhisperError) as info:
        select_clips(clips, EvalConfig())
    assert str(info.value) == (
        f"no clips with reference transcripts in {clips} (every split, any language); "
        "a manifest needs a 'text' field per clip"
    )
    with pytest.raises(LiteWhisperError, match=r"\(split 'dev', language 'de'\); a manifest needs"):
        select_clips(clips, EvalConfig(split="dev", language="de"))
    with pytest.raises(LiteWhisperError) as info:
        _english_arrays(clips, None, 4)
    assert str(info.value) == f"no English clips of at most 30 s in {clips} (every split) for the end-to-end benchmark"


def test_decoding_errors_name_the_flag(tmp_path, capsys):
    with pytest.raises(LiteWhisperError, match=r"^beam_size \(--beam-size\) must be a positive integer, got 0$"):
        DecodeOptions(beam_size=0)
    with pytest.raises(LiteWhisperError, match=r"^temperature \(--temperature\) must be .* got 0,-1$"):
        DecodeOptions(temperature=(0.0, -1.0))
    with pytest.raises(LiteWhisperError, match=r"^max_new_tokens \(--max-new-tokens\) must be between 1 and 444"):
        DecodeOptions(max_new_tokens=0)
    assert DecodeOptions().describe().endswith("at most 224 new tokens per window, budget 9.7 tokens/s + 16, batch 8")
    assert main(["transcribe", "tiny.en", str(tmp_path / "a.wav"), "--batch-size", "0"]) == 2
    assert capsys.readouterr().err == "error: batch_size (--batch-size) must be a positive integer, got 0\n"


def test_long_prompt_names_the_flag():
    from test_transcribe import make_tiny_bundle

    from litewhisper.decode.torch_backend import TorchBackend

    backend = TorchBackend(make_tiny_bundle())
    backend.check(DecodeOptions(initial_prompt="hello " * 100, max_new_tokens=200))  # 100-odd tokens: fits
    with pytest.raises(LiteWhisperError) as info:
        backend.check(DecodeOptions(initial_prompt="hello " * 100, max_new_tokens=400))
    assert str(info.value) == (
        "initial prompt too long for --max-new-tokens 400: prompt and output must fit 448 tokens; "
        "shorten the prompt or lower --max-new-tokens"
    )
