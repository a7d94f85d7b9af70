"""Compression is bit-for-bit reproducible: fixed-seed tiny model + fixed audio -> the same saved tensors.

The hashes were first computed before the pipeline was restructured (one compress API, one module swap, one
cost model), and the restructured code wrote exactly the same checkpoints. They were re-computed once, on purpose,
when calibration started adding per-shard float64 moments in shard order (so 1, 2 or 8 torchrun workers give the
same bytes): same ranks, weights within 7e-8 relative of the earlier ones. Any other change must keep them.
"""

import hashlib

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from helpers import tiny_whisper
from litewhisper.models.checkpoint import save_checkpoint
from litewhisper.progress import quiet


def _audio():
    rng = np.random.default_rng(7)
    return [(0.1 * rng.standard_normal(16_000 * s)).astype(np.float32) for s in (3, 5, 4)]


def _compress(case: str):
    from litewhisper.compression.api import compress
    from litewhisper.compression.policy import RankPolicy, SizeBudget
    from litewhisper.compression.refine import RefineConfig

    policies = {
        "liteasr": RankPolicy(0.9, 0.95, multiple_of=4),
        "budget": SizeBudget(0.8, multiple_of=4),
        "budget-plain-clip": SizeBudget(0.85, multiple_of=8, sensitivity=False, windows="clip"),
        "budget-sequential-refined": SizeBudget(
            0.8, multiple_of=4, sequential=True, refine=RefineConfig(max_steps=3, eval_every=1, val_fraction=0.34)
        ),
    }
    return compress(tiny_whisper(seed=3), _audio(), policies[case])


def tensor_hashes(path) -> dict[str, str]:
    tensors = load_file(str(path / "model.safetensors"))
    return {
        name: hashlib.sha256(
            t.contiguous().view(torch.uint8).numpy().tobytes()
            if t.dim()
            else t.reshape(1).view(torch.uint8).numpy().tobytes()
        ).hexdigest()[:16]
        for name, t in sorted(tensors.items())
        if ".encoder." in name
    }


def digest(hashes: dict[str, str]) -> str:
    return hashlib.sha256("\n".join(f"{k} {v}" for k, v in sorted(hashes.items())).encode()).hexdigest()


EXPECTED: dict[str, tuple[int, str]] = {  # (number of encoder tensors, digest of their sha256s)
    "liteasr": (46, "99351c7fc5c817709a352a054bcbf058ee9daf2981684074b3dac5b6c9b565f0"),
    "budget": (50, "654bf065ba7b86925e79d6e976bf4dca5229e8ff555aba648670b960c730cbf5"),
    "budget-plain-clip": (43, "2b5c65d6c08a867a5cbfe2fc0b0a45f6cf5c90c9fbcdc694f6c3ceead36fb90d"),
    "budget-sequential-refined": (50, "d27f6fdb8f6916cb6b72802d43783771dece9043a770ad4e57e7d2435f4ee063"),
}


@pytest.mark.parametrize("case", sorted(EXPECTED))
def test_checkpoint_tensors_unchanged(case, tmp_path):
    with quiet():
        result = _compress(case)
    out = save_checkpoint(result.model, tmp_path / case)
    hashes = tensor_hashes(out)
    n_tensors, expected = EXPECTED[case]
    assert len(hashes) == n_tensors
    assert digest(hashes) == expected, f"{case}: saved encoder tensors changed"


if __name__ == "__main__":  # print the expected digests (run once before a refactor)
    import sys
    import tempfile
    from pathlib import Path

    for case in ("liteasr", "budget", "budget-plain-clip", "budget-sequential-refined"):
        with tempfile.TemporaryDirectory() as tmp:
            res = _compress(case)
            h = tensor_hashes(save_checkpoint(res.model, Path(tmp) / case))
            print(
                f'    "{case}": ({len(h)}, "{digest(h)}"),  # ranks {[e.rank for e in res.plan.entries]}',
                file=sys.stdout,
            )
