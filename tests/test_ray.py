"""litewhisper.ray.Transcriber in Ray Data's map_batches gives `transcribe --format json` records."""

import json

import pytest

from helpers import require_shared_data, save_random_model, shared_manifest


@pytest.mark.real
def test_map_batches_returns_the_transcribe_json_records(tmp_path, capsys):
    import ray

    from litewhisper.cli import main
    from litewhisper.ray import RECORD_FIELDS, Transcriber

    model = str(save_random_model(tmp_path / "model"))
    data = require_shared_data()
    paths = [str(data / r["path"]) for r in shared_manifest("dev", "en") if r["duration_s"] < 4][:3]
    fast = {"decoding": "leaderboard", "max_new_tokens": 5}  # a random model never ends: keep decoding short
    assert (
        main(
            [
                "transcribe",
                model,
                *paths,
                "--format",
                "json",
                "--quiet",
                "--decoding",
                "leaderboard",
                "--max-new-tokens",
                "5",
            ]
        )
        == 0
    )
    expected = [json.loads(line) for line in capsys.readouterr().out.splitlines()]

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        ds = ray.data.from_items([{"path": p} for p in [*paths, str(tmp_path / "missing.wav")]])
        rows = ds.map_batches(
            Transcriber, fn_constructor_kwargs={"model": model, **fast}, concurrency=1, batch_size=4
        ).take_all()
    finally:
        ray.shutdown()
    assert [set(r) for r in rows] == [set(RECORD_FIELDS)] * 4
    records = [{k: (list(v) if k == "segments" else v) for k, v in r.items() if k != "error"} for r in rows[:3]]
    assert records == expected and all(r["error"] is None for r in rows[:3])
    assert rows[3]["text"] is None and "not found" in rows[3]["error"]
