"""How well compressed encoders fit the original on the windows `--window auto` encodes (issue 31, item 3).

For English `dev` clips (spread over the domains), each compressed model's final encoder states are compared with
the original model's on the same window: relative error ||student - teacher|| / ||teacher|| over the positions that
carry audio, pooled over the clips, for full 30-s windows and for the policy's short windows. Compare a checkpoint
calibrated on packed 30-s windows (the default) with one calibrated on policy windows (`--windows short`):

    litewhisper compress base -o lite-pack --calibration ../shared/data/manifest.jsonl --split calib --target-size 0.8
    litewhisper compress base -o lite-short --calibration ../shared/data/manifest.jsonl --split calib \\
        --target-size 0.8 --windows short
    PYTHONPATH=src python benchmarks/window_fit.py base lite-pack lite-short --clips 60
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]


def states(bundle, features: torch.Tensor, frames: int) -> torch.Tensor:
    """(1, n_mels, 3000) -> (frames/2, d): the encoder's final states on the first `frames` frames."""
    from litewhisper.models.encoder_window import encoder_window

    with torch.inference_mode(), encoder_window(bundle.model) as window:
        window.frames = frames
        return bundle.model.get_encoder()(features).last_hidden_state[0].float()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("teacher", help="the original model (e.g. base)")
    p.add_argument("students", nargs="+", help="compressed checkpoints")
    p.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data" / "manifest.jsonl")
    p.add_argument("--clips", type=int, default=60)
    args = p.parse_args()

    from token_budget import clips as dev_clips  # English dev clips spread over the domains (this folder)

    from litewhisper.audio.load import load_audio
    from litewhisper.constants import SAMPLE_RATE, WINDOW_FRAMES
    from litewhisper.decode.options import DecodeOptions
    from litewhisper.models.load import load_model

    teacher = load_model(args.teacher)
    students = {s: load_model(s) for s in args.students}
    auto = DecodeOptions(window="auto")
    err = {(s, w): [0.0, 0.0] for s in args.students for w in ("full", "auto")}  # squared error, squared norm
    extractor = teacher.processor.feature_extractor
    for row in dev_clips(args.data, args.clips):
        audio = load_audio(str(args.data.parent / row["path"]))
        features = extractor([audio], sampling_rate=SAMPLE_RATE, return_tensors="pt").input_features
        seconds = audio.size / SAMPLE_RATE
        audio_positions = min(int(seconds * 50) + 1, WINDOW_FRAMES // 2)
        for window, frames in (("full", WINDOW_FRAMES), ("auto", auto.encoder_frames(seconds))):
            ref = states(teacher, features, frames)[:audio_positions]
            for name, student in students.items():
                diff = states(student, features, frames)[:audio_positions] - ref
                err[name, window][0] += float(diff.pow(2).sum())
                err[name, window][1] += float(ref.pow(2).sum())
    print(f"relative error of final encoder states vs {args.teacher}, audio positions, {args.clips} dev clips\n")
    print("| checkpoint | full 30-s windows | auto windows |\n|---|---|---|")
    for name in args.students:
        full, short = ((err[name, w][0] / err[name, w][1]) ** 0.5 for w in ("full", "auto"))
        print(f"| {name} | {full:.4f} | {short:.4f} |")


if __name__ == "__main__":
    main()
