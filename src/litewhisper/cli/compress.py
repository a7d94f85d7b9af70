"""`litewhisper compress MODEL -o OUT`: calibrate, plan, factorize and save a lite-whisper checkpoint."""

from __future__ import annotations

import logging
import shutil
import time
from pathlib import Path

from litewhisper.cli.calibrate import add_calibration_args, add_model_args, calibration_config, load_bundle
from litewhisper.cli.plan import add_policy_args, policy_from_args
from litewhisper.constants import REFIT_RIDGE

__all__ = ["add_parser", "add_budget_args", "compress_policy", "run"]

log = logging.getLogger("litewhisper")


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "compress",
        help="compress a Whisper encoder (LiteASR) into a lite-whisper checkpoint",
        description="Calibrate on speech, choose ranks, factorize the encoder's linear layers and write a "
        "lite-whisper checkpoint (loadable with transformers' trust_remote_code=True). By default the "
        "ranks are allocated across layers for a target size (--target-size or --preset), weighted by "
        "each layer's measured effect on the encoder output; --method liteasr uses the paper's one θ "
        "for all layers. With no --calibration, a small built-in synthetic speech set is used.",
    )
    add_model_args(
        p,
        dtype_default=None,
        dtype_help="dtype of the saved checkpoint (default: the source model's, e.g. float16 for tiny.en); "
        "compression itself computes in float32",
    )
    p.add_argument("-o", "--output", type=Path, required=True, metavar="OUT", help="checkpoint directory")
    add_calibration_args(p, required=False)
    add_policy_args(p)
    p.add_argument("--stats", type=Path, help="reuse statistics from `litewhisper calibrate` (no calibration)")
    p.add_argument("--save-stats", type=Path, metavar="FILE", help="also save the calibration statistics")
    p.add_argument("--overwrite", action="store_true", help="replace a non-empty output directory")
    add_budget_args(p)
    p.set_defaults(func=run)


def add_budget_args(p) -> None:
    """Budgeted compression (litewhisper.compression.budget): ranks allocated across layers for a target encoder
    size."""
    p.add_argument(
        "--method",
        choices=("liteasr", "budget"),
        default=None,
        help="budget (default): ranks allocated across layers, weighted by measured sensitivity, to "
        "reach --target-size or the preset's size; liteasr: the paper's one θ for all layers "
        "(--preset / --theta-*; the default when --theta-* is given)",
    )
    p.add_argument(
        "--target-size",
        type=float,
        metavar="FRAC",
        help="encoder parameters as a fraction of the original (e.g. 0.8); implies --method budget",
    )
    p.add_argument(
        "--sequential",
        action="store_true",
        help="budget: fit each layer on the outputs of the already compressed layers before it",
    )
    p.add_argument(
        "--refit",
        type=float,
        nargs="?",
        const=REFIT_RIDGE,
        default=None,
        metavar="RIDGE",
        help="budget: after factorizing, refit each low-rank layer in closed form (ridge least squares) on the "
        "compressed model's own inputs against the original's outputs; RIDGE pulls the fit toward the "
        f"factors (default {REFIT_RIDGE})",
    )
    p.add_argument(
        "--no-sensitivity",
        dest="sensitivity",
        action="store_false",
        help="budget: treat every layer's lost variance alike instead of weighting it by the layer's "
        "measured effect on the encoder output (default: weighted)",
    )
    p.add_argument(
        "--refine-steps",
        type=int,
        default=0,
        help="budget: steps of distillation of the low-rank factors from the original model (0: none); labels "
        "and training state are kept in OUTPUT.recovery/ so an interrupted run resumes (removed once saved)",
    )
    p.add_argument(
        "--refine-minutes",
        type=float,
        default=None,
        help="with --refine-steps: stop refining after this many minutes (the best state so far is kept)",
    )
    p.add_argument("--refine-lr", type=float, default=1e-4, help="with --refine-steps: peak learning rate")
    p.add_argument(
        "--refine-warmup",
        type=float,
        default=0.0,
        help="with --refine-steps: fraction of the steps with a linear learning-rate warm-up (e.g. 0.1)",
    )
    p.add_argument(
        "--refine-clip", type=float, default=None, help="with --refine-steps: gradient-norm clipping (e.g. 1.0)"
    )
    p.add_argument("--refine-windows", type=int, default=48, help="with --refine-steps: windows drawn (one clip each)")
    p.add_argument(
        "--refine-audio",
        nargs="+",
        metavar="SOURCE",
        default=None,
        help="with --refine-steps: unlabeled audio to draw the windows from: DIR|MANIFEST (read with --split), "
        "'calibration' (the --calibration audio, the default) and/or 'synthetic:N' (N built-in eSpeak clips)",
    )
    p.add_argument(
        "--refine-window",
        choices=("full", "auto", "both"),
        default="full",
        help="with --refine-steps (decoder objective): the student encodes whole 30-s windows (full), the short "
        "windows `--window auto` decodes with (auto: floor 10 s, margin 2 s), or both; the original always reads "
        "full windows",
    )
    p.add_argument(
        "--refine-hidden",
        type=float,
        default=0.0,
        help="with --refine-steps (decoder objective): weight of the decoder layers' relative squared error "
        "against the original's (ACFT's objective) beside the next-token KL + cross-entropy",
    )
    p.add_argument(
        "--refine-pull",
        type=float,
        default=0.0,
        help="with --refine-steps: weight of an L2 pull toward the initial factors (relative squared distance)",
    )
    p.add_argument(
        "--refine-objective",
        choices=("decoder", "encoder"),
        default="decoder",
        help="with --refine-steps: decoder = match the decoder's next-token distributions on the "
        "original model's transcripts of the calibration audio (distil-whisper style); encoder = "
        "match the final encoder states",
    )


def _method(args) -> str:
    """The compression method asked for: explicit --method, else liteasr when θ is given, else budget."""
    from litewhisper.errors import LiteWhisperError

    theta_given = args.theta_attn is not None or args.theta_mlp is not None
    if theta_given and args.target_size is not None:
        raise LiteWhisperError(
            "give either --target-size (budget method) or --theta-attn/--theta-mlp (liteasr), not both"
        )
    if args.method == "liteasr" and args.target_size is not None:
        raise LiteWhisperError("--target-size is for --method budget; plain LiteASR takes --preset/--theta-*")
    if args.method == "budget" and theta_given:
        raise LiteWhisperError(
            "--theta-attn/--theta-mlp are for --method liteasr; the budget method takes --target-size or --preset"
        )
    return args.method or ("liteasr" if theta_given else "budget")


def compress_policy(args):
    """The policy the flags ask for: a SizeBudget (budget method) or a RankPolicy (--method liteasr)."""
    from litewhisper.compression.policy import BUDGET_PRESETS, SizeBudget

    if _method(args) == "liteasr":
        return policy_from_args(args)
    target = args.target_size if args.target_size is not None else BUDGET_PRESETS[args.preset]
    from litewhisper.compression.refine import RefineConfig
    from litewhisper.errors import LiteWhisperError

    if args.refine_steps < 0:
        raise LiteWhisperError(f"--refine-steps must be ≥ 0, got {args.refine_steps}")
    if args.refine_audio and not args.refine_steps:
        raise LiteWhisperError("--refine-audio chooses what refinement trains on: give --refine-steps N too")
    refine = (
        RefineConfig(
            max_steps=args.refine_steps,
            objective=args.refine_objective,
            lr=args.refine_lr,
            warmup=args.refine_warmup,
            max_grad_norm=args.refine_clip,
            windows=args.refine_windows,
            pull=args.refine_pull,
            student_window=args.refine_window,
            hidden_weight=args.refine_hidden,
            max_minutes=args.refine_minutes,
        )
        if args.refine_steps
        else None
    )
    return SizeBudget(
        target_size=target,
        sensitivity=args.sensitivity,
        windows=args.windows or "pack",
        sequential=args.sequential,
        refit=args.refit,
        refine=refine,
        multiple_of=args.multiple_of,
    )


def _calibration_audio(args):
    from litewhisper.audio.datasets import discover_audio

    if args.calibration:
        return discover_audio(args.calibration, split=args.split)
    from litewhisper.audio.synth import builtin_calibration_audio

    if args.stats:  # statistics given: the audio only feeds the sensitivity probes / refinement
        log.info(
            "sensitivity probes run on the built-in synthetic (eSpeak) clips; pass --calibration to probe "
            "on your own speech"
        )
    else:
        log.warning(
            "no --calibration given: using the built-in synthetic (eSpeak) calibration set; calibrating "
            "on real in-domain speech gives better accuracy"
        )
    return builtin_calibration_audio()


def _refine_audio(args, calibration_audio) -> list | None:
    """The clips refinement draws its windows from (--refine-audio; None: the calibration audio)."""
    if not args.refine_audio:
        return None
    from litewhisper.audio.datasets import discover_audio
    from litewhisper.audio.synth import builtin_calibration_audio
    from litewhisper.errors import LiteWhisperError

    clips: list = []
    for source in args.refine_audio:
        if source == "calibration":
            clips += list(calibration_audio)
        elif source.startswith("synthetic:"):
            count = source.partition(":")[2]
            if not count.isdigit() or int(count) < 1:
                raise LiteWhisperError(f"--refine-audio {source}: expected synthetic:N with N ≥ 1, e.g. synthetic:200")
            clips += builtin_calibration_audio(int(count))
        else:
            clips += discover_audio(source, split=args.split)
    log.info("refinement draws its windows from %d clips (%s)", len(clips), ", ".join(args.refine_audio))
    return clips


def _size_line(source, output: Path) -> str:
    """`weights on disk: SOURCE MB (source) -> OUTPUT MB (dtype) (xRATIO)`; empty if nothing was written."""
    import json

    from litewhisper.models.checkpoint import weights_size

    if not (output / "config.json").is_file():
        return ""
    after = weights_size(output)
    dtype = json.loads((output / "config.json").read_text()).get("dtype", "?")
    before = weights_size(source) if source is not None and Path(source).is_dir() else None
    return (
        (f"weights on disk: {before / 1e6:.1f} MB (source) -> " if before else "weights on disk: ")
        + f"{after / 1e6:.1f} MB ({dtype})"
        + (f" (x{after / before:.2f})" if before else "")
    )


def run(args) -> int:
    from litewhisper.atomic import check_output_dir
    from litewhisper.compression.api import compress
    from litewhisper.compression.policy import SizeBudget
    from litewhisper.compression.stats import ActivationStats
    from litewhisper.models.checkpoint import save_checkpoint

    started = time.perf_counter()
    check_output_dir(args.output, args.overwrite, flag="--overwrite")  # fail before the long work
    policy = compress_policy(args)  # every value is validated here, before the model loads
    budget = isinstance(policy, SizeBudget)
    if budget:
        log.info("budget method: target encoder size %.2f of the original", policy.target_size)
    config = calibration_config(args, default_windows="pack" if budget else "clip")
    stats = ActivationStats.load(args.stats) if args.stats else None
    needs_audio = stats is None or (budget and policy.needs_audio)
    audio = _calibration_audio(args) if needs_audio else None
    log.info("stages: %s, save", ", ".join(_stages(policy, stats)))
    refining = budget and policy.refine is not None
    refine_audio = _refine_audio(args, audio or []) if refining else None
    recovery_dir = Path(f"{args.output}.recovery") if refining else None
    bundle = load_bundle(args, dtype="float32")
    from litewhisper.decode.transcribe import transcribe

    extra = dict(refine_audio=refine_audio, recovery_dir=recovery_dir, transcriber=transcribe)
    result = compress(bundle, audio, policy, stats=stats, config=config, **extra)
    if args.save_stats:
        result.stats.save(args.save_stats)
    print(result.plan.table())
    saving = time.perf_counter()
    save_checkpoint(result.bundle, args.output, overwrite=args.overwrite, dtype=args.dtype)
    if recovery_dir is not None:
        shutil.rmtree(recovery_dir, ignore_errors=True)
    log.info("save: %.1f s; %.1f s in all", time.perf_counter() - saving, time.perf_counter() - started)
    print(f"{args.model} -> {args.output}: {result.summary()}")
    print(_size_line(getattr(result.bundle, "path", None), args.output))
    return 0


def _stages(policy, stats) -> list[str]:
    """The stages `compress` runs for this policy, in order (as its summary times them)."""
    from litewhisper.compression.policy import SizeBudget

    budget = isinstance(policy, SizeBudget)
    return (
        ([] if stats is not None else ["calibrate"])
        + (["sensitivity"] if budget and policy.sensitivity else [])
        + ["plan", "sequential" if budget and policy.sequential else "factorize"]
        + (["refit"] if budget and policy.refit is not None else [])
        + (["refine"] if budget and policy.refine is not None else [])
    )
