"""`litewhisper calibrate MODEL --calibration DIR|MANIFEST -o STATS.safetensors`: encoder output statistics."""

from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path

from litewhisper.constants import CALIBRATION_WINDOWS

__all__ = ["DTYPES", "add_model_args", "add_calibration_args", "add_parser", "calibration_config", "load_bundle", "run"]

log = logging.getLogger("litewhisper")

DTYPES = ("float32", "float16", "bfloat16")


def add_model_args(
    p: argparse.ArgumentParser,
    dtype_default: str | None = "float32",
    dtype_help: str = "model weights dtype (default float32)",
) -> None:
    p.add_argument("model", metavar="MODEL", help="tiny.en, base, a model directory or a hub id")
    p.add_argument("--device", default="cpu", help="torch device (default cpu)")
    p.add_argument("--dtype", choices=DTYPES, default=dtype_default, help=dtype_help)


def add_calibration_args(p: argparse.ArgumentParser, required: bool) -> None:
    p.add_argument(
        "--calibration",
        metavar="DIR|MANIFEST",
        required=required,
        help="calibration speech: a folder of audio files or a JSONL manifest (transcripts not needed)",
    )
    p.add_argument("--split", help="only manifest rows of this split (e.g. calib)")
    p.add_argument("--max-clips", type=int, help="use at most this many clips (default all)")
    p.add_argument(
        "--windows",
        choices=CALIBRATION_WINDOWS,
        default=None,
        help="one clip per 30-s window (clip, as the paper), clips packed end to end (pack), or one clip per "
        "window encoded as --window auto decodes it (short: clip + 2 s, at least 10 s); "
        "default: pack for compress's budget method, clip otherwise",
    )
    p.add_argument(
        "--frames",
        choices=("all", "audio"),
        default="all",
        help="count every encoder position (all) or only positions that carry audio (audio)",
    )
    p.add_argument("--batch-size", type=int, default=4, help="30-s windows encoded together (default 4)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "calibrate",
        help="collect encoder activation statistics for compression",
        description="Run calibration speech through the encoder and save each linear layer's output statistics "
        "(count, sum, Gram matrix; float64) for `litewhisper plan` and `litewhisper compress --stats`.",
    )
    add_model_args(p)
    add_calibration_args(p, required=True)
    p.add_argument("-o", "--output", type=Path, required=True, metavar="STATS.safetensors")
    p.add_argument(
        "--shard-seconds",
        type=float,
        default=300.0,
        help="clips are calibrated in shards of about this much audio, added in order: the same file "
        "for any number of torchrun workers (default 300)",
    )
    p.set_defaults(func=run)


def calibration_config(args, default_windows: str = "clip"):
    from litewhisper.compression.calibration import CalibrationConfig

    return CalibrationConfig(
        windowing=args.windows or default_windows,
        frames=args.frames,
        max_clips=args.max_clips,
        batch_size=args.batch_size,
        device=args.device,
        **({"shard_seconds": args.shard_seconds} if hasattr(args, "shard_seconds") else {}),
    )


def load_bundle(args, dtype: str | None = None):
    """The model of `args.model` in `dtype` (default `args.dtype`)."""
    import torch

    from litewhisper.models.load import load_model

    return load_model(args.model, device=args.device, dtype=getattr(torch, dtype or args.dtype))


def run(args) -> int:
    from litewhisper.audio.datasets import discover_audio
    from litewhisper.compression.calibration import calibrate
    from litewhisper.distributed import all_or_none, main_first, process_group

    config = calibration_config(args)
    with process_group(args.device) as world:  # torchrun: one shard of the clips per worker, rank 0 writes
        items = discover_audio(args.calibration, split=args.split)
        bundle = main_first(world, lambda: load_bundle(args), "loading the model")
        start = time.perf_counter()
        stats = calibrate(bundle, items, config, world=world)
        with all_or_none(world, f"writing {args.output}"):
            if stats is not None:
                stats.save(args.output)
    if stats is not None:
        print(
            f"wrote {args.output}: {len(stats.layers)} layers, {stats.clips} clips, {stats.frames} frames "
            f"({time.perf_counter() - start:.1f}s)" + (f" on {world.size} workers" if world.distributed else "")
        )
    return 0
