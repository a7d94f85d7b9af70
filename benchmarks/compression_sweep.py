"""Compression sweep: calibration windowing x rank presets -> encoder params, FLOPs, time, memory, corpus WER.

    python benchmarks/compression_sweep.py --model tiny.en --data ../shared/data \
        --modes clip:all pack:all clip:audio --presets acc balanced fast --dev-clips 100 -o sweep.json

One calibration per mode (statistics and eigendecompositions are reused across presets). WER uses
`litewhisper.evaluation.evaluate` (greedy, Whisper English normaliser) on an evenly spaced subset of English `dev`
clips.
Results are written after every model, so an interrupted sweep keeps what it measured.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from litewhisper.audio.datasets import discover_audio
from litewhisper.compression.api import PeakMemory, compress
from litewhisper.compression.calibration import CalibrationConfig, calibrate
from litewhisper.compression.plan import RankPolicy
from litewhisper.evaluation.evaluate import EvalConfig, evaluate_model, select_clips
from litewhisper.models.cost import encoder_flops, encoder_params
from litewhisper.models.load import load_model


def dev_subset(data: Path, n: int):
    """n evenly spaced English dev clips (all domains represented)."""
    items = select_clips(data / "manifest.jsonl", EvalConfig(split="dev", language="en"))
    step = max(1, len(items) // n)
    return items[::step][:n]


def wer_of(bundle, items, name: str) -> dict:
    result = evaluate_model(bundle, items, EvalConfig(split="dev", language="en"), name=name)
    return {
        "wer": round(result.score.wer, 2),
        "macro_wer": round(result.score.macro_wer, 2),
        "domains": {d: round(g.rate, 2) for d, g in result.score.domains.items()},
        "decode_s": round(result.decode_seconds, 1),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="tiny.en")
    p.add_argument("--data", type=Path, default=Path(__file__).resolve().parents[1].parent / "shared" / "data")
    p.add_argument("--modes", nargs="+", default=["clip:all", "pack:all"], help="windowing:frames pairs")
    p.add_argument("--presets", nargs="+", default=["acc", "balanced", "fast"])
    p.add_argument("--calib-clips", type=int, default=100)
    p.add_argument("--dev-clips", type=int, default=100, help="0: no WER")
    p.add_argument("--no-baseline", action="store_true", help="skip the original model's row")
    p.add_argument("-o", "--output", type=Path, default=Path("compression_sweep.json"))
    args = p.parse_args()

    bundle = load_model(args.model)
    calib = discover_audio(args.data / "manifest.jsonl", split="calib")[: args.calib_clips]
    dev = dev_subset(args.data, args.dev_clips) if args.dev_clips else []
    rows: list[dict] = []

    def record(row: dict) -> None:
        rows.append(row)
        print(json.dumps(row), flush=True)
        args.output.write_text(
            json.dumps({"model": args.model, "calib_clips": len(calib), "dev_clips": len(dev), "rows": rows}, indent=1)
        )

    base = {
        "mode": "-",
        "preset": "original",
        "encoder_params": encoder_params(bundle.model),
        "gflops": round(encoder_flops(bundle.model) / 1e9, 3),
    }
    if not args.no_baseline:
        record({**base, **(wer_of(bundle, dev, args.model) if dev else {})})
    for mode in args.modes:
        windowing, frames = mode.split(":")
        start = time.perf_counter()
        with PeakMemory() as peak:
            stats = calibrate(bundle, calib, CalibrationConfig(windowing=windowing, frames=frames))
        calib_s = time.perf_counter() - start
        for preset in args.presets:
            result = compress(bundle, None, RankPolicy.preset(preset), stats=stats)
            row = {
                "mode": mode,
                "preset": preset,
                "encoder_params": result.params_after,
                "gflops": round(result.flops_after / 1e9, 3),
                "frames": stats.frames,
                "windows": int(stats.metadata["windows"]),
                "calibrate_s": round(calib_s, 1),
                "calibrate_peak_rss_mib": round(peak.peak / 2**20),
                "calibrate_rss_increase_mib": round(peak.increase / 2**20),
                "plan_s": round(result.timings["plan"], 1),
                "low_rank_config": result.plan.to_low_rank_config(),
            }
            record({**row, **(wer_of(result.bundle, dev, f"{args.model}-{mode}-{preset}") if dev else {})})
    print(f"{'mode':<11} {'preset':<9} {'enc params':>10} {'GFLOPs':>7} {'WER %':>6} {'calib s':>8} {'peak MiB':>8}")
    for r in rows:
        print(
            f"{r['mode']:<11} {r['preset']:<9} {r['encoder_params'] / 1e6:>9.2f}M {r['gflops']:>7.2f} "
            f"{r.get('wer', float('nan')):>6.2f} {r.get('calibrate_s', 0):>8.1f} "
            f"{r.get('calibrate_peak_rss_mib', 0):>8}"
        )


if __name__ == "__main__":
    main()
