"""Reduced-dimension self-attention for low-rank Whisper encoders (LiteASR §3.3).

With low-rank projections q = (X W_Q1) W_Q2 + b_Q, k = (X W_K1) W_K2 + b_K, v = (X W_V1) W_V2 + b_V and the
shared low-rank activations A = X W_Q1 (L, k_Q), B = X W_K1 (L, k_K), C = X W_V1 (L, k_V), head i scores are

    s·Q_i K_iᵀ = s·[A M_i Bᵀ + A W_Q2ⁱ b_Kⁱᵀ + b_Qⁱ W_K2ⁱᵀ Bᵀ + b_Qⁱ b_Kⁱᵀ],   M_i = W_Q2ⁱ W_K2ⁱᵀ (k_Q, k_K).

The 2nd and 4th terms are constant along each row (over keys) and cancel in the softmax, so b_K never matters;
the 3rd is a per-key bias u_i Bᵀ with u_i = b_Qⁱ W_K2ⁱᵀ (1, k_K). Two exact ways to evaluate what is left:
  * query-side fold: Q̃_i = s·(A M_i + u_i) (L, k_K), scores = Q̃_i Bᵀ        — O(L k_Q k_K + L² k_K);
  * key-side fold:   K̃_i = s·B M_iᵀ (L, k_Q), scores = A K̃_iᵀ + s·(B u_iᵀ)ᵀ  — O(L k_Q k_K + L² k_Q);
the cheaper one is used (the L² inner dimension is min(k_Q, k_K)). Values: softmax(S_i) V_i = (softmax(S_i) C)
W_V2ⁱ + b_Vⁱ because softmax rows sum to one: O(L² k_V + L k_V D_h) instead of O(L k_V D_h + L² D_h).
The small matrices s·M_i, s·u_i, W_V2ⁱ, b_Vⁱ are precomputed once at construction (float64, then cast).

Each part (scores, values) uses the reduced path only where it saves FLOPs (mode "auto"), decided from ranks vs
head size at the model's sequence length; "reduced" / "standard" force it. Standard parts use the ordinary
projections. The attention itself runs in PyTorch SDPA (backend "torch") or in the fused Triton kernel
(`litewhisper.attention.kernels.reduced_attention`, backend "triton"; "auto" = the kernel where it is supported and some
part is reduced), which falls back to PyTorch with a logged reason, never a wrong result.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn
from transformers.models.whisper.modeling_whisper import WhisperAttention

from litewhisper.constants import ENCODER_POSITIONS
from litewhisper.errors import LiteWhisperError
from litewhisper.swap import swap_modules

log = logging.getLogger("litewhisper")

Mode = Literal["auto", "reduced", "standard"]
Backend = Literal["auto", "torch", "triton"]
ScoresPath = Literal["standard", "reduced_query", "reduced_key"]
ValuesPath = Literal["standard", "reduced"]

__all__ = [
    "AttentionConfigError",
    "ReducedAttentionConfig",
    "AttentionMacs",
    "attention_macs",
    "AttentionPlan",
    "plan_attention",
    "attend_torch",
    "ReducedDimSelfAttention",
    "use_reduced_attention",
]
_LOGGED: set[str] = set()


class AttentionConfigError(LiteWhisperError):
    """An impossible reduced-attention setting (mode, backend)."""


@dataclass(frozen=True)
class ReducedAttentionConfig:
    """How `use_reduced_attention` swaps modules: per-part path selection and attention backend."""

    mode: Mode = "auto"
    backend: Backend = "auto"
    seq_len: int | None = None  # sequence length the FLOP decision assumes; None = config.max_source_positions

    def __post_init__(self) -> None:
        if self.mode not in ("auto", "reduced", "standard"):
            raise AttentionConfigError(f"mode {self.mode!r} is not one of 'auto', 'reduced', 'standard'")
        if self.backend not in ("auto", "torch", "triton"):
            raise AttentionConfigError(f"backend {self.backend!r} is not one of 'auto', 'torch', 'triton'")
        if self.seq_len is not None and self.seq_len < 1:
            raise AttentionConfigError(f"seq_len must be a positive length, got {self.seq_len}")


@dataclass(frozen=True)
class AttentionMacs:
    """Multiply-adds per head and sequence of the two attention parts, (standard, reduced) each.

    Beyond the shared first factors X·W1 (the same in every path): scores standard = the q/k second factors +
    Q Kᵀ, reduced = A M_i (or B M_iᵀ) + the scores in min(k_Q, k_K) dimensions; values standard = the v second
    factor + A V, reduced = A C in k_V dimensions + the per-head W_V2. A part whose projections are dense has no
    reduced path (None).
    """

    scores: tuple[int, int | None]
    values: tuple[int, int | None]


def attention_macs(
    q_rank: int | None, k_rank: int | None, v_rank: int | None, head_dim: int, seq_len: int
) -> AttentionMacs:
    """Per-head multiply-adds of the scores and values parts, standard and reduced (see AttentionMacs)."""
    L, dh = seq_len, head_dim
    scores: tuple[int, int | None] = (L * L * dh, None)
    if q_rank is not None and k_rank is not None:
        scores = (L * dh * (q_rank + k_rank) + L * L * dh, L * q_rank * k_rank + L * L * min(q_rank, k_rank))
    values: tuple[int, int | None] = (L * L * dh, None)
    if v_rank is not None:
        values = (L * v_rank * dh + L * L * dh, L * L * v_rank + L * v_rank * dh)
    return AttentionMacs(scores, values)


@dataclass(frozen=True)
class AttentionPlan:
    """Per-layer choice of path for the scores (q·kᵀ) and the values, with multiply-add counts per head."""

    scores: ScoresPath
    values: ValuesPath
    scores_macs: tuple[int, int]  # (standard, chosen) multiply-adds per head and sequence
    values_macs: tuple[int, int]

    @property
    def reduced(self) -> bool:
        return self.scores != "standard" or self.values != "standard"


def plan_attention(
    q_rank: int | None,
    k_rank: int | None,
    v_rank: int | None,
    head_dim: int,
    seq_len: int = ENCODER_POSITIONS,
    mode: Mode = "auto",
) -> AttentionPlan:
    """Choose the scores and values paths from the ranks (None = dense projection) by multiply-add count
    (`attention_macs`, per head and sequence).

    The scores fold on the query side when k_K ≤ k_Q (the L² product runs in k_K dimensions), else on the key side.
    """
    cost = attention_macs(q_rank, k_rank, v_rank, head_dim, seq_len)
    scores, s_macs = "standard", (0, 0)
    if cost.scores[1] is not None:
        std, red = cost.scores
        fold = "reduced_query" if k_rank <= q_rank else "reduced_key"
        use = mode == "reduced" or (mode == "auto" and red < std)
        scores, s_macs = (fold, (std, red)) if use else ("standard", (std, std))
    values, v_macs = "standard", (0, 0)
    if cost.values[1] is not None:
        std, red = cost.values
        use = mode == "reduced" or (mode == "auto" and red < std)
        values, v_macs = ("reduced", (std, red)) if use else ("standard", (std, std))
    return AttentionPlan(scores, values, s_macs, v_macs)


def _rank(proj: nn.Module) -> int | None:
    """The rank of a LowRankLinear-like projection (weight1 (in, k), weight2 (k, out)); None when dense."""
    return proj.weight1.shape[1] if hasattr(proj, "weight1") and hasattr(proj, "weight2") else None


def _log_once(level: int, msg: str) -> None:
    if msg not in _LOGGED:
        _LOGGED.add(msg)
        log.log(level, msg)


def attend_torch(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    key_bias: torch.Tensor | None,
    wv: torch.Tensor | None,
    bv: torch.Tensor | None,
    num_heads: int,
    attention_mask: torch.Tensor | None = None,
    dropout: float = 0.0,
) -> torch.Tensor:
    """PyTorch reference of the fused kernel (same operands, scale already folded in); returns (B, L, H, D_h).

    q, k: (B, 1|H, L, d); v: (B, 1|H, L, d_v) (head dim 1 = shared); key_bias: (B, H, L) or None;
    wv: (H, d_v, D_h) or None; bv: (H, D_h) or None; attention_mask: additive (B, 1|H, L, L) or None.
    """
    bsz, _, seq, d = q.shape
    d_v = v.shape[-1]
    if d != d_v:  # fused SDPA (flash) needs equal q/k and v widths, else L×L math: zero-pad the narrower
        width = max(d, d_v)
        q, k = F.pad(q, (0, width - d)), F.pad(k, (0, width - d))  # zero columns: same scores
        v = F.pad(v, (0, width - d_v))  # zero columns: sliced off below
    q = q.expand(bsz, num_heads, seq, q.shape[-1])  # (B, H, L, w)
    k = k.expand(bsz, num_heads, seq, k.shape[-1])  # (B, H, L, w)
    v = v.expand(bsz, num_heads, seq, v.shape[-1])  # (B, H, L, w)
    mask = None if key_bias is None else key_bias[:, :, None, :].to(q.dtype)  # (B, H, 1, L)
    if attention_mask is not None:
        mask = attention_mask.to(q.dtype) if mask is None else mask + attention_mask.to(q.dtype)
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout, scale=1.0)
    out = out[..., :d_v]  # (B, H, L, d_v)
    if wv is not None:
        out = out @ wv  # (B, H, L, D_h)
    if bv is not None:
        out = out + bv[:, None, :]  # (B, H, L, D_h)
    return out.transpose(1, 2)  # (B, L, H, D_h)


class ReducedDimSelfAttention(nn.Module):
    """Drop-in replacement for an encoder `WhisperAttention` whose q/k/v may be low-rank.

    Keeps the original q_proj/k_proj/v_proj/out_proj submodules (same state_dict); the precomputed small matrices
    are non-persistent buffers built once here (rebuild the module if the weights change). Inference only: no
    gradient reaches the q/k/v factors through the buffers. Attention weights are never materialised, so the
    second output is always None.
    """

    def __init__(self, attn: WhisperAttention, config: ReducedAttentionConfig | None = None) -> None:
        super().__init__()
        config = config or ReducedAttentionConfig()
        self.num_heads, self.head_dim, self.scaling = attn.num_heads, attn.head_dim, attn.scaling
        self.embed_dim, self.dropout, self.backend = attn.embed_dim, attn.dropout, config.backend
        self.config, self.layer_idx = attn.config, getattr(attn, "layer_idx", None)
        self.q_proj, self.k_proj, self.v_proj, self.out_proj = attn.q_proj, attn.k_proj, attn.v_proj, attn.out_proj
        seq_len = config.seq_len or getattr(attn.config, "max_source_positions", None) or ENCODER_POSITIONS
        ranks = [_rank(p) for p in (attn.q_proj, attn.k_proj, attn.v_proj)]
        self.plan = plan_attention(*ranks, head_dim=self.head_dim, seq_len=seq_len, mode=config.mode)
        self._build_buffers()

    def _heads(self, w2: torch.Tensor) -> torch.Tensor:
        """(k, H·D_h) second factor -> (H, k, D_h) per-head slices, float64."""
        return w2.detach().double().reshape(w2.shape[0], self.num_heads, self.head_dim).permute(1, 0, 2)

    @torch.no_grad()
    def _build_buffers(self) -> None:
        dtype = next(self.q_proj.parameters()).dtype  # buffers follow the model's dtype
        w1, mat, vec, wv, bv = [], None, None, None, None
        if self.plan.scores != "standard":
            q, k = self.q_proj, self.k_proj
            wq2, wk2 = self._heads(q.weight2), self._heads(k.weight2)  # (H, k_Q, D_h), (H, k_K, D_h)
            mat = self.scaling * wq2 @ wk2.transpose(1, 2)  # (H, k_Q, k_K) = s·M_i
            if q.bias is not None:
                bq = q.bias.detach().double().reshape(self.num_heads, 1, self.head_dim)  # (H, 1, D_h)
                vec = (self.scaling * bq @ wk2.transpose(1, 2)).squeeze(1)  # (H, k_K) = s·u_i
            if self.plan.scores == "reduced_key":
                mat = mat.transpose(1, 2)  # (H, k_K, k_Q) = s·M_iᵀ
            w1 += [q.weight1, k.weight1]
        if self.plan.values == "reduced":
            wv = self._heads(self.v_proj.weight2)  # (H, k_V, D_h)
            if self.v_proj.bias is not None:
                bv = self.v_proj.bias.detach().double().reshape(self.num_heads, self.head_dim)  # (H, D_h)
            w1.append(self.v_proj.weight1)
        self._split = [w.shape[1] for w in w1]
        cast = lambda t: None if t is None else t.to(dtype).contiguous()  # noqa: E731
        self.register_buffer("w1", cast(torch.cat([w.detach() for w in w1], 1)) if w1 else None, persistent=False)
        self.register_buffer("qk_mat", cast(mat), persistent=False)  # (H, k_Q, k_K) or (H, k_K, k_Q)
        self.register_buffer("qk_vec", cast(vec), persistent=False)  # (H, k_K)
        self.register_buffer("wv", cast(wv), persistent=False)  # (H, k_V, D_h)
        self.register_buffer("bv", cast(bv), persistent=False)  # (H, D_h)

    def _split_heads(self, y: torch.Tensor) -> torch.Tensor:
        bsz, seq, _ = y.shape  # (B, L, H·D_h)
        return y.view(bsz, seq, self.num_heads, self.head_dim).transpose(1, 2)  # (B, H, L, D_h)

    def _score_operands(self, x: torch.Tensor, a: torch.Tensor | None, b: torch.Tensor | None):
        """(q, k, key_bias) for the attention: q, k (B, 1|H, L, d) with the scale folded in; key_bias (B, H, L)."""
        if self.plan.scores == "standard":
            return self._split_heads(self.q_proj(x) * self.scaling), self._split_heads(self.k_proj(x)), None
        a, b = a.unsqueeze(1), b.unsqueeze(1)  # (B, 1, L, k_Q), (B, 1, L, k_K)
        if self.plan.scores == "reduced_query":
            q = a @ self.qk_mat  # (B, H, L, k_K) = s·A M_i
            if self.qk_vec is not None:
                q = q + self.qk_vec[:, None, :]  # + s·u_i
            return q, b, None
        k = b @ self.qk_mat  # (B, H, L, k_Q) = s·B M_iᵀ
        kb = None if self.qk_vec is None else (b @ self.qk_vec[:, :, None]).squeeze(-1)  # (B, H, L) = s·B u_iᵀ
        return a, k, kb

    def _value_operands(self, x: torch.Tensor, c: torch.Tensor | None):
        """(v, wv, bv): v (B, 1|H, L, d_v); wv (H, k_V, D_h) and bv (H, D_h) are applied after the softmax."""
        if self.plan.values == "standard":
            return self._split_heads(self.v_proj(x)), None, None  # (B, H, L, D_h)
        return c.unsqueeze(1), self.wv, self.bv  # (B, 1, L, k_V)

    def _attend(self, q, k, kb, v, wv, bv, attention_mask: torch.Tensor | None) -> torch.Tensor:
        """Run the attention on prepared operands with the chosen backend; returns (B, L, H, D_h)."""
        dropout = self.dropout if self.training else 0.0
        # "auto" keeps PyTorch's SDPA (FlashAttention/cuDNN on GPU) for a module with nothing reduced
        if self.backend == "triton" or (self.backend == "auto" and self.plan.reduced):
            reason = "attention dropout in training" if dropout > 0 else None
            if reason is None:
                try:
                    from litewhisper.attention.kernels import reduced_attention as kernel

                    reason = kernel.unsupported_reason(q, k, v, wv, attention_mask)
                except ImportError as err:  # pragma: no cover - triton is a dependency of the dev install
                    reason = f"triton kernel unavailable ({err})"
            if reason is None:
                return kernel.reduced_attention(q, k, v, kb, wv, bv, 1.0, self.num_heads)
            level = logging.WARNING if self.backend == "triton" else logging.DEBUG
            _log_once(level, f"reduced attention: Triton kernel not used, PyTorch fallback: {reason}")
        return attend_torch(q, k, v, kb, wv, bv, self.num_heads, attention_mask, dropout)

    def forward(
        self,
        hidden_states: torch.Tensor,
        key_value_states: torch.Tensor | None = None,
        past_key_values=None,
        attention_mask: torch.Tensor | None = None,
        output_attentions: bool = False,
        **kwargs,
    ) -> tuple[torch.Tensor, None]:
        """hidden_states (B, L, D) -> (attn_output (B, L, D), None); the WhisperAttention encoder signature."""
        if key_value_states is not None or past_key_values is not None:
            raise ValueError("ReducedDimSelfAttention is encoder self-attention only (no cross-attention/cache)")
        if output_attentions:
            _log_once(logging.WARNING, "reduced attention never materialises attention weights; returning None")
        x = hidden_states  # (B, L, D)
        bsz, seq, _ = x.shape
        low = x @ self.w1 if self.w1 is not None else None  # (B, L, Σk) shared low-rank activations
        parts = list(low.split(self._split, dim=-1)) if low is not None else []
        a, b = (parts.pop(0), parts.pop(0)) if self.plan.scores != "standard" else (None, None)
        c = parts.pop(0) if self.plan.values == "reduced" else None  # (B, L, k_V)
        q, k, kb = self._score_operands(x, a, b)
        v, wv, bv = self._value_operands(x, c)
        out = self._attend(q, k, kb, v, wv, bv, attention_mask)  # (B, L, H, D_h)
        return self.out_proj(out.reshape(bsz, seq, self.embed_dim)), None

    def extra_repr(self) -> str:
        return (
            f"heads={self.num_heads}, head_dim={self.head_dim}, scores={self.plan.scores}, "
            f"values={self.plan.values}, backend={self.backend}"
        )


def _is_encoder_self_attention(module: nn.Module, name: str) -> bool:
    return isinstance(module, WhisperAttention) and not module.is_decoder


def use_reduced_attention(
    model: nn.Module,
    mode: Mode = "auto",
    backend: Backend = "auto",
    filter_fn: Callable[[nn.Module, str], bool] | None = None,
    seq_len: int | None = None,
) -> nn.Module:
    """Swap encoder self-attention modules (chosen by `filter_fn(module, name)`) for ReducedDimSelfAttention.

    In mode "auto" a module is left untouched when neither its scores nor its values save FLOPs. In place;
    returns the model (torchao `quantize_` style, through `litewhisper.swap.swap_modules`).
    """
    config = ReducedAttentionConfig(mode=mode, backend=backend, seq_len=seq_len)
    chosen = filter_fn or _is_encoder_self_attention
    candidates: list[str] = []

    def pick(module: nn.Module, name: str) -> bool:
        if chosen(module, name):
            candidates.append(name)
            return True
        return False

    def make(module: nn.Module, name: str) -> nn.Module | None:
        new = ReducedDimSelfAttention(module, config)
        if config.mode == "auto" and not new.plan.reduced:
            log.debug("reduced attention: %s keeps the standard path (no FLOP saving)", name)
            return None
        log.debug("reduced attention: %s -> scores %s, values %s", name, new.plan.scores, new.plan.values)
        return new

    swapped = swap_modules(model, make, pick)
    if swapped:
        log.info(
            "reduced attention: %d of %d self-attention modules run in the reduced dimension (mode %s, backend %s)",
            len(swapped),
            len(candidates),
            config.mode,
            config.backend,
        )
    else:  # nothing wrong: with ranks ≥ the head size the standard path is as cheap
        log.info("reduced attention: not used (q/k/v ranks ≥ head size, no FLOPs saved); standard attention")
    return model
