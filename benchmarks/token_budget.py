"""Decoding work with and without the per-window token budget (`--tokens-per-second`), on the same clips.

Decodes English `dev` clips (spread over the domains, as `evaluate --max-clips` picks them) with MODEL (an export:
the deployed runtime; or a PyTorch model) and `transcribe`'s defaults, once with the budget (DecodeOptions'
default rate) and once without (`tokens_per_second=None`), the two settings interleaved clip by clip (A B, B A, ...).
For the deployed runtime it counts every CTranslate2 `generate` call (greedy pass + fallback re-decodes) and the
tokens they produced (kept or not); it reports decode time, clips that hit the limit, corpus WER (Whisper's English
normaliser) and the paired change of WER with its 95 % bootstrap interval.

    OMP_NUM_THREADS=1 PYTHONPATH=src python benchmarks/token_budget.py EXPORT --clips 60 --threads 1 --json out.json
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


class Counter:
    """Counts CTranslate2 generate calls and the tokens they return (patches `_Decoder.generate`)."""

    def __init__(self) -> None:
        from litewhisper.models.deployed import _Decoder

        self.calls = self.tokens = 0
        decode = _Decoder.generate

        def counted(decoder, *args, **kwargs):
            out = decode(decoder, *args, **kwargs)
            self.calls += 1
            self.tokens += sum(len(r.sequences_ids[0]) for r in out)
            return out

        _Decoder.generate = counted

    def take(self) -> tuple[int, int]:
        out = (self.calls, self.tokens)
        self.calls = self.tokens = 0
        return out


def clips(data: Path, n: int) -> list[dict]:
    from litewhisper.evaluation.evaluate import spread_over_domains

    rows = [json.loads(line) for line in data.read_text().splitlines() if line.strip()]
    rows = [r for r in rows if r["split"] == "dev" and r["lang"] == "en"]

    class Item(dict):
        domain = property(lambda self: self["domain"])

    return [dict(r) for r in spread_over_domains([Item(r) for r in rows], n)]


def run(model, rows: list[dict], data: Path, settings: dict, counter: Counter) -> dict[str, list[dict]]:
    from litewhisper.decode.transcribe import transcribe

    out: dict[str, list[dict]] = {name: [] for name in settings}
    names = list(settings)
    for i, r in enumerate(rows):
        for name in names if i % 2 == 0 else names[::-1]:
            start = time.perf_counter()
            (t,) = transcribe(model, str(data.parent / r["path"]), settings[name])
            seconds = time.perf_counter() - start
            calls, tokens = counter.take()
            out[name].append(
                dict(id=r["path"], text=t.text, ref=r["text"], hit=t.hit_token_limit, s=seconds, calls=calls,
                     tokens=tokens, n_tokens=t.n_tokens)
            )  # fmt: skip
    return out


def summary(out: dict[str, list[dict]]) -> list[str]:
    from litewhisper.evaluation.metrics import paired_change_ci, total, word_counts
    from litewhisper.evaluation.normalize import normalize

    counts = {
        name: [word_counts(normalize(c["ref"], "english"), normalize(c["text"], "english")) for c in cs]
        for name, cs in out.items()
    }
    lines = ["| setting | clips | generate calls | tokens generated | decode s | hit limit | WER % |", "|---" * 7 + "|"]
    for name, cs in out.items():
        wer = 100 * total(counts[name]).rate
        lines.append(
            f"| {name} | {len(cs)} | {sum(c['calls'] for c in cs)} | {sum(c['tokens'] for c in cs)} | "
            f"{sum(c['s'] for c in cs):.1f} | {sum(c['hit'] for c in cs)} | {wer:.2f} |"
        )
    base, other = list(counts)
    change, lo, hi = paired_change_ci(counts[base], counts[other], n_resamples=2000)
    same = sum(a["text"] == b["text"] for a, b in zip(out[base], out[other], strict=True))
    lines.append(f"\nWER change {other} vs {base}: {change:+.2f} % (95 % paired bootstrap {lo:+.2f} .. {hi:+.2f})")
    lines.append(f"identical text: {same}/{len(out[base])} clips")
    lines += [
        f"  {a['id']}: {a['calls']} calls {a['tokens']} tok {a['s']:.2f} s -> {b['calls']} calls {b['tokens']} tok "
        f"{b['s']:.2f} s | {a['text'][:60]!r} -> {b['text'][:60]!r}"
        for a, b in zip(out[base], out[other], strict=True)
        if a["text"] != b["text"] or a["calls"] != b["calls"]
    ]
    return lines


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model", help="an export directory (deployed runtime) or a PyTorch model")
    p.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data" / "manifest.jsonl")
    p.add_argument("--clips", type=int, default=60)
    p.add_argument("--threads", type=int, default=2, help="intra-op threads of an export")
    p.add_argument("--json", type=Path, help="write every clip's numbers and texts here")
    args = p.parse_args()

    from litewhisper.decode.options import DecodeOptions
    from litewhisper.models.load import load_model

    counter = Counter()
    model = load_model(args.model, threads=args.threads)
    options = DecodeOptions(language="en", batch_size=1)
    settings = {"no budget": options.replace(tokens_per_second=None), "budget": options}
    rows = clips(args.data, args.clips)
    out = run(model, rows, args.data, settings, counter)
    print(f"{args.model}, {options.describe()}, {args.threads} threads\n")
    print("\n".join(summary(out)))
    if args.json:
        args.json.write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
