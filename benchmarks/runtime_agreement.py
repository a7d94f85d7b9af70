"""One model, two runtimes: does a `litewhisper export` directory transcribe as the model does in PyTorch?

Decodes English dev clips with MODEL in PyTorch (Hugging Face `generate`) and with EXPORT (the ONNX encoder in
front of CTranslate2's decoder in faster-whisper's loop), with the same `DecodeOptions` (`transcribe`'s defaults:
greedy, timestamps, temperature fallback; `--decoding leaderboard`: greedy only), and prints the share of clips
with identical text (the same greedy tokens), each runtime's corpus WER (Whisper's English normaliser), per domain,
and the clips whose text differs.

    PYTHONPATH=src python benchmarks/runtime_agreement.py tiny.en EXPORT --clips read-alphanumeric=60 --clips rest=60

`--clips DOMAIN=N`: the first N dev clips of that domain; `rest=N`: N clips spread evenly over the English dev clips
of the domains not named.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import defaultdict
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def select(rows: list[dict], specs: list[str]) -> list[dict]:
    """Manifest rows for `DOMAIN=N` specs (see the module doc)."""
    named = {s.split("=")[0] for s in specs} - {"rest"}
    out = []
    for spec in specs:
        domain, n = spec.split("=")
        pool = [r for r in rows if (r["domain"] not in named if domain == "rest" else r["domain"] == domain)]
        n = min(int(n), len(pool))
        out += pool[:n] if domain != "rest" else [pool[int(i * len(pool) / n)] for i in range(n)]
    return out


def corpus_wer(refs: list[str], hyps: list[str]) -> tuple[float, int]:
    from litewhisper.evaluation.metrics import total, word_counts
    from litewhisper.evaluation.normalize import normalize

    counts = total(
        word_counts(normalize(r, "english"), normalize(h, "english")) for r, h in zip(refs, hyps, strict=True)
    )
    return 100 * counts.rate, counts.errors


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model", help="built-in name or model directory (PyTorch)")
    p.add_argument("export", help="its `litewhisper export` directory")
    p.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data" / "manifest.jsonl")
    p.add_argument("--clips", action="append", default=[], help="DOMAIN=N or rest=N (repeatable)")
    p.add_argument("--decoding", default="default", help="DecodeOptions preset: default | leaderboard")
    p.add_argument("--threads", type=int, default=2, help="intra-op threads of the export")
    p.add_argument("--json", type=Path, help="write clips, references and both runtimes' texts here")
    args = p.parse_args()

    from litewhisper.decode.options import DecodeOptions
    from litewhisper.decode.transcribe import transcribe
    from litewhisper.models.load import load_model

    rows = [json.loads(line) for line in args.data.read_text().splitlines() if line.strip()]
    rows = [r for r in rows if r["split"] == "dev" and r["lang"] == "en"]
    rows = select(rows, args.clips or ["rest=60"])
    paths = [str(args.data.parent / r["path"]) for r in rows]
    options = DecodeOptions.preset(args.decoding)
    texts = {}
    for name, source in (("pytorch", args.model), ("deployed", args.export)):
        model = load_model(source, threads=args.threads) if name == "deployed" else load_model(source)
        texts[name] = [t.text for t in transcribe(model, paths, options)]
    same = [a == b for a, b in zip(texts["pytorch"], texts["deployed"], strict=True)]
    by_domain = defaultdict(list)
    for i, r in enumerate(rows):
        by_domain[r["domain"]].append(i)
    print(f"{args.model} vs {args.export}, {options.describe()}\n")
    print("| clips | n | identical text | PyTorch WER % (errors) | deployed WER % (errors) |\n|---|---|---|---|---|")
    for domain, idx in [*sorted(by_domain.items()), ("all", list(range(len(rows))))]:
        refs = [rows[i]["text"] for i in idx]
        wers = [corpus_wer(refs, [texts[n][i] for i in idx]) for n in ("pytorch", "deployed")]
        n_same = sum(same[i] for i in idx)
        print(
            f"| {domain} | {len(idx)} | {n_same} ({100 * n_same / len(idx):.1f} %) | "
            + " | ".join(f"{w:.2f} ({e})" for w, e in wers)
            + " |"
        )
    for i in (i for i, s in enumerate(same) if not s):
        print(f"\n{rows[i]['path']}\n  ref      {rows[i]['text']}", file=sys.stderr)
        print(f"  pytorch  {texts['pytorch'][i]}\n  deployed {texts['deployed'][i]}", file=sys.stderr)
    if args.json:
        args.json.write_text(json.dumps({"clips": rows, **texts}, indent=1))


if __name__ == "__main__":
    main()
