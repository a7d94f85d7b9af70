"""WER of encoder window policies (issue 31), paired on the same clips: one table from `evaluate` hypotheses.

Each setting is one `litewhisper evaluate` run writing its hypotheses (resumable), e.g. for tiny.en:

    for s in full 10/2 5/1; do  # --window full, or auto with FLOOR/MARGIN seconds
      f=${s%/*}; m=${s#*/}; [ $s = full ] && w="--window full" || w="--window auto --window-floor $f --window-margin $m"
      litewhisper evaluate tiny.en --data ../shared/data/manifest.jsonl --split dev --language en --quiet \\
        --hypotheses /tmp/win/tinyen-${s/\\//_}.jsonl --resume $w
    done
    PYTHONPATH=src python benchmarks/short_windows.py /tmp/win/tinyen-full.jsonl /tmp/win/tinyen-10_2.jsonl ...

The first file is the reference (full windows). Per setting: corpus WER (Whisper's English normaliser), its relative
change against the reference with a paired-bootstrap 95 % interval over the clips both decoded, loops (clips that hit
the token limit or whose text compresses > 2.4 with gzip), decoding seconds (the sum of the run's per-clip times),
texts identical to the reference's, and the WER per domain.
"""

from __future__ import annotations

import argparse
from collections import defaultdict
from pathlib import Path

from litewhisper.evaluation.evaluate import loop_stats, paired_change, read_hypotheses, score_hypotheses


def _label(path: Path) -> str:
    return path.stem


def _domains(hyps) -> dict[str, list]:
    out = defaultdict(list)
    for h in hyps:
        out[h.domain or "-"].append(h)
    return out


def table(paths: list[Path], bootstrap: int, min_domain: int) -> str:
    runs = {_label(p): {h.id: h for h in read_hypotheses(p)} for p in paths}
    common = sorted(set.intersection(*(set(r) for r in runs.values())))
    ref_name = _label(paths[0])
    ref = [runs[ref_name][i] for i in common]
    domains = [d for d, hs in sorted(_domains(ref).items()) if len(hs) >= min_domain]
    head = "| setting | WER % | vs full | loops | decode s | identical text | " + " | ".join(domains) + " |"
    lines = [f"{len(common)} clips decoded by every setting", "", head, "|---" * (6 + len(domains)) + "|"]
    for name, run in runs.items():
        hyps = [run[i] for i in common]
        wer = score_hypotheses(hyps)[0].wer  # in %
        change, lo, hi = paired_change(ref, hyps, bootstrap=bootstrap) if name != ref_name else (0.0, None, None)
        interval = f" [{lo:+.1f}, {hi:+.1f}]" if lo is not None else ""
        loops = len(loop_stats(hyps).ids)
        seconds = sum(h.decode_s or 0.0 for h in hyps)
        same = sum(a.hypothesis == b.hypothesis for a, b in zip(ref, hyps, strict=True))
        per_domain = _domains(hyps)
        cells = [f"{score_hypotheses(per_domain[d])[0].wer:.1f}" for d in domains]
        lines.append(
            f"| {name} | {wer:.2f} | {change:+.1f} %{interval} | {loops} | {seconds:.0f} | {same}/{len(common)} | "
            + " | ".join(cells)
            + " |"
        )
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("hypotheses", type=Path, nargs="+", help="evaluate --hypotheses files; the first is the reference")
    p.add_argument("--bootstrap", type=int, default=1000)
    p.add_argument("--min-domain", type=int, default=30, help="domains with fewer clips get no column")
    args = p.parse_args()
    print(table(args.hypotheses, args.bootstrap, args.min_domain))


if __name__ == "__main__":
    main()
