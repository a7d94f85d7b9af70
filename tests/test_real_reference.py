"""Converted real tiny.en and base vs the reference implementation, ctranslate2, running the same checkpoint.

Both sides get identical log-mel input (the Hugging Face feature extractor); we compare encoder outputs and greedy
transcripts (no timestamps) on real English speech from ../shared/data.
"""

from __future__ import annotations

import itertools
import shutil

import ctranslate2
import numpy as np
import pytest
import torch
from transformers.modeling_outputs import BaseModelOutput

from helpers import shared_manifest
from litewhisper.audio.load import load_audio
from litewhisper.models.builtin import builtin_source

pytestmark = pytest.mark.real

NUM_CLIPS = 20
# Both sides compute in float32 from the same float16 weights; allow float16-level differences
# (relative 1e-3 of the largest activation), far above the ~1e-5 relative seen in practice.
ENCODER_RTOL = 1e-3


def english_clips(n: int = NUM_CLIPS) -> list[dict]:
    """The `n` shortest English `dev` clips, taken round-robin across domains (deterministic)."""
    rows = sorted(shared_manifest("dev", "en"), key=lambda r: (r["duration_s"], r["path"]))
    by_domain: dict[str, list[dict]] = {}
    for r in rows:
        by_domain.setdefault(r["domain"], []).append(r)
    mixed = [r for group in itertools.zip_longest(*by_domain.values()) for r in group if r is not None]
    return mixed[:n]


@pytest.fixture(scope="module")
def features():
    """Log-mel features (80 bins) of the clips, computed once: [n, 80, 3000]."""
    from transformers import WhisperFeatureExtractor

    from helpers import require_shared_data

    root = require_shared_data()
    audio = [load_audio(root / r["path"]) for r in english_clips()]
    return WhisperFeatureExtractor(feature_size=80)(audio, sampling_rate=16000, return_tensors="pt").input_features


def reference_model(name: str, tmp_path_factory) -> ctranslate2.models.Whisper:
    """ctranslate2 running the built-in checkpoint (split parts concatenated into a temporary directory)."""
    parts, meta = builtin_source(name)
    if len(parts) == 1:
        return ctranslate2.models.Whisper(str(meta), device="cpu", compute_type="float32", intra_threads=2)
    d = tmp_path_factory.mktemp(f"ct2_{name}")
    with open(d / "model.bin", "wb") as out:
        for p in parts:
            with open(p, "rb") as f:
                shutil.copyfileobj(f, out)
    for f in ("config.json", "vocabulary.txt", "tokenizer.json"):
        shutil.copy(meta / f, d / f)
    return ctranslate2.models.Whisper(str(d), device="cpu", compute_type="float32", intra_threads=2)


def compare(bundle, reference, features, prompt: list[int], **generate_kwargs) -> tuple[float, int, list]:
    """(max abs encoder difference, number of identical transcripts, differing pairs)."""
    with torch.inference_mode():
        ours = bundle.encoder(features).last_hidden_state  # [n, 1500, d_model]
    ref = torch.from_numpy(
        np.array(reference.encode(ctranslate2.StorageView.from_array(features.numpy()), to_cpu=True))
    )
    max_diff = (ours - ref).abs().max().item()
    print(f"{bundle.name}: max abs encoder difference {max_diff:.3e} (max |activation| {ref.abs().max():.2f})")
    assert max_diff <= ENCODER_RTOL * ref.abs().max().item()

    with torch.inference_mode():
        tokens = bundle.model.generate(
            encoder_outputs=BaseModelOutput(last_hidden_state=ours),
            return_timestamps=False,
            num_beams=1,
            do_sample=False,
            **generate_kwargs,
        )
    hyp = bundle.processor.tokenizer.batch_decode(tokens, skip_special_tokens=True)
    results = reference.generate(ctranslate2.StorageView.from_array(ref.numpy()), [prompt] * len(hyp), beam_size=1)
    expected = [bundle.processor.tokenizer.decode(r.sequences_ids[0], skip_special_tokens=True) for r in results]
    differ = [(a, b) for a, b in zip(hyp, expected, strict=True) if a.strip() != b.strip()]
    print(f"{bundle.name}: {len(hyp) - len(differ)}/{len(hyp)} identical greedy transcripts")
    return max_diff, len(hyp) - len(differ), differ


def test_tiny_en_matches_ctranslate2(real_tiny_en, features, tmp_path_factory):
    reference = reference_model("tiny.en", tmp_path_factory)
    _, same, differ = compare(real_tiny_en, reference, features, prompt=[50257, 50362])
    assert same == NUM_CLIPS, differ


def test_base_matches_ctranslate2(real_base, features, tmp_path_factory):
    reference = reference_model("base", tmp_path_factory)
    ids = real_base.processor.tokenizer.convert_tokens_to_ids
    prompt = [ids("<|startoftranscript|>"), ids("<|en|>"), ids("<|transcribe|>"), ids("<|notimestamps|>")]
    _, same, differ = compare(real_base, reference, features, prompt, language="en", task="transcribe")
    assert same == NUM_CLIPS, differ


def test_golden_jfk(real_tiny_en):
    from helpers import require_shared_data

    audio = load_audio(require_shared_data() / "misc" / "jfk.flac")
    feats = real_tiny_en.processor.feature_extractor(audio, sampling_rate=16000, return_tensors="pt").input_features
    with torch.inference_mode():
        tokens = real_tiny_en.model.generate(feats, return_timestamps=False)
    text = real_tiny_en.processor.tokenizer.decode(tokens[0], skip_special_tokens=True)
    normalized = " ".join("".join(c for c in text.lower() if c.isalpha() or c == " ").split())
    assert "ask not what your country can do for you" in normalized, text
    assert "ask what you can do for your country" in normalized, text
