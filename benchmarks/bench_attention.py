"""Attention-block latency: reduced-dimension attention (Triton kernel / PyTorch) vs SDPA on full projections.

Variants, timed interleaved in one run (median of --repeats, after warm-up):
  dense_sdpa     WhisperAttention with dense q/k/v (the uncompressed model; SDPA)       — the baseline
  lowrank_sdpa   WhisperAttention with LowRankLinear q/k/v, standard attention (expand to the head size; SDPA)
  reduced_torch  ReducedDimSelfAttention, mode "reduced" (forced), PyTorch SDPA on reduced operands
  reduced_auto   ReducedDimSelfAttention, mode "auto" (per-part FLOP decision), PyTorch
  reduced_triton ReducedDimSelfAttention, mode "reduced", fused Triton kernel (CUDA only)
Ratios are time(variant) / time(baseline): < 1 is faster.

  python benchmarks/bench_attention.py --device cuda                      # large-v3 shapes, batch 1 and 8, fp16
  python benchmarks/bench_attention.py --device cuda --parts blocks encoder  # + end-to-end large-v3 encoder
  python benchmarks/bench_attention.py --device cpu --shapes tiny base --ranks 16 32 48 64 --batch 1 --threads 1
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time

import torch
from torch import nn
from transformers import WhisperConfig
from transformers.models.whisper.modeling_whisper import WhisperAttention, WhisperEncoder

from litewhisper.attention.reduced import ReducedAttentionConfig, ReducedDimSelfAttention, use_reduced_attention
from litewhisper.models.linears import LowRankLinear

SHAPES = {"large-v3": (1280, 20, 32, 128), "tiny": (384, 6, 4, 80), "base": (512, 8, 6, 80)}  # d, heads, layers, mels


def random_lowrank(d_model: int, rank: int, gen: torch.Generator) -> LowRankLinear:
    """A random LowRankLinear d_model -> d_model whose outputs have unit scale."""
    m = LowRankLinear(d_model, d_model, rank)
    with torch.no_grad():
        m.weight1.copy_(torch.randn(d_model, rank, generator=gen) * d_model**-0.5)
        m.weight2.copy_(torch.randn(rank, d_model, generator=gen) * rank**-0.5)
        m.bias.copy_(torch.randn(d_model, generator=gen) * 0.1)
    return m


def whisper_config(shape: str) -> WhisperConfig:
    d, heads, layers, mels = SHAPES[shape]
    return WhisperConfig(
        d_model=d,
        encoder_attention_heads=heads,
        encoder_layers=layers,
        encoder_ffn_dim=4 * d,
        num_mel_bins=mels,
        attn_implementation="sdpa",
    )


def attention_variants(shape: str, rank: int, device: str, dtype: torch.dtype) -> dict[str, nn.Module]:
    """The attention blocks to compare for one shape and rank (q, k, v all at `rank`)."""
    config, gen = whisper_config(shape), torch.Generator().manual_seed(rank)
    dense = WhisperAttention(config.d_model, config.encoder_attention_heads, config=config)
    low = WhisperAttention(config.d_model, config.encoder_attention_heads, config=config)
    for name in ("q_proj", "k_proj", "v_proj"):
        setattr(low, name, random_lowrank(config.d_model, rank, gen))
    dense, low = dense.to(device, dtype).eval(), low.to(device, dtype).eval()
    out = {
        "dense_sdpa": dense,
        "lowrank_sdpa": low,
        "reduced_torch": ReducedDimSelfAttention(low, ReducedAttentionConfig("reduced", "torch")),
        "reduced_auto": ReducedDimSelfAttention(low, ReducedAttentionConfig("auto", "torch")),
    }
    if device == "cuda":
        out["reduced_triton"] = ReducedDimSelfAttention(low, ReducedAttentionConfig("reduced", "triton"))
    return out


def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


@torch.no_grad()
def interleaved_medians(fns: dict[str, callable], device: str, repeats: int, warmup: int = 2) -> dict[str, float]:
    """Median seconds per callable, timing them round-robin so drifts in machine load hit all alike."""
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            _sync(device)
            start = time.perf_counter()
            fn()
            _sync(device)
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(t) for name, t in times.items()}


def bench_blocks(args) -> None:
    print(
        f"# attention block, L={args.seq_len}, device={args.device}, dtype={args.dtype}, "
        f"threads={torch.get_num_threads()}, median of {args.repeats} interleaved repeats"
    )
    print(
        f"{'shape':9} {'B':>2} {'rank':>4}  {'plan(auto)':22} "
        + " ".join(
            f"{n:>15}" for n in ("dense_sdpa ms", "lowrank_sdpa", "reduced_torch", "reduced_auto", "reduced_triton")
        )
        + "  vs lowrank_sdpa"
    )
    dtype = getattr(torch, args.dtype)
    for shape in args.shapes:
        d = SHAPES[shape][0]
        for batch in args.batch:
            x = torch.randn(batch, args.seq_len, d, device=args.device, dtype=dtype)  # (B, L, D)
            for rank in args.ranks:
                blocks = attention_variants(shape, rank, args.device, dtype)
                calls = {n: (lambda m=m, x=x: m(x)) for n, m in blocks.items()}
                med = interleaved_medians(calls, args.device, args.repeats)
                plan = blocks["reduced_auto"].plan
                base = med["dense_sdpa"]
                cells = [f"{base * 1e3:15.2f}"] + [
                    f"{med[n] / base:8.2f}x{med[n] * 1e3:6.1f}" if n in med else f"{'-':>15}"
                    for n in ("lowrank_sdpa", "reduced_torch", "reduced_auto", "reduced_triton")
                ]
                vs_low = " ".join(f"{n[8:]} {med[n] / med['lowrank_sdpa']:.2f}x" for n in med if n.startswith("red"))
                print(
                    f"{shape:9} {batch:>2} {rank:>4}  {plan.scores + '/' + plan.values:22} "
                    + " ".join(cells)
                    + "  "
                    + vs_low,
                    flush=True,
                )
    print(
        "# cells: ratio vs dense_sdpa, then ms; last: reduced variants vs lowrank_sdpa (same low-rank weights, "
        "standard attention); plan(auto) = scores path / values path chosen by mode 'auto'"
    )


def bench_encoder(args) -> None:
    """End-to-end encoder (30 s input) with low-rank q/k/v: unswapped vs reduced attention (torch / triton)."""
    dtype = getattr(torch, args.dtype)
    for shape in args.shapes:
        config = whisper_config(shape)
        for rank in args.ranks:
            gen = torch.Generator().manual_seed(rank)
            enc = WhisperEncoder(config)
            for layer in enc.layers:
                for name in ("q_proj", "k_proj", "v_proj"):
                    setattr(layer.self_attn, name, random_lowrank(config.d_model, rank, gen))
            enc = enc.to(args.device, dtype).eval()
            feats = torch.randn(args.batch[0], config.num_mel_bins, 3000, device=args.device, dtype=dtype)
            fns = {"lowrank_sdpa": lambda e=enc, f=feats: e(f)}
            for backend in ("torch", "triton") if args.device == "cuda" else ("torch",):
                swapped = use_reduced_attention(copy.deepcopy(enc), mode="reduced", backend=backend)
                fns[f"reduced_{backend}"] = lambda e=swapped, f=feats: e(f)
            med = interleaved_medians(fns, args.device, args.repeats)
            base = med["lowrank_sdpa"]
            print(
                f"encoder {shape} B={args.batch[0]} rank={rank}: lowrank_sdpa {base * 1e3:.1f} ms; "
                + "; ".join(f"{n} {t * 1e3:.1f} ms ({t / base:.2f}x)" for n, t in med.items() if n != "lowrank_sdpa"),
                flush=True,
            )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", choices=["cpu", "cuda"])
    p.add_argument("--shapes", nargs="+", default=None, choices=list(SHAPES))
    p.add_argument("--ranks", nargs="+", type=int, default=None)
    p.add_argument("--batch", nargs="+", type=int, default=None)
    p.add_argument("--seq-len", type=int, default=1500)
    p.add_argument("--repeats", type=int, default=None)
    p.add_argument("--dtype", default=None, choices=["float32", "float16", "bfloat16"])
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (1 is steadiest on a busy machine)")
    p.add_argument(
        "--parts",
        nargs="+",
        default=["blocks"],
        choices=["blocks", "encoder"],
        help="attention blocks and/or the end-to-end encoder (30 s input, all layers swapped)",
    )
    args = p.parse_args()
    cuda = args.device == "cuda"
    if args.threads:
        torch.set_num_threads(args.threads)
    args.shapes = args.shapes or (["large-v3"] if cuda else ["tiny", "base"])
    args.ranks = args.ranks or ([16, 32, 48, 64, 96, 128] if cuda else [16, 32, 48, 64])
    args.batch = args.batch or ([1, 8] if cuda else [1])
    args.repeats = args.repeats or (21 if cuda else 7)
    args.dtype = args.dtype or ("float16" if cuda else "float32")
    if "blocks" in args.parts:
        bench_blocks(args)
    if "encoder" in args.parts:
        bench_encoder(args)


if __name__ == "__main__":
    main()
