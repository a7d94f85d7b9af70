"""bench: interleaving order, per-round speedup bookkeeping with a fake clock, FLOP bound, module timer."""

import itertools

import numpy as np
import pytest
import torch

from helpers import tiny_whisper
from litewhisper.bench.latency import (
    BenchConfig,
    EncoderResult,
    Spread,
    bench,
    bench_encoders,
    bench_end_to_end,
    format_bench,
    interleaved_timings,
    module_timer,
    report_dict,
    speedups,
)
from litewhisper.bench.peers import PeerUnavailable, ct2_files
from litewhisper.errors import LiteWhisperError
from litewhisper.models.cost import encoder_flops


class FakeClock:
    """Each function call advances time by its model's cost, scaled by a per-round drift factor."""

    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


def test_interleaved_order_and_warmup():
    calls = []
    fns = {"A": lambda: calls.append("A"), "B": lambda: calls.append("B")}
    times = interleaved_timings(fns, repeats=3, warmup=1)
    assert calls == ["A", "B"] * 4  # one warm-up round, then A B A B A B
    assert [len(t) for t in times.values()] == [3, 3]


def test_speedup_is_median_of_per_round_ratios_under_drift():
    clock = FakeClock()
    drift = itertools.cycle([1.0, 3.0, 1.0, 2.0])  # the machine slows down and recovers between rounds
    factor = [1.0]

    def model(cost):
        def run():
            clock.now += cost * factor[0]

        return run

    def a():
        factor[0] = next(drift)  # a new round starts with A
        model(4.0)()

    fns = {"A": a, "B": model(2.0), "C": model(1.0)}
    times = interleaved_timings(fns, repeats=4, warmup=0, clock=clock)
    assert times["A"] == [4.0, 12.0, 4.0, 8.0]
    ratios = speedups(times)
    assert ratios["A"].median == 1.0 and ratios["B"].median == pytest.approx(2.0) and ratios["B"].iqr == 0
    assert ratios["C"].median == pytest.approx(4.0)
    # the ratio of medians would be distorted by drift only if rounds were not paired; both agree here
    assert np.median(times["A"]) / np.median(times["C"]) == pytest.approx(4.0)


def test_bench_encoders_bookkeeping_ideal_speedup():
    clock = FakeClock()

    def cost(c):
        def run():
            clock.now += c

        return run

    fns = {1: {"orig": cost(2.0), "fast": cost(1.0)}, 4: {"orig": cost(8.0), "fast": cost(2.0)}}
    costs = {"orig": (100, 10), "fast": (40, 4)}
    results = bench_encoders(fns, costs, repeats=5, warmup=1, clock=clock)
    by = {(r.model, r.batch_size): r for r in results}
    assert by["fast", 1].speedup.median == pytest.approx(2.0) and by["fast", 4].speedup.median == 4.0
    assert by["fast", 1].ideal_speedup == pytest.approx(2.5) and by["orig", 1].ideal_speedup == 1.0
    assert by["fast", 1].efficiency == pytest.approx(0.8)
    assert by["orig", 4].latency.median == 8.0 and by["orig", 4].latency.n == 5


def test_spread():
    s = Spread.of([1.0, 2.0, 3.0, 4.0, 100.0])
    assert s.median == 3.0 and s.q1 == 2.0 and s.q3 == 4.0 and s.iqr == 2.0


def test_module_timer_accumulates_and_removes_hooks():
    layer = torch.nn.Linear(4, 4)
    with module_timer(layer) as total:
        layer(torch.zeros(2, 4))
        layer(torch.zeros(2, 4))
        assert len(layer._forward_hooks) == 1 and len(layer._forward_pre_hooks) == 1
    assert total[0] > 0
    assert not layer._forward_hooks and not layer._forward_pre_hooks


def test_end_to_end_interleaves_batches():
    order = []

    def fn(name):
        def run(arrays):
            order.append((name, len(arrays)))
            return 0.5 * len(arrays), 0.25 * len(arrays)

        return run

    arrays = [np.zeros(16000, np.float32)] * 5
    res = bench_end_to_end({"A": fn("A"), "B": fn("B")}, arrays, audio_s=5.0, batch_size=2)
    assert order == [("A", 1), ("B", 1), ("A", 2), ("B", 2), ("A", 2), ("B", 2), ("A", 1), ("B", 1)]
    assert res[0].encoder_s == pytest.approx(2.5) and res[0].decoder_s == pytest.approx(1.25)
    assert res[0].n_clips == 5 and res[0].rtf == pytest.approx(res[0].total_s / 5.0)


def test_bench_tiny_random_models_and_report():
    from litewhisper.models.load import WhisperBundle

    small = WhisperBundle(tiny_whisper(d_model=32), None, "small", None)
    big = WhisperBundle(tiny_whisper(d_model=64, heads=4, ffn=128), None, "big", None)
    report = bench([big, small], BenchConfig(batch_sizes=(1, 2), repeats=3, warmup=1))
    assert [(r.model, r.batch_size) for r in report.encoder] == [("big", 1), ("small", 1), ("big", 2), ("small", 2)]
    small1 = report.encoder[1]
    assert small1.ideal_speedup == pytest.approx(encoder_flops(big.model) / encoder_flops(small.model))
    assert small1.flops == encoder_flops(small.model) and report.encoder[0].speedup.median == 1.0
    text = format_bench(report)
    assert "speedup" in text and "small" in text and "torch=" in text
    assert report_dict(report)["encoder"][1]["ideal_speedup"] == pytest.approx(small1.ideal_speedup)


def test_peer_needs_a_ct2_checkpoint_and_config_is_validated(tmp_path):
    path, files, meta = ct2_files("tiny.en")
    assert files is None and (meta / "tokenizer.json").is_file()
    with pytest.raises(PeerUnavailable, match="CTranslate2"):
        ct2_files(tmp_path)
    with pytest.raises(LiteWhisperError, match="batch sizes"):
        BenchConfig(batch_sizes=(0,))
    assert isinstance(EncoderResult("m", 1, Spread.of([1.0]), Spread.of([1.0])).efficiency, type(None))
