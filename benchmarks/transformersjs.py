"""transformers.js beside litewhisper's own runtime: the same export directories, the same clips, WER of each.

    PYTHONPATH=src python benchmarks/transformersjs.py --export tiny.en=EXP/tinyen-fp32 --export tiny.en=EXP/tinyen \
        --export tiny.en@0.8=EXP/lite-tinyen-fp32 --export tiny.en@0.8=EXP/lite-tinyen --clips 60

Each `--export NAME=DIR` is a `litewhisper export` directory; its precision (litewhisper_export.json) picks the
rows: an fp32 export (`--quantize none`) gives the fp32 row, an int8 export (the default) the q8 row. Both runtimes
decode greedily without timestamps, fallback or the no-speech rule (DecodeOptions preset "leaderboard"; in
transformers.js: `pipeline('automatic-speech-recognition', DIR, {dtype})` with `max_new_tokens`), at most
--max-new-tokens per clip, on N English `dev` clips spread evenly over the manifest (all shorter than 30 s) and on
jfk.flac. WER: corpus WER after Whisper's English normaliser (litewhisper.evaluation). transformers.js runs in Node
from $LITEWHISPER_TJS_DIR (`npm install --prefix DIR --ignore-scripts @huggingface/transformers`).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SCRIPT = Path(__file__).with_suffix(".mjs")
PACKAGE = Path("node_modules") / "@huggingface" / "transformers" / "package.json"
TJS_DTYPE = {"fp32": "fp32", "int8": "q8"}  # export precision -> transformers.js dtype


def find_transformersjs() -> tuple[Path | None, str]:
    """(directory whose node_modules holds @huggingface/transformers, "") or (None, why not)."""
    if shutil.which("node") is None:
        return None, "node is not on PATH (transformers.js runs in Node 18+)"
    from litewhisper.models.builtin import cache_root

    candidates = [os.environ.get("LITEWHISPER_TJS_DIR", "")]
    candidates += [str(Path(p).parent) for p in os.environ.get("NODE_PATH", "").split(os.pathsep) if p]
    installed = [cache_root() / "node", Path.home() / ".cache" / "litewhisper" / "node"]  # .ci/run installs the latter
    for candidate in [c for c in candidates if c] + [str(p) for p in installed] + [str(REPO)]:
        if (Path(candidate) / PACKAGE).is_file():
            return Path(candidate), ""
    return None, (
        "the npm package @huggingface/transformers was not found: run `npm install --prefix DIR --ignore-scripts "
        "@huggingface/transformers` with DIR = ~/.cache/litewhisper/node (what .ci/run does), or set "
        "LITEWHISPER_TJS_DIR=DIR (or NODE_PATH=DIR/node_modules)"
    )


def run_transformersjs(job: dict, workdir: Path, timeout: float = 1800) -> list[dict]:
    """Run benchmarks/transformersjs.mjs on `job` (see its header); returns its records, one per item."""
    package, why = find_transformersjs()
    if package is None:
        raise RuntimeError(why)
    job_file = workdir / "transformersjs_job.json"
    job_file.write_text(json.dumps(job), encoding="utf-8")
    env = {**os.environ, "LITEWHISPER_TJS_DIR": str(package)}
    proc = subprocess.run(
        ["node", str(SCRIPT), str(job_file)], capture_output=True, text=True, timeout=timeout, env=env, check=False
    )
    if proc.returncode != 0:
        raise RuntimeError(f"transformers.js failed (exit {proc.returncode}): {proc.stderr[-3000:]}")
    return [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]


def select_clips(manifest: Path, n: int) -> tuple[list[dict], dict]:
    """N English dev rows spread evenly over the manifest (jfk left out), and jfk's row."""
    rows = [json.loads(line) for line in manifest.read_text(encoding="utf-8").splitlines() if line.strip()]
    dev = [r for r in rows if r["split"] == "dev" and r["lang"] == "en"]
    jfk = next(r for r in dev if r["path"] == "misc/jfk.flac")
    pool = [r for r in dev if r is not jfk]
    n = min(n, len(pool))
    return [pool[int(i * len(pool) / n)] for i in range(n)], jfk


def corpus_wer(refs: list[str], hyps: list[str]) -> float:
    from litewhisper.evaluation.metrics import total, word_counts
    from litewhisper.evaluation.normalize import normalize

    counts = total(
        word_counts(normalize(r, "english"), normalize(h, "english")) for r, h in zip(refs, hyps, strict=True)
    )
    return 100 * counts.rate


def write_audio(paths: list[Path], workdir: Path) -> list[Path]:
    """Each clip as 16-kHz float32 little-endian samples (what the .mjs reads), decoded by litewhisper."""
    import numpy as np

    from litewhisper.audio.load import load_audio

    out = []
    for i, path in enumerate(paths):
        raw = workdir / f"clip{i:04d}.f32"
        np.asarray(load_audio(str(path)), dtype="<f4").tofile(raw)
        out.append(raw)
    return out


def ours(export: Path, paths: list[Path], max_new_tokens: int, threads: int) -> tuple[list[str], float]:
    from litewhisper.decode.options import DecodeOptions
    from litewhisper.decode.transcribe import transcribe
    from litewhisper.models.load import load_model

    model = load_model(export, threads=threads)
    start = time.perf_counter()
    results = transcribe(
        model, [str(p) for p in paths], DecodeOptions.preset("leaderboard", max_new_tokens=max_new_tokens)
    )
    return [r.text for r in results], time.perf_counter() - start


def theirs(export: Path, dtype: str, raws: list[Path], max_new_tokens: int, threads: int, workdir: Path):
    job = {
        "model": str(export.resolve()),
        "dtype": dtype,
        "mode": "pipeline",
        "threads": threads,
        "items": [{"id": str(i), "audio": str(raw)} for i, raw in enumerate(raws)],
        "options": {"max_new_tokens": max_new_tokens},
    }
    records = run_transformersjs(job, workdir)
    return [r["text"] for r in records], sum(r["seconds"] for r in records)


def measure(name: str, export: Path, clips: list[dict], data: Path, raws: list[Path], args, workdir: Path) -> dict:
    """One table row: both runtimes on the clips (the last one jfk) from one export directory."""
    marker = json.loads((export / "litewhisper_export.json").read_text(encoding="utf-8"))
    precision = marker["precision"]
    paths = [data / r["path"] for r in clips]
    mine, mine_s = ours(export, paths, args.max_new_tokens, args.threads)
    tjs, tjs_s = theirs(export, TJS_DTYPE[precision], raws, args.max_new_tokens, args.threads, workdir)
    refs = [r["text"] for r in clips]
    row = {
        "model": name,
        "precision": f"{precision} ({TJS_DTYPE[precision]})",
        "clips": len(clips) - 1,
        "wer_ours": corpus_wer(refs[:-1], mine[:-1]),
        "wer_tjs": corpus_wer(refs[:-1], tjs[:-1]),
        "identical": sum(a.strip() == b.strip() for a, b in zip(mine[:-1], tjs[:-1], strict=True)),
        "jfk_tjs": tjs[-1].strip(),
        "jfk_exact": corpus_wer(refs[-1:], tjs[-1:]) == 0.0,
        "seconds_ours": mine_s,
        "seconds_tjs": tjs_s,
        "texts": {"refs": refs, "ours": mine, "tjs": tjs},
    }
    print(f"{name} {precision}: ours {row['wer_ours']:.2f} %, transformers.js {row['wer_tjs']:.2f} %", flush=True)
    return row


def print_table(rows: list[dict]) -> None:
    print(
        "| model | precision (transformers.js dtype) | clips | litewhisper WER % | transformers.js WER % | rel. Δ "
        "| identical text | jfk exact (transformers.js) | litewhisper s | transformers.js s |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        rel = (r["wer_tjs"] / r["wer_ours"] - 1) * 100 if r["wer_ours"] else 0.0
        print(
            f"| {r['model']} | {r['precision']} | {r['clips']} | {r['wer_ours']:.2f} | {r['wer_tjs']:.2f} "
            f"| {rel:+.1f} % | {r['identical']}/{r['clips']} | {'yes' if r['jfk_exact'] else 'no'} "
            f"| {r['seconds_ours']:.1f} | {r['seconds_tjs']:.1f} |"
        )
    for r in rows:
        print(f"jfk, {r['model']} {r['precision']}, transformers.js: {r['jfk_tjs']!r}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--export", action="append", required=True, metavar="NAME=DIR", help="an export (repeatable)")
    p.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data" / "manifest.jsonl")
    p.add_argument("--clips", type=int, default=60, help="English dev clips, spread evenly (default 60)")
    p.add_argument("--max-new-tokens", type=int, default=224, help="per clip, both runtimes (default 224)")
    p.add_argument("--threads", type=int, default=2, help="intra-op threads of both runtimes")
    p.add_argument("--json", type=Path, help="write the rows, with every text, here")
    args = p.parse_args()
    package, why = find_transformersjs()
    if package is None:
        sys.exit(f"error: {why}")
    clips, jfk = select_clips(args.data, args.clips)
    clips = [*clips, jfk]
    rows = []
    with tempfile.TemporaryDirectory(prefix="litewhisper-tjs-") as tmp:
        workdir = Path(tmp)
        raws = write_audio([args.data.parent / r["path"] for r in clips], workdir)
        for spec in args.export:
            name, _, directory = spec.partition("=")
            rows.append(measure(name, Path(directory), clips, args.data.parent, raws, args, workdir))
    print_table(rows)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
