"""Text normalisation before scoring: Whisper's English normaliser for English, the basic one otherwise.

Both come from `transformers.models.whisper.english_normalizer` (a port of openai/whisper's normalisers).
The English one needs openai/whisper's British→American spelling mapping (`english.json`, MIT licence,
Copyright (c) 2022 OpenAI), bundled here as `data/english_spelling.json` so scoring never needs the network.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from functools import cache, lru_cache
from importlib import resources

from litewhisper.errors import LiteWhisperError

__all__ = [
    "NORMALIZERS",
    "DESCRIPTIONS",
    "english_spelling_mapping",
    "get_normalizer",
    "resolve_normalizer",
    "normalize",
    "describe",
]

NORMALIZERS = ("auto", "english", "basic")
DESCRIPTIONS = {
    "english": "whisper-english (EnglishTextNormalizer + openai/whisper english.json spellings)",
    "basic": "whisper-basic (BasicTextNormalizer: lower-case, drop symbols and bracketed text)",
}


@lru_cache(maxsize=1)
def english_spelling_mapping() -> dict[str, str]:
    """openai/whisper's British→American spelling mapping (1739 entries), bundled with the package."""
    text = resources.files("litewhisper.evaluation").joinpath("data/english_spelling.json").read_text(encoding="utf-8")
    return json.loads(text)


@cache
def get_normalizer(name: str) -> Callable[[str], str]:
    """The normaliser called `name` ("english" or "basic") as a `str -> str` function (whitespace-trimmed)."""
    from transformers.models.whisper.english_normalizer import BasicTextNormalizer, EnglishTextNormalizer

    if name == "english":
        impl = EnglishTextNormalizer(english_spelling_mapping())
    elif name == "basic":
        impl = BasicTextNormalizer()
    else:
        raise LiteWhisperError(f"unknown normalizer {name!r}: expected one of 'english', 'basic' (or 'auto')")
    return lambda text: impl(text or "").strip()


def resolve_normalizer(choice: str, lang: str | None) -> str:
    """The concrete normaliser for one clip: `auto` picks english for English (or unknown) clips, else basic."""
    if choice not in NORMALIZERS:
        raise LiteWhisperError(f"unknown normalizer {choice!r}: expected one of {', '.join(NORMALIZERS)}")
    if choice != "auto":
        return choice
    return "english" if lang in (None, "en") else "basic"


def normalize(text: str, name: str) -> str:
    """Normalise `text` with the normaliser `name` ("english" or "basic")."""
    return get_normalizer(name)(text)


def describe(names_used: set[str] | list[str]) -> str:
    """A human-readable statement of which normaliser(s) were applied, for reports and JSON."""
    used = sorted(set(names_used))
    if not used:
        return "none"
    if len(used) == 1:
        return used[0]
    return "+".join(used) + " (english for en clips, basic for others)"
