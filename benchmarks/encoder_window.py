"""Time per window of an export's ONNX encoder at several window lengths (issue 31, DecodeOptions.window="auto").

For each W (mel frames; W/2 encoder positions) the encoder reads the first W frames of one English `dev` clip's
30-s window (random log-mel-like features without the shared data) with --threads intra-op threads; the lengths
are interleaved over --rounds (one warm-up run each first) and the median and min per window printed, with the
ratio of the medians to W = 3000 and the ideal ratio of the cost model (models/cost.py, the export's config read
as a dense Whisper: linears and convolutions ~ W, attention ~ W²). For an int8 export that kept its fp32 encoder,
`int8 err` is ‖int8 − fp32‖ / ‖fp32‖ of the encoder output at that W. Timings are ratios within one run.

    PYTHONPATH=src python benchmarks/encoder_window.py /tmp/lw31/base-int8 --threads 2 --rounds 7

Seen (7 Dec, 2 busy cores, int8 exports): base 655 ms at 3000 frames; ratios at 2304/1536/1024/512 frames
0.71/0.40/0.25/0.11 (ideal 0.71/0.43/0.27/0.13); tiny.en 360 ms, 0.69/0.37/0.24/0.10. int8 error vs fp32 ~0.027
at every length.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

from litewhisper.constants import ENCODER_POSITIONS, WINDOW_FRAMES  # noqa: E402
from litewhisper.models.cost import encoder_macs  # noqa: E402
from litewhisper.models.deployed import encoder_session, read_marker  # noqa: E402

DATA = REPO.parent / "shared" / "data"


def window_features(n_mels: int) -> tuple[np.ndarray, str]:
    """(1, n_mels, 3000) log-mel of the first English dev clip of >= 20 s (padded to 30 s), or random features."""
    manifest = DATA / "manifest.jsonl"
    if manifest.is_file():
        from faster_whisper.feature_extractor import FeatureExtractor

        from litewhisper.audio.load import load_audio
        from litewhisper.decode.deployed_backend import window_audio

        rows = [json.loads(line) for line in manifest.read_text(encoding="utf-8").splitlines() if line.strip()]
        row = next(r for r in rows if r["split"] == "dev" and r.get("lang") == "en" and r["duration_s"] >= 20)
        feats = FeatureExtractor(feature_size=n_mels)(window_audio(load_audio(DATA / row["path"])))
        return feats[None, :, :WINDOW_FRAMES].astype(np.float32), f"{row['path']} ({row['duration_s']:.1f} s)"
    rng = np.random.default_rng(0)
    return rng.standard_normal((1, n_mels, WINDOW_FRAMES)).clip(-1.5, 1.5).astype(np.float32), "random features"


def ideal_ratio(config: dict, frames: int) -> float:
    """Cost-model multiply-adds at `frames` over those at 3000 (a dense encoder of the export's sizes)."""
    keys = ("d_model", "encoder_ffn_dim", "encoder_layers", "num_mel_bins")
    cfg = SimpleNamespace(**{k: config[k] for k in keys})
    return encoder_macs(cfg, frames // 2) / encoder_macs(cfg, ENCODER_POSITIONS)


def time_windows(session, feats: np.ndarray, frames: list[int], rounds: int) -> dict[int, list[float]]:
    """Seconds per run of each window length, interleaved (the order rotates each round)."""
    times: dict[int, list[float]] = {w: [] for w in frames}
    for w in frames:  # warm-up: onnxruntime plans a new shape on its first run
        session.run(None, {"input_features": feats[..., :w]})
    for r in range(rounds):
        for w in frames[r % len(frames) :] + frames[: r % len(frames)]:
            x = np.ascontiguousarray(feats[..., :w])
            start = time.perf_counter()
            session.run(None, {"input_features": x})
            times[w].append(time.perf_counter() - start)
    return times


def int8_errors(export: Path, encoders: dict, feats: np.ndarray, frames: list[int], threads: int) -> dict[int, float]:
    """‖int8 − fp32‖ / ‖fp32‖ of the encoder output per window length ({} without both encoders)."""
    if not {"int8", "fp32"} <= encoders.keys():
        return {}
    int8, fp32 = (encoder_session(export / encoders[p], threads) for p in ("int8", "fp32"))
    out = {}
    for w in frames:
        x = {"input_features": np.ascontiguousarray(feats[..., :w])}
        a, b = int8.run(None, x)[0], fp32.run(None, x)[0]
        out[w] = float(np.linalg.norm(a - b) / np.linalg.norm(b))
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("export", type=Path, help="a `litewhisper export` directory")
    p.add_argument("--frames", type=int, nargs="+", default=[3000, 2304, 1536, 1024, 512])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--rounds", type=int, default=7)
    p.add_argument("--precision", choices=["int8", "fp32"], help="encoder to time (default: the export's)")
    args = p.parse_args()
    marker = read_marker(args.export)
    precision = args.precision or marker["precision"]
    config = json.loads((args.export / "config.json").read_text(encoding="utf-8"))
    feats, source = window_features(config["num_mel_bins"])
    session = encoder_session(args.export / marker["encoders"][precision], args.threads)
    frames = sorted(set(args.frames), reverse=True)
    times = time_windows(session, feats, frames, args.rounds)
    errors = int8_errors(args.export, marker["encoders"], feats, frames, args.threads)
    base = statistics.median(times[max(frames)])
    print(f"{args.export} ({marker.get('name')}, {precision} encoder), {args.threads} threads, {args.rounds} rounds")
    print(f"features: {source}; ratios vs W = {max(frames)}")
    print(f"{'W':>5} {'s':>5} {'pos':>5} {'median ms':>10} {'min ms':>8} {'ratio':>6} {'ideal':>6} {'int8 err':>9}")
    for w in frames:
        med, ideal = statistics.median(times[w]), ideal_ratio(config, w) / ideal_ratio(config, max(frames))
        err = f"{errors[w]:.4f}" if w in errors else "-"
        print(
            f"{w:>5} {w / 100:>5.1f} {w // 2:>5} {1000 * med:>10.1f} {1000 * min(times[w]):>8.1f} "
            f"{med / base:>6.3f} {ideal:>6.3f} {err:>9}"
        )


if __name__ == "__main__":
    main()
