"""WER vs encoder size: plain LiteASR (θ sweep) against budgeted allocation (+ sequential calibration, + refinement).

    python benchmarks/frontier.py tiny.en --out /tmp/frontier-tiny --dev-clips 200
    python benchmarks/frontier.py base --out /tmp/frontier-base --sizes 0.9 0.8 0.7

Calibrates on ../shared/data `calib` only, evaluates corpus WER (Whisper's English normaliser) on a fixed,
domain-stratified subset of `dev` (`--dev-clips 0`: all of dev). Every point is cached in OUT/results.json, so an
interrupted run resumes; OUT gets results.json, frontier.md (the table) and frontier.png (the plot).
Variants: liteasr (paper: one clip per window, one θ for all layers), liteasr-preset (the paper's acc / balanced /
fast θ pairs), liteasr-pack / liteasr-pack-preset (same θ, packed windows),
budget (packed windows, ranks allocated for a target size), budget-refine (+ light distillation of the
factors), budget-seq (+ sequential calibration), budget-seq-refine (both), budget-sens (layers weighted by
measured sensitivity), budget-sens-refine, budget-sens-distill (+ decoder-aware distillation: next-token KL
and cross-entropy on the original model's transcripts of the calibration clips), budget-sens-refit (+ closed-form
refit of the factors on the compressed model's own inputs, `compress --refit`); "-clip": statistics from one clip
per window instead of packed.
"""

from __future__ import annotations

import argparse
import json
import logging
import random
import sys
import time
from collections import defaultdict
from dataclasses import replace
from pathlib import Path

import torch

from litewhisper.audio.datasets import read_manifest
from litewhisper.compression.api import compress
from litewhisper.compression.calibration import CalibrationConfig, calibrate
from litewhisper.compression.policy import RankPolicy, SizeBudget
from litewhisper.compression.refine import RefineConfig, relative_mse
from litewhisper.compression.stats import ActivationStats
from litewhisper.constants import REFIT_RIDGE
from litewhisper.decode.options import PRESETS, DecodeOptions
from litewhisper.evaluation.evaluate import (
    EvalConfig,
    HypothesisLog,
    evaluate_model,
    loop_stats,
    paired_change,
    score_hypotheses,
)
from litewhisper.models.cost import encoder_flops, encoder_params
from litewhisper.models.load import load_model
from litewhisper.progress import quiet

log = logging.getLogger("litewhisper")
DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
VARIANTS = (
    "liteasr",
    "liteasr-preset",
    "liteasr-pack",
    "liteasr-pack-preset",
    "budget",
    "budget-refine",
    "budget-seq",
    "budget-seq-refine",
    "budget-sens",
    "budget-sens-refine",
    "budget-sens-clip",
    "budget-sens-clip-refine",
    "budget-sens-distill",
    "budget-sens-refit",
)


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


_SENSITIVITIES: dict[str, dict[str, float]] = {}


def build(bundle, variant: str, knob: float, stats: dict, calib: list, refine_cfg: RefineConfig, min_kept: float = 0.0):
    """The compressed bundle for one point: knob = θ (liteasr*) or target size fraction (budget*)."""
    with quiet():
        return _compressed(bundle, variant, knob, stats, calib, refine_cfg, min_kept)


def _compressed(bundle, variant: str, knob: float, stats: dict, calib: list, refine_cfg: RefineConfig, min_kept: float):
    if variant.startswith("liteasr"):
        policy = RankPolicy.preset(knob) if isinstance(knob, str) else RankPolicy(theta_attn=knob, theta_mlp=knob)
        return compress(bundle, policy=policy, stats=stats["pack" if "-pack" in variant else "clip"]).bundle
    windows = "clip" if "-clip" in variant else "pack"
    budget = SizeBudget(
        knob,
        sensitivity="-sens" in variant,
        windows=windows,
        sequential="-seq" in variant,
        refit=REFIT_RIDGE if "-refit" in variant else None,
        refine=_refinement(variant, refine_cfg),
        min_kept=min_kept,
    )
    result = compress(bundle, calib, budget, stats=stats[windows], sensitivities=_SENSITIVITIES.get(windows))
    if result.sensitivities is not None:
        _SENSITIVITIES[windows] = result.sensitivities  # probed once per statistics, re-used for every size
    return result.bundle


def _refinement(variant: str, config: RefineConfig) -> RefineConfig | None:
    """-refine: encoder-state distillation; -distill: decoder-aware distillation (next-token KL + CE)."""
    if variant.endswith("-refine"):
        return replace(config, objective="encoder")
    return replace(config, objective="decoder") if variant.endswith("-distill") else None


class Proxy:
    """Relative error of the final encoder states vs the original's, on dev clips (one clip per window)."""

    def __init__(self, bundle, items: list, path: Path):
        from litewhisper.audio.load import load_audio

        fe = bundle.processor.feature_extractor
        self.features = fe(
            [load_audio(it.path) for it in items], sampling_rate=16000, return_tensors="pt"
        ).input_features  # (N, n_mels, 3000)
        if path.is_file():
            self.teacher = torch.load(path)
        else:
            self.teacher = self.states(bundle)
            torch.save(self.teacher, path)

    @torch.inference_mode()
    def states(self, bundle) -> torch.Tensor:
        enc = bundle.model.get_encoder()
        return torch.cat([enc(self.features[i : i + 4]).last_hidden_state for i in range(0, len(self.features), 4)])

    def error(self, bundle) -> float:
        return float(relative_mse(self.states(bundle), self.teacher))  # states (N, positions, d_model)


def score_point(
    name: str, bundle, items: list, eval_cfg: EvalConfig, proxy: Proxy | None, hyp_log: HypothesisLog
) -> dict:
    row = {"params": encoder_params(bundle.model), "flops": encoder_flops(bundle.model)}
    if proxy is not None:
        row["enc_err"] = proxy.error(bundle)
        return row
    result = evaluate_model(bundle, items, eval_cfg, name=name, log_file=hyp_log)
    return {
        **row,
        "wer": result.score.wer,
        "domains": {d: g.rate for d, g in result.score.domains.items()},
        "n_clips": len(items),
        "hit_token_limit": result.n_hit_token_limit,
        "n_loops": len(result.loops.ids),
        "decode_s": round(result.decode_seconds, 1),
    }


def points(args) -> list[tuple[str, float]]:
    """(variant, knob) pairs interleaved across variants, so a partial run already compares them."""
    knobs = {
        "liteasr": args.thetas,
        "liteasr-pack": args.thetas,
        "liteasr-preset": args.presets,
        "liteasr-pack-preset": args.presets,
    }
    per_variant = [[(v, k) for k in knobs.get(v, args.sizes)] for v in args.variants]
    return [pv[i] for i in range(max(map(len, per_variant))) for pv in per_variant if i < len(pv)]


def run(args) -> list[dict]:
    args.out.mkdir(parents=True, exist_ok=True)
    cache_path = args.out / "results.json"
    results = {r["name"]: r for r in json.loads(cache_path.read_text())} if cache_path.is_file() else {}
    bundle = load_model(args.model)
    manifest = args.data / "manifest.jsonl"
    calib = read_manifest(manifest, split="calib")
    items = dev_subset(manifest, args.dev_clips, args.seed)
    eval_cfg = EvalConfig(
        language="en", decoding=DecodeOptions.preset(args.decoding, max_new_tokens=args.max_new_tokens)
    )
    refine_cfg = RefineConfig(
        max_steps=args.refine_steps,
        lr=args.refine_lr,
        eval_every=args.refine_eval_every,
        patience=3,
        windows=args.refine_windows,
        warmup=args.refine_warmup,
        max_grad_norm=args.refine_clip,
        pull=args.refine_pull,
    )
    stats = {w: cached_stats(bundle, calib, w, args.out / f"stats-{w}.safetensors") for w in ("clip", "pack")}
    proxy = (
        Proxy(bundle, dev_subset(manifest, args.proxy_clips, args.seed + 1), args.out / "teacher.pt")
        if args.metric == "proxy"
        else None
    )
    key = "enc_err" if proxy is not None else "wer"
    hyp_log = HypothesisLog(args.out / "hypotheses.jsonl", resume=True)
    for variant, knob in [("original", None)] + points(args):
        name = variant if knob is None else f"{variant}@{knob}"
        if key in results.get(name, {}) and (
            proxy is not None or all((name, str(it.id)) in hyp_log.done for it in items)
        ):  # resume: every clip
            continue
        start = time.perf_counter()
        built = bundle if knob is None else build(bundle, variant, knob, stats, calib, refine_cfg, args.min_kept)
        row = {"name": name, "variant": variant, "knob": knob, "build_s": round(time.perf_counter() - start, 1)}
        results[name] = {**results.get(name, {}), **row, **score_point(name, built, items, eval_cfg, proxy, hyp_log)}
        log.warning("%s: %.2fM params, %s %.4g", name, results[name]["params"] / 1e6, key, results[name][key])
        cache_path.write_text(json.dumps(list(results.values()), indent=1))
    if proxy is None:
        add_comparisons(results, args.out, items, args.bootstrap)
    return list(results.values())


def add_comparisons(results: dict, out: Path, items: list, bootstrap: int) -> None:
    """WER, loops, WER without loop clips and paired changes vs the original on `items`, from OUT's hypotheses
    (so `--table-only --dev-clips N` shows a subset of a full run), saved in results.json."""
    hyp_log = HypothesisLog(out / "hypotheses.jsonl", resume=True)
    ids = [str(it.id) for it in items]
    for name in [n for n in results if all((n, i) in hyp_log.done for i in ids)]:  # WER on exactly these clips
        hyps = [hyp_log.done[(name, i)] for i in ids]
        score, _ = score_hypotheses(hyps)
        results[name].update(
            wer=score.wer,
            domains={d: g.rate for d, g in score.domains.items()},
            n_clips=len(ids),
            n_loops=len(loop_stats(hyps).ids),
        )
    add_loop_free_wer(results, hyp_log, ids)
    add_paired_changes(results, hyp_log, ids, bootstrap)
    (out / "results.json").write_text(json.dumps(list(results.values()), indent=1))


def add_loop_free_wer(results: dict, hyp_log: HypothesisLog, ids: list[str]) -> None:
    """`wer_loop_free`: corpus WER without the clips on which *any* point looped (hit the token limit or a
    gzip compression ratio > 2.4), so one runaway clip does not decide a comparison on a small set."""
    names = [n for n in results if all((n, i) in hyp_log.done for i in ids)]
    loops = {i for n in names for i in loop_stats([hyp_log.done[(n, i)] for i in ids]).ids}
    for n in names:
        score, _ = score_hypotheses([hyp_log.done[(n, i)] for i in ids if i not in loops])
        results[n].update(wer_loop_free=score.wer, n_loop_clips=len(loops))


def add_paired_changes(results: dict, hyp_log: HypothesisLog, ids: list[str], bootstrap: int) -> None:
    """`change`: relative WER change (%) against the original on the same clips, with its paired-bootstrap
    95 % interval (`change_ci`)."""
    names = [n for n in results if all((n, i) in hyp_log.done for i in ids)]
    if "original" not in names:
        return
    base = [hyp_log.done[("original", i)] for i in ids]
    for n in names:
        change, lo, hi = paired_change(base, [hyp_log.done[(n, i)] for i in ids], bootstrap=bootstrap)
        results[n].update(change=round(change, 2), change_ci=[round(lo, 2), round(hi, 2)])


def _fmt(x, spec: str) -> str:
    return "—" if x is None else format(x, spec)


def table(rows: list[dict], model: str) -> str:
    base = next(r for r in rows if r["name"] == "original")
    domains = sorted(base.get("domains", {}))
    head = [
        "point",
        "enc params (M)",
        "size",
        "GFLOPs/30 s",
        "enc. err",
        "WER",
        "rel. WER % [paired 95 % CI]",
        "loops",
        "WER w/o loops",
        "rel.",
    ] + domains
    lines = [f"### {model}", "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in sorted(rows, key=lambda r: (r["variant"] != "original", r["variant"], -r["params"])):
        wer = r.get("wer")
        rel = None if wer is None or "wer" not in base else 100 * (wer / base["wer"] - 1)
        rel_text = _fmt(rel, "+.1f") + (" [{:+.1f}, {:+.1f}]".format(*r["change_ci"]) if "change_ci" in r else "")
        free, base_free = r.get("wer_loop_free"), base.get("wer_loop_free")
        rel_free = None if free is None or base_free is None else 100 * (free / base_free - 1)
        cells = [
            r["name"],
            f"{r['params'] / 1e6:.2f}",
            f"{r['params'] / base['params']:.3f}",
            f"{r['flops'] / 1e9:.2f}",
            _fmt(r.get("enc_err"), ".4f"),
            _fmt(wer, ".2f"),
            rel_text,
            _fmt(r.get("n_loops", r.get("hit_token_limit")), "d"),
            _fmt(free, ".2f"),
            _fmt(rel_free, "+.1f"),
        ]
        cells += [_fmt(r.get("domains", {}).get(d), ".2f") for d in domains]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot(rows: list[dict], model: str, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    base = next(r for r in rows if r["name"] == "original")
    metrics = [m for m in ("change", "enc_err") if any(m in r for r in rows)]
    fig, axes = plt.subplots(1, len(metrics), figsize=(6.5 * len(metrics), 4.5), squeeze=False)
    for ax, metric in zip(axes[0], metrics, strict=False):
        for variant in VARIANTS:
            pts = sorted(
                (r["params"] / base["params"], r[metric], *r.get("change_ci", (r[metric],) * 2))
                for r in rows
                if r["variant"] == variant and metric in r
            )
            if pts:
                x, y, lo, hi = (list(v) for v in zip(*pts, strict=True))
                err = [[a - b for a, b in zip(y, lo, strict=True)], [b - a for a, b in zip(y, hi, strict=True)]]
                ax.errorbar(x, y, yerr=err if metric == "change" else None, marker="o", capsize=3, label=variant)
        if metric == "change":
            ax.axhline(0, color="k", ls="--", lw=1, label=f"original ({base['wer']:.2f} % WER)")
            ax.axhline(3, color="grey", ls=":", lw=1, label="+3 % relative")
        ax.set_xlabel("encoder size (fraction of original, without positional table)")
        ax.set_ylabel(
            "relative WER change vs original (%), paired 95 % CI"
            if metric == "change"
            else "relative error of final encoder states"
        )
        ax.set_title(f"{model}: {metric} vs encoder size")
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
    p.add_argument("--bootstrap", type=int, default=1000, help="paired-bootstrap resamples for the intervals")
    p.add_argument("--max-new-tokens", type=int, default=224)
    p.add_argument(
        "--decoding",
        choices=tuple(PRESETS),
        default="default",
        help="decoding preset of the one decoder (default: what transcribe does)",
    )
    p.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=VARIANTS)
    p.add_argument("--thetas", nargs="+", type=float, default=[0.9999, 0.9995, 0.999, 0.995, 0.99])
    p.add_argument("--presets", nargs="+", default=["acc", "balanced", "fast"], help="liteasr-preset: θ presets")
    p.add_argument("--sizes", nargs="+", type=float, default=[0.95, 0.9, 0.85, 0.8, 0.75, 0.7])
    p.add_argument(
        "--metric",
        choices=("wer", "proxy"),
        default="wer",
        help="wer: corpus WER on the dev subset; proxy: relative error of the final encoder states",
    )
    p.add_argument("--proxy-clips", type=int, default=24, help="dev clips for the proxy metric")
    p.add_argument("--min-kept", type=float, default=0.0, help="budget: floor on each layer's kept variance")
    p.add_argument("--table-only", action="store_true", help="only render OUT/results.json (table + plot)")
    p.add_argument("--refine-steps", type=int, default=100)
    p.add_argument("--refine-lr", type=float, default=1e-5, help="the recovery recipe of README, Results")
    p.add_argument("--refine-warmup", type=float, default=0.1)
    p.add_argument("--refine-clip", type=float, default=1.0)
    p.add_argument("--refine-pull", type=float, default=0.0)
    p.add_argument("--refine-windows", type=int, default=100, help="calibration clips the refinement trains on")
    p.add_argument("--refine-eval-every", type=int, default=10)
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(message)s")
    if args.table_only:
        results = {r["name"]: r for r in json.loads((args.out / "results.json").read_text())}
        if args.metric == "wer":
            add_comparisons(
                results, args.out, dev_subset(args.data / "manifest.jsonl", args.dev_clips, args.seed), args.bootstrap
            )
        rows = list(results.values())
    else:
        rows = run(args)
    text = table(rows, args.model)
    (args.out / "frontier.md").write_text(text + "\n")
    plot(rows, args.model, args.out / "frontier.png")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
