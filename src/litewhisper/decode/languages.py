"""Whisper language codes: 'en', 'English' or '<|en|>' -> 'en'."""

from __future__ import annotations

from litewhisper.errors import LiteWhisperError

__all__ = ["language_code"]


def language_code(language: str) -> str:
    """'en', 'English' or '<|en|>' -> 'en'; LiteWhisperError for an unknown language."""
    from transformers.models.whisper.tokenization_whisper import LANGUAGES, TO_LANGUAGE_CODE

    lang = language.strip().lower().removeprefix("<|").removesuffix("|>")
    code = lang if lang in LANGUAGES else TO_LANGUAGE_CODE.get(lang)
    if code is None:
        raise LiteWhisperError(
            f"unknown language {language!r}: expected a Whisper language code such as en, de, fr, es, ja "
            f"(one of {len(LANGUAGES)}) or its English name such as 'german'"
        )
    return code
