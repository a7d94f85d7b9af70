"""The non-graph files of an export directory: Hugging Face config, generation config, tokenizer, feature
extractor (so ONNX runtimes that know Whisper load it), the CTranslate2 decoder's side files, and our marker."""
from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from litewhisper.models.deployed import CT2_DIR, EXPORT_FORMAT, EXPORT_MARKER

__all__ = ["write_metadata", "write_marker", "CT2_SIDE_FILES"]

CT2_SIDE_FILES = ("tokenizer.json", "preprocessor_config.json")


def write_metadata(bundle, out: Path) -> None:
    """config.json (model_type "lite-whisper" for lite models), generation_config.json, tokenizer and
    preprocessor files into `out`; tokenizer.json and preprocessor_config.json also into out/ctranslate2."""
    bundle.model.config.save_pretrained(out)
    bundle.model.generation_config.save_pretrained(out)
    bundle.processor.save_pretrained(out)
    bundle.processor.feature_extractor.save_pretrained(out)  # preprocessor_config.json (faster-whisper, transformers.js)
    (out / CT2_DIR).mkdir(exist_ok=True)
    for name in CT2_SIDE_FILES:
        if (out / name).is_file():
            shutil.copyfile(out / name, out / CT2_DIR / name)


def write_marker(out: Path, name: str, precision: str, encoders: dict[str, str], check: dict[str, Any]) -> None:
    marker = {"format": EXPORT_FORMAT, "name": name, "precision": precision, "encoders": encoders,
              "verify": check}
    (out / EXPORT_MARKER).write_text(json.dumps(marker, indent=2) + "\n", encoding="utf-8")
