"""Batch transcription on a Ray cluster: a callable class for Ray Data's `map_batches` (extra `[ray]`).

    import ray
    from litewhisper.ray import Transcriber

    ds = ray.data.from_items([{"path": str(p)} for p in Path("audio").rglob("*.flac")])
    out = ds.map_batches(Transcriber, fn_constructor_kwargs={"model": "tiny.en"}, concurrency=4, batch_size=16)
    out.write_json("transcripts/")

Each actor loads the model once; every row gets the record `litewhisper transcribe --format json` writes
(path, text, language, segments, duration_s, n_tokens, hit_token_limit) plus `error` (None, or why the file
could not be transcribed, in which case text is None). `decoding` names a preset ("default", "leaderboard")
and further keyword arguments are `DecodeOptions` fields (language, task, batch_size, vad, ...).
"""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

__all__ = ["Transcriber", "RECORD_FIELDS"]

RECORD_FIELDS = ("path", "text", "language", "segments", "duration_s", "n_tokens", "hit_token_limit", "error")


def _schema():
    """Arrow types of the records (fixed, so blocks whose rows are all failures still concatenate)."""
    import pyarrow as pa

    f64 = pa.float64()
    word = pa.struct([("start", f64), ("end", f64), ("word", pa.string()), ("probability", f64)])
    segment = pa.struct([("start", f64), ("end", f64), ("text", pa.string()), ("words", pa.list_(word))])
    return pa.schema(
        [
            ("path", pa.string()),
            ("text", pa.string()),
            ("language", pa.string()),
            ("segments", pa.list_(segment)),
            ("duration_s", f64),
            ("n_tokens", pa.int64()),
            ("hit_token_limit", pa.bool_()),
            ("error", pa.string()),
        ]
    )


class Transcriber:
    """Callable class for `Dataset.map_batches`: a batch with a `path` column -> transcription records."""

    def __init__(
        self,
        model: str = "tiny.en",
        *,
        device: str = "cpu",
        dtype: str = "float32",
        decoding: str = "default",
        **options: Any,
    ):
        import torch

        from litewhisper.decode.options import DecodeOptions
        from litewhisper.models.load import load_model

        self.options = DecodeOptions.preset(decoding, **options)  # bad options fail when the actor starts
        self.bundle = load_model(model, device=device, dtype=getattr(torch, dtype))

    def __call__(self, batch: dict[str, Any]):
        """Transcribe `batch["path"]`; returns a pyarrow Table of RECORD_FIELDS, one row per path, in order."""
        import pyarrow as pa

        from litewhisper.decode.transcribe import TranscriptionFailure, decode
        from litewhisper.progress import quiet

        paths = [str(p) for p in batch["path"]]
        records: list[dict[str, Any]] = [{}] * len(paths)
        with quiet():
            for index, result in decode(self.bundle, paths, self.options):
                if isinstance(result, TranscriptionFailure):
                    records[index] = {
                        **dict.fromkeys(RECORD_FIELDS),
                        "path": result.path,
                        "segments": [],
                        "error": result.error,
                    }
                else:
                    records[index] = {**asdict(result), "error": None}
        return pa.Table.from_pylist(records, schema=_schema())
