"""WER vs encoder size: plain LiteASR (θ sweep) against budgeted allocation (+ sequential calibration, + refinement).

    python benchmarks/frontier.py tiny.en --out /tmp/frontier-tiny --dev-clips 200
    python benchmarks/frontier.py base --out /tmp/frontier-base --sizes 0.9 0.8 0.7

Calibrates on ../shared/data `calib` only, evaluates corpus WER (Whisper's English normaliser) on a fixed,
domain-stratified subset of `dev` (`--dev-clips 0`: all of dev). Every point is cached in OUT/results.json, so an
interrupted run resumes; OUT gets results.json, frontier.md (the table) and frontier.png (the plot).
Variants: liteasr (paper: one clip per window, θ per preset/sweep), liteasr-pack (same θ, packed windows),
budget (packed windows, ranks allocated for a target size), budget-seq (+ sequential calibration),
budget-seq-refine (+ light distillation of the factors).
"""
from __future__ import annotations

import argparse
import json
import logging
import random
import sys
import time
from collections import defaultdict
from pathlib import Path

from litewhisper.allocate import compress_to_size
from litewhisper.calibrate import CalibrationConfig, calibrate
from litewhisper.compress import compress
from litewhisper.datasets import read_manifest
from litewhisper.evaluate import EvalConfig, evaluate_model
from litewhisper.flops import encoder_flops, encoder_params
from litewhisper.models import load_model
from litewhisper.plan import RankPolicy
from litewhisper.refine import RefineConfig
from litewhisper.stats import ActivationStats

log = logging.getLogger("litewhisper")
DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
VARIANTS = ("liteasr", "liteasr-pack", "budget", "budget-seq", "budget-seq-refine")


def dev_subset(manifest: Path, n: int, seed: int = 0) -> list:
    """English dev clips, `n` of them stratified by domain (proportional, ≥ 2 per domain); n=0: all."""
    items = [it for it in read_manifest(manifest, split="dev") if it.lang == "en" and it.text]
    if n <= 0 or n >= len(items):
        return items
    by_domain = defaultdict(list)
    for it in items:
        by_domain[it.domain].append(it)
    rng = random.Random(seed)
    chosen = []
    for domain in sorted(by_domain):
        group = sorted(by_domain[domain], key=lambda it: it.id)
        k = min(len(group), max(2, round(n * len(group) / len(items))))
        chosen += rng.sample(group, k)
    return sorted(chosen, key=lambda it: it.id)


def cached_stats(bundle, calib: list, windowing: str, path: Path) -> ActivationStats:
    if path.is_file():
        return ActivationStats.load(path)
    stats = calibrate(bundle, calib, CalibrationConfig(windowing=windowing))
    stats.save(path)
    return stats


def build(bundle, variant: str, knob: float, stats: dict, calib: list, refine_cfg: RefineConfig):
    """The compressed bundle for one point: knob = θ (liteasr*) or target size fraction (budget*)."""
    if variant.startswith("liteasr"):
        policy = RankPolicy(theta_attn=knob, theta_mlp=knob)
        return compress(bundle, policy=policy, stats=stats["clip" if variant == "liteasr" else "pack"],
                        progress=False).bundle
    return compress_to_size(bundle, calib, knob, stats=stats["pack"], sequential=variant != "budget",
                            refine_config=refine_cfg if variant.endswith("refine") else None,
                            progress=False).bundle


def score_point(name: str, variant: str, knob, bundle, items: list, eval_cfg: EvalConfig, seconds: float) -> dict:
    result = evaluate_model(bundle, items, eval_cfg, name=name)
    return {"name": name, "variant": variant, "knob": knob, "params": encoder_params(bundle.model),
            "flops": encoder_flops(bundle.model), "wer": result.score.wer,
            "domains": {d: g.rate for d, g in result.score.domains.items()},
            "hit_token_limit": result.n_hit_token_limit, "build_s": round(seconds, 1),
            "decode_s": round(result.decode_seconds, 1)}


def points(args) -> list[tuple[str, float]]:
    out = []
    for variant in args.variants:
        knobs = args.thetas if variant.startswith("liteasr") else args.sizes
        out += [(variant, k) for k in knobs]
    return out


def run(args) -> list[dict]:
    args.out.mkdir(parents=True, exist_ok=True)
    cache_path = args.out / "results.json"
    results = {r["name"]: r for r in json.loads(cache_path.read_text())} if cache_path.is_file() else {}
    bundle = load_model(args.model)
    manifest = args.data / "manifest.jsonl"
    calib = read_manifest(manifest, split="calib")
    items = dev_subset(manifest, args.dev_clips, args.seed)
    eval_cfg = EvalConfig(language="en", max_new_tokens=args.max_new_tokens, batch_size=8, progress=True)
    refine_cfg = RefineConfig(max_steps=args.refine_steps, lr=args.refine_lr, eval_every=10, patience=3)
    stats = {w: cached_stats(bundle, calib, w, args.out / f"stats-{w}.safetensors") for w in ("clip", "pack")}
    todo = [("original", None)] + points(args)
    for variant, knob in todo:
        name = variant if knob is None else f"{variant}@{knob}"
        if name in results:
            continue
        start = time.perf_counter()
        built = bundle if knob is None else build(bundle, variant, knob, stats, calib, refine_cfg)
        results[name] = score_point(name, variant, knob, built, items, eval_cfg, time.perf_counter() - start)
        log.warning("%s: %.2fM params, WER %.2f", name, results[name]["params"] / 1e6, results[name]["wer"])
        cache_path.write_text(json.dumps(list(results.values()), indent=1))
    return list(results.values())


def table(rows: list[dict], model: str) -> str:
    base = next(r for r in rows if r["name"] == "original")
    domains = sorted(base["domains"])
    head = ["point", "enc params (M)", "size", "GFLOPs/30 s", "WER", "rel. WER"] + domains
    lines = [f"### {model}", "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in sorted(rows, key=lambda r: (r["variant"] != "original", r["variant"], -r["params"])):
        rel = 100 * (r["wer"] / base["wer"] - 1)
        cells = [r["name"], f"{r['params'] / 1e6:.2f}", f"{r['params'] / base['params']:.3f}",
                 f"{r['flops'] / 1e9:.2f}", f"{r['wer']:.2f}", f"{rel:+.1f} %"]
        cells += [f"{r['domains'].get(d, float('nan')):.2f}" for d in domains]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot(rows: list[dict], model: str, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    base = next(r for r in rows if r["name"] == "original")
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for variant in VARIANTS:
        pts = sorted((r["params"] / base["params"], r["wer"]) for r in rows if r["variant"] == variant)
        if pts:
            ax.plot(*zip(*pts), marker="o", label=variant)
    ax.axhline(base["wer"], color="k", ls="--", lw=1, label="original")
    ax.axhline(1.03 * base["wer"], color="grey", ls=":", lw=1, label="+3 % relative")
    ax.set_xlabel("encoder size (fraction of original, without positional table)")
    ax.set_ylabel("corpus WER (%)")
    ax.set_title(f"{model}: WER vs encoder size")
    ax.invert_xaxis()
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model", help="tiny.en, base, or any load_model source")
    p.add_argument("--out", type=Path, required=True, help="output directory (results, table, PNG plot)")
    p.add_argument("--data", type=Path, default=DATA)
    p.add_argument("--dev-clips", type=int, default=200, help="stratified dev subset size (0: all of dev)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--max-new-tokens", type=int, default=128)
    p.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=VARIANTS)
    p.add_argument("--thetas", nargs="+", type=float, default=[0.9999, 0.9995, 0.999, 0.995, 0.99])
    p.add_argument("--sizes", nargs="+", type=float, default=[0.95, 0.9, 0.85, 0.8, 0.75, 0.7])
    p.add_argument("--refine-steps", type=int, default=60)
    p.add_argument("--refine-lr", type=float, default=1e-4)
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(message)s")
    rows = run(args)
    text = table(rows, args.model)
    (args.out / "frontier.md").write_text(text + "\n")
    plot(rows, args.model, args.out / "frontier.png")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
