"""How long one factorised linear takes in the int8 encoder against its dense int8 form, on this CPU (cached).

A low-rank linear x·W1·W2 + b (W1 (Din, k), W2 (k, Dout)) saves FLOPs when k (Din + Dout) < Din·Dout, but in the
int8 encoder each of its two MatMuls pays the per-token scale ops of export/rowquant.py (a pass over its input and
one over its output) and a small GEMM runs below the CPU's peak, so the pair can be slower than the one dense
MatMul of W = W1·W2. `measure_pair` times both as the export writes them: a one-linear fp32 graph (x (1, T, Din),
bias added) put through `quantize_rows`, run by onnxruntime with the given intra-op threads, the two sessions
interleaved over rounds, medians. `cached_source(threads)` answers from a JSON cache (`layer_timing.json` in
the cache root, ~/.cache/litewhisper) keyed by CPU model, onnxruntime version, threads and shape, measuring
(and saving) what it has not seen. A `TimingSource` (models/cost.py) is any callable PairShape -> PairTiming, so
callers (and tests) can pass a fixed table instead (`table_source`).
"""

from __future__ import annotations

import json
import logging
import tempfile
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict
from pathlib import Path

import numpy as np

from litewhisper.atomic import atomic_write_text
from litewhisper.errors import LiteWhisperError
from litewhisper.models.cost import PairShape, PairTiming, TimingSource

__all__ = [
    "CACHE_NAME",
    "runtime_key",
    "cache_path",
    "write_pair_graphs",
    "measure_pair",
    "load_cache",
    "cached_source",
    "table_source",
]

log = logging.getLogger("litewhisper")

CACHE_NAME = "layer_timing.json"
CACHE_FORMAT = 1
ROUNDS = 15  # interleaved rounds per measurement
REPEATS = 3  # runs of each graph per round (a round's time is their mean)
WARMUP = 3  # untimed runs of each graph first


def runtime_key(threads: int) -> str:
    """What a timing holds for: this CPU's model, onnxruntime's version and the intra-op threads."""
    import onnxruntime

    from litewhisper.cpu import cpu_model

    return f"{cpu_model()} | onnxruntime {onnxruntime.__version__} | threads {threads}"


def cache_path() -> Path:
    """layer_timing.json in the cache root ($LITEWHISPER_CACHE, else ~/.cache/litewhisper)."""
    from litewhisper.models.builtin import cache_root

    return cache_root() / CACHE_NAME


def _linear_graph(weights: list[np.ndarray], bias: np.ndarray, path: Path) -> None:
    """An fp32 graph y = x·W_1·...·W_n + b, x (1, T, Din) with a dynamic T, at the export's opset."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    from litewhisper.export.onnx import OPSET

    d_in, d_out = weights[0].shape[0], weights[-1].shape[1]
    names, nodes, x = [f"w{i}" for i in range(len(weights))], [], "x"
    for i, name in enumerate(names):
        nodes.append(helper.make_node("MatMul", [x, name], [f"h{i}"], name=f"/linear/MatMul_{i}"))
        x = f"h{i}"
    nodes.append(helper.make_node("Add", [x, "b"], ["y"], name="/linear/Add"))
    inits = [numpy_helper.from_array(w.astype(np.float32), n) for w, n in zip(weights, names, strict=True)]
    graph = helper.make_graph(
        nodes,
        "linear",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, "T", d_in])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, "T", d_out])],
        [*inits, numpy_helper.from_array(bias.astype(np.float32), "b")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    model.ir_version = 8  # what opset 17 needs; older onnxruntime builds refuse newer IR versions
    onnx.save(model, str(path))


def write_pair_graphs(shape: PairShape, out_dir: Path, seed: int = 0) -> tuple[Path, Path]:
    """(dense, factorised) int8 graphs of one random linear of `shape` in `out_dir`, as the export writes them."""
    from litewhisper.export.rowquant import quantize_rows

    rng = np.random.default_rng(seed)
    w1 = rng.standard_normal((shape.d_in, shape.rank)) / shape.d_in**0.5  # (Din, k)
    w2 = rng.standard_normal((shape.rank, shape.d_out)) / shape.rank**0.5  # (k, Dout)
    bias = rng.standard_normal(shape.d_out)  # (Dout,)
    paths, level = [], log.level
    log.setLevel(max(level, logging.WARNING))  # quantize_rows' report of each one-linear graph is noise here
    try:
        for name, weights in (("dense", [w1 @ w2]), ("factored", [w1, w2])):
            _linear_graph(weights, bias, out_dir / f"{name}_fp32.onnx")
            paths.append(quantize_rows(out_dir / f"{name}_fp32.onnx", out_dir / f"{name}.onnx"))
    finally:
        log.setLevel(level)
    return paths[0], paths[1]


def _time(session, feed: dict[str, np.ndarray], repeats: int, clock: Callable[[], float]) -> float:
    start = clock()
    for _ in range(repeats):
        session.run(None, feed)
    return (clock() - start) / repeats


def measure_pair(
    shape: PairShape, threads: int, rounds: int = ROUNDS, clock: Callable[[], float] = time.perf_counter
) -> PairTiming:
    """Time the dense and the factorised int8 form of `shape` with `threads` intra-op threads (interleaved
    rounds, the order alternating; medians, ms). clock: wall time; time.process_time with threads=1 counts the
    CPU time of the work, which other jobs on the machine hardly change (benchmarks on a busy machine)."""
    from litewhisper.models.deployed import encoder_session

    x = np.random.default_rng(1).standard_normal((1, shape.tokens, shape.d_in)).astype(np.float32)
    with tempfile.TemporaryDirectory(prefix="litewhisper-timing-") as tmp:
        graphs = write_pair_graphs(shape, Path(tmp))
        sessions = [encoder_session(path, threads) for path in graphs]  # (dense, factorised)
    feed, times = {"x": x}, ([], [])
    for session in sessions:
        _time(session, feed, WARMUP, clock)
    for r in range(rounds):
        for i in (0, 1) if r % 2 == 0 else (1, 0):
            times[i].append(_time(sessions[i], feed, REPEATS, clock))
    dense, factored = (1000 * float(np.median(t)) for t in times)
    log.debug("%s, %d threads: dense %.3f ms, factorised %.3f ms", shape.key, threads, dense, factored)
    return PairTiming(dense_ms=dense, factored_ms=factored)


def load_cache(path: Path | None = None) -> dict[str, dict[str, dict[str, float]]]:
    """{runtime key: {shape key: {"dense_ms", "factored_ms"}}} from the cache file; {} when absent or unreadable."""
    path = cache_path() if path is None else path
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    if not isinstance(data, dict) or data.get("format") != CACHE_FORMAT or not isinstance(data.get("runtimes"), dict):
        log.warning("ignoring %s: not a layer-timing cache of format %d", path, CACHE_FORMAT)
        return {}
    return data["runtimes"]


def _save(path: Path, runtime: str, shape: PairShape, timing: PairTiming) -> None:
    """Add one timing to the cache file (re-read first, so other processes' entries are kept; written atomically)."""
    runtimes = load_cache(path)
    runtimes.setdefault(runtime, {})[shape.key] = asdict(timing)
    atomic_write_text(path, json.dumps({"format": CACHE_FORMAT, "runtimes": runtimes}, indent=1) + "\n")


def cached_source(threads: int, path: Path | None = None, rounds: int = ROUNDS) -> TimingSource:
    """A TimingSource for this CPU, onnxruntime and `threads`: cached timings, measured and saved on a miss."""
    path, runtime = (cache_path() if path is None else path), runtime_key(threads)
    seen = load_cache(path).get(runtime, {})

    def timing(shape: PairShape) -> PairTiming:
        if shape.key not in seen:
            log.info("timing int8 linear %s on %d thread(s) (cached in %s)", shape.key, threads, path)
            seen[shape.key] = asdict(measure_pair(shape, threads, rounds))
            _save(path, runtime, shape, PairTiming(**seen[shape.key]))
        return PairTiming(**seen[shape.key])

    return timing


def table_source(table: Mapping[tuple[int, int, int], tuple[float, float]]) -> TimingSource:
    """A fixed TimingSource: {(Din, Dout, k): (dense ms, factorised ms)} (for tests, or timings from elsewhere)."""

    def timing(shape: PairShape) -> PairTiming:
        try:
            dense, factored = table[(shape.d_in, shape.d_out, shape.rank)]
        except KeyError:
            raise LiteWhisperError(f"no timing for the linear {shape.key} in the given table") from None
        return PairTiming(dense_ms=dense, factored_ms=factored)

    return timing
