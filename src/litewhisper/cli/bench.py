"""`litewhisper bench MODEL...`: encoder latency (interleaved), speedup vs the first model, FLOPs, RTF."""

from __future__ import annotations

import argparse
import json
import logging

from litewhisper.cli.decoding import add_decoding_args, decoding_options

log = logging.getLogger("litewhisper")


def _int_list(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(x) for x in text.split(",") if x.strip())
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers like 1,4,8, got {text!r}") from exc


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "bench",
        help="encoder latency and speedup vs the first model; FLOPs; end-to-end real-time factor",
        description="Models are timed interleaved (A B A B) in one process after a warm-up; the speedup is the "
        "median per-round ratio against the first model, shown next to the ideal FLOP ratio.",
    )
    p.add_argument("models", nargs="+", metavar="MODEL", help="built-in name (tiny.en, base) or model directory")
    # dest: not `batch_size`, which is the decoding flags' clip batch (DecodeOptions.batch_size)
    p.add_argument(
        "--batch-size",
        dest="encoder_batch_sizes",
        type=_int_list,
        default=(1,),
        help="encoder batch sizes, e.g. 1,4,8 (default 1)",
    )
    p.add_argument("--threads", type=int, default=None, help="CPU threads (torch and CTranslate2)")
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument("--repeats", type=int, default=10, help="timed rounds per batch size (default 10)")
    p.add_argument("--warmup", type=int, default=2, help="untimed warm-up rounds (default 2)")
    p.add_argument(
        "--attention",
        choices=("auto", "standard"),
        default="auto",
        help="lite-whisper models: reduced-dimension self-attention where it saves FLOPs (auto, "
        "default) or the ordinary projections (standard)",
    )
    p.add_argument("--data", default=None, help="manifest or folder for the end-to-end real-time factor")
    p.add_argument("--split", default=None, help="manifest split for --data (default: every row)")
    p.add_argument("--max-clips", type=int, default=16, help="end-to-end clips (default 16)")
    p.add_argument(
        "--peer",
        choices=("faster-whisper", "ctranslate2"),
        default=None,
        help="also time the first model's original checkpoint in CTranslate2 (int8 and float32)",
    )
    p.add_argument("--json", dest="json_out", default=None, help="write the measurements as JSON here")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    add_decoding_args(p, words=False, batch=False)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from litewhisper.atomic import atomic_write_text
    from litewhisper.bench.latency import BenchConfig, bench, format_bench, report_dict
    from litewhisper.progress import quiet

    config = BenchConfig(
        batch_sizes=args.encoder_batch_sizes,
        repeats=args.repeats,
        warmup=args.warmup,
        threads=args.threads,
        device=args.device,
        max_clips=args.max_clips,
        decoding=decoding_options(args),
        attention=args.attention,
    )
    with quiet(args.quiet):
        report = bench(
            args.models, config, data=args.data, split=None if args.split == "all" else args.split, peer=args.peer
        )
    print(format_bench(report))
    if args.json_out:
        atomic_write_text(args.json_out, json.dumps(report_dict(report), indent=2) + "\n")
        log.info("wrote %s", args.json_out)
    return 0
