"""`litewhisper compress MODEL -o OUT`: calibrate, plan, factorize and save a lite-whisper checkpoint."""
from __future__ import annotations

import logging
from pathlib import Path

from .calibrate import add_calibration_args, add_model_args, calibration_config, load_bundle
from .plan import add_policy_args, policy_from_args

log = logging.getLogger("litewhisper")


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "compress", help="compress a Whisper encoder (LiteASR) into a lite-whisper checkpoint",
        description="Calibrate on speech, choose ranks, factorize the encoder's linear layers and write a "
                    "lite-whisper checkpoint (loadable with transformers' trust_remote_code=True). With no "
                    "--calibration, a small built-in synthetic speech set is used.")
    add_model_args(p)
    p.add_argument("-o", "--output", type=Path, required=True, metavar="OUT", help="checkpoint directory")
    add_calibration_args(p, required=False)
    add_policy_args(p)
    p.add_argument("--stats", type=Path, help="reuse statistics from `litewhisper calibrate` (no calibration)")
    p.add_argument("--save-stats", type=Path, metavar="FILE", help="also save the calibration statistics")
    p.add_argument("--overwrite", action="store_true", help="replace a non-empty output directory")
    p.set_defaults(func=run)


def _calibration_audio(args):
    from ..datasets import discover_audio
    if args.calibration:
        return discover_audio(args.calibration, split=args.split)
    from ..synth import builtin_calibration_audio
    log.warning("no --calibration given: using the built-in synthetic (eSpeak) calibration set; calibrating on "
                "real in-domain speech gives better accuracy")
    return builtin_calibration_audio()


def run(args) -> int:
    from ..atomic import check_output_dir
    from ..checkpoint import save_checkpoint
    from ..compress import compress
    from ..stats import ActivationStats

    check_output_dir(args.output, args.overwrite)  # fail before the long work
    policy = policy_from_args(args)
    config = calibration_config(args)
    stats = ActivationStats.load(args.stats) if args.stats else None
    audio = None if stats is not None else _calibration_audio(args)
    bundle = load_bundle(args)
    result = compress(bundle, audio, policy, stats=stats, config=config, progress=not args.quiet)
    if args.save_stats:
        result.stats.save(args.save_stats)
    print(result.plan.table())
    save_checkpoint(result.bundle, args.output, overwrite=args.overwrite)
    print(f"{args.model} -> {args.output}: {result.summary()}")
    return 0
