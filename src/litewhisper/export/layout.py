"""The non-graph files of an export directory: Hugging Face config, generation config, tokenizer, feature
extractor (so ONNX runtimes that know Whisper load it), the CTranslate2 decoder's side files, and our marker."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from litewhisper.models.deployed import CT2_DIR, ENCODER_WINDOW, EXPORT_FORMAT, EXPORT_MARKER

__all__ = ["write_metadata", "write_marker", "write_transformersjs_config", "CT2_SIDE_FILES", "TJS_DTYPES"]

CT2_SIDE_FILES = ("tokenizer.json", "preprocessor_config.json")
TJS_DTYPES = {"fp32": "", "q8": "_quantized"}  # transformers.js dtype -> file suffix (its DEFAULT_DTYPE_SUFFIX_MAPPING)


def write_metadata(bundle, out: Path) -> None:
    """config.json (model_type "lite-whisper" for lite models), generation_config.json, tokenizer and
    preprocessor files into `out`; tokenizer.json and preprocessor_config.json also into out/ctranslate2."""
    bundle.model.config.save_pretrained(out)
    _drop_auto_map(out / "config.json")
    bundle.model.generation_config.save_pretrained(out)
    bundle.processor.save_pretrained(out)
    bundle.processor.feature_extractor.save_pretrained(
        out
    )  # preprocessor_config.json (faster-whisper, transformers.js)
    (out / CT2_DIR).mkdir(exist_ok=True)
    for name in CT2_SIDE_FILES:
        if (out / name).is_file():
            shutil.copyfile(out / name, out / CT2_DIR / name)


def _drop_auto_map(config_file: Path) -> None:
    """Remove a lite-whisper checkpoint's `auto_map` from an export's config.json.

    An export ships neither PyTorch weights nor the remote-code files the auto_map names, so the entry can only
    do harm: with it, AutoTokenizer / AutoProcessor.from_pretrained(export) ask "Do you wish to run the custom
    code?" (transformers' AutoTokenizer always loads AutoConfig, which prompts for an AutoConfig auto_map whose
    model_type it does not know). Without it they load the stock Whisper tokenizer and processor silently.
    """
    config = json.loads(config_file.read_text(encoding="utf-8"))
    if config.pop("auto_map", None) is not None:
        config_file.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def write_transformersjs_config(out: Path) -> list[str]:
    """The transformers.js dtypes whose encoder and merged decoder are both in out/onnx; where only one is, it is
    written into config.json as `transformers.js_config.dtype` (transformers.js's default would otherwise be fp32
    in Node and q8 in the browser, and a missing file an error). Returns the dtypes."""
    onnx_dir = out / "onnx"
    dtypes = [
        dtype
        for dtype, suffix in TJS_DTYPES.items()
        if (onnx_dir / f"encoder_model{suffix}.onnx").is_file()
        and (onnx_dir / f"decoder_model_merged{suffix}.onnx").is_file()
    ]
    if len(dtypes) == 1:
        config_file = out / "config.json"
        config = json.loads(config_file.read_text(encoding="utf-8"))
        config["transformers.js_config"] = {"dtype": dtypes[0]}
        config_file.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    return dtypes


def write_marker(
    out: Path,
    name: str,
    precision: str,
    encoders: dict[str, str],
    check: dict[str, Any],
    int8: dict[str, Any] | None = None,
) -> None:
    """litewhisper_export.json; int8: the int8 settings (rotate, per_channel, keep_fp32, ...), None for fp32.
    encoder_window "dynamic": the encoders read any even number of mel frames <= 3000 (export/onnx.py)."""
    marker = {
        "format": EXPORT_FORMAT,
        "name": name,
        "precision": precision,
        "encoders": encoders,
        "verify": check,
        "int8": int8,
        "encoder_window": ENCODER_WINDOW,
    }
    (out / EXPORT_MARKER).write_text(json.dumps(marker, indent=2) + "\n", encoding="utf-8")
