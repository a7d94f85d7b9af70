"""`litewhisper report --model tiny.en --calibration ... --data ... -o DIR`: tables and figures in Markdown."""

from __future__ import annotations

import argparse
import logging
import shlex

from litewhisper.cli.decoding import add_decoding_args, decoding_options

__all__ = ["add_parser", "run"]

log = logging.getLogger("litewhisper")


def _floats(text: str) -> tuple[float, ...]:
    try:
        return tuple(float(x) for x in text.replace(",", " ").split())
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"expected numbers like 0.95,0.99,0.999, got {text!r}") from exc


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "report",
        help="Markdown report with figures: presets vs original, Pareto, rank heatmap, θ sweep",
        description="Calibrates once, compresses with every preset and a θ sweep, evaluates all variants with "
        "identical greedy decoding, times the encoders interleaved, and writes README.md + PNGs.",
    )
    p.add_argument("--model", default="tiny.en", help="model to compress (default tiny.en)")
    p.add_argument("--calibration", required=True, help="calibration manifest or folder")
    p.add_argument("--data", required=True, help="evaluation manifest (with reference 'text')")
    p.add_argument("-o", "--output", required=True, help="report directory (written atomically)")
    p.add_argument("--split-calib", default="calib", help="calibration split (default calib; 'all' for every clip)")
    p.add_argument("--split-dev", default="dev", help="evaluation split (default dev)")
    p.add_argument("--max-clips", type=int, default=None, help="evaluate on N clips, spread round-robin over domains")
    p.add_argument("--max-calib-clips", type=int, default=None, help="calibrate on the first N clips only")
    p.add_argument("--presets", default="acc,balanced,fast", help="presets in Table 1 (default acc,balanced,fast)")
    p.add_argument(
        "--target-sizes",
        type=_floats,
        default=(0.9, 0.8, 0.7),
        help="litewhisper budget variants in Table 1 / Figure 1 (encoder size fractions; default 0.9,0.8,0.7)",
    )
    p.add_argument(
        "--thetas",
        type=_floats,
        default=(0.95, 0.97, 0.99, 0.995, 0.999),
        help="θ values for Figure 7 (default 0.95,0.97,0.99,0.995,0.999; '' to skip)",
    )
    p.add_argument("--multilingual", default="base", help="model for Table 2 (default base; 'none' to skip)")
    p.add_argument("--bench-repeats", type=int, default=5, help="interleaved timing rounds (default 5)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing report directory")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.add_argument("--no-progress", dest="quiet", action="store_true", help=argparse.SUPPRESS)
    add_decoding_args(p, words=False)
    p.set_defaults(func=run)


def _command(args: argparse.Namespace) -> str:
    """The command line that reproduces this report (from the parsed arguments)."""
    parts = [
        "litewhisper",
        "report",
        "--model",
        args.model,
        "--calibration",
        args.calibration,
        "--data",
        args.data,
        "-o",
        args.output,
        "--split-calib",
        args.split_calib,
        "--split-dev",
        args.split_dev,
        "--presets",
        args.presets,
        "--thetas",
        ",".join(f"{t:g}" for t in args.thetas) or "''",
        "--multilingual",
        args.multilingual,
        *_decoding_flags(args),
    ]
    for flag, value in (("--max-clips", args.max_clips), ("--max-calib-clips", args.max_calib_clips)):
        if value is not None:
            parts += [flag, str(value)]
    return " ".join(shlex.quote(p) for p in parts)


def _decoding_flags(args: argparse.Namespace) -> list[str]:
    """The decoding flags given on the command line, as flags again."""
    out = [] if getattr(args, "decoding", "default") == "default" else ["--decoding", args.decoding]
    for name in (
        "beam_size",
        "temperature",
        "compression_ratio_threshold",
        "logprob_threshold",
        "no_speech_threshold",
        "max_new_tokens",
        "initial_prompt",
        "batch_size",
    ):
        if hasattr(args, name):
            value = getattr(args, name)
            out += [
                f"--{name.replace('_', '-')}",
                ",".join(f"{t:g}" for t in value) if isinstance(value, tuple) else str(value),
            ]
    return out + (["--vad"] if getattr(args, "vad", False) else [])


def run(args: argparse.Namespace) -> int:
    from litewhisper.atomic import check_output_dir
    from litewhisper.progress import quiet
    from litewhisper.report.report import ReportConfig, run_report

    check_output_dir(args.output, args.overwrite, flag="--overwrite")  # before hours of work
    split = {"all": None}
    config = ReportConfig(
        model=args.model,
        split_calib=split.get(args.split_calib, args.split_calib),
        split_dev=split.get(args.split_dev, args.split_dev),
        max_clips=args.max_clips,
        max_calib_clips=args.max_calib_clips,
        presets=tuple(p for p in args.presets.split(",") if p),
        thetas=args.thetas,
        target_sizes=args.target_sizes,
        multilingual=None if args.multilingual.lower() == "none" else args.multilingual,
        decoding=decoding_options(args),
        bench_repeats=args.bench_repeats,
    )
    command = _command(args)
    with quiet(args.quiet):
        path = run_report(config, args.calibration, args.data, args.output, overwrite=args.overwrite, command=command)
    print(f"report written: {path}")
    return 0
