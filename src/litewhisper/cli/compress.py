"""`litewhisper compress MODEL -o OUT`: calibrate, plan, factorize and save a lite-whisper checkpoint."""
from __future__ import annotations

import logging
from pathlib import Path

from litewhisper.cli.calibrate import add_calibration_args, add_model_args, calibration_config, load_bundle
from litewhisper.cli.plan import add_policy_args, policy_from_args

log = logging.getLogger("litewhisper")


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "compress", help="compress a Whisper encoder (LiteASR) into a lite-whisper checkpoint",
        description="Calibrate on speech, choose ranks, factorize the encoder's linear layers and write a "
                    "lite-whisper checkpoint (loadable with transformers' trust_remote_code=True). By default the "
                    "ranks are allocated across layers for a target size (--target-size or --preset), weighted by "
                    "each layer's measured effect on the encoder output; --method liteasr uses the paper's one θ "
                    "for all layers. With no --calibration, a small built-in synthetic speech set is used.")
    add_model_args(p)
    p.add_argument("-o", "--output", type=Path, required=True, metavar="OUT", help="checkpoint directory")
    add_calibration_args(p, required=False)
    add_policy_args(p)
    p.add_argument("--stats", type=Path, help="reuse statistics from `litewhisper calibrate` (no calibration)")
    p.add_argument("--save-stats", type=Path, metavar="FILE", help="also save the calibration statistics")
    p.add_argument("--overwrite", action="store_true", help="replace a non-empty output directory")
    add_budget_args(p)
    p.set_defaults(func=run)


def add_budget_args(p) -> None:
    """Budgeted compression (litewhisper.compression.budget): ranks allocated across layers for a target encoder size."""
    p.add_argument("--method", choices=("liteasr", "budget"), default=None,
                   help="budget (default): ranks allocated across layers, weighted by measured sensitivity, to "
                        "reach --target-size or the preset's size; liteasr: the paper's one θ for all layers "
                        "(--preset / --theta-*; the default when --theta-* is given)")
    p.add_argument("--target-size", type=float, metavar="FRAC",
                   help="encoder parameters as a fraction of the original (e.g. 0.8); implies --method budget")
    p.add_argument("--sequential", action="store_true",
                   help="budget: fit each layer on the outputs of the already compressed layers before it")
    p.add_argument("--no-sensitivity", dest="sensitivity", action="store_false",
                   help="budget: treat every layer's lost variance alike instead of weighting it by the layer's "
                        "measured effect on the encoder output (default: weighted)")
    p.add_argument("--refine-steps", type=int, default=0,
                   help="budget: steps of encoder feature distillation of the factors (0: none)")


def _method(args) -> str:
    """The compression method asked for: explicit --method, else liteasr when θ is given, else budget."""
    from litewhisper.errors import LiteWhisperError
    theta_given = args.theta_attn is not None or args.theta_mlp is not None
    if theta_given and args.target_size is not None:
        raise LiteWhisperError("give either --target-size (budget method) or --theta-attn/--theta-mlp (liteasr), "
                               "not both")
    if args.method == "liteasr" and args.target_size is not None:
        raise LiteWhisperError("--target-size is for --method budget; plain LiteASR takes --preset/--theta-*")
    if args.method == "budget" and theta_given:
        raise LiteWhisperError("--theta-attn/--theta-mlp are for --method liteasr; the budget method takes "
                               "--target-size or --preset")
    return args.method or ("liteasr" if theta_given else "budget")


def _compress_budget(args, bundle, audio, stats, config):
    from litewhisper.compression.budget import BUDGET_PRESETS, compress_to_size
    from litewhisper.compression.refine import RefineConfig
    target = args.target_size if args.target_size is not None else BUDGET_PRESETS[args.preset]
    log.info("budget method: target encoder size %.2f of the original", target)
    refine_config = RefineConfig(max_steps=args.refine_steps) if args.refine_steps > 0 else None
    return compress_to_size(bundle, audio, target, stats=stats, config=config, sequential=args.sequential,
                            refine_config=refine_config, multiple_of=args.multiple_of, sensitivity=args.sensitivity,
                            progress=not args.quiet)


def _needs_audio(args, stats) -> bool:
    """Calibration audio is read unless statistics alone suffice (plain LiteASR or the unweighted budget)."""
    if stats is None:
        return True
    return _method(args) == "budget" and (args.sensitivity or args.sequential or args.refine_steps > 0)


def _calibration_audio(args):
    from litewhisper.audio.datasets import discover_audio
    if args.calibration:
        return discover_audio(args.calibration, split=args.split)
    from litewhisper.audio.synth import builtin_calibration_audio
    log.warning("no --calibration given: using the built-in synthetic (eSpeak) calibration set; calibrating on "
                "real in-domain speech gives better accuracy")
    return builtin_calibration_audio()


def run(args) -> int:
    from litewhisper.atomic import check_output_dir
    from litewhisper.models.checkpoint import save_checkpoint
    from litewhisper.compression.api import compress
    from litewhisper.compression.stats import ActivationStats

    check_output_dir(args.output, args.overwrite)  # fail before the long work
    method = _method(args)
    policy = policy_from_args(args)
    config = calibration_config(args, default_windows="pack" if method == "budget" else "clip")
    stats = ActivationStats.load(args.stats) if args.stats else None
    audio = _calibration_audio(args) if _needs_audio(args, stats) else None
    bundle = load_bundle(args)
    if method == "budget":
        result = _compress_budget(args, bundle, audio, stats, config)
    else:
        result = compress(bundle, audio, policy, stats=stats, config=config, progress=not args.quiet)
    if args.save_stats:
        result.stats.save(args.save_stats)
    print(result.plan.table())
    save_checkpoint(result.bundle, args.output, overwrite=args.overwrite)
    print(f"{args.model} -> {args.output}: {result.summary()}")
    return 0
