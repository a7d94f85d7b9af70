"""Does the teacher-forced proxy (evaluation/proxy.py) rank compressed variants as their `dev` WER does?

The original model transcribes N `calib` clips once (the one decoder's defaults); each variant is scored by the
mean KL of its next-token distributions from the original's on those transcripts. Give each variant with the
relative `dev` WER change measured for it (README, Results: all 745 English `dev` clips, paired against the
original); the script prints the proxy, its cost, and Spearman's rank correlation between proxy and WER change
(the originals count as 0 / 0).

    PYTHONPATH=src python benchmarks/proxy.py --teacher tiny.en --clips 32 \\
        --variant tiny.en@0.9=lite-tinyen-0.9:-2.9 --variant tiny.en-fast=lite-tinyen-fast:+185.0 ...
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def calib_audio(data: Path, n: int) -> list:
    """n `calib` clips of at most 30 s, evenly spaced through the manifest."""
    from litewhisper.audio.load import load_audio

    rows = [json.loads(line) for line in data.read_text().splitlines() if line.strip()]
    rows = [r for r in rows if r["split"] == "calib" and r["duration_s"] <= 30]
    step = max(1, len(rows) // n)
    return [load_audio(str(data.parent / r["path"])) for r in rows[::step][:n]]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--teacher", action="append", required=True, help="original model(s), e.g. tiny.en, base")
    p.add_argument(
        "--variant",
        action="append",
        default=[],
        help="NAME=PATH:REL_WER (REL_WER in %% vs original; NAME starts with its teacher's name)",
    )
    p.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data" / "manifest.jsonl")
    p.add_argument("--clips", type=int, default=32)
    args = p.parse_args()

    from litewhisper.evaluation.proxy import proxy_kl, rank_correlation, teacher_reference
    from litewhisper.models.load import load_model

    audio = calib_audio(args.data, args.clips)
    teachers = {name: load_model(name) for name in args.teacher}
    references = {}
    for name, bundle in teachers.items():
        start = time.perf_counter()
        references[name] = teacher_reference(bundle, audio)
        print(f"{name}: reference on {len(audio)} calib clips in {time.perf_counter() - start:.0f} s")
    rows = [(name, name, 0.0, 0.0, 0.0) for name in teachers]  # (name, teacher, proxy, rel WER, seconds)
    for spec in args.variant:
        name, rest = spec.split("=", 1)
        path, rel = rest.rsplit(":", 1)
        model = load_model(path)
        teacher = next((t for t in teachers if name.startswith(t)), args.teacher[0])  # by name prefix
        start = time.perf_counter()
        result = proxy_kl(references[teacher], model)
        rows.append((name, teacher, result.kl, float(rel), time.perf_counter() - start))
    print("\n| variant | proxy KL (nats/token) | dev rel. WER % | proxy s |\n|---|---|---|---|")
    for name, _, kl, rel, seconds in rows:
        print(f"| {name} | {kl:.4f} | {rel:+.1f} | {seconds:.1f} |")
    rho = rank_correlation([r[2] for r in rows], [r[3] for r in rows])
    print(f"\nSpearman rank correlation (proxy vs dev rel. WER), {len(rows)} models: {rho:.2f}")


if __name__ == "__main__":
    main()
