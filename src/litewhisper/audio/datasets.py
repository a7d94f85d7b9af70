"""Audio collections: a folder of audio files, or a JSONL manifest (`path` relative to it, optional `text`)."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from litewhisper.audio.load import AUDIO_EXTENSIONS
from litewhisper.errors import AudioError, LiteWhisperError

__all__ = ["AudioItem", "read_manifest", "discover_audio", "split_label"]


@dataclass(frozen=True)
class AudioItem:
    """One clip of a collection; fields beyond `path` are present when the manifest gives them."""

    path: Path
    text: str | None = None
    lang: str | None = None
    domain: str | None = None
    split: str | None = None
    duration_s: float | None = None
    id: str | None = None


def read_manifest(path: str | os.PathLike, split: str | None = None, check_files: bool = True) -> list[AudioItem]:
    """Parse a JSONL manifest; `path` entries are resolved relative to the manifest's folder.

    With `check_files`, AudioError lists the rows (of `split`) whose audio file is missing, before any work.
    """
    path = Path(path)
    items = []
    missing: list[str] = []  # 'rel (line N)' of rows whose file is missing
    for line_no, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            rel = row["path"]
            audio = (path.parent / rel).resolve()
        except (json.JSONDecodeError, KeyError, TypeError) as exc:
            raise LiteWhisperError(
                f"{path}:{line_no}: expected a JSON object with a 'path' field, got {line[:80]!r}"
            ) from exc
        if split is not None and row.get("split") != split:
            continue
        if check_files and not audio.is_file():
            missing.append(f"{rel} (line {line_no})")
        items.append(
            AudioItem(
                path=audio,
                text=row.get("text"),
                lang=row.get("lang"),
                domain=row.get("domain"),
                split=row.get("split"),
                duration_s=row.get("duration_s"),
                id=row.get("utt_id") or rel,
            )
        )
    if missing:
        more = f" and {len(missing) - 5} more" if len(missing) > 5 else ""
        raise AudioError(
            f"{path}: {len(missing)} of {len(items)} rows ({split_label(split)}) point at missing audio files: "
            f"{', '.join(missing[:5])}{more}; each 'path' is relative to the manifest's folder "
            f"{path.parent.resolve()}: fix those paths or remove their rows"
        )
    return items


def split_label(split: str | None) -> str:
    """How a split filter reads in messages: "split 'dev'", or "every split" for None."""
    return "every split" if split is None else f"split {split!r}"


def discover_audio(source: str | os.PathLike, split: str | None = None) -> list[AudioItem]:
    """Audio items from a folder (recursively, sorted) or a `.jsonl` manifest.

    Raises LiteWhisperError when the source is missing or holds no audio.
    """
    source = Path(source)
    if source.is_file() and source.suffix in (".jsonl", ".json"):
        items = read_manifest(source, split=split)
    elif source.is_dir():
        if (source / "manifest.jsonl").is_file():
            items = read_manifest(source / "manifest.jsonl", split=split)
        else:
            items = [
                AudioItem(path=p)
                for p in sorted(source.rglob("*"))
                if p.suffix.lower() in AUDIO_EXTENSIONS and p.is_file()
            ]
    elif source.is_file() and source.suffix.lower() in AUDIO_EXTENSIONS:
        items = [AudioItem(path=source)]
    else:
        raise LiteWhisperError(
            f"audio source {source} not found or not usable: expected a folder of audio files "
            f"({', '.join(AUDIO_EXTENSIONS)}) or a JSONL manifest"
        )
    manifest = source if source.is_file() else source / "manifest.jsonl"
    if not items and split is not None and manifest.is_file() and manifest.suffix in (".jsonl", ".json"):
        splits = sorted({str(it.split) for it in read_manifest(manifest, check_files=False)})
        raise LiteWhisperError(
            f"split {split!r} not in {manifest}: it has split(s) {', '.join(splits)} (omit --split for every row)"
        )
    if not items:
        where = f" ({split_label(split)})" if split else ""
        raise LiteWhisperError(f"no audio found in {source}{where}")
    return items
