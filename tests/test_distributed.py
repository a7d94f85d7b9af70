"""torch.distributed workers: shards, and 2 gloo workers on CPU giving the single-process statistics and WER."""

import contextlib
import io
import json
import multiprocessing
import os
import socket
from pathlib import Path

import pytest
import torch

from helpers import require_shared_data, save_random_model, shared_manifest
from litewhisper.distributed import World, detect_world, exchange, my_rounds, plan_shards
from litewhisper.errors import LiteWhisperError


def test_world_from_torchrun_environment():
    assert detect_world({}) == World(0, 1, 0) and not detect_world({}).distributed
    world = detect_world({"RANK": "3", "WORLD_SIZE": "4", "LOCAL_RANK": "1"})
    assert (world.rank, world.size, world.local_rank, world.is_main, world.distributed) == (3, 4, 1, False, True)
    with pytest.raises(LiteWhisperError, match="RANK < WORLD_SIZE"):
        detect_world({"RANK": "4", "WORLD_SIZE": "4"})


def test_shards_are_fixed_by_the_clip_list_and_balanced():
    durations = [10.0, 50.0, 5.0, 5.0, 30.0, 20.0, 40.0, 40.0]  # 200 s
    shards = plan_shards(durations, shard_seconds=50.0)
    assert shards == [[0, 1], [2, 3, 4], [5, 6], [7]]  # contiguous, every clip once
    assert [sum(durations[i] for i in s) for s in shards] == [60.0, 40.0, 60.0, 40.0]
    assert plan_shards(durations[:2], shard_seconds=1.0) == [[0], [1]]  # never more shards than clips
    assert plan_shards([], 50.0) == [] and plan_shards([0.0, 0.0], 50.0) == [[0, 1]]
    # round t gives shard t*size + rank; workers beyond the shards get None (an empty share is fine)
    assert my_rounds(5, World(0, 2)) == [0, 2, 4] and my_rounds(5, World(1, 2)) == [1, 3, None]
    assert my_rounds(1, World(2, 3)) == [None]
    assert my_rounds(3, World(0, 1)) == [0, 1, 2]


def test_single_process_exchange_reraises_the_original_error():
    assert exchange(World(), 5, None, "x") == [5]
    with pytest.raises(KeyError):
        exchange(World(), None, KeyError("k"), "x")


# ----------------------------------------------------------------------------------------------- 2 workers


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, ports: list[int], jobs: list[tuple[str, list[str], str]], out: str) -> None:
    """One gloo worker: runs each CLI command as torchrun would, records exit codes and stderr.

    A job's fault ("raise" or "exit") breaks rank 1's calibration of its first shard."""
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE="2", MASTER_ADDR="127.0.0.1")
    torch.set_num_threads(1)  # as torchrun's workers (OMP_NUM_THREADS=1); the reference run uses all cores
    import litewhisper.compression.calibration as calibration
    from litewhisper.cli import main

    encode_shard = calibration._encode_shard

    def broken(*args, fault: str = "", **kwargs):
        if fault == "exit":
            os._exit(3)  # dies without a word
        raise RuntimeError("injected fault")

    records = []
    for port, (name, argv, fault) in zip(ports, jobs, strict=True):
        os.environ["MASTER_PORT"] = str(port)
        calibration._encode_shard = (
            (lambda *a, _fault=fault, **k: broken(*a, fault=_fault, **k)) if rank == 1 and fault else encode_shard
        )
        err = io.StringIO()
        try:
            with contextlib.redirect_stderr(err):
                code = main(argv)
        except Exception as exc:  # the failing worker itself re-raises its own error
            code, err = -1, io.StringIO(f"{type(exc).__name__}: {exc}")
        records.append({"job": name, "code": code, "stderr": err.getvalue()})
        Path(out, f"rank{rank}.json").write_text(json.dumps(records))


def _run_workers(tmp_path: Path, jobs, timeout: float = 240) -> list[list[dict]]:
    ctx = multiprocessing.get_context("spawn")
    ports = [_free_port() for _ in jobs]
    procs = [ctx.Process(target=_worker, args=(r, ports, jobs, str(tmp_path))) for r in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout)
        if p.is_alive():
            p.kill()
            pytest.fail("a worker hung: failures must stop the job")
    return [
        json.loads((tmp_path / f"rank{r}.json").read_text()) if (tmp_path / f"rank{r}.json").exists() else None
        for r in range(2)
    ]


@pytest.fixture(scope="module")
def random_model_dir(tmp_path_factory):
    return save_random_model(tmp_path_factory.mktemp("random_model"))


def _manifest(path: Path, rows: list[dict]) -> Path:
    data = require_shared_data()
    path.write_text("".join(json.dumps({**r, "path": str(data / r["path"])}) + "\n" for r in rows))
    return path


@pytest.mark.real
def test_two_gloo_workers_match_one_process(random_model_dir, tmp_path, monkeypatch):
    from litewhisper.cli import main

    monkeypatch.setenv("LITEWHISPER_SHARD_SECONDS", "4")  # several evaluate shards on six short clips
    calib = _manifest(tmp_path / "calib.jsonl", shared_manifest("calib")[:7])
    dev = _manifest(tmp_path / "dev.jsonl", [r for r in shared_manifest("dev", "en") if r["duration_s"] < 4][:6])
    model = str(random_model_dir)
    calibrate = [
        "calibrate",
        model,
        "--calibration",
        str(calib),
        "--windows",
        "pack",
        "--shard-seconds",
        "6",
        "--quiet",
        "-o",
    ]
    evaluate = [
        "evaluate",
        model,
        "--data",
        str(dev),
        "--split",
        "all",
        "--max-new-tokens",
        "5",
        "--quiet",
        "--decoding",
        "leaderboard",  # greedy: sampled fallback is seeded per batch, so it depends on batching
        "--batch-size",
        "2",
        "--json",
    ]
    assert main(calibrate + [str(tmp_path / "one.safetensors")]) == 0
    assert main(evaluate + [str(tmp_path / "one.json"), "--hypotheses", str(tmp_path / "one.jsonl")]) == 0
    # the interrupted distributed run had decoded two clips: --resume decodes only the others
    first_two = (tmp_path / "one.jsonl").read_text().splitlines(keepends=True)[:2]
    (tmp_path / "two.jsonl").write_text("".join(first_two))

    broken = tmp_path / "broken.safetensors"
    records = _run_workers(
        tmp_path,
        [
            ("calibrate", calibrate + [str(tmp_path / "two.safetensors")], ""),
            (
                "evaluate",
                evaluate + [str(tmp_path / "two.json"), "--hypotheses", str(tmp_path / "two.jsonl"), "--resume"],
                "",
            ),
            ("raise", calibrate + [str(broken)], "raise"),
        ],
    )
    assert [[r["code"] for r in ranks] for ranks in records] == [[0, 0, 2], [0, 0, -1]], records
    # a worker that raises fails the job on every worker, naming its rank; nothing is written
    assert "worker rank 1 of 2 failed during calibration: RuntimeError: injected fault" in records[0][2]["stderr"]
    assert records[1][2]["stderr"] == "RuntimeError: injected fault" and not broken.exists()
    one, two = (tmp_path / "one.safetensors").read_bytes(), (tmp_path / "two.safetensors").read_bytes()
    assert one == two  # rank 0 added the shards' float64 moments in the single-process order

    def hyps(path):
        return sorted(
            json.loads(line)["id"] + "|" + json.loads(line)["hypothesis"] for line in path.read_text().splitlines()
        )

    assert hyps(tmp_path / "one.jsonl") == hyps(tmp_path / "two.jsonl") and len(hyps(tmp_path / "two.jsonl")) == 6

    def scores(path):
        result = json.loads(path.read_text())["results"][0]
        return {k: v for k, v in result.items() if k not in ("decode_seconds", "rtf")}

    assert scores(tmp_path / "one.json") == scores(tmp_path / "two.json")

    from litewhisper.compression.stats import ActivationStats

    stats = ActivationStats.load(tmp_path / "two.safetensors")
    assert stats.clips == 7 and int(stats.metadata["windows"]) >= 2  # what `compress --stats` checks


@pytest.mark.real
def test_a_dying_worker_fails_the_job_naming_its_rank(random_model_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("LITEWHISPER_DIST_TIMEOUT_S", "60")  # a hung worker would fail the job after this long
    calib = _manifest(tmp_path / "calib.jsonl", shared_manifest("calib")[:4])
    out = tmp_path / "stats.safetensors"
    argv = [
        "calibrate",
        str(random_model_dir),
        "--calibration",
        str(calib),
        "--shard-seconds",
        "5",
        "--quiet",
        "-o",
        str(out),
    ]
    rank0, rank1 = _run_workers(tmp_path, [("calibrate", argv, "exit")])
    assert rank0[0]["code"] == 2 and rank1 is None  # rank 1 died; rank 0 stopped with a LiteWhisperError
    assert "lost contact with worker rank 1 during calibration" in rank0[0]["stderr"]
    assert not out.exists() and not list(tmp_path.glob(".stats*"))
