"""Decoding flags shared by transcribe, evaluate, bench and report: they build one `DecodeOptions`.

Not a sub-command. Flags left out keep the preset's value (`--decoding default`: what transcribe does).
"""

from __future__ import annotations

import argparse

from litewhisper.constants import (
    BUDGET_FLOOR_TOKENS,
    TOKENS_PER_SECOND,
    WINDOW_FLOOR_S,
    WINDOW_MARGIN_S,
    WINDOW_POLICIES,
)

__all__ = ["add_decoding_args", "decoding_options"]

_FIELDS = (
    "beam_size",
    "temperature",
    "compression_ratio_threshold",
    "logprob_threshold",
    "no_speech_threshold",
    "max_new_tokens",
    "tokens_per_second",
    "initial_prompt",
    "batch_size",
    "vad",
    "word_timestamps",
    "window",
    "window_floor",
    "window_margin",
)


def _temperatures(text: str) -> tuple[float, ...]:
    try:
        return tuple(float(x) for x in text.replace(",", " ").split())
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"expected temperatures like 0,0.2,0.4,0.6,0.8,1, got {text!r}") from exc


def _threshold(text: str) -> float | None:
    if text.lower() in ("none", "off"):
        return None
    try:
        return float(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"expected a number or 'none', got {text!r}") from exc


def add_decoding_args(p: argparse.ArgumentParser, words: bool = True, batch: bool = True) -> None:
    """Register the decoding flags; a flag not given leaves the preset's value."""
    g = p.add_argument_group(
        "decoding (the same decoder for transcribe, evaluate, bench and report)", argument_default=argparse.SUPPRESS
    )
    g.add_argument(
        "--decoding",
        choices=("default", "leaderboard"),
        default="default",
        help="preset: default (timestamps, temperature fallback, no-speech rule: what transcribe "
        "does) or leaderboard (greedy, no timestamps, no fallback)",
    )
    g.add_argument("--beam-size", type=int, help="beam search width (default 1: greedy)")
    g.add_argument(
        "--temperature",
        type=_temperatures,
        help="temperature fallback schedule (default 0,0.2,0.4,0.6,0.8,1; one value: no fallback)",
    )
    g.add_argument(
        "--compression-ratio-threshold",
        type=_threshold,
        help="re-decode a window whose gzip compression ratio exceeds this (default 2.4; none: off)",
    )
    g.add_argument(
        "--logprob-threshold",
        type=_threshold,
        help="re-decode a window whose average log-probability is below this (default -1; none: off)",
    )
    g.add_argument(
        "--no-speech-threshold",
        type=_threshold,
        help="a window with no-speech probability above this and low log-probability is silence "
        "(default 0.6; none: off)",
    )
    g.add_argument("--max-new-tokens", type=int, help="token limit per 30-s window (default 224)")
    g.add_argument(
        "--tokens-per-second",
        type=_threshold,
        help="token budget per window: a window holding d s of audio emits at most min(max-new-tokens, "
        f"ceil(RATE*d) + {BUDGET_FLOOR_TOKENS}) tokens, fallback re-decodes included "
        f"(default {TOKENS_PER_SECOND:g}; none: max-new-tokens only)",
    )
    g.add_argument(
        "--window",
        choices=WINDOW_POLICIES,
        help="encoder window: full (30 s of mel frames, Whisper's padding) or auto (a window holding d s of audio "
        "encodes max(d + margin, floor) s: short clips cost less; default full)",
    )
    g.add_argument(
        "--window-floor", type=float, help=f"shortest encoder window with --window auto (s, default {WINDOW_FLOOR_S:g})"
    )
    g.add_argument(
        "--window-margin",
        type=float,
        help=f"seconds encoded after the audio's end with --window auto (default {WINDOW_MARGIN_S:g})",
    )
    g.add_argument("--initial-prompt", help="text to condition the first window on (names, spelling, style)")
    if batch:
        g.add_argument("--batch-size", type=int, help="clips decoded together (default 8; 1: one at a time)")
    g.add_argument(
        "--vad",
        action="store_true",
        help="skip non-speech with Silero VAD first (needs: pip install 'litewhisper[vad]')",
    )
    if words:
        g.add_argument(
            "--word-timestamps",
            action="store_true",
            help="per-word times from cross-attention alignment (json, srt, vtt)",
        )


def decoding_options(args: argparse.Namespace, **fixed):
    """The DecodeOptions of the parsed flags (`fixed`: fields the command sets itself, e.g. language)."""
    from litewhisper.decode.options import DecodeOptions

    changes = {n: getattr(args, n) for n in _FIELDS if hasattr(args, n)}  # flags not given are absent
    return DecodeOptions.preset(getattr(args, "decoding", "default"), **changes, **fixed)
