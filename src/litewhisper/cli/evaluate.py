"""`litewhisper evaluate MODEL... --data MANIFEST`: corpus WER per domain and pooled, same settings for all."""

from __future__ import annotations

import argparse
import logging

from litewhisper.cli.decoding import add_decoding_args, decoding_options

log = logging.getLogger("litewhisper")


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "evaluate",
        help="corpus WER of one or more models on a manifest (per domain, pooled, macro)",
        description="Decodes exactly as `transcribe` does (same decoder, same options) with identical settings "
        "for every model; corpus WER = total errors / total reference words, per domain and pooled; "
        "CER for ja/zh/ko; loops (token-limit hits, high compression ratio) counted beside the WER. With several "
        "models, vs-first% is each model's relative change of corpus WER against the first model "
        "(with its paired-bootstrap 95% interval when --bootstrap N is given).",
    )
    p.add_argument("models", nargs="+", metavar="MODEL", help="built-in name (tiny.en, base) or model directory")
    p.add_argument("--data", required=True, help="JSONL manifest with 'text' (or a folder holding manifest.jsonl)")
    p.add_argument("--split", default=None, help="manifest split to evaluate (default: every row)")
    p.add_argument(
        "--language",
        default=None,
        help="keep only clips in this language (default: all; 'en' when a model is English-only)",
    )
    p.add_argument(
        "--normalizer",
        choices=("auto", "english", "basic"),
        default="auto",
        help="text normaliser (auto: Whisper's English one for en clips, basic otherwise)",
    )
    p.add_argument("--max-clips", type=int, default=None, help="evaluate N clips only, spread round-robin over domains")
    p.add_argument("--json", dest="json_out", default=None, help="write the results as JSON here")
    p.add_argument("--hypotheses", default=None, help="append every hypothesis to this JSONL as it is produced")
    p.add_argument("--resume", action="store_true", help="skip clips already in --hypotheses")
    p.add_argument(
        "--bootstrap",
        type=int,
        default=0,
        metavar="N",
        help="bootstrap resamples (e.g. 1000) for 95%% intervals of the WER and of vs-first%% (paired); "
        "default 0: no intervals, vs-first%% is the plain relative change",
    )
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument("--no-progress", dest="quiet", action="store_true", help=argparse.SUPPRESS)
    add_decoding_args(p, words=False)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from litewhisper.distributed import all_or_none, process_group
    from litewhisper.errors import LiteWhisperError
    from litewhisper.evaluation.evaluate import EvalConfig, evaluate, format_table, write_json
    from litewhisper.progress import quiet

    if args.resume and not args.hypotheses:
        raise LiteWhisperError("--resume needs --hypotheses FILE (the JSONL of the interrupted run)")
    config = EvalConfig(
        split=None if args.split == "all" else args.split,
        language=args.language,
        normalizer=args.normalizer,
        decoding=decoding_options(args),
        bootstrap=args.bootstrap,
        max_clips=args.max_clips,
    )
    # torchrun: the clips are shared out, rank 0 scores and writes
    with quiet(args.quiet), process_group() as world:
        report = evaluate(args.models, args.data, config, hypotheses=args.hypotheses, resume=args.resume, world=world)
        with all_or_none(world, f"writing {args.json_out}"):
            if args.json_out and world.is_main:
                write_json(report, args.json_out)
    if not world.is_main:
        return 0
    print(format_table(report))
    for r in report.results:
        lp = r.loops
        if lp.ids:
            print(
                f"{r.model}: {len(lp.ids)} loop/hallucination clip(s) ({r.n_hit_token_limit} hit the "
                f"{config.decoding.max_new_tokens}-token limit, {len(lp.high_compression_ids)} with compression "
                f"ratio > {config.loop_ratio:g}) make {100 * lp.error_share:.1f}% of the errors: "
                f"{', '.join(lp.ids[:10])}"
            )
    if args.json_out:
        log.info("wrote %s", args.json_out)
    return 0
