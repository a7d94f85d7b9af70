"""int8 encoder variants of one model: relative error against PyTorch on real speech, and time per window.

Traces the model's encoder as `litewhisper export` does (low-rank factors rotated unless --no-rotate), writes its
int8 variants with
per-tensor activation scales (onnxruntime's dynamic quantization, the former export) and per-row scales (the
default since 7 December: export/rowquant.py), each with and without encoder layer 0 in fp32, then prints for
each: ‖int8 − PyTorch‖ / ‖PyTorch‖ over the final encoder states of N English `dev` clips (each padded to 30 s
as the runtime pads it), the graph's size, and its time per 30-s window (batch 1, the sessions interleaved over
--rounds, min and median). Timings are ratios within one run; run it on an idle machine.

    PYTHONPATH=src python benchmarks/int8_encoder.py base --clips 8 --threads 1 --rounds 8
    PYTHONPATH=src python benchmarks/int8_encoder.py base --layers   # + each layer kept fp32 alone

--graph LABEL=ENCODER.onnx (repeatable) times those encoder graphs instead (e.g. the int8 encoders of exports of
different models; MODEL then only computes the features), interleaved, each against the first:

    PYTHONPATH=src python benchmarks/int8_encoder.py base --clips 1 --threads 2 --rounds 30 \\
      --graph base=base-int8/onnx/encoder_model_quantized.onnx \\
      --graph lite=lite-base-int8/onnx/encoder_model_quantized.onnx
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

from litewhisper.export.quantize import matmul_names, quantize_graph  # noqa: E402
from litewhisper.export.rowquant import quantize_rows  # noqa: E402
from litewhisper.models.deployed import encoder_session  # noqa: E402


def speech_windows(model, n: int, data: Path) -> tuple[np.ndarray, np.ndarray]:
    """(features (n, n_mels, 3000), PyTorch encoder states (n, 1500, d)) of n English dev clips (seeded pick)."""
    import torch
    from faster_whisper.feature_extractor import FeatureExtractor

    from litewhisper.audio.datasets import read_manifest
    from litewhisper.audio.load import load_audio
    from litewhisper.decode.deployed_backend import window_audio
    from litewhisper.models.linears import find_encoder

    items = [i for i in read_manifest(data, split="dev") if (i.lang or "en") == "en"]
    pick = np.random.default_rng(0).choice(len(items), n, replace=False)
    extract = FeatureExtractor(feature_size=model.config.num_mel_bins)
    feats = np.stack([extract(window_audio(load_audio(items[i].path)))[:, :3000] for i in pick]).astype(np.float32)
    encoder = find_encoder(model)
    with torch.inference_mode():
        states = [encoder(torch.from_numpy(f[None])).last_hidden_state.numpy() for f in feats]
    return feats, np.concatenate(states)


def variants(fp32: Path, out: Path, layers: int) -> dict[str, Path]:
    """name -> encoder graph: fp32, then per-tensor and per-row int8, alone, with layer 0 in fp32 and (layers > 1)
    with each other layer in fp32; written into `out`."""
    graphs = {"fp32": fp32}
    kept = {"": None, " + layer 0 fp32": r"/layers\.0/"} | {
        f" + layer {i} fp32": rf"/layers\.{i}/" for i in range(1, layers)
    }
    for suffix, pattern in kept.items():
        keep = matmul_names(fp32, pattern)
        for kind in ("tensor", "row"):
            dst = out / f"{kind}{suffix.replace(' ', '_')}.onnx"
            if kind == "row":
                quantize_rows(fp32, dst, exclude=keep)
            else:
                quantize_graph(fp32, per_channel=True, exclude=keep, dst=dst)
            graphs[f"per-{kind}{suffix}"] = dst
    return graphs


def time_sessions(sessions: dict, window: np.ndarray, rounds: int, clock=time.perf_counter) -> dict[str, list[float]]:
    """Seconds per run of each session on one window (1, n_mels, 3000): rounds interleaved, after one warm-up;
    clock: wall time, or time.process_time (one thread: the work's CPU time, robust to other jobs)."""
    times: dict[str, list[float]] = {name: [] for name in sessions}
    for session in sessions.values():
        session.run(None, {"input_features": window})
    for _ in range(rounds):
        for name, session in sessions.items():
            start = clock()
            session.run(None, {"input_features": window})
            times[name].append(clock() - start)
    return times


def report_times(graphs: dict[str, Path], window: np.ndarray, threads: int, rounds: int, clock) -> None:
    """Print each graph's size and time per window (interleaved rounds), median ratio to the first graph's."""
    sessions = {name: encoder_session(path, threads) for name, path in graphs.items()}
    times = time_sessions(sessions, window, rounds, clock)
    first = np.array(next(iter(times.values())))
    print("| encoder | graph MB | ms/window min | ms/window median | first / this (median) | per round, median |")
    print("|---|---|---|---|---|---|")
    for name, seconds in times.items():
        ms = 1000 * np.array(seconds)
        print(
            f"| {name} | {graphs[name].stat().st_size / 1e6:.1f} | {ms.min():.0f} | {np.median(ms):.0f} | "
            f"{np.median(first) * 1000 / np.median(ms):.3f}× | {np.median(first / np.array(seconds)):.3f}× |"
        )


def report(graphs: dict[str, Path], feats: np.ndarray, want: np.ndarray, threads: int, rounds: int) -> None:
    """Print each graph's relative error, size and time per window (interleaved rounds)."""
    sessions = {name: encoder_session(path, threads) for name, path in graphs.items()}
    times = time_sessions(sessions, feats[:1], rounds)
    print("| encoder | rel. error | graph MB | ms/window min | ms/window median | vs per-tensor + layer 0 |")
    print("|---|---|---|---|---|---|")
    ref = np.median(times.get("per-tensor + layer 0 fp32", times["fp32"]))
    for name, session in sessions.items():
        got = np.concatenate([session.run(None, {"input_features": f[None]})[0] for f in feats])
        error = np.linalg.norm(got - want) / np.linalg.norm(want)
        ms = 1000 * np.array(times[name])
        print(
            f"| {name} | {error:.4f} | {graphs[name].stat().st_size / 1e6:.1f} | {ms.min():.0f} | "
            f"{np.median(ms):.0f} | {np.median(ms) / 1000 / ref:.2f}× |"
        )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model", help="the PyTorch model (built-in name or directory)")
    p.add_argument("--no-rotate", action="store_true", help="trace the low-rank factors as they are")
    p.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data" / "manifest.jsonl")
    p.add_argument("--clips", type=int, default=8)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--rounds", type=int, default=8)
    p.add_argument("--layers", action="store_true", help="also each other encoder layer kept fp32 alone")
    p.add_argument("--graph", action="append", default=[], metavar="LABEL=PATH", help="time these graphs instead")
    p.add_argument("--cpu-time", action="store_true", help="with --graph: CPU time of one thread, not wall time")
    args = p.parse_args()
    if args.cpu_time:
        args.threads = 1  # a process's CPU time is its one thread's work

    from litewhisper.export.onnx import export_encoder
    from litewhisper.export.rotate import rotated_copy
    from litewhisper.models.load import load_model

    model = load_model(args.model).model.float().eval()
    feats, want = speech_windows(model, args.clips, args.data)
    if args.graph:
        graphs = dict(g.split("=", 1) for g in args.graph)
        clock = time.process_time if args.cpu_time else time.perf_counter
        return report_times({k: Path(v) for k, v in graphs.items()}, feats[:1], args.threads, args.rounds, clock)
    with tempfile.TemporaryDirectory() as tmp:
        fp32 = Path(tmp) / "encoder_model.onnx"
        export_encoder(model if args.no_rotate else rotated_copy(model)[0], fp32)
        layers = model.config.encoder_layers if args.layers else 1
        del model
        report(variants(fp32, Path(tmp), layers), feats, want, args.threads, args.rounds)


if __name__ == "__main__":
    main()
