"""Build a Whisper processor and generation config from a bare `tokenizer.json`, with no hub access.

CTranslate2 / faster-whisper directories ship only `tokenizer.json` (without Whisper's timestamp tokens) and a
`config.json` with suppress / language / alignment-head lists; this module turns them into the
`WhisperProcessor` + `GenerationConfig` that `WhisperForConditionalGeneration.generate` needs for short- and
long-form decoding (language and task tokens, timestamps).
"""

from __future__ import annotations

import json
import logging
import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from litewhisper.constants import MAX_TARGET_POSITIONS, MAX_TIMESTAMP_STEPS, MULTILINGUAL_VOCAB_SIZE, TIMESTAMP_STEP_S
from litewhisper.errors import ModelSourceError

__all__ = [
    "NUM_TIMESTAMP_TOKENS",
    "build_tokenizer",
    "build_generation_config",
    "read_ct2_config",
    "generation_config_from_ct2",
    "build_processor",
    "english_prompt_ids",
    "prompt_ids",
]

logger = logging.getLogger("litewhisper")

_LANG_TOKEN = re.compile(r"^<\|([a-z]{2,3})\|>$")
NUM_TIMESTAMP_TOKENS = MAX_TIMESTAMP_STEPS + 1  # <|0.00|> ... <|30.00|>


def _tokenizer_json(source: str | os.PathLike) -> Path:
    path = Path(source)
    if path.is_dir():
        path = path / "tokenizer.json"
    if not path.is_file():
        raise ModelSourceError(
            f"no tokenizer.json at {path}: expected a Whisper tokenizer.json file (or a model directory that "
            "contains one), as shipped with CTranslate2 / faster-whisper and Hugging Face Whisper models"
        )
    return path


def build_tokenizer(tokenizer_json: str | os.PathLike, vocab_size: int | None = None):
    """A `WhisperTokenizer` (tokenizers-backed) from `tokenizer.json`, with specials and timestamp tokens.

    Special tokens (<|startoftranscript|>, language, task, <|notimestamps|>...) are registered as additional
    special tokens, and the 1501 timestamp tokens <|0.00|>..<|30.00|> are added when missing, so that token
    ids match the model's `vocab_size` and timestamp decoding works.
    """
    from transformers import AddedToken, WhisperTokenizer

    path = _tokenizer_json(tokenizer_json)
    try:
        tok = WhisperTokenizer(tokenizer_file=str(path))
        added = json.loads(path.read_text(encoding="utf-8")).get("added_tokens", [])
    except Exception as e:  # tokenizers raises plain Exception on a bad file
        raise ModelSourceError(f"cannot read tokenizer {path}: {e}; expected a Hugging Face tokenizer.json") from e
    specials = [
        t["content"]
        for t in sorted(added, key=lambda t: t["id"])
        if t.get("special") and t["content"] != tok.eos_token and not _is_timestamp(t["content"])
    ]
    if "<|notimestamps|>" not in specials:
        raise ModelSourceError(f"{path} is not a Whisper tokenizer: it has no <|notimestamps|> token")
    tok.add_special_tokens({"additional_special_tokens": specials})
    if tok.convert_tokens_to_ids("<|0.00|>") == tok.unk_token_id:
        count = NUM_TIMESTAMP_TOKENS if vocab_size is None else min(NUM_TIMESTAMP_TOKENS, vocab_size - len(tok))
        tok.add_tokens(
            [
                AddedToken(
                    "<|%.2f|>" % (i * TIMESTAMP_STEP_S), lstrip=False, rstrip=False, normalized=False, special=False
                )
                for i in range(max(count, 0))
            ]
        )
    return tok


def _is_timestamp(token: str) -> bool:
    return re.fullmatch(r"<\|\d+\.\d+\|>", token) is not None


def build_generation_config(
    tokenizer,
    *,
    vocab_size: int | None = None,
    suppress_tokens: Sequence[int] | None = None,
    begin_suppress_tokens: Sequence[int] | None = None,
    lang_ids: Sequence[int] | None = None,
    alignment_heads: Sequence[Sequence[int]] | None = None,
    max_length: int = MAX_TARGET_POSITIONS,
):
    """A Whisper `GenerationConfig` (special ids, language/task maps, suppression lists) from a tokenizer."""
    from transformers import GenerationConfig

    ids = tokenizer.convert_tokens_to_ids
    eot, sot = ids("<|endoftext|>"), ids("<|startoftranscript|>")
    no_timestamps = ids("<|notimestamps|>")
    multilingual = (vocab_size >= MULTILINGUAL_VOCAB_SIZE) if vocab_size is not None else eot != 50256
    cfg: dict[str, Any] = dict(
        decoder_start_token_id=sot,
        bos_token_id=eot,
        eos_token_id=eot,
        pad_token_id=eot,
        no_timestamps_token_id=no_timestamps,
        prev_sot_token_id=ids("<|startofprev|>"),
        max_initial_timestamp_index=50,
        max_length=max_length,
        is_multilingual=multilingual,
        return_timestamps=False,
        suppress_tokens=list(suppress_tokens) if suppress_tokens is not None else [],
        begin_suppress_tokens=list(begin_suppress_tokens) if begin_suppress_tokens is not None else [220, eot],
    )
    if alignment_heads:
        cfg["alignment_heads"] = [list(map(int, h)) for h in alignment_heads]
    if multilingual:
        cfg["lang_to_id"] = _lang_to_id(tokenizer, lang_ids)
        cfg["task_to_id"] = {"transcribe": ids("<|transcribe|>"), "translate": ids("<|translate|>")}
    return GenerationConfig(**cfg)


def _lang_to_id(tokenizer, lang_ids: Sequence[int] | None) -> dict[str, int]:
    """{"<|en|>": 50259, ...}: from explicit ids when given, else every <|xx|> special token."""
    if lang_ids is not None:
        return {tokenizer.convert_ids_to_tokens(int(i)): int(i) for i in lang_ids}
    return {t: tokenizer.convert_tokens_to_ids(t) for t in tokenizer.all_special_tokens if _LANG_TOKEN.match(t)}


def read_ct2_config(model_dir: str | os.PathLike) -> dict[str, Any]:
    """The CTranslate2 Whisper `config.json` (suppress_ids, suppress_ids_begin, lang_ids, alignment_heads)."""
    path = Path(model_dir) / "config.json"
    if not path.is_file():
        return {}
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise ModelSourceError(f"{path} is not valid JSON ({e}); expected the model's config.json") from e


def generation_config_from_ct2(tokenizer, ct2_config: dict[str, Any], vocab_size: int | None = None):
    """A `GenerationConfig` from a CTranslate2 Whisper `config.json` dict."""
    return build_generation_config(
        tokenizer,
        vocab_size=vocab_size,
        suppress_tokens=ct2_config.get("suppress_ids"),
        begin_suppress_tokens=ct2_config.get("suppress_ids_begin"),
        lang_ids=ct2_config.get("lang_ids"),
        alignment_heads=ct2_config.get("alignment_heads"),
    )


def build_processor(
    model_dir_or_tokenizer_json: str | os.PathLike, num_mel_bins: int = 80, vocab_size: int | None = None
):
    """`WhisperProcessor` = WhisperFeatureExtractor(`num_mel_bins`) + tokenizer from `tokenizer.json`.

    `vocab_size` (the model's) decides how many timestamp tokens to add and whether the model is multilingual.
    """
    from transformers import WhisperFeatureExtractor, WhisperProcessor

    if num_mel_bins not in (80, 128):
        raise ModelSourceError(f"num_mel_bins={num_mel_bins}: Whisper models use 80 or 128 mel bins")
    tokenizer = build_tokenizer(model_dir_or_tokenizer_json, vocab_size=vocab_size)
    feature_extractor = WhisperFeatureExtractor(feature_size=num_mel_bins)
    return WhisperProcessor(feature_extractor=feature_extractor, tokenizer=tokenizer)


def prompt_ids(tokenizer, multilingual: bool, language: str = "en", timestamps: bool = True) -> list[int]:
    """The decoder prompt for transcription: <|startoftranscript|> [<|language|> <|transcribe|>]
    [<|notimestamps|>] (English-only models take no language and task tokens)."""
    tokens = ["<|startoftranscript|>", *([f"<|{language}|>", "<|transcribe|>"] if multilingual else [])]
    tokens += [] if timestamps else ["<|notimestamps|>"]
    return [tokenizer.convert_tokens_to_ids(t) for t in tokens]


def english_prompt_ids(tokenizer, multilingual: bool) -> list[int]:
    """The decoder prompt for English transcription without timestamps (`prompt_ids`)."""
    return prompt_ids(tokenizer, multilingual, "en", timestamps=False)
