"""The processor files of a lite-whisper checkpoint and of an export load as stock Whisper classes in a process
that never imports litewhisper, without transformers' "Do you wish to run the custom code?" prompt (issue 13.12).

An export's config.json has no auto_map, so plain AutoProcessor / AutoTokenizer / AutoFeatureExtractor work. A
checkpoint keeps the published format (model_type "lite-whisper" + an AutoConfig auto_map, which AutoModel needs);
transformers' AutoTokenizer always loads config.json through AutoConfig, which asks about that auto_map unless
`trust_remote_code` is given, so the checkpoint is loaded here the way the README says: with the flag.
"""

from __future__ import annotations

import json

import pytest
from test_attention import make_lowrank

from helpers import run_without_litewhisper, tiny_whisper
from litewhisper.export.api import export_model
from litewhisper.models.builtin import builtin_source
from litewhisper.models.checkpoint import AUTO_MAP, save_checkpoint
from litewhisper.models.load import WhisperBundle
from litewhisper.models.processor import build_generation_config, build_processor

# Loads every (directory, kwargs) case of argv[1] with the three Auto classes; input() (the prompt) is recorded
# and refused. Prints one JSON object: {case index: [class names..., number of prompts]}.
LOADER = """
    import builtins, json, sys
    prompts = []
    def refuse(*args):
        prompts.append(args)
        raise EOFError("stdin is not a terminal")
    builtins.input = refuse
    from transformers import AutoFeatureExtractor, AutoProcessor, AutoTokenizer
    results = {}
    for i, (path, kwargs) in enumerate(json.loads(sys.argv[1])):
        before = len(prompts)
        loaded = [auto.from_pretrained(path, **kwargs) for auto in (AutoProcessor, AutoTokenizer, AutoFeatureExtractor)]
        names = [type(obj).__name__ for obj in loaded]
        results[i] = names + [loaded[0].tokenizer.decode([1770, 13]), len(prompts) - before]
    assert not any(m.startswith("litewhisper") for m in sys.modules)
    print(json.dumps(results))
"""
STOCK = ["WhisperProcessor", "WhisperTokenizer", "WhisperFeatureExtractor"]


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    """(checkpoint dir, export dir, in-process processor) of a tiny random lite model with tiny.en's tokenizer."""
    model = tiny_whisper(seed=7)
    make_lowrank(model.model.encoder.layers[0].self_attn, (8, 8, None), seed=1)
    processor = build_processor(builtin_source("tiny.en")[1] / "tokenizer.json", 80, model.config.vocab_size)
    model.generation_config = build_generation_config(processor.tokenizer, vocab_size=model.config.vocab_size)
    root = tmp_path_factory.mktemp("processor_files")
    ckpt = save_checkpoint(WhisperBundle(model=model, processor=processor, name="tiny-lite", path=None), root / "lite")
    export = export_model(str(ckpt), root / "export", quantize="none", onnx_decoder=False).path
    return ckpt, export, processor


def test_export_and_checkpoint_processors_load_without_litewhisper_or_prompt(folders, tmp_path):
    ckpt, export, processor = folders
    config = json.loads((export / "config.json").read_text())
    assert config["model_type"] == "lite-whisper" and "auto_map" not in config
    assert config["low_rank_config"][0] == {"q_proj": 8, "k_proj": 8}
    assert json.loads((ckpt / "config.json").read_text())["auto_map"] == AUTO_MAP  # published format kept
    cases = [(str(export), {}), (str(ckpt), {"trust_remote_code": False}), (str(ckpt), {"trust_remote_code": True})]
    proc = run_without_litewhisper(LOADER, [json.dumps(cases)], tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads(proc.stdout.strip().splitlines()[-1])
    text = processor.tokenizer.decode([1770, 13])
    assert results == {str(i): STOCK + [text, 0] for i in range(len(cases))}, results
