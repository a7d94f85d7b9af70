"""Tokens per second of speech on real clips: the rate behind `TOKENS_PER_SECOND` (decode/options.py's budget).

For each clip of a manifest split, the tokens one 30-s window would hold for its reference transcript, tokenized
with the model's tokenizer: the text tokens (with Whisper's leading space) plus 2 timestamp tokens (a clip of
<= 30 s is one segment: <|0.00|> text <|t|>; each further segment adds 2, which the budget's floor covers),
divided by the clip's duration (the whole clip, its leading and trailing silence included). Prints the rate's
percentiles, the largest clips, and the suggested constant: margin x the 99.9th percentile (with ~100 clips, the
maximum).

    PYTHONPATH=src python benchmarks/token_rate.py --model base --split calib
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
MANIFEST = REPO.parent / "shared" / "data" / "manifest.jsonl"
TIMESTAMPS_PER_WINDOW = 2


def tokenizer_of(model: str):
    from transformers import WhisperTokenizerFast

    from litewhisper.models.builtin import BUILTIN_MODELS, builtin_model_dir

    path = builtin_model_dir(model) if model in BUILTIN_MODELS else Path(model)
    return WhisperTokenizerFast.from_pretrained(str(path))


def rates(rows: list[dict], tokenizer) -> list[tuple[float, int, dict]]:
    out = []
    for r in rows:
        n = len(tokenizer.encode(" " + r["text"].strip(), add_special_tokens=False)) + TIMESTAMPS_PER_WINDOW
        out.append((n / r["duration_s"], n, r))
    return sorted(out, key=lambda x: x[0])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="base", help="built-in name or model directory (its tokenizer)")
    p.add_argument("--manifest", default=str(MANIFEST))
    p.add_argument("--split", default="calib")
    p.add_argument("--margin", type=float, default=1.5)
    args = p.parse_args()
    rows = [json.loads(line) for line in open(args.manifest, encoding="utf-8") if line.strip()]
    rows = [r for r in rows if r.get("split") == args.split]
    out = rates(rows, tokenizer_of(args.model))
    values = np.array([x[0] for x in out])
    for q in (50, 90, 99, 99.9, 100):
        print(f"p{q:g}: {np.percentile(values, q):.2f} tokens/s")
    for rate, n, r in out[-5:]:
        print(f"  {rate:.2f} tokens/s  {n} tokens  {r['duration_s']:.2f} s  {r['path']}")
    p999 = float(np.percentile(values, 99.9))
    print(
        json.dumps(
            {
                "clips": len(out),
                "split": args.split,
                "p99.9": round(p999, 2),
                "max": round(float(values.max()), 2),
                "suggested": math.ceil(args.margin * p999 * 10) / 10,
            }
        )
    )


if __name__ == "__main__":
    main()
