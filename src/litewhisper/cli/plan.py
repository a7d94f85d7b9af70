"""`litewhisper plan STATS`: print the rank table a policy gives (no model is written)."""
from __future__ import annotations

import argparse
from pathlib import Path

__all__ = ["PRESET_NAMES", "add_policy_args", "policy_from_args", "add_parser", "run"]

PRESET_NAMES = ("acc", "balanced", "fast")


def add_policy_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--preset", choices=PRESET_NAMES, default="acc",
                   help="liteasr: θ = 0.999/0.999 (acc), 0.99/0.999 (balanced), 0.99/0.995 (fast) for "
                        "attention/MLP; compress's budget method: encoder size 0.9 / 0.8 / 0.7 (default acc)")
    p.add_argument("--theta-attn", type=float, help="variance kept by q/k/v/out layers (overrides the preset)")
    p.add_argument("--theta-mlp", type=float, help="variance kept by fc1/fc2 layers (overrides the preset)")
    p.add_argument("--multiple-of", type=int, default=16, help="ranks are multiples of this (default 16)")


def policy_from_args(args):
    from litewhisper.compression.plan import RankPolicy
    preset = RankPolicy.preset(args.preset, multiple_of=args.multiple_of)
    return RankPolicy(theta_attn=preset.theta_attn if args.theta_attn is None else args.theta_attn,
                      theta_mlp=preset.theta_mlp if args.theta_mlp is None else args.theta_mlp,
                      multiple_of=args.multiple_of)


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "plan", help="print the rank plan for calibration statistics",
        description="Choose each encoder layer's rank from statistics written by `litewhisper calibrate` and "
                    "print the table (layer, D_in, D_out, rank, kept variance, params and FLOPs before/after).")
    p.add_argument("stats", type=Path, metavar="STATS", help="statistics file (.safetensors)")
    add_policy_args(p)
    p.add_argument("--json", type=Path, metavar="OUT", help="also save the plan as JSON")
    p.set_defaults(func=run)


def run(args) -> int:
    from litewhisper.compression.plan import plan_ranks
    from litewhisper.compression.stats import ActivationStats

    policy = policy_from_args(args)
    stats = ActivationStats.load(args.stats)
    plan = plan_ranks(stats, policy)
    print(f"statistics: model {stats.metadata.get('model', '?')}, {stats.clips} clips, {stats.frames} frames, "
          f"windowing {stats.metadata.get('windowing', '?')}, frames {stats.metadata.get('frames_mode', '?')}")
    print(plan.table())
    if args.json:
        plan.save(args.json)
        print(f"wrote {args.json}")
    return 0
