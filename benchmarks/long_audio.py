"""Long recordings: peak memory (RSS) and wall time of transcribing 10, 30 and 120 minutes of audio.

Each recording is built in a temporary folder by concatenating the English clips of the shared data (manifest
order, 0.3 s of silence between clips, cycling when the data runs out) into one 16 kHz flac; its reference is the
clips' texts. Every measurement is a whole process (`litewhisper transcribe MODEL FILE`, or a decode-only
reader), timed from start to exit; peak RSS comes from the kernel's rusage of that process (`os.wait4`).

    nice -n 5 python benchmarks/long_audio.py --minutes 10 30 120 --modes transcribe decode --out long_audio.json

Modes: `transcribe` (CLI, tiny.en by default; WER against the clips' texts), `decode` (read the whole file
through `stream_audio` and drop it: the audio side alone), `load` (the whole file into memory with
`load_audio`, as before streaming — for contrast).
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data" if (REPO.parent / "shared" / "data").is_dir() else Path("/work/shared/data")
GAP_S = 0.3
SAMPLE_RATE = 16_000

READERS = {
    "decode": "from litewhisper.audio.load import stream_audio\nn = sum(b.size for b in stream_audio({path!r}, 30.0))",
    "load": "from litewhisper.audio.load import load_audio\nn = load_audio({path!r}).size",
}


def build_recording(minutes: float, folder: Path, data: Path = DATA) -> tuple[Path, str]:
    """A `minutes`-long flac of English clips in `folder`, and its reference text (written block by block)."""
    import soundfile as sf

    rows = [json.loads(line) for line in (data / "manifest.jsonl").read_text().splitlines() if line.strip()]
    rows = [r for r in rows if r.get("lang") == "en" and r.get("text")]
    path = folder / f"long_{minutes:g}min.flac"
    target, written, texts = round(minutes * 60 * SAMPLE_RATE), 0, []
    gap = np.zeros(round(GAP_S * SAMPLE_RATE), dtype=np.float32)
    with sf.SoundFile(str(path), "w", samplerate=SAMPLE_RATE, channels=1, format="FLAC", subtype="PCM_16") as out:
        for row in itertools.cycle(rows):  # stops at the first clip that would overrun the length
            clip, rate = sf.read(str(data / row["path"]), dtype="float32")
            if rate != SAMPLE_RATE or clip.ndim != 1:
                continue
            if written + clip.size > target:
                break
            out.write(np.concatenate([clip, gap]))
            written += clip.size + gap.size
            texts.append(row["text"])
    return path, " ".join(texts)


def run_child(cmd: list[str], env: dict[str, str]) -> dict[str, float | str]:
    """Wall seconds, peak RSS (MiB, the kernel's rusage of exactly this process) and stdout of one run."""
    start = time.perf_counter()
    out_file = tempfile.TemporaryFile(mode="w+")
    err_file = tempfile.TemporaryFile(mode="w+")
    proc = subprocess.Popen(cmd, stdout=out_file, stderr=err_file, env=env, text=True)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - start
    proc.returncode = os.waitstatus_to_exitcode(status)
    out_file.seek(0)
    err_file.seek(0)
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed ({proc.returncode}):\n{err_file.read()[-2000:]}")
    return {"wall_s": round(wall, 1), "peak_rss_mib": round(usage.ru_maxrss / 1024, 1), "stdout": out_file.read()}


def wer(reference: str, hypothesis: str) -> float:
    from litewhisper.evaluation.metrics import word_counts
    from litewhisper.evaluation.normalize import normalize

    return round(100 * word_counts(normalize(reference, "english"), normalize(hypothesis, "english")).rate, 2)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, nargs="+", default=[10, 30, 120])
    parser.add_argument(
        "--modes", nargs="+", choices=("transcribe", "decode", "load"), default=["transcribe", "decode"]
    )
    parser.add_argument("--model", default="tiny.en")
    parser.add_argument("--out", type=Path, help="append results as JSON lines here (default: stdout only)")
    args = parser.parse_args()
    env = dict(os.environ, PYTHONPATH=str(REPO / "src"))
    with tempfile.TemporaryDirectory(prefix="litewhisper-long-") as tmp:
        for minutes in args.minutes:
            path, reference = build_recording(minutes, Path(tmp))
            for mode in args.modes:
                if mode == "transcribe":
                    cmd = [sys.executable, "-m", "litewhisper", "transcribe", args.model, str(path), "--quiet"]
                else:
                    cmd = [sys.executable, "-c", READERS[mode].format(path=str(path))]
                row = run_child(cmd, env)
                text = row.pop("stdout")
                row.update(
                    minutes=minutes, mode=mode, model=args.model if mode == "transcribe" else None, cpus=os.cpu_count()
                )
                if mode == "transcribe":
                    row["wer"] = wer(reference, text)
                    row["rtf"] = round(row["wall_s"] / (minutes * 60), 3)
                print(json.dumps(row), flush=True)
                if args.out is not None:
                    with args.out.open("a") as f:
                        f.write(json.dumps(row) + "\n")
            path.unlink()


if __name__ == "__main__":
    main()
