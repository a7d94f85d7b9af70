"""`litewhisper report`: one calibration, re-used for every variant; Markdown + PNG figures.

Table 1 (original vs presets: WER per domain, size, FLOPs, measured speedup), Figure 1 (Pareto: WER vs encoder
size), Figure 6 (per-layer rank ratio heatmap), Figure 7 (θ sensitivity, attention and MLP separately),
Table 2 (non-English clips with the multilingual model). Figures are drawn from plain data by `report_plots`.
"""

from __future__ import annotations

import datetime as _dt
import logging
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from litewhisper.decode.options import DecodeOptions
from litewhisper.errors import LiteWhisperError
from litewhisper.evaluation.evaluate import EvalConfig, HypothesisLog, ModelResult, evaluate_model, select_clips
from litewhisper.progress import quiet
from litewhisper.report.plots import LINEAR_COLUMNS, Point, SweepPoint, plot_pareto, plot_rank_heatmap, plot_theta_sweep

__all__ = [
    "ReportConfig",
    "Variant",
    "rank_ratios",
    "sweep_policies",
    "md_table",
    "table1",
    "table2",
    "write_markdown",
    "run_report",
]

log = logging.getLogger("litewhisper")


@dataclass(frozen=True)
class ReportConfig:
    """What the report measures; the same decoding settings for every variant."""

    model: str = "tiny.en"
    split_calib: str | None = "calib"
    split_dev: str | None = "dev"
    max_clips: int | None = None  # dev clips per evaluation (None: all)
    max_calib_clips: int | None = None
    presets: tuple[str, ...] = ("acc", "balanced", "fast")  # plain LiteASR θ presets
    target_sizes: tuple[float, ...] = (0.9, 0.8, 0.7)  # litewhisper's budget method (sensitivity-weighted)
    thetas: tuple[float, ...] = (0.95, 0.97, 0.99, 0.995, 0.999)
    multilingual: str | None = "base"  # model for Table 2 (None: skip)
    decoding: DecodeOptions = DecodeOptions()  # what transcribe does, for every variant
    bench_repeats: int = 5

    def __post_init__(self) -> None:
        if any(not 0 < t <= 1 for t in self.thetas):
            raise LiteWhisperError(f"thetas must lie in (0, 1], got {self.thetas}")
        if any(not 0 < t <= 1 for t in self.target_sizes):
            raise LiteWhisperError(f"target sizes must lie in (0, 1], got {self.target_sizes}")
        if self.bench_repeats < 1:
            raise LiteWhisperError(f"bench_repeats must be >= 1, got {self.bench_repeats}")


@dataclass(frozen=True)
class Variant:
    """A model in the report: its bundle, evaluation and (for compressed ones) rank plan."""

    name: str
    result: ModelResult
    flops: int
    plan: Any = None
    group: str = "original"  # "original", "LiteASR preset", "litewhisper budget"


def rank_ratios(plan) -> list[list[float]]:
    """layers × (q, k, v, out, fc1, fc2) of rank / min(D_in, D_out); 1.0 for layers kept dense."""
    from litewhisper.models.linears import layer_index, short_name

    n_layers = 1 + max(layer_index(e.name) for e in plan.entries)
    grid = [[math.nan] * len(LINEAR_COLUMNS) for _ in range(n_layers)]
    for e in plan.entries:
        col = short_name(e.name)
        if col in LINEAR_COLUMNS:
            grid[layer_index(e.name)][LINEAR_COLUMNS.index(col)] = (
                1.0 if e.rank is None else e.rank / min(e.d_in, e.d_out)
            )
    return grid


def sweep_policies(theta: float):
    """(attention-only, MLP-only) policies at θ: the other group is kept dense."""
    from litewhisper.compression.plan import RankPolicy

    attn = RankPolicy(theta_attn=theta, theta_mlp=1.0, overrides=(("*.fc1", None), ("*.fc2", None)))
    mlp = RankPolicy(theta_attn=1.0, theta_mlp=theta, overrides=(("*.self_attn.*", None),))
    return attn, mlp


# ----------------------------------------------------------------------------------------------- markdown


def _fmt(x: float | None, digits: int = 2) -> str:
    return "–" if x is None or (isinstance(x, float) and not math.isfinite(x)) else f"{x:.{digits}f}"


def md_table(head: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
    return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in rows])


def table1(rows: Sequence[dict[str, Any]]) -> str:
    """Table 1 from plain rows: name, wer, macro_wer, domains {d: wer}, params, flops, speedup, n_loops, loop_share."""
    domains = sorted({d for r in rows for d in r["domains"]})
    base_params = rows[0]["params"]
    head = [
        "model",
        *domains,
        "pooled WER",
        "macro WER",
        "encoder params",
        "size %",
        "GFLOPs/30 s",
        "speedup",
        "loops (% of errors)",
    ]
    body = [
        [
            r["name"],
            *[_fmt(r["domains"].get(d)) for d in domains],
            f"**{_fmt(r['wer'])}**",
            _fmt(r["macro_wer"]),
            f"{r['params'] / 1e6:.2f} M",
            f"{100 * r['params'] / base_params:.1f}",
            _fmt(r["flops"] / 1e9),
            f"{_fmt(r.get('speedup'))}×" if r.get("speedup") else "–",
            f"{r.get('n_loops', 0)} ({100 * r.get('loop_share', 0.0):.0f})",
        ]
        for r in rows
    ]
    return md_table(head, body)


def table2(rows: Sequence[dict[str, Any]]) -> str:
    """Table 2 from plain rows: id, lang, metric, rate, reference, hypothesis."""
    body = [
        [r["id"], r["lang"], r["metric"].upper(), _fmt(r["rate"], 1), r["reference"][:60], r["hypothesis"][:60]]
        for r in rows
    ]
    return md_table(["clip", "lang", "metric", "rate %", "reference", "hypothesis"], body)


# ----------------------------------------------------------------------------------------------- driver


class _Runner:
    """Holds what every step shares: clips, decoding settings, the hypotheses log and the calibration."""

    def __init__(self, config: ReportConfig, data: Any, out: Path):
        self.config, self.data, self.out = config, data, out
        self.eval_cfg = EvalConfig(
            split=config.split_dev, language="en", decoding=config.decoding, max_clips=config.max_clips
        )
        self.dev = select_clips(data, self.eval_cfg)
        self.hyps = HypothesisLog(out / "hypotheses.jsonl", resume=False)

    def evaluate(self, bundle, name: str, items=None) -> ModelResult:
        log.info("report: evaluating %s on %d clips", name, len(items or self.dev))
        return evaluate_model(bundle, items or self.dev, self.eval_cfg, name=name, log_file=self.hyps)

    def compress(self, bundle, stats, policy, audio=None, sensitivities=None):
        from litewhisper.compression.api import compress

        with quiet():
            return compress(bundle, audio, policy, stats=stats, sensitivities=sensitivities)


def _calibrate(bundle, calibration: Any, config: ReportConfig):
    """(clips, {windowing: statistics}): one clip per window for LiteASR (as the paper), packed windows for the
    budget method (its default) when the report has budget variants."""
    from litewhisper.audio.datasets import discover_audio
    from litewhisper.compression.calibration import CalibrationConfig, calibrate

    items = (
        discover_audio(calibration, split=config.split_calib)
        if isinstance(calibration, (str, os.PathLike))
        else list(calibration)
    )
    items = items[: config.max_calib_clips] if config.max_calib_clips else items
    windowings = ("clip", "pack") if config.target_sizes else ("clip",)
    return items, {w: calibrate(bundle, items, CalibrationConfig(windowing=w)) for w in windowings}


def _variants(run: _Runner, bundle, name: str, stats: dict, calib: list) -> tuple[list[Variant], dict[str, Any]]:
    """The original, one plain-LiteASR variant per preset and one budget variant per target size (all from
    the one calibration pass per windowing)."""
    from litewhisper.compression.policy import RankPolicy, SizeBudget
    from litewhisper.models.cost import encoder_flops

    variants = [Variant(name, run.evaluate(bundle, name), encoder_flops(bundle.model))]
    bundles = {name: bundle}
    built = [
        (f"{name}-{preset}", "LiteASR preset", run.compress(bundle, stats["clip"], RankPolicy.preset(preset)))
        for preset in run.config.presets
    ]
    sensitivities = None  # probed by the first budget variant, re-used by the others (same statistics, audio)
    for size in run.config.target_sizes:
        res = run.compress(bundle, stats["pack"], SizeBudget(size), calib, sensitivities)
        sensitivities = res.sensitivities
        built.append((f"{name}-size{size:g}", "litewhisper budget", res))
    for vname, group, res in built:
        bundles[vname] = res.bundle
        variants.append(Variant(vname, run.evaluate(res.bundle, vname), res.flops_after, res.plan, group))
    return variants, bundles


def _speedups(bundles: dict[str, Any], repeats: int):
    """Encoder latency of every variant at batch 1, interleaved; {name: EncoderResult}."""
    from litewhisper.bench.latency import analytic, bench_encoders, encoder_fn

    fns = {1: {name: encoder_fn(b, 1) for name, b in bundles.items()}}
    costs = {name: analytic(b.model) for name, b in bundles.items()}
    return {r.model: r for r in bench_encoders(fns, costs, repeats=repeats, warmup=1)}


def _sweep(run: _Runner, bundle, name: str, stats) -> dict[str, list[SweepPoint]]:
    """Figure 7 data: WER and size for each θ, attention and MLP swept separately."""
    sweeps: dict[str, list[SweepPoint]] = {"attention θ": [], "MLP θ": []}
    for theta in run.config.thetas:
        for label, policy in zip(sweeps, sweep_policies(theta), strict=True):
            res = run.compress(bundle, stats, policy)
            r = run.evaluate(res.bundle, f"{name}-{label.split()[0]}-{theta}")
            sweeps[label].append(SweepPoint(theta, r.score.wer, r.encoder_params / 1e6))
    return sweeps


def _multilingual(run: _Runner, source: Any) -> tuple[list[dict[str, Any]], ModelResult | None, str]:
    """Table 2 rows (non-English dev clips, per clip) and the model's English result for the Pareto plot."""
    from litewhisper.audio.datasets import discover_audio
    from litewhisper.evaluation.metrics import score_utterance, uses_cer
    from litewhisper.evaluation.normalize import normalize
    from litewhisper.models.load import load_model

    bundle = load_model(source) if isinstance(source, (str, os.PathLike)) else source
    name = str(source) if isinstance(source, (str, os.PathLike)) else bundle.name
    items = [
        it for it in discover_audio(run.data, split=run.config.split_dev) if it.lang not in (None, "en") and it.text
    ][: run.config.max_clips]
    rows = []
    if items:
        cfg = replace(run.eval_cfg, language=None)
        evaluate_model(bundle, items, cfg, name=f"{name} (non-English)", log_file=run.hyps)
        for it in items:
            h = run.hyps.done[(f"{name} (non-English)", str(it.id or it.path))]
            s = score_utterance(h.id, normalize(h.reference, "basic"), normalize(h.hypothesis, "basic"), lang=h.lang)
            rows.append(
                {
                    "id": h.id,
                    "lang": h.lang,
                    "metric": "cer" if uses_cer(h.lang) else "wer",
                    "rate": 100 * s.counts.rate,
                    "reference": h.reference,
                    "hypothesis": h.hypothesis,
                }
            )
    english = run.evaluate(bundle, name)
    return rows, english, name


def _setup_lines(run: _Runner, stats, data: Any, calibration: Any, env: dict[str, Any]) -> list[str]:
    from litewhisper import __version__

    minutes = sum(it.duration_s or 0.0 for it in run.dev) / 60
    meta = getattr(stats, "metadata", {}) or {}
    return [
        f"- date: {_dt.datetime.now(_dt.timezone.utc).strftime('%Y-%m-%d %H:%M UTC')}",
        f"- evaluation data: `{data}` split `{run.config.split_dev}`, {len(run.dev)} English clips "
        f"({minutes:.1f} min){', spread round-robin over domains' if run.config.max_clips else ''}",
        f"- calibration (one, re-used for every variant): `{calibration}` split `{run.config.split_calib}`, "
        f"{meta.get('clips', '?')} clips, {meta.get('windows', '?')} windows, {meta.get('frames', '?')} frames",
        f"- decoding (the one decoder `transcribe` uses): {run.config.decoding.describe()}, "
        "identical for every model; scoring: corpus WER = (S+D+I)/N over all clips, Whisper English normaliser "
        "(basic normaliser and CER for ja/zh/ko in Table 2)",
        f"- versions: litewhisper {__version__}, torch {env.get('torch')}, transformers {env.get('transformers')}, "
        f"python {env.get('python')}",
        f"- hardware: {env.get('cpu')}, {env.get('torch_threads')} torch threads, device {env.get('device')}",
    ]


def write_markdown(
    path: Path,
    *,
    title: str,
    setup: list[str],
    table1_rows: list[dict],
    t2_rows: list[dict],
    sweeps: dict[str, list[SweepPoint]],
    multilingual: str | None,
    command: str | None,
) -> Path:
    """The report's Markdown (figures referenced by relative path)."""
    from litewhisper.atomic import atomic_write_text

    sweep_rows = [
        [label, f"{p.theta:g}", _fmt(p.wer), f"{p.params_m:.2f}"] for label, pts in sweeps.items() for p in pts
    ]
    parts = [
        f"# {title}",
        "",
        *setup,
        "",
        "## Table 1: original vs compressed (corpus WER % per domain)",
        "",
        table1(table1_rows),
        "",
        "`-acc/-balanced/-fast`: plain LiteASR (the paper's θ presets); `-sizeF`: litewhisper's budget "
        "method (ranks allocated across layers for F × the encoder size, weighted by measured sensitivity). "
        "Speedup: median over interleaved rounds of the original's encoder time / the variant's, one 30-s "
        "window, batch 1, in this run. `loops`: clips that reached their token limit or whose "
        "hypothesis has a gzip compression ratio > 2.4 (runaway loops, hallucinations), with their share of "
        "the word errors.",
        "",
        "## Figure 1: WER vs encoder size (LiteASR presets and θ sweeps vs the budget method)",
        "",
        "![Figure 1](figure1_pareto.png)",
        "",
        "## Figure 6: per-layer rank ratio k / D",
        "",
        "![Figure 6](figure6_ranks.png)",
        "",
        "## Figure 7: sensitivity to θ",
        "",
        "![Figure 7](figure7_theta.png)",
        "",
        md_table(["swept", "θ", "WER %", "encoder params M"], sweep_rows) if sweep_rows else "(no sweep)",
        "",
    ]
    if multilingual:
        parts += [
            f"## Table 2: non-English clips, multilingual `{multilingual}` (basic normaliser)",
            "",
            table2(t2_rows) if t2_rows else "(no non-English clips in the evaluation data)",
            "",
        ]
    if command:
        parts += ["## Reproduce", "", f"```\n{command}\n```", ""]
    return atomic_write_text(path, "\n".join(parts))


def run_report(
    config: ReportConfig,
    calibration: Any,
    data: Any,
    out: str | os.PathLike,
    bundle: Any = None,
    overwrite: bool = False,
    command: str | None = None,
) -> Path:
    """Build the report in `out` (written atomically): README.md, report.json, hypotheses.jsonl, PNGs."""
    from litewhisper.atomic import atomic_directory

    with atomic_directory(out, overwrite) as tmp:
        _build(config, calibration, data, Path(tmp), bundle, command)
    return Path(out) / "README.md"


def _build(config: ReportConfig, calibration: Any, data: Any, out: Path, bundle: Any, command: str | None) -> None:
    import json

    from litewhisper.atomic import atomic_write_text
    from litewhisper.bench.latency import BenchConfig, environment
    from litewhisper.models.load import load_model

    name = config.model if bundle is None else bundle.name
    bundle = bundle or load_model(config.model)
    run = _Runner(config, data, out)
    log.info("report: calibrating %s once", name)
    calib, stats = _calibrate(bundle, calibration, config)
    variants, bundles = _variants(run, bundle, name, stats, calib)
    speed = _speedups(bundles, config.bench_repeats)
    sweeps = _sweep(run, bundle, name, stats["clip"]) if config.thetas else {}
    t2_rows, ml_result, ml_name = (
        ([], None, None) if not config.multilingual else _multilingual(run, config.multilingual)
    )
    rows = [
        {
            "name": v.name,
            "wer": v.result.score.wer,
            "macro_wer": v.result.score.macro_wer,
            "domains": {d: g.rate for d, g in v.result.score.domains.items()},
            "params": v.result.encoder_params,
            "flops": v.flops,
            "speedup": speed[v.name].speedup.median,
            "n_hit": v.result.n_hit_token_limit,
            "n_loops": len(v.result.loops.ids),
            "loop_share": v.result.loops.error_share,
        }
        for v in variants
    ]
    points = [Point(r["name"], r["params"] / 1e6, r["wer"], v.group) for r, v in zip(rows, variants, strict=True)]
    if ml_result is not None:
        points.append(Point(ml_name, ml_result.encoder_params / 1e6, ml_result.score.wer, "original"))
    points += [Point(f"{lab} {p.theta:g}", p.params_m, p.wer, lab) for lab, pts in sweeps.items() for p in pts]
    plot_pareto(points, out / "figure1_pareto.png")
    plot_rank_heatmap(
        {v.name: rank_ratios(v.plan) for v in variants if v.plan is not None} or {name: [[1.0] * len(LINEAR_COLUMNS)]},
        out / "figure6_ranks.png",
    )
    plot_theta_sweep(sweeps, out / "figure7_theta.png", reference=(rows[0]["wer"], rows[0]["params"] / 1e6))
    env = environment(BenchConfig())
    write_markdown(
        out / "README.md",
        title=f"litewhisper report: {name}",
        setup=_setup_lines(run, stats["clip"], data, calibration, env),
        table1_rows=rows,
        t2_rows=t2_rows,
        sweeps=sweeps,
        multilingual=ml_name,
        command=command,
    )
    summary = {
        "table1": rows,
        "table2": t2_rows,
        "environment": env,
        "sweeps": {k: [p.__dict__ for p in v] for k, v in sweeps.items()},
        "evaluations": [v.result.to_dict() for v in variants],
    }
    atomic_write_text(out / "report.json", json.dumps(summary, indent=2, default=str, ensure_ascii=False) + "\n")
