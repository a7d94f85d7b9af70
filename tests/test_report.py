"""report: figures from small fake data, Markdown tables, rank ratios, and a small end-to-end report."""

import json
import math
from types import SimpleNamespace

import pytest

from helpers import require_shared_data, shared_manifest, tiny_whisper
from litewhisper.decode.options import DecodeOptions
from litewhisper.report.plots import (
    Point,
    SweepPoint,
    pareto_frontier,
    plot_pareto,
    plot_rank_heatmap,
    plot_theta_sweep,
)
from litewhisper.report.report import ReportConfig, rank_ratios, run_report, sweep_policies, table1, table2

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _is_png(path):
    return path.is_file() and path.read_bytes()[:8] == PNG_MAGIC and path.stat().st_size > 5000


def test_pareto_frontier():
    pts = [Point("a", 8.0, 10.0), Point("b", 6.0, 11.0), Point("c", 7.0, 12.0), Point("d", 5.0, 15.0)]
    assert [p.label for p in pareto_frontier(pts)] == ["d", "b", "a"]  # c is beaten by b on both


def test_plots_write_pngs(tmp_path):
    pts = [
        Point("tiny.en", 7.6, 6.0, "original"),
        Point("acc", 6.0, 6.3, "preset"),
        Point("fast", 4.1, 8.0, "preset"),
        Point("attention θ 0.95", 5.0, 9.0, "attention θ"),
    ]
    assert _is_png(plot_pareto(pts, tmp_path / "f1.png"))
    ratios = {"acc": [[0.5, 0.5, 0.75, 1.0, 0.25, 0.3], [1.0] * 6], "fast": [[0.25] * 6, [0.5, math.nan, 1, 1, 1, 1]]}
    assert _is_png(plot_rank_heatmap(ratios, tmp_path / "f6.png"))
    sweeps = {
        "attention θ": [SweepPoint(0.95, 9.0, 5.0), SweepPoint(0.999, 6.1, 7.0)],
        "MLP θ": [SweepPoint(0.95, 12.0, 4.0), SweepPoint(0.999, 6.2, 6.9)],
    }
    assert _is_png(plot_theta_sweep(sweeps, tmp_path / "f7.png", reference=(6.0, 7.6)))


def test_rank_ratios_and_sweep_policies():
    entries = [
        SimpleNamespace(name="layers.0.self_attn.q_proj", rank=96, d_in=384, d_out=384),
        SimpleNamespace(name="layers.0.fc1", rank=None, d_in=384, d_out=1536),
        SimpleNamespace(name="layers.1.fc2", rank=192, d_in=1536, d_out=384),
    ]
    grid = rank_ratios(SimpleNamespace(entries=entries))
    assert len(grid) == 2 and grid[0][0] == 0.25 and grid[0][4] == 1.0 and grid[1][5] == 0.5
    assert math.isnan(grid[1][0])
    attn, mlp = sweep_policies(0.97)
    assert attn.target("layers.3.self_attn.k_proj") == 0.97 and attn.target("layers.3.fc1") is None
    assert mlp.target("layers.3.fc2") == 0.97 and mlp.target("layers.3.self_attn.out_proj") is None


def test_markdown_tables():
    rows = [
        {
            "name": "orig",
            "wer": 6.0,
            "macro_wer": 7.0,
            "domains": {"a": 5.0, "b": 9.0},
            "params": 8e6,
            "flops": 3.7e10,
            "speedup": 1.0,
            "n_hit": 0,
        },
        {
            "name": "fast",
            "wer": 8.0,
            "macro_wer": 9.5,
            "domains": {"a": 7.0},
            "params": 4e6,
            "flops": 2e10,
            "speedup": 1.6,
            "n_hit": 1,
            "n_loops": 1,
            "loop_share": 0.25,
        },
    ]
    text = table1(rows)
    lines = text.splitlines()
    assert lines[0].startswith("| model | a | b | pooled WER")
    assert "| fast | 7.00 | – | **8.00** | 9.50 | 4.00 M | 50.0 | 20.00 | 1.60× | 1 (25) |" in text
    t2 = table2([{"id": "ja1", "lang": "ja", "metric": "cer", "rate": 12.5, "reference": "今日", "hypothesis": "今"}])
    assert "| ja1 | ja | CER | 12.5 | 今日 | 今 |" in t2


@pytest.mark.real
def test_small_report_end_to_end_on_random_model(tmp_path, litewhisper_cache):
    """Calibrate once, 2 presets + 1-θ sweep on a tiny random model with the real tokenizer, 2 real clips."""
    from litewhisper.models.builtin import builtin_source
    from litewhisper.models.load import WhisperBundle
    from litewhisper.models.processor import build_generation_config, build_processor

    data = require_shared_data()
    model = tiny_whisper(d_model=64, heads=4, ffn=128)
    processor = build_processor(builtin_source("tiny.en")[1], vocab_size=model.config.vocab_size)
    model.generation_config = build_generation_config(processor.tokenizer, vocab_size=model.config.vocab_size)
    bundle = WhisperBundle(model, processor, "random", None)
    rows = [r for r in shared_manifest("dev", "en") if r["duration_s"] < 4][:2]
    manifest = tmp_path / "dev.jsonl"
    manifest.write_text("".join(json.dumps({**r, "path": str(data / r["path"])}) + "\n" for r in rows))
    config = ReportConfig(
        max_clips=2,
        max_calib_clips=3,
        presets=("acc", "fast"),
        thetas=(0.9,),
        target_sizes=(0.8,),
        multilingual=None,
        decoding=DecodeOptions.preset("leaderboard", max_new_tokens=3),
        bench_repeats=1,
    )
    readme = run_report(
        config, data / "manifest.jsonl", manifest, tmp_path / "rep", bundle=bundle, command="litewhisper report ..."
    )
    out = readme.parent
    text = readme.read_text()
    for needle in (
        "Table 1",
        "random-acc",
        "random-fast",
        "random-size0.8",
        "Figure 1",
        "Figure 6",
        "Figure 7",
        "torch",
        "split `calib`",
        "2 English clips",
        "litewhisper report ...",
    ):
        assert needle in text, needle
    for png in ("figure1_pareto.png", "figure6_ranks.png", "figure7_theta.png"):
        assert _is_png(out / png), png
    summary = json.loads((out / "report.json").read_text())
    assert [r["name"] for r in summary["table1"]] == ["random", "random-acc", "random-fast", "random-size0.8"]
    assert summary["table1"][3]["params"] <= 0.8 * summary["table1"][0]["params"]
    assert summary["table1"][0]["speedup"] == 1.0 and len(summary["sweeps"]["MLP θ"]) == 1
    assert summary["table1"][2]["params"] <= summary["table1"][1]["params"] <= summary["table1"][0]["params"]
    # every variant decoded the same 2 clips, each hypothesis written once
    assert len((out / "hypotheses.jsonl").read_text().splitlines()) == 2 * (4 + 2)
    with pytest.raises(Exception, match="not empty"):
        run_report(config, data / "manifest.jsonl", manifest, tmp_path / "rep", bundle=bundle)
