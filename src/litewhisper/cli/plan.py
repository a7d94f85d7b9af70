"""`litewhisper plan STATS`: print the rank table a policy gives (no model is written)."""

from __future__ import annotations

import argparse
from pathlib import Path

__all__ = ["PRESET_NAMES", "add_policy_args", "policy_from_args", "add_parser", "run"]

PRESET_NAMES = ("acc", "balanced", "fast")


def add_policy_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--preset",
        choices=PRESET_NAMES,
        default="acc",
        help="liteasr: θ = 0.999/0.999 (acc), 0.99/0.999 (balanced), 0.99/0.995 (fast) for "
        "attention/MLP; compress's budget method: encoder size 0.9 / 0.8 / 0.7 (default acc)",
    )
    p.add_argument("--theta-attn", type=float, help="variance kept by q/k/v/out layers (overrides the preset)")
    p.add_argument("--theta-mlp", type=float, help="variance kept by fc1/fc2 layers (overrides the preset)")
    p.add_argument("--multiple-of", type=int, default=16, help="ranks are multiples of this (default 16)")


def policy_from_args(args):
    from litewhisper.compression.plan import RankPolicy

    preset = RankPolicy.preset(args.preset, multiple_of=args.multiple_of)
    return RankPolicy(
        theta_attn=preset.theta_attn if args.theta_attn is None else args.theta_attn,
        theta_mlp=preset.theta_mlp if args.theta_mlp is None else args.theta_mlp,
        multiple_of=args.multiple_of,
    )


def add_parser(subparsers) -> None:
    from litewhisper.cli.calibrate import add_calibration_args
    from litewhisper.cli.compress import add_budget_args

    p = subparsers.add_parser(
        "plan",
        help="preview the rank plan `compress` applies (same flags, nothing written)",
        description="Print the rank table (layer, D_in, D_out, rank, kept variance, params and FLOPs before/after) "
        "that `litewhisper compress` with the same flags applies: by default the budget method at the "
        "preset's size, with sensitivity probes. SOURCE is a model (calibrated here, as compress does) "
        "or statistics from `litewhisper calibrate` / `compress --save-stats` (then only the probes "
        "run, on --model or the model named in the statistics; with --no-sensitivity or --theta-* it "
        "takes a second and needs no model).",
    )
    p.add_argument(
        "source", metavar="SOURCE", help="statistics file (.safetensors), or a model (tiny.en, base, a directory)"
    )
    p.add_argument(
        "--model",
        help="the model of the statistics, for the sensitivity probes (default: the model named in the statistics)",
    )
    p.add_argument("--device", default="cpu", help="torch device (default cpu)")
    add_calibration_args(p, required=False)
    add_policy_args(p)
    add_budget_args(p)
    p.add_argument("--json", type=Path, metavar="OUT", help="also save the plan as JSON")
    p.add_argument(
        "--int8-time",
        action="store_true",
        help="also time the plan's factorised linears in int8 on this CPU against their dense int8 form, as the "
        "int8 export runs them (onnxruntime; cached in ~/.cache/litewhisper/layer_timing.json; a few seconds a "
        "new shape)",
    )
    p.add_argument(
        "--timing-threads",
        type=int,
        metavar="N",
        default=2,
        help="intra-op threads for --int8-time (default 2, as the int8 export times them)",
    )
    p.set_defaults(func=run)


def _is_stats(source: str) -> bool:
    return Path(source).suffix == ".safetensors" or Path(source).is_file()


def _preview(args, policy):
    """(plan, stats): the ranks `compress` would apply with these flags (calibrating / probing as it does)."""
    from litewhisper.cli import compress as cli_compress
    from litewhisper.cli.calibrate import calibration_config
    from litewhisper.compression.api import probe_sensitivities
    from litewhisper.compression.budget import plan_budget
    from litewhisper.compression.calibration import calibrate
    from litewhisper.compression.plan import plan_ranks
    from litewhisper.compression.policy import SizeBudget
    from litewhisper.compression.stats import ActivationStats
    from litewhisper.errors import LiteWhisperError
    from litewhisper.models.cost import encoder_params
    from litewhisper.models.linears import unwrap_model

    budget = isinstance(policy, SizeBudget)
    config = calibration_config(args, default_windows="pack" if budget else "clip")
    stats = ActivationStats.load(args.source) if _is_stats(args.source) else None
    if stats is not None and not budget:  # the θ rule needs nothing but the statistics
        return plan_ranks(stats, policy), stats
    model = args.source if stats is None else (args.model or stats.metadata.get("model"))
    if not model:
        raise LiteWhisperError(
            "these statistics name no model: pass --model (the budget needs its size and the "
            "sensitivity probes run on it)"
        )
    args.stats = args.source if stats is not None else None  # what compress would have been given
    audio = cli_compress._calibration_audio(args) if stats is None or policy.needs_audio else None
    bundle = cli_compress.load_bundle(argparse.Namespace(model=model, device=args.device), dtype="float32")
    if stats is None:
        stats = calibrate(bundle, audio, config)
    if not budget:
        return plan_ranks(stats, policy), stats
    weights = probe_sensitivities(bundle, stats, audio, policy.multiple_of) if policy.sensitivity else None
    return plan_budget(stats, policy, encoder_params(unwrap_model(bundle)), weights), stats


def int8_time(plan, threads: int) -> str:
    """One line: the measured int8 time (ms per 30-s window) of the plan's factorised linears that the default
    int8 export quantizes (encoder layer 0 stays fp32), dense vs factorised vs as exported, beside their FLOPs."""
    from litewhisper.export import layer_timing
    from litewhisper.export.densify import MERGE_MARGIN, kept_fp32
    from litewhisper.export.quantize import KEEP_FP32_AUTO
    from litewhisper.models.cost import int8_linear_cost

    shapes = [(e.d_in, e.d_out, e.rank) for e in plan.low_rank if not kept_fp32(e.name, KEEP_FP32_AUTO)]
    cost = int8_linear_cost(shapes, layer_timing.cached_source(threads), MERGE_MARGIN)
    return f"int8 time ({layer_timing.runtime_key(threads)}; layer 0 stays fp32): {cost.describe()}"


def recovery_line(args, policy, stats) -> str:
    """One line: what the refinement `--refine-steps` asks for will cost here, in minutes (timed on one clip)."""
    from litewhisper.cli import compress as cli_compress
    from litewhisper.compression.recovery import estimate_recovery

    model = args.source if not _is_stats(args.source) else (args.model or stats.metadata.get("model"))
    bundle = cli_compress.load_bundle(argparse.Namespace(model=model, device=args.device), dtype="float32")
    calibration = cli_compress._calibration_audio(args)
    clips = cli_compress._refine_audio(args, calibration) or calibration
    windows = min(policy.refine.windows, len(clips))
    from litewhisper.decode.transcribe import transcribe

    return estimate_recovery(bundle, policy.refine, windows, transcribe).describe(policy.refine, windows)


def run(args) -> int:
    from litewhisper.cli.compress import compress_policy
    from litewhisper.export.quantize import Int8Options

    Int8Options(timing_threads=args.timing_threads)  # its check of --timing-threads
    policy = compress_policy(args)  # validated before anything loads
    plan, stats = _preview(args, policy)
    print(
        f"statistics: model {stats.metadata.get('model', '?')}, {stats.clips} clips, {stats.frames} frames, "
        f"windowing {stats.metadata.get('windowing', '?')}, frames {stats.metadata.get('frames_mode', '?')}"
    )
    print(plan.table())
    if args.int8_time:
        print(int8_time(plan, args.timing_threads))
    if getattr(policy, "refine", None) is not None and policy.refine.objective == "decoder":
        print(recovery_line(args, policy, stats))
    if args.json:
        plan.save(args.json)
        print(f"wrote {args.json}")
    return 0
