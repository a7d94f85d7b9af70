"""Fused Triton reduced-attention kernel vs the PyTorch reference, on the CPU through TRITON_INTERPRET=1.

TRITON_INTERPRET is read when triton is imported, and conftest → helpers → transformers' Whisper already imports
triton in this process, so the kernel cases run in ONE subprocess started with the variable set (this file run as
a script with --worker); the tests below assert on its results. Fallback behaviour is tested in-process.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

# name: (dtype, L, d_qk, d_v, d_h, q_shared, k_shared, key_bias, v_proj, v_bias, (block_m, block_n) or None)
KERNEL_CASES = {
    "fp16-q16-v16-h64-L20": ("float16", 20, 16, 16, 64, False, True, False, True, True, (16, 16)),
    "fp16-k32-v48-h64-L37-keyfold": ("float16", 37, 32, 48, 64, True, False, True, True, True, (32, 16)),
    "fp16-q48-v32-h128-L70": ("float16", 70, 48, 32, 128, False, True, False, True, False, (32, 32)),
    "bf16-k16-v48-h128-L45-keyfold": ("bfloat16", 45, 16, 48, 128, True, False, True, True, True, (16, 32)),
    "bf16-q48-v16-h64-L61": ("bfloat16", 61, 48, 16, 64, False, True, False, True, True, None),
    "bf16-standard-h64-L33": ("bfloat16", 33, 64, 64, 64, False, False, False, False, False, (16, 16)),
    "fp16-q128-v112-h64-L29": ("float16", 29, 128, 112, 64, False, True, True, True, True, None),
    "bf16-q96-v128-h128-L50": ("bfloat16", 50, 96, 128, 128, False, True, False, True, True, (32, 32)),
}
# name: (dtype, d_model, heads, (k_Q, k_K, k_V), mode, L)
MODULE_CASES = {
    "fp16-h64-16/48/32-reduced": ("float16", 128, 2, (16, 48, 32), "reduced", 37),
    "bf16-h64-48/16/80-reduced": ("bfloat16", 128, 2, (48, 16, 80), "reduced", 23),
    "fp16-h128-32/32/48-auto": ("float16", 256, 2, (32, 32, 48), "auto", 41),
    "bf16-h64-16/16/16-standard": ("bfloat16", 128, 2, (16, 16, 16), "standard", 19),
}


def _operands(case, gen):
    """Random kernel operands for one case: q, k (B, 1|H, L, d_qk), v (B, 1, L, d_v) or (B, H, L, d_h), ..."""
    dtype, L, dqk, dv, dh, q_shared, k_shared, kb, has_wv, has_bv, _ = case
    dt, B, H = getattr(torch, dtype), 2, 3
    rnd = lambda *shape: torch.randn(*shape, generator=gen)  # noqa: E731
    q = (rnd(B, 1 if q_shared else H, L, dqk) * dqk**-0.25).to(dt)
    k = (rnd(B, 1 if k_shared else H, L, dqk) * dqk**-0.25).to(dt)
    v = rnd(B, 1 if has_wv else H, L, dv).to(dt)
    key_bias = rnd(B, H, L) if kb else None  # (B, H, L) fp32
    wv = (rnd(H, dv, dh) * dv**-0.5).to(dt) if has_wv else None
    bv = rnd(H, dh).to(dt) if has_bv else None
    return q, k, v, key_bias, wv, bv, H


def _kernel_case(name: str) -> dict:
    from litewhisper.attention.kernels import reduced_attention as kernel
    from litewhisper.attention.reduced import attend_torch

    case = KERNEL_CASES[name]
    q, k, v, kb, wv, bv, H = _operands(case, torch.Generator().manual_seed(len(name)))
    blocks = case[-1] or (None, None)
    reason = kernel.unsupported_reason(q, k, v, wv)
    got = kernel.reduced_attention(q, k, v, kb, wv, bv, 0.7, H, *blocks).float()  # (B, L, H, d_h)
    f32 = lambda t: None if t is None else t.float()  # noqa: E731
    ref = attend_torch(0.7 * q.float(), k.float(), v.float(), f32(kb), f32(wv), f32(bv), H)  # fp32 reference
    low = attend_torch(0.7 * q, k, v, kb, wv, bv, H).float()  # PyTorch in the same low precision
    return {
        "reason": reason,
        "shape": list(got.shape),
        "err": (got - ref).abs().max().item(),
        "err_torch_lowp": (low - ref).abs().max().item(),
        "scale": ref.abs().max().item(),
    }


def _module_case(name: str) -> dict:
    from test_attention import reduced, tiny_attention

    dtype, d_model, heads, ranks, mode, L = MODULE_CASES[name]
    attn = tiny_attention(ranks, d_model=d_model, heads=heads)
    x = torch.randn(2, L, d_model, generator=torch.Generator().manual_seed(L))
    ref = attn(x)[0]  # fp32 standard WhisperAttention
    attn = attn.to(getattr(torch, dtype))
    warnings: list[str] = []
    handler = logging.Handler()
    handler.emit = lambda record: warnings.append(record.getMessage())  # type: ignore[method-assign]
    logging.getLogger("litewhisper").addHandler(handler)
    got = reduced(attn, mode=mode, backend="triton")(x.to(attn.q_proj.weight1.dtype))[0].float()
    low = reduced(attn, mode=mode, backend="torch")(x.to(attn.q_proj.weight1.dtype))[0].float()
    return {
        "warnings": warnings,
        "err": (got - ref).abs().max().item(),
        "err_torch_lowp": (low - ref).abs().max().item(),
        "scale": ref.abs().max().item(),
    }


def _worker() -> None:
    """Subprocess entry (TRITON_INTERPRET=1 set before any import): run every case, print one JSON line."""
    from litewhisper.attention.kernels import reduced_attention as kernel

    out = {"interpreter_ready": kernel._interpreter_ready(), "kernel": {}, "module": {}}
    with torch.no_grad():
        for name in KERNEL_CASES:
            out["kernel"][name] = _kernel_case(name)
        for name in MODULE_CASES:
            out["module"][name] = _module_case(name)
    print("RESULTS " + json.dumps(out))


@pytest.fixture(scope="module")
def interp() -> dict:
    env = {
        **os.environ,
        "TRITON_INTERPRET": "1",
        "PYTHONPATH": os.pathsep.join(
            [str(Path(__file__).parent)] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
        ),
    }
    proc = subprocess.run([sys.executable, __file__, "--worker"], env=env, capture_output=True, text=True, timeout=600)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULTS ")]
    assert proc.returncode == 0 and lines, f"interpreter worker failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}"
    return json.loads(lines[-1][len("RESULTS ") :])


def test_interpreter_runs_the_kernel(interp):
    assert interp["interpreter_ready"]
    assert all(r["reason"] is None for r in interp["kernel"].values())


@pytest.mark.parametrize("name", list(KERNEL_CASES))
def test_kernel_matches_reference(interp, name):
    r = interp["kernel"][name]
    dtype, L, _, _, dh = KERNEL_CASES[name][:5]
    assert r["shape"] == [2, L, 3, dh]
    rel = 1e-2 if dtype == "float16" else 4e-2  # output rounding of fp16 / bf16
    assert r["err"] <= rel * r["scale"], r
    assert r["err"] <= 3 * r["err_torch_lowp"] + 1e-3 * r["scale"], r  # PyTorch-level accuracy in that dtype


@pytest.mark.parametrize("name", list(MODULE_CASES))
def test_module_triton_backend_matches(interp, name):
    r = interp["module"][name]
    assert not [w for w in r["warnings"] if "fallback" in w], r["warnings"]  # the kernel really ran
    assert r["err"] <= 4e-2 * r["scale"], r
    assert r["err"] <= 3 * r["err_torch_lowp"] + 1e-3 * r["scale"], r


@pytest.mark.parametrize(
    "dtype,dims,key_bias", [(torch.float16, (48, 32, 64), True), (torch.bfloat16, (96, 112, 128), False)]
)
def test_kernel_compiles_for_h100_without_a_gpu(dtype, dims, key_bias):
    from litewhisper.attention.kernels.reduced_attention import compile_for_target

    compiled = compile_for_target(dtype, *dims, key_bias=key_bias, capability=90)
    assert "wgmma" in compiled.asm["ptx"]  # Hopper tensor-core MMA
    assert len(compiled.asm["cubin"]) > 0 and compiled.metadata.shared <= 228 * 1024


# ---- fallbacks (in-process, no interpreter): never a wrong result, always a logged reason -------------------


def _ops(dtype=torch.float16, dqk=32, dv=32, dh=64):
    q, k = torch.randn(1, 2, 9, dqk, dtype=dtype), torch.randn(1, 1, 9, dqk, dtype=dtype)
    return q, k, torch.randn(1, 1, 9, dv, dtype=dtype), torch.randn(2, dv, dh, dtype=dtype)


@pytest.mark.parametrize(
    "ops,needle",
    [
        (_ops(torch.float32), "float32"),
        (_ops(dqk=24), "q/k rank 24 is not a multiple of 16"),
        (_ops(dv=40), "v rank 40"),
        (_ops(dv=272), "v rank 272"),
    ],
)
def test_unsupported_reasons(ops, needle):
    from litewhisper.attention.kernels.reduced_attention import unsupported_reason

    assert needle in unsupported_reason(*ops)


def test_cpu_without_interpreter_is_unsupported(monkeypatch):
    from litewhisper.attention.kernels.reduced_attention import _interpreter_ready, unsupported_reason

    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    assert "TRITON_INTERPRET=1" in unsupported_reason(*_ops())
    monkeypatch.setenv("TRITON_INTERPRET", "1")  # set after triton was imported (by transformers' Whisper)
    expected = None if _interpreter_ready() else "after triton was imported"
    reason = unsupported_reason(*_ops())
    assert reason is None if expected is None else expected in reason


@pytest.mark.parametrize(
    "dtype,ranks,needle",
    [
        (torch.float32, (16, 48, 32), "float32"),
        (torch.bfloat16, (16, 48, 32), "TRITON_INTERPRET"),
        (torch.float16, (24, 40, 32), "multiple of 16"),
    ],
)
def test_triton_backend_falls_back_with_logged_reason(caplog, monkeypatch, dtype, ranks, needle):
    from test_attention import reduced, tiny_attention

    from litewhisper.attention import reduced as attention

    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    attention._LOGGED.clear()
    attn = tiny_attention(ranks, d_model=128, heads=2).to(dtype)
    x = torch.randn(2, 21, 128).to(dtype)
    with caplog.at_level(logging.WARNING, logger="litewhisper"), torch.no_grad():
        got = reduced(attn, backend="triton")(x)[0]
        want = reduced(attn, backend="torch")(x)[0]
    assert torch.equal(got, want)
    assert any("PyTorch fallback" in m and needle in m for m in caplog.messages), caplog.messages


def test_auto_backend_consults_the_kernel_only_when_something_is_reduced(monkeypatch):
    from test_attention import reduced, tiny_attention

    from litewhisper.attention.kernels import reduced_attention as kernel

    calls = []
    monkeypatch.setattr(kernel, "unsupported_reason", lambda *a, **k: calls.append(1) or "test says no")
    attn = tiny_attention((16, 16, 16), d_model=128, heads=2)
    x = torch.randn(1, 9, 128)
    with torch.no_grad():
        reduced(attn, mode="standard", backend="auto")(x)  # plain SDPA, kernel not consulted
        assert calls == []
        reduced(attn, mode="reduced", backend="auto")(x)
    assert calls == [1]


if __name__ == "__main__" and "--worker" in sys.argv:
    _worker()
