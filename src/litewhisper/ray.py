"""Batch transcription on a Ray cluster: a callable class for Ray Data's `map_batches` (extra `[ray]`).

    import ray
    from litewhisper.ray import Transcriber

    ds = ray.data.from_items([{"path": str(p)} for p in Path("audio").rglob("*.flac")])
    out = ds.map_batches(Transcriber, fn_constructor_kwargs={"model": "tiny.en"}, concurrency=4, batch_size=16)
    out.write_json("transcripts/")

Each actor loads the model once; every row gets the record `litewhisper transcribe --format json` writes
(path, text, language, duration_s, segments) plus `error` (None, or why the file could not be transcribed,
in which case text is None).
"""
from __future__ import annotations

from dataclasses import asdict
from typing import Any

__all__ = ["Transcriber", "RECORD_FIELDS"]

RECORD_FIELDS = ("path", "text", "language", "duration_s", "segments", "error")


def _schema():
    import pyarrow as pa

    segment = pa.struct([("start", pa.float64()), ("end", pa.float64()), ("text", pa.string())])
    return pa.schema([("path", pa.string()), ("text", pa.string()), ("language", pa.string()),
                      ("duration_s", pa.float64()), ("segments", pa.list_(segment)), ("error", pa.string())])


class Transcriber:
    """Callable class for `Dataset.map_batches`: a batch with a `path` column -> transcription records."""

    def __init__(self, model: str = "tiny.en", *, device: str = "cpu", dtype: str = "float32",
                 language: str | None = None, task: str = "transcribe", batch_size: int = 8):
        import torch

        from litewhisper.decode.transcribe import DecodeOptions
        from litewhisper.models.load import load_model

        DecodeOptions(language, task, batch_size)  # bad options fail when the actor starts
        self.bundle = load_model(model, device=device, dtype=getattr(torch, dtype))
        self.options = {"language": language, "task": task, "batch_size": batch_size}

    def __call__(self, batch: dict[str, Any]):
        """Transcribe `batch["path"]`; returns a pyarrow Table of RECORD_FIELDS, one row per path, in order."""
        import pyarrow as pa

        from litewhisper.decode.transcribe import TranscriptionFailure, transcribe_iter
        from litewhisper.progress import quiet

        paths = [str(p) for p in batch["path"]]
        records: list[dict[str, Any]] = [{}] * len(paths)
        with quiet():
            for index, result in transcribe_iter(self.bundle, paths, return_segments=True, progress=False,
                                                 **self.options):
                if isinstance(result, TranscriptionFailure):
                    records[index] = {"path": result.path, "text": None, "language": None, "duration_s": None,
                                      "segments": [], "error": result.error}
                else:
                    records[index] = {**asdict(result), "error": None}
        return pa.Table.from_pylist(records, schema=_schema())
