"""Deployment benchmark: model × runtime × precision, every row measured in one run, interleaved.

Columns: encoder ms (one 30-s window, batch 1, median of --encoder-reps in a fresh process, best round), end-to-end
wall time of a whole process
transcribing the same dev clips (greedy, timestamps, temperature fallback, no condition on previous text; the
median over --rounds), corpus WER on those clips, peak RSS of that process (/usr/bin/time), size on disk (the
files the runtime reads), and ratios against faster-whisper int8 on the same original checkpoint and threads.

Rows (each needs its export directory, made with `litewhisper export`):
  faster-whisper int8     the original checkpoint's CTranslate2 model, compute_type int8 (the reference)
  PyTorch fp32            `litewhisper transcribe` of the original (batch 8): the WER reference
  litewhisper fp32/int8   `litewhisper transcribe EXPORT_DIR` (onnxruntime encoder + CTranslate2 decoder), the
                          clips as one folder: first windows batched across files (issue 29; --batch-size 8);
                          NAME:PRECISION:auto decodes with `--window auto` (issue 31: the encoder reads the clip +
                          2 s, at least 10 s; its encoder ms is then the mean over the clips' windows);
                          NAME:PRECISION:WINDOW:b1 with `--batch-size 1`: file by file, as before issue 29
--max-seconds 10 keeps the English dev clips up to 10 s (short clips), in manifest order.

    PYTHONPATH=src nice -n 5 python benchmarks/deploy.py --threads 2 --clips 30 --rounds 2 \
        --row base=base --row base@0.8=/tmp/lite-base-08 \
        --export base:fp32=/tmp/wt14-base-fp32 --export base:int8=/tmp/wt14-base-int8 \
        --export base@0.8:fp32=/tmp/wt14-lite-base-fp32 --export base@0.8:int8=/tmp/wt14-lite-base-int8

    # a folder batched across files vs file by file (issue 29)
    PYTHONPATH=src python benchmarks/deploy.py --threads 2 --clips 30 --rounds 2 --row base=base \
        --export base:int8=EXP/base-int8 --export base:int8:full:b1=EXP/base-int8 \
        --export base:int8:auto=EXP/base-int8 --export base:int8:auto:b1=EXP/base-int8
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data"
sys.path.insert(0, str(REPO / "src"))

from litewhisper.constants import WINDOW_FRAMES, encoder_window_frames  # noqa: E402
from litewhisper.evaluation.metrics import corpus_score, score_utterance  # noqa: E402
from litewhisper.evaluation.normalize import normalize  # noqa: E402

# A tiny faster-whisper script: the same decoding options as `litewhisper transcribe`'s defaults, greedy.
FW_SCRIPT = """
import json, sys
from faster_whisper import WhisperModel
model_dir, threads, out, *clips = sys.argv[1:]
model = WhisperModel(model_dir, device="cpu", compute_type="int8", cpu_threads=int(threads))
lang = None if model.model.is_multilingual else "en"
texts = []
for clip in clips:
    segments, _ = model.transcribe(clip, beam_size=1, language=lang, condition_on_previous_text=False)
    texts.append(" ".join(s.text.strip() for s in segments))
json.dump(texts, open(out, "w"))
"""

# whisper.cpp through pywhispercpp: greedy, the model file written by benchmarks/ggml_convert.py.
WCPP_SCRIPT = """
import json, sys
sys.path.insert(0, "src")
from pywhispercpp.model import Model
from litewhisper.audio.load import load_audio
model_path, threads, out, *clips = sys.argv[1:]
model = Model(model_path, n_threads=int(threads), redirect_whispercpp_logs_to=None, print_progress=False)
texts = [" ".join(s.text.strip() for s in model.transcribe(load_audio(c))) for c in clips]
json.dump(texts, open(out, "w"))
"""

# Encoder time of one 30-s window, batch 1, inside a fresh process with the given thread count.
ENC_SCRIPT = """
import json, sys, time, statistics
import numpy as np
kind, path, threads, reps, frames = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
rng = np.random.default_rng(0)
if kind == "ct2":
    import ctranslate2
    model = ctranslate2.models.Whisper(path, device="cpu", compute_type="int8", intra_threads=threads)
    feats = rng.standard_normal((1, 80, 3000)).astype(np.float32)
    run = lambda: model.encode(ctranslate2.StorageView.from_array(feats))
elif kind == "onnx":
    sys.path.insert(0, "src")
    from litewhisper.models.deployed import encoder_session, read_marker
    from pathlib import Path
    marker = read_marker(Path(path))
    sess = encoder_session(Path(path) / marker["encoders"][marker["precision"]], threads)
    n_mels = sess.get_inputs()[0].shape[1]
    feats = rng.standard_normal((1, n_mels, frames)).astype(np.float32)
    run = lambda: sess.run(None, {"input_features": feats})
else:
    import torch
    sys.path.insert(0, "src")
    torch.set_num_threads(threads)
    from litewhisper.models.load import load_model
    enc = load_model(path).encoder
    feats = torch.randn(1, enc.config.num_mel_bins, 3000)
    def run():
        with torch.inference_mode():
            enc(feats)
run()
times = []
for _ in range(reps):
    t = time.perf_counter(); run(); times.append((time.perf_counter() - t) * 1000)
print(json.dumps(statistics.median(times)))
"""


@dataclass
class Row:
    model: str
    runtime: str
    precision: str
    kind: str  # fw | torch | onnx
    path: str
    size: int
    reference: str  # model name of the faster-whisper row to compare with
    window: str = "full"  # --window of `litewhisper transcribe`
    batch: int | None = None  # its --batch-size (None: the default)
    walls: list[float] = field(default_factory=list)
    rss: list[float] = field(default_factory=list)
    encoder: list[float] = field(default_factory=list)
    wer: float | None = None


def dir_size(paths: list[Path]) -> int:
    return sum(f.stat().st_size for p in paths for f in ([p] if p.is_file() else p.rglob("*")) if f.is_file())


def fw_dir(name: str, work: Path) -> Path:
    """A CTranslate2 directory of a built-in model on disk (base is split across two packages)."""
    from litewhisper.models.builtin import builtin_source

    parts, meta = builtin_source(name)
    out = work / f"fw-{name}"
    if not (out / "model.bin").is_file():
        out.mkdir(parents=True, exist_ok=True)
        for extra in ("config.json", "vocabulary.txt", "vocabulary.json", "tokenizer.json", "preprocessor_config.json"):
            if (meta / extra).is_file():
                shutil.copy(meta / extra, out / extra)
        with open(out / "model.bin.tmp", "wb") as f:
            for p in parts:
                f.write(p.read_bytes())
        os.replace(out / "model.bin.tmp", out / "model.bin")
    return out


def export_size(path: Path) -> int:
    """The files the deployed runtime reads: the encoder graph it uses and the CTranslate2 decoder."""
    marker = json.loads((path / "litewhisper_export.json").read_text())
    return dir_size([path / marker["encoders"][marker["precision"]], path / "ctranslate2"])


def build_rows(args, work: Path) -> list[Row]:
    rows = []
    for spec in args.row:  # NAME=SOURCE: faster-whisper reference for a built-in, PyTorch fp32 for every source
        name, source = spec.split("=", 1)
        base = name.split("@")[0]
        if "@" not in name:
            d = fw_dir(source, work)
            rows.append(Row(name, "faster-whisper", "int8", "fw", str(d), dir_size([d / "model.bin"]), base))
        if args.pytorch:
            from litewhisper.models.builtin import builtin_model_dir, is_builtin

            src = builtin_model_dir(source) if is_builtin(source) else Path(source)
            rows.append(
                Row(name, "PyTorch (batch 8)", "fp32", "torch", source, dir_size([src / "model.safetensors"]), base)
            )
    for spec in args.export:  # NAME:PRECISION[:WINDOW[:bN]]=DIR
        key, path = spec.split("=", 1)
        name, precision, *window = key.split(":")
        batch = int(window.pop()[1:]) if window and window[-1].startswith("b") else None
        runtime = "litewhisper (ORT+CT2)" + (f", window {window[0]}" if window else "")
        runtime += ", file by file" if batch == 1 else f", batch {batch}" if batch else ", folder batched"
        row = Row(name, runtime, precision, "onnx", path, export_size(Path(path)), name.split("@")[0])
        row.window, row.batch = (window[0] if window else "full"), batch
        rows.append(row)
    for spec in args.whispercpp:  # NAME=GGML_FILE
        name, path = spec.split("=", 1)
        rows.append(Row(name, "whisper.cpp (pywhispercpp)", "fp16", "wcpp", path, Path(path).stat().st_size, name))
    return rows


def run_e2e(row: Row, clips: list[str], threads: int, work: Path, timeout: float | None = None) -> list[str] | None:
    out = work / "out.json"
    if row.kind in ("fw", "wcpp"):
        script = FW_SCRIPT if row.kind == "fw" else WCPP_SCRIPT
        cmd = [sys.executable, "-c", script, row.path, str(threads), str(out), *clips]
    else:
        cmd = [sys.executable, "-m", "litewhisper", "transcribe", row.path, *clips, "--format", "json", "--quiet"]
        cmd += ["--threads", str(threads)] if row.kind == "onnx" else []
        cmd += ["--window", row.window] if row.window != "full" else []
        cmd += ["--batch-size", str(row.batch)] if row.batch is not None and row.kind == "onnx" else []
    env = {**os.environ, "PYTHONPATH": str(REPO / "src"), "OMP_NUM_THREADS": str(threads)}
    timefile = work / "time.txt"
    start = time.perf_counter()
    try:
        proc = subprocess.run(
            ["/usr/bin/time", "-f", "%M", "-o", str(timefile), *cmd],
            env=env,
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
    except subprocess.TimeoutExpired:
        print(f"{row.model} {row.runtime}: over {timeout} s, left out", file=sys.stderr)
        return None
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"{row.model} {row.runtime} failed:\n{proc.stderr[-2000:]}")
    row.walls.append(wall)
    row.rss.append(int(timefile.read_text().split()[-1]) / 1024)
    if row.kind in ("fw", "wcpp"):
        return json.loads(out.read_text())
    return [json.loads(line)["text"] for line in proc.stdout.splitlines() if line.startswith("{")]


def encoder_ms(row: Row, threads: int, reps: int, durations: list[float]) -> float | None:
    if row.kind == "wcpp":
        return None  # pywhispercpp has no encoder-only call
    kind = {"fw": "ct2", "onnx": "onnx", "torch": "torch"}[row.kind]
    if row.window == "auto":  # the mean over the clips of one window at the length the policy gives each
        frames = [encoder_window_frames(s) for s in durations]
        return statistics.mean(
            _encoder_run(kind, row.path, threads, reps, f) for f in frames[:: max(1, len(frames) // 5)]
        )
    return _encoder_run(kind, row.path, threads, reps, WINDOW_FRAMES)


def _encoder_run(kind: str, path: str, threads: int, reps: int, frames: int) -> float:
    env = {**os.environ, "PYTHONPATH": str(REPO / "src"), "OMP_NUM_THREADS": str(threads)}
    proc = subprocess.run(
        [sys.executable, "-c", ENC_SCRIPT, kind, path, str(threads), str(reps), str(frames)],
        env=env,
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
    )
    return float(proc.stdout.split()[-1])


def wer(refs: list[str], hyps: list[str]) -> float:
    scores = [
        score_utterance(str(i), normalize(r, "english"), normalize(h, "english"))
        for i, (r, h) in enumerate(zip(refs, hyps, strict=True))
    ]
    return corpus_score(scores).wer


def table(rows: list[Row], threads: int, n_clips: int, audio_s: float) -> str:
    ref = {r.reference: r for r in rows if r.kind == "fw"}
    head = "| model | runtime | precision | encoder ms | × CT2 enc | wall s | × fw | WER % | peak RSS MiB | size MiB |"
    lines = [
        f"{n_clips} English dev clips ({audio_s:.0f} s of audio), {threads} threads, greedy; wall = median "
        "whole-process time; × = faster-whisper int8 (same original checkpoint) ÷ row (higher is faster)",
        "",
        head,
        "|" + "---|" * (head.count("|") - 1),
    ]
    for r in rows:
        fw = ref.get(r.reference)
        wall, enc = statistics.median(r.walls), min((e for e in r.encoder if e is not None), default=None)
        enc_ratio = f"{min(fw.encoder) / enc:.2f}×" if fw and enc else "—"
        enc_text = f"{r.precision} | {enc:.0f}" if enc else f"{r.precision} | —"
        wall_ratio = f"{statistics.median(fw.walls) / wall:.2f}×" if fw else "—"
        lines.append(
            f"| {r.model} | {r.runtime} | {enc_text} | {enc_ratio} | {wall:.1f} | "
            f"{wall_ratio} | {r.wer:.2f} | {max(r.rss):.0f} | {r.size / 2**20:.1f} |"
        )
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--row", action="append", default=[], help="NAME=SOURCE (built-in or lite checkpoint)")
    p.add_argument("--export", action="append", default=[], help="NAME:PRECISION=EXPORT_DIR")
    p.add_argument("--whispercpp", action="append", default=[], help="NAME=GGML_FILE (benchmarks/ggml_convert.py)")
    p.add_argument("--pytorch", action="store_true", help="also the PyTorch fp32 rows (slow)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--row-timeout", type=float, help="leave out a row whose run takes longer (seconds)")
    p.add_argument("--clips", type=int, default=30, help="first N English dev clips")
    p.add_argument("--max-seconds", type=float, default=30.0, help="only clips up to this long (e.g. 10: short)")
    p.add_argument("--rounds", type=int, default=1, help="end-to-end repetitions (interleaved)")
    p.add_argument("--encoder-reps", type=int, default=5)
    p.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "litewhisper-deploy-bench")
    p.add_argument("--out", type=Path, help="also write the table (markdown) here")
    args = p.parse_args()
    manifest = [json.loads(line) for line in (DATA / "manifest.jsonl").read_text().splitlines() if line.strip()]
    picked = [r for r in manifest if r["split"] == "dev" and r["lang"] == "en" and r["duration_s"] <= args.max_seconds]
    picked = picked[: args.clips]
    clips, refs = [str(DATA / r["path"]) for r in picked], [r["text"] for r in picked]
    args.work.mkdir(parents=True, exist_ok=True)
    rows = build_rows(args, args.work)
    for rnd in range(args.rounds):  # interleaved: every row once per round
        for row in list(rows):
            hyps = run_e2e(row, clips, args.threads, args.work, args.row_timeout)
            if hyps is None:
                rows.remove(row)
                continue
            row.wer = wer(refs, hyps) if row.wer is None else row.wer
            row.encoder.append(encoder_ms(row, args.threads, args.encoder_reps, [r["duration_s"] for r in picked]))
            print(
                f"round {rnd + 1}: {row.model} {row.runtime} {row.precision}: {row.walls[-1]:.1f} s, "
                f"WER {row.wer:.2f} %, peak {row.rss[-1]:.0f} MiB, encoder {row.encoder[-1]} ms",
                file=sys.stderr,
                flush=True,
            )
    text = table(rows, args.threads, len(clips), sum(r["duration_s"] for r in picked))
    print(text)
    if args.out:
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
