"""Where a deployed process's memory goes: RSS now and peak so far after the imports, loading an export, the first
clip, the first 30 English `dev` clips up to 10 s decoded greedily, then with the default temperature fallback.
Everything happens in this one process, in that order (imports are timed before litewhisper's own).

    PYTHONPATH=src python benchmarks/deploy_memory.py EXPORT_DIR --window full
    PYTHONPATH=src python benchmarks/deploy_memory.py EXPORT_DIR --window auto
"""

from __future__ import annotations

import argparse
import json
import os
import resource
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def rss_mib() -> int:
    """Resident set size now (MiB)."""
    pages = int(Path("/proc/self/statm").read_text().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE") // 2**20


def peak_mib() -> int:
    """Peak resident set size so far (MiB; Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("export", help="a `litewhisper export` directory")
    p.add_argument("--window", choices=("full", "auto"), default="full")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data" / "manifest.jsonl")
    args = p.parse_args()
    steps = [("Python", rss_mib(), peak_mib())]
    import ctranslate2  # noqa: F401
    import faster_whisper  # noqa: F401
    import numpy  # noqa: F401
    import onnxruntime  # noqa: F401

    steps.append(("imports (numpy, onnxruntime, ctranslate2, faster-whisper)", rss_mib(), peak_mib()))
    from litewhisper.decode.options import DecodeOptions
    from litewhisper.decode.transcribe import transcribe
    from litewhisper.models.deployed import load_deployed

    model = load_deployed(args.export, threads=args.threads)
    steps.append(("export loaded (onnxruntime encoder session + CTranslate2 decoder)", rss_mib(), peak_mib()))
    rows = [json.loads(line) for line in args.data.read_text().splitlines() if line.strip()]
    clips = [
        str(args.data.parent / r["path"])
        for r in rows
        if r["split"] == "dev" and r["lang"] == "en" and r["duration_s"] <= 10
    ][:30]
    greedy = DecodeOptions(language="en", temperature=0.0, window=args.window)
    transcribe(model, clips[:1], greedy)
    steps.append(("first clip decoded (greedy)", rss_mib(), peak_mib()))
    transcribe(model, clips, greedy)
    steps.append((f"{len(clips)} clips, greedy", rss_mib(), peak_mib()))
    transcribe(model, clips, greedy.replace(temperature=DecodeOptions().temperature))
    steps.append((f"{len(clips)} clips, default temperature fallback", rss_mib(), peak_mib()))
    print(f"{args.export}, window {args.window}, {args.threads} threads\n")
    print("| step | RSS MiB | peak MiB |\n|---|---|---|")
    for name, now, top in steps:
        print(f"| {name} | {now} | {top} |")


if __name__ == "__main__":
    main()
