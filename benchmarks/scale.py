"""Scale: calibration and compression memory/time of a large-v3-shaped (and turbo-shaped) encoder.

    python benchmarks/scale.py --model large-v3 turbo --layers 4        # ~2 min on 2 CPU cores, ~3 GB RAM
    python benchmarks/scale.py --model large-v3 --layers 32             # the full depth: ~24 GB RAM
    python benchmarks/scale.py --model turbo --device cuda --layers 32 --windows 8

A randomly initialised encoder of the real shape (128 mel bins, 32 layers, d_model 1280, 20 heads, ffn 5120;
turbo has the same encoder, only its decoder has 4 layers) calibrates on a few 30-s windows of noise, then is
compressed (plan + factorize, LiteASR `balanced`). Measured: peak resident memory (and CUDA memory) of the
statistics and of the whole run, time per window, plan/factorize time. Projected for 1,000 calibration clips
(one 30-s window each): time = windows x time per window + the fixed end cost; memory does not grow with the
clips (streamed float64 moments). With --layers N < 32 the encoder has the real width but N layers, and every
per-layer figure is brought to the full depth: times x 32/N, memory + (32 - N) x the per-layer weights, statistics,
eigenvectors and accumulators ("projected"; the statistics' size is also given exactly by formula). The official
LiteASR code keeps every layer output of every window (float16)
and its memory grows with the clips; its figure is computed analytically here.
"""

from __future__ import annotations

import argparse
import json
import resource
import time

import numpy as np
import torch
from transformers import WhisperConfig
from transformers.models.whisper.modeling_whisper import WhisperEncoder

from litewhisper.compression.api import PeakMemory
from litewhisper.compression.calibration import CalibrationConfig, calibrate
from litewhisper.compression.factorize import apply_plan
from litewhisper.compression.plan import RankPolicy, plan_ranks
from litewhisper.models.linears import encoder_linears

SHAPES = {  # encoder shapes; turbo = large-v3's encoder with a 4-layer decoder
    "large-v3": dict(
        num_mel_bins=128,
        d_model=1280,
        encoder_layers=32,
        encoder_attention_heads=20,
        encoder_ffn_dim=5120,
        decoder_layers=32,
    ),
    "turbo": dict(
        num_mel_bins=128,
        d_model=1280,
        encoder_layers=32,
        encoder_attention_heads=20,
        encoder_ffn_dim=5120,
        decoder_layers=4,
    ),
}
GB = 1e9


def accumulator_bytes(d_model: int, layers: int) -> int:
    """Streamed float64 moments while calibrating: 4 sites per block (q/k/v input, out, fc1 input, fc2),
    each D x D + D, held twice (running total + the current shard)."""
    return 2 * layers * 4 * (d_model * d_model + d_model) * 8


def saved_stats_bytes(d_model: int, ffn: int, layers: int) -> int:
    """Output moments of every linear (q, k, v, out, fc2: D x D; fc1: F x F), float64."""
    return layers * (5 * (d_model**2 + d_model) + ffn**2 + ffn) * 8


def liteasr_bytes(d_model: int, ffn: int, layers: int, windows: int, positions: int = 1500) -> int:
    """Official LiteASR: every q, k, v, out, fc1, fc2 output of every window kept in float16."""
    return windows * positions * layers * (5 * d_model + ffn) * 2


def encoder_of(shape: dict, dtype: torch.dtype, device: str) -> WhisperEncoder:
    config = WhisperConfig(max_source_positions=1500, **shape)
    torch.manual_seed(0)
    with torch.device(device):
        encoder = WhisperEncoder(config)
    return encoder.to(dtype).eval()


def run(model: str, windows: int, device: str, dtype: torch.dtype, layers: int | None = None) -> dict:
    full = SHAPES[model]
    shape = {**full, "encoder_layers": layers or full["encoder_layers"]}
    scale = full["encoder_layers"] / shape["encoder_layers"]  # per-layer figures -> the full depth
    start = time.perf_counter()
    encoder = encoder_of(shape, dtype, device)
    build_s = time.perf_counter() - start
    rng = np.random.default_rng(0)
    audio = [(0.1 * rng.standard_normal(30 * 16_000)).astype(np.float32) for _ in range(windows)]
    config = CalibrationConfig(windowing="clip", batch_size=1, device=device)
    with PeakMemory() as calib_mem:
        start = time.perf_counter()
        stats = calibrate(encoder, audio, config, progress=False)
        calib_s = time.perf_counter() - start
    with PeakMemory() as comp_mem:
        start = time.perf_counter()
        plan = plan_ranks(stats, RankPolicy.preset("balanced"))
        plan_s = time.perf_counter() - start
        start = time.perf_counter()
        apply_plan(encoder, plan, stats)
        factorize_s = time.perf_counter() - start
    d, f, n = full["d_model"], full["encoder_ffn_dim"], full["encoder_layers"]
    stats_bytes = sum(s.moments.sum.nbytes + s.moments.gram.nbytes for s in stats.layers.values())
    per_window = calib_s / windows * scale  # upper bound: includes the end-of-run derivation of output moments
    run_peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    # memory that grows with depth: weights, statistics (+ the plan's eigenvectors), accumulators; the rest
    # (activations of one batch, libraries) does not
    per_layer = (
        sum(p.nbytes for p in encoder.parameters()) + 2 * stats_bytes + accumulator_bytes(d, shape["encoder_layers"])
    ) / shape["encoder_layers"]
    added = (full["encoder_layers"] - shape["encoder_layers"]) * per_layer
    return {
        "model": model,
        "device": device,
        "dtype": str(dtype).removeprefix("torch."),
        "windows": windows,
        "layers_measured": shape["encoder_layers"],
        "linears": len(encoder_linears(encoder)),
        "build_s": round(build_s, 1),
        "calibrate_s_measured": round(calib_s, 1),
        "s_per_window": round(per_window, 1),
        "plan_s": round(plan_s * scale, 1),
        "factorize_s": round(factorize_s * scale, 1),
        "stats_saved_gb": round(stats_bytes * scale / GB, 2),
        "stats_saved_gb_formula": round(saved_stats_bytes(d, f, n) / GB, 2),
        "accumulators_gb": round(accumulator_bytes(d, n) / GB, 2),
        "calibrate_rss_increase_gb_measured": round(calib_mem.increase / GB, 2),
        "compress_rss_increase_gb_measured": round(comp_mem.increase / GB, 2),
        "run_peak_rss_gb_measured": round(run_peak / GB, 2),
        "run_peak_gb": round((run_peak + added) / GB, 2),
        "cuda_peak_gb": round(max(calib_mem.cuda_peak, comp_mem.cuda_peak) * scale / GB, 2),
        "projected_1000_clips_h": round((1000 * per_window + (plan_s + factorize_s) * scale) / 3600, 2),
        "liteasr_100_clips_gb": round(liteasr_bytes(d, f, n, 100) / GB, 1),
        "liteasr_1000_clips_gb": round(liteasr_bytes(d, f, n, 1000) / GB, 1),
        "low_rank_linears": len(plan.low_rank),
    }


def table(rows: list[dict]) -> str:
    head = [
        "model",
        "device",
        "layers measured",
        "windows",
        "s/window",
        "plan+factorize s",
        "stats GB (saved)",
        "accumulators GB",
        "measured peak GB",
        "run peak GB",
        "CUDA peak GB",
        "1,000 clips: h",
        "1,000 clips: GB",
        "LiteASR 100 / 1,000 clips GB",
    ]
    lines = [" | ".join(head), " | ".join("---" for _ in head)]
    for r in rows:
        lines.append(
            " | ".join(
                str(v)
                for v in [
                    r["model"],
                    r["device"],
                    r["layers_measured"],
                    r["windows"],
                    r["s_per_window"],
                    round(r["plan_s"] + r["factorize_s"], 1),
                    r["stats_saved_gb"],
                    r["accumulators_gb"],
                    r["run_peak_rss_gb_measured"],
                    r["run_peak_gb"],
                    r["cuda_peak_gb"],
                    r["projected_1000_clips_h"],
                    r["run_peak_gb"],
                    f"{r['liteasr_100_clips_gb']} / {r['liteasr_1000_clips_gb']}",
                ]
            )
        )
    return "\n".join(f"| {line} |" for line in lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", choices=sorted(SHAPES), nargs="+", default=["large-v3"])
    parser.add_argument(
        "--windows",
        type=int,
        default=4,
        help="30-s calibration windows (default 4: the plan needs as many frames as fc1 outputs)",
    )
    parser.add_argument(
        "--layers",
        type=int,
        default=None,
        help="measure N of the 32 layers (real width) and scale per-layer figures (default all)",
    )
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", choices=("float32", "float16", "bfloat16"), default="float32")
    parser.add_argument("--json", help="also write the rows here")
    args = parser.parse_args()
    rows = [run(m, args.windows, args.device, getattr(torch, args.dtype), args.layers) for m in args.model]
    print(table(rows))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=2)


if __name__ == "__main__":
    main()
