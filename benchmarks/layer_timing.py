"""Each factorised encoder linear of a model in int8: its pair x·W1·W2 against the dense x·(W1 W2), timed now.

Lists the linears the int8 export would decide on (export/densify.py: not kept fp32, not read by reduced
attention) with their FLOP ratio and both int8 times (export/layer_timing.py's one-linear graphs, the two
sessions interleaved over --rounds, medians), measured afresh (the export's cache is neither read nor written),
and the decision the export takes with MERGE_MARGIN. Timings are ratios within one run; other jobs on the CPU
inflate both sides.

    PYTHONPATH=src python benchmarks/layer_timing.py lite-base --threads 2 --rounds 21
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

from litewhisper.export.densify import MERGE_MARGIN, mergeable  # noqa: E402
from litewhisper.export.layer_timing import PairShape, measure_pair  # noqa: E402
from litewhisper.export.quantize import KEEP_FP32_AUTO  # noqa: E402
from litewhisper.models.cost import linear_macs  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model", help="a lite-whisper model (directory)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--rounds", type=int, default=21)
    p.add_argument("--keep-fp32", default=KEEP_FP32_AUTO, help="regex of linears kept fp32 ('none': every one)")
    p.add_argument("--cpu-time", action="store_true", help="CPU time of one thread instead of wall time")
    args = p.parse_args()
    clock = time.process_time if args.cpu_time else time.perf_counter
    if args.cpu_time:
        args.threads = 1  # a process's CPU time is its one thread's work

    from litewhisper.models.load import load_model

    keep = None if args.keep_fp32.lower() == "none" else args.keep_fp32
    layers = mergeable(load_model(args.model).model, keep)
    print("| linear | Din×Dout | k | FLOPs dense/factorised | dense int8 ms | factorised int8 ms | speedup | export |")
    print("|---|---|---|---|---|---|---|---|")
    totals = [0.0, 0.0, 0.0]
    for name, m in layers.items():
        t = measure_pair(PairShape(m.in_features, m.out_features, m.rank), args.threads, args.rounds, clock)
        d_in, d_out = m.in_features, m.out_features
        flops = linear_macs(d_in, d_out, None, 1) / linear_macs(d_in, d_out, m.rank, 1)
        merged = t.merged(MERGE_MARGIN)
        totals = [totals[0] + t.dense_ms, totals[1] + t.factored_ms, totals[2] + t.exported_ms(MERGE_MARGIN)]
        print(
            f"| {name} | {m.in_features}×{m.out_features} | {m.rank} | {flops:.2f}× | {t.dense_ms:.2f} | "
            f"{t.factored_ms:.2f} | {t.speedup:.2f}× | {'merged' if merged else 'factorised'} |"
        )
    print(
        f"| total ({len(layers)}) | | | | {totals[0]:.1f} | {totals[1]:.1f} | {totals[0] / totals[1]:.2f}× | "
        f"as exported {totals[2]:.1f} ms |"
    )


if __name__ == "__main__":
    main()
