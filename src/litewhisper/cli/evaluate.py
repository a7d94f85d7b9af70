"""`litewhisper evaluate MODEL... --data MANIFEST`: corpus WER per domain and pooled, same settings for all."""
from __future__ import annotations

import argparse
import logging

log = logging.getLogger("litewhisper")


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "evaluate", help="corpus WER of one or more models on a manifest (per domain, pooled, macro)",
        description="Greedy decoding with identical settings for every model; corpus WER = total errors / "
                    "total reference words, per domain and pooled; CER for ja/zh/ko.")
    p.add_argument("models", nargs="+", metavar="MODEL", help="built-in name (tiny.en, base) or model directory")
    p.add_argument("--data", required=True, help="JSONL manifest with 'text' (or a folder holding manifest.jsonl)")
    p.add_argument("--split", default="dev", help="manifest split to evaluate (default dev; 'all' for every clip)")
    p.add_argument("--language", default=None,
                   help="keep only clips in this language (default: all; 'en' when a model is English-only)")
    p.add_argument("--normalizer", choices=("auto", "english", "basic"), default="auto",
                   help="text normaliser (auto: Whisper's English one for en clips, basic otherwise)")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--max-new-tokens", type=int, default=224, help="decoding limit per clip (default 224)")
    p.add_argument("--max-clips", type=int, default=None,
                   help="evaluate N clips only, spread round-robin over domains")
    p.add_argument("--json", dest="json_out", default=None, help="write the results as JSON here")
    p.add_argument("--hypotheses", default=None, help="append every hypothesis to this JSONL as it is produced")
    p.add_argument("--resume", action="store_true", help="skip clips already in --hypotheses")
    p.add_argument("--bootstrap", type=int, default=0, help="bootstrap resamples for a 95%% CI (e.g. 1000)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from litewhisper.distributed import all_or_none, detect_world, process_group
    from litewhisper.errors import LiteWhisperError
    from litewhisper.evaluation.evaluate import EvalConfig, evaluate, format_table, write_json

    if args.resume and not args.hypotheses:
        raise LiteWhisperError("--resume needs --hypotheses FILE (the JSONL of the interrupted run)")
    config = EvalConfig(split=None if args.split == "all" else args.split, language=args.language,
                        normalizer=args.normalizer, batch_size=args.batch_size, max_new_tokens=args.max_new_tokens,
                        bootstrap=args.bootstrap, max_clips=args.max_clips,
                        progress=not args.no_progress and detect_world().is_main)
    with process_group() as world:  # torchrun: the clips are shared out, rank 0 scores and writes
        report = evaluate(args.models, args.data, config, hypotheses=args.hypotheses, resume=args.resume,
                          world=world)
        with all_or_none(world, f"writing {args.json_out}"):
            if args.json_out and world.is_main:
                write_json(report, args.json_out)
    if not world.is_main:
        return 0
    print(format_table(report))
    for r in report.results:
        if r.n_hit_token_limit:
            print(f"{r.model}: {r.n_hit_token_limit} clip(s) hit the {args.max_new_tokens}-token limit "
                  f"(runaway decoding): {', '.join(r.hit_token_limit_ids[:10])}")
    if args.json_out:
        log.info("wrote %s", args.json_out)
    return 0
