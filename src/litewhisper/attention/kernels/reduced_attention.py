"""Fused Triton forward kernel for reduced-dimension self-attention (FlashAttention style).

Per (batch b, head h) the kernel computes, without materialising the L×L score matrix,

    out[b, :, h, :] = softmax(scale · Q_h K_hᵀ + kbias_h) V_h  [@ WV_h + bV_h]

where Q_h (L, DQK), K_h (L, DQK), V_h (L, DV) may be *shared across heads* (head stride 0). The attention module
(`litewhisper.attention`) prepares these operands from the low-rank activations A = X W_Q1, B = X W_K1,
C = X W_V1:
  * query-side fold: Q_h = Ã_h = s·(A M_h + u_h) (B, H, L, k_K), K = B shared;
  * key-side fold:   Q = A shared, K_h = s·B M_hᵀ (B, H, L, k_Q), kbias_h = s·B u_hᵀ (per-key bias);
  * values: V = C shared (B, 1, L, k_V) and the per-head up-projection WV_h = W_V2ʰ (k_V, D_h) + b_Vʰ is fused
    into the epilogue, so only (B, L, H, D_h) is ever written.
Design choice: Ã_h = A M_h is pre-multiplied in PyTorch (one batched GEMM, O(L·k_Q·k_K·H), a (B, H, L, k) tensor
of a few MB) rather than inside the kernel. This keeps one generic kernel for both fold sides (the cheaper side
is picked per layer: the O(L²) inner dimension is min(k_Q, k_K)), and for the plain (standard) operands too.

Ranks need not be powers of two: every feature dimension is padded to the next power of two inside the kernel
with masked loads (zeros), so any multiple of 16 works (48 → 64, 96 → 128 lanes). Sequence lengths that are not
a multiple of the block are masked (keys → -inf before the softmax, rows → not stored). Inputs fp16/bf16,
accumulation fp32 (scores, softmax statistics and the P·V accumulator).

The kernel is JIT-wrapped lazily (`_jitted`), so `TRITON_INTERPRET=1` set any time before the first call runs it on
the CPU through Triton's interpreter (used by the tests).
"""

from __future__ import annotations

import logging
import os

import torch

__all__ = ["MAX_DIM", "unsupported_reason", "reduced_attention", "compile_for_target"]

try:  # triton is optional: without it every call falls back to the PyTorch path
    import triton
    import triton.language as tl
except ImportError:  # pragma: no cover - triton is installed in the development environment
    triton = None
    tl = None

log = logging.getLogger("litewhisper")

MAX_DIM = 256  # largest rank / head size handled by the kernel (registers: BLOCK_M × next_pow2(dim) fp32)
_DTYPES = (torch.float16, torch.bfloat16)
_LOG2E = 1.4426950408889634


def _reduced_attention_fwd(
    Q,
    K,
    V,
    KB,
    WV,
    BV,
    O,  # noqa: E741 (the kernel names its operands Q, K, V, O)
    stride_qb,
    stride_qh,
    stride_ql,
    stride_kb,
    stride_kh,
    stride_kl,
    stride_vb,
    stride_vh,
    stride_vl,
    stride_kbb,
    stride_kbh,
    stride_wh,
    stride_wr,
    stride_bh,
    stride_ob,
    stride_ol,
    stride_oh,
    L,
    H,
    qk_scale,
    DQK: tl.constexpr,
    DV: tl.constexpr,
    DH: tl.constexpr,
    DQK_P: tl.constexpr,
    DV_P: tl.constexpr,
    DH_P: tl.constexpr,
    HAS_KB: tl.constexpr,
    HAS_WV: tl.constexpr,
    HAS_BV: tl.constexpr,
    DOT_F32: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
):
    # grid: (cdiv(L, BLOCK_M), B * H); one program = BLOCK_M query rows of one (batch, head)
    pid_m = tl.program_id(0)
    pid_bh = tl.program_id(1)
    b = pid_bh // H
    h = pid_bh % H
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)  # (BLOCK_M,)
    offs_n0 = tl.arange(0, BLOCK_N)  # (BLOCK_N,)
    offs_qk = tl.arange(0, DQK_P)  # (DQK_P,) padded feature lanes
    offs_v = tl.arange(0, DV_P)  # (DV_P,)
    row_ok = offs_m < L

    q_ptrs = Q + b * stride_qb + h * stride_qh + offs_m[:, None] * stride_ql + offs_qk[None, :]
    q = tl.load(q_ptrs, mask=row_ok[:, None] & (offs_qk[None, :] < DQK), other=0.0)  # (BLOCK_M, DQK_P)
    if DOT_F32:  # interpreter: its tl.dot multiplies bfloat16 bit patterns, so dot in fp32 on bf16-rounded values
        q = q.to(tl.float32)

    m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)  # running row max (log2 units)
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)  # running row sum
    acc = tl.zeros([BLOCK_M, DV_P], dtype=tl.float32)  # running P·V
    scale2 = qk_scale * 1.4426950408889634  # exp(x) = exp2(x·log2 e)
    for start_n in range(0, L, BLOCK_N):
        offs_n = start_n + offs_n0
        col_ok = offs_n < L
        k_ptrs = K + b * stride_kb + h * stride_kh + offs_n[:, None] * stride_kl + offs_qk[None, :]
        k = tl.load(k_ptrs, mask=col_ok[:, None] & (offs_qk[None, :] < DQK), other=0.0)  # (BLOCK_N, DQK_P)
        if DOT_F32:
            k = k.to(tl.float32)
        s = tl.dot(q, tl.trans(k)) * scale2  # (BLOCK_M, BLOCK_N) fp32
        if HAS_KB:
            kb = tl.load(KB + b * stride_kbb + h * stride_kbh + offs_n, mask=col_ok, other=0.0)  # (BLOCK_N,)
            s += kb.to(tl.float32)[None, :] * 1.4426950408889634
        s = tl.where(col_ok[None, :], s, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, 1))  # (BLOCK_M,)
        alpha = tl.exp2(m_i - m_new)
        p = tl.exp2(s - m_new[:, None])  # (BLOCK_M, BLOCK_N)
        l_i = l_i * alpha + tl.sum(p, 1)
        v_ptrs = V + b * stride_vb + h * stride_vh + offs_n[:, None] * stride_vl + offs_v[None, :]
        v = tl.load(v_ptrs, mask=col_ok[:, None] & (offs_v[None, :] < DV), other=0.0)  # (BLOCK_N, DV_P)
        if DOT_F32:
            acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype).to(tl.float32), v.to(tl.float32))
        else:
            acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v)
        m_i = m_new
    acc = acc / l_i[:, None]  # (BLOCK_M, DV_P) = softmax · V

    offs_d = tl.arange(0, DH_P)  # (DH_P,)
    if HAS_WV:  # fused per-head up-projection (k_V → D_h)
        w_ptrs = WV + h * stride_wh + offs_v[:, None] * stride_wr + offs_d[None, :]
        w = tl.load(w_ptrs, mask=(offs_v[:, None] < DV) & (offs_d[None, :] < DH), other=0.0)  # (DV_P, DH_P)
        if DOT_F32:
            out = tl.dot(acc.to(w.dtype).to(tl.float32), w.to(tl.float32))
        else:
            out = tl.dot(acc.to(w.dtype), w)  # (BLOCK_M, DH_P) fp32
    else:  # DV == DH, DV_P == DH_P
        out = acc
    if HAS_BV:
        bv = tl.load(BV + h * stride_bh + offs_d, mask=offs_d < DH, other=0.0)  # (DH_P,)
        out += bv.to(tl.float32)[None, :]
    o_ptrs = O + b * stride_ob + offs_m[:, None] * stride_ol + h * stride_oh + offs_d[None, :]
    tl.store(o_ptrs, out.to(O.dtype.element_ty), mask=row_ok[:, None] & (offs_d[None, :] < DH))


_JIT_CACHE: dict[object, object] = {}  # interpret flag (bool) or "autotuned" -> kernel


def _interpret() -> bool:
    """TRITON_INTERPRET=1 is set (the kernel then runs through Triton's CPU interpreter)."""
    return os.environ.get("TRITON_INTERPRET", "0").lower() in ("1", "true", "on", "yes")


def _interpreter_ready() -> bool:
    """triton.language was imported in interpreter mode (its own jit helpers, e.g. tl.zeros, are interpreted).

    TRITON_INTERPRET is read when triton is imported, and importing transformers' Whisper imports triton, so the
    variable must be set before those imports (tests run the kernel in a subprocess for that reason).
    """
    from triton.runtime.interpreter import InterpretedFunction

    return isinstance(tl.zeros, InterpretedFunction)


def _jitted():
    """The kernel wrapped by triton.jit under the current TRITON_INTERPRET setting (cached per setting)."""
    key = _interpret()
    if key not in _JIT_CACHE:
        if key:  # Triton's CPU interpreter (numpy), regardless of when triton was imported
            from triton.runtime.interpreter import InterpretedFunction

            _JIT_CACHE[key] = InterpretedFunction(_reduced_attention_fwd)
        else:
            from triton.runtime.jit import JITFunction

            _JIT_CACHE[key] = JITFunction(_reduced_attention_fwd)
    return _JIT_CACHE[key]


# CUDA launch configurations tried by the autotuner: (BLOCK_M, BLOCK_N, num_warps, num_stages)
_CUDA_CONFIGS = ((64, 64, 4, 2), (128, 64, 4, 2), (128, 64, 8, 3), (64, 128, 4, 3))
_TUNE_KEY = ["DQK_P", "DV_P", "DH_P", "HAS_KB", "HAS_WV", "HAS_BV"]


def _prune(configs, named_args, **kwargs):
    """Wide operands (a padded dim above 128) keep only BLOCK_M = 64 tiles (register pressure)."""
    wide = max(kwargs.get(k, named_args.get(k, 0)) for k in ("DQK_P", "DV_P", "DH_P")) > 128
    kept = [c for c in configs if not wide or c.kwargs["BLOCK_M"] <= 64]
    return kept or configs[:1]


def _autotuned():
    """CUDA: the kernel under triton.autotune over `_CUDA_CONFIGS` (tuned once per dims/flags, not per L)."""
    if "autotuned" not in _JIT_CACHE:
        from triton.runtime.jit import JITFunction

        configs = [
            triton.Config({"BLOCK_M": m, "BLOCK_N": n}, num_warps=w, num_stages=st) for m, n, w, st in _CUDA_CONFIGS
        ]
        _JIT_CACHE["autotuned"] = triton.autotune(
            configs, key=_TUNE_KEY, prune_configs_by={"early_config_prune": _prune}
        )(JITFunction(_reduced_attention_fwd))
    return _JIT_CACHE["autotuned"]


def unsupported_reason(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    wv: torch.Tensor | None,
    attention_mask: torch.Tensor | None = None,
) -> str | None:
    """Why the kernel cannot run these operands (None when it can); the caller falls back to PyTorch."""
    if triton is None:
        return "triton is not installed"
    if attention_mask is not None:
        return "an explicit attention_mask is not supported by the Triton kernel"
    if torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in (q, k, v, wv)):
        return "the Triton kernel is forward-only (gradients requested)"
    for name, t in (("q", q), ("k", k), ("v", v)) + ((("wv", wv),) if wv is not None else ()):
        if t.dtype not in _DTYPES:
            return f"{name} has dtype {t.dtype}; the kernel takes float16/bfloat16 (fp32 uses PyTorch)"
        if t.dtype != q.dtype:
            return f"mixed dtypes ({name}: {t.dtype}, q: {q.dtype})"
    head = wv.shape[-1] if wv is not None else v.shape[-1]
    dims = {"q/k rank": q.shape[-1], "v rank": v.shape[-1], "head size": head}
    for name, d in dims.items():
        if d % 16 or not 16 <= d <= MAX_DIM:
            return f"{name} {d} is not a multiple of 16 in [16, {MAX_DIM}]"
    if q.device.type == "cpu" and not _interpret():
        return "CPU tensors need TRITON_INTERPRET=1 (the Triton kernel runs on CUDA)"
    if q.device.type == "cpu" and not _interpreter_ready():
        return "TRITON_INTERPRET=1 was set after triton was imported; set it before importing transformers/triton"
    if q.device.type == "cuda" and _interpret():
        return "TRITON_INTERPRET=1 is set; unset it to run the kernel on the GPU"
    if q.device.type not in ("cuda", "cpu"):
        return f"device {q.device.type!r} is not supported by the Triton kernel"
    return None


def _head_stride(t: torch.Tensor) -> int:
    return 0 if t.shape[1] == 1 else t.stride(1)


def reduced_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    key_bias: torch.Tensor | None,
    wv: torch.Tensor | None,
    bv: torch.Tensor | None,
    scale: float,
    num_heads: int,
    block_m: int | None = None,
    block_n: int | None = None,
) -> torch.Tensor:
    """Fused attention on prepared operands; returns (B, L, H, D_h) in q's dtype.

    q: (B, 1|H, L, DQK); k: (B, 1|H, L, DQK); v: (B, 1|H, L, DV) — head dim 1 means shared by all heads;
    key_bias: (B, H, L) additive per-key score bias or None; wv: (H, DV, D_h) or None (then D_h = DV);
    bv: (H, D_h) or None. Call `unsupported_reason` first.
    """
    q, k, v = (t if t.stride(-1) == 1 else t.contiguous() for t in (q, k, v))
    bsz, _, seq, dqk = q.shape
    dv = v.shape[-1]
    dh = wv.shape[-1] if wv is not None else dv
    if wv is not None:
        wv = wv.to(q.dtype).contiguous()  # (H, DV, D_h)
    if bv is not None:
        bv = bv.contiguous()  # (H, D_h)
    if key_bias is not None:
        key_bias = key_bias.float().contiguous()  # (B, H, L)
    out = torch.empty(bsz, seq, num_heads, dh, device=q.device, dtype=q.dtype)  # (B, L, H, D_h)
    dummy = out  # placeholder pointer for absent optional operands (never read)
    tune = q.device.type == "cuda" and not _interpret() and block_m is None and block_n is None
    if tune:  # BLOCK_M / BLOCK_N / warps / stages chosen by the autotuner
        kernel, blocks = _autotuned(), {}
        grid = lambda meta: (triton.cdiv(seq, meta["BLOCK_M"]), bsz * num_heads)  # noqa: E731
    else:
        widest = max(triton.next_power_of_2(d) for d in (dqk, dv, dh))
        block_m = block_m or (64 if widest <= 128 else 32)
        block_n = block_n or 64
        kernel, blocks = _jitted(), {"BLOCK_M": block_m, "BLOCK_N": block_n}
        grid = (triton.cdiv(seq, block_m), bsz * num_heads)
        if not _interpret():
            blocks |= {"num_warps": 4, "num_stages": 2}
    kernel[grid](
        q,
        k,
        v,
        key_bias if key_bias is not None else dummy,
        wv if wv is not None else dummy,
        bv if bv is not None else dummy,
        out,
        q.stride(0),
        _head_stride(q),
        q.stride(2),
        k.stride(0),
        _head_stride(k),
        k.stride(2),
        v.stride(0),
        _head_stride(v),
        v.stride(2),
        key_bias.stride(0) if key_bias is not None else 0,
        key_bias.stride(1) if key_bias is not None else 0,
        wv.stride(0) if wv is not None else 0,
        wv.stride(1) if wv is not None else 0,
        bv.stride(0) if bv is not None else 0,
        out.stride(0),
        out.stride(1),
        out.stride(2),
        seq,
        num_heads,
        float(scale),
        DQK=dqk,
        DV=dv,
        DH=dh,
        DQK_P=triton.next_power_of_2(dqk),
        DV_P=triton.next_power_of_2(dv),
        DH_P=triton.next_power_of_2(dh),
        HAS_KB=key_bias is not None,
        HAS_WV=wv is not None,
        HAS_BV=bv is not None,
        DOT_F32=_interpret() and q.dtype == torch.bfloat16,
        **blocks,
    )
    return out


def compile_for_target(
    dtype: torch.dtype,
    d_qk: int,
    d_v: int,
    d_h: int,
    key_bias: bool = True,
    v_proj: bool = True,
    v_bias: bool = True,
    capability: int = 90,
    block_m: int = 64,
    block_n: int = 64,
    num_warps: int = 4,
):
    """Ahead-of-time compile the kernel for an NVIDIA target (PTX + cubin with Triton's bundled ptxas).

    Needs no GPU: checks that a configuration type-checks and lowers for, e.g., H100 (capability 90).
    """
    from triton.backends.compiler import GPUTarget
    from triton.runtime.jit import JITFunction

    ty = {torch.float16: "fp16", torch.bfloat16: "bf16"}[dtype]
    sig = {n: f"*{ty}" for n in ("Q", "K", "V", "WV", "BV", "O")} | {"KB": "*fp32"}
    names = (
        "stride_qb stride_qh stride_ql stride_kb stride_kh stride_kl stride_vb stride_vh stride_vl stride_kbb "
        "stride_kbh stride_wh stride_wr stride_bh stride_ob stride_ol stride_oh L H"
    ).split()
    sig |= {n: "i32" for n in names} | {"qk_scale": "fp32"}
    p2 = triton.next_power_of_2
    const = dict(
        DQK=d_qk,
        DV=d_v,
        DH=d_h,
        DQK_P=p2(d_qk),
        DV_P=p2(d_v),
        DH_P=p2(d_h),
        HAS_KB=key_bias,
        HAS_WV=v_proj,
        HAS_BV=v_bias,
        DOT_F32=False,
        BLOCK_M=block_m,
        BLOCK_N=block_n,
    )
    sig |= {n: "constexpr" for n in const}
    src = triton.compiler.ASTSource(fn=JITFunction(_reduced_attention_fwd), signature=sig, constexprs=const)
    return triton.compile(
        src, target=GPUTarget("cuda", capability, 32), options={"num_warps": num_warps, "num_stages": 2}
    )
