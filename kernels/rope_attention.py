"""Real-valued 2-D axial rotary attention, a drop-in for sam2's RoPEAttention.

Why: sam2's memory attention rotates q/k with complex tensors (view_as_complex,
torch.polar), and neither ONNX exporter handles complex dtypes. Here the same
rotation is written with cos/sin tables on interleaved (re, im) pairs:

    (a + ib) * (cos + i sin) = (a cos - b sin) + i (a sin + b cos)

so the math is identical and only real ops reach the graph.

Public API
----------
axial_rope_tables(head_dim, end_x, end_y, theta)   -> (cos, sin), each [end_x*end_y, head_dim//2]
RealRoPEAttention(...)                              same ctor/forward as sam2's RoPEAttention + attn_bias
RealRoPEAttention.from_sam2(module, feat_sizes=None)
slot_mask_to_key_bias(valid, tokens_per_slot, dtype)
patch_memory_attention(memory_attention, feat_sizes=None) -> RealMemoryAttention (a MemoryAttention)
MemoryAttentionForExport(patched)                   tensor-only forward for torch.onnx.export
"""

from __future__ import annotations

import copy
import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from sam2.modeling.memory_attention import MemoryAttention, MemoryAttentionLayer
from sam2.modeling.sam.transformer import RoPEAttention
from torch import Tensor, nn

__all__ = [
    "MemoryAttentionForExport",
    "RealMemoryAttention",
    "RealMemoryAttentionLayer",
    "RealRoPEAttention",
    "axial_rope_tables",
    "patch_memory_attention",
    "slot_mask_to_key_bias",
]


def axial_rope_tables(head_dim: int, end_x: int, end_y: int, theta: float = 10000.0) -> tuple[Tensor, Tensor]:
    """cos/sin of sam2's axial angles, each [end_x * end_y, head_dim // 2] float32.

    Token t sits at column t % end_x, row t // end_x (row-major grid). The first
    head_dim//4 pairs rotate with the column, the last head_dim//4 with the row.
    """
    if head_dim % 4:
        raise ValueError(f"axial RoPE needs head_dim % 4 == 0, got {head_dim}")
    inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 4)[: head_dim // 4].float() / head_dim))
    t = torch.arange(end_x * end_y, dtype=torch.float32)
    col = t % end_x
    row = torch.div(t, end_x, rounding_mode="floor")
    angles = torch.cat([torch.outer(col, inv_freq), torch.outer(row, inv_freq)], dim=-1)
    return torch.cos(angles), torch.sin(angles)


def _rotate(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """Rotate interleaved pairs of x [..., N, D] by angles with cos/sin [N, D/2].

    Done in float32 then cast back, as sam2 does (it upcasts before view_as_complex).
    """
    xf = x.float().unflatten(-1, (-1, 2))
    re, im = xf[..., 0], xf[..., 1]
    out = torch.stack((re * cos - im * sin, re * sin + im * cos), dim=-1)
    return out.flatten(-2).type_as(x)


class RealRoPEAttention(nn.Module):
    """sam2 RoPEAttention without complex numbers, plus an optional additive attn_bias.

    Constructor arguments mirror sam2's (Attention + rope_theta/rope_k_repeat/feat_sizes).
    cos/sin are non-persistent buffers, so state_dict keys equal sam2's and a sam2
    checkpoint loads unchanged.
    """

    def __init__(
        self,
        embedding_dim: int,
        num_heads: int,
        downsample_rate: int = 1,
        dropout: float = 0.0,
        kv_in_dim: int | None = None,
        rope_theta: float = 10000.0,
        rope_k_repeat: bool = False,
        feat_sizes: Sequence[int] = (64, 64),
    ) -> None:
        super().__init__()
        self.embedding_dim = embedding_dim
        self.kv_in_dim = kv_in_dim if kv_in_dim is not None else embedding_dim
        self.internal_dim = embedding_dim // downsample_rate
        self.num_heads = num_heads
        assert self.internal_dim % num_heads == 0, "num_heads must divide embedding_dim."
        self.head_dim = self.internal_dim // num_heads

        self.q_proj = nn.Linear(embedding_dim, self.internal_dim)
        self.k_proj = nn.Linear(self.kv_in_dim, self.internal_dim)
        self.v_proj = nn.Linear(self.kv_in_dim, self.internal_dim)
        self.out_proj = nn.Linear(self.internal_dim, embedding_dim)
        self.dropout_p = dropout

        self.rope_theta = float(rope_theta)
        self.rope_k_repeat = bool(rope_k_repeat)
        self.feat_sizes = (int(feat_sizes[0]), int(feat_sizes[1]))
        cos, sin = axial_rope_tables(self.head_dim, *self.feat_sizes, theta=self.rope_theta)
        self.register_buffer("rope_cos", cos, persistent=False)
        self.register_buffer("rope_sin", sin, persistent=False)

    @classmethod
    def from_sam2(
        cls,
        module: RoPEAttention,
        feat_sizes: Sequence[int] | None = None,
        copy_weights: bool = False,
    ) -> RealRoPEAttention:
        """Build from a sam2 RoPEAttention, sharing (or copying) its four projections.

        feat_sizes=None reads the grid off module.freqs_cis (assumed square, as sam2's
        own fallback does). theta/dim come from sam2's compute_cis partial.
        """
        theta = module.compute_cis.keywords.get("theta", 10000.0)
        if feat_sizes is None:
            n = module.freqs_cis.shape[0]
            side = math.isqrt(n)
            if side * side != n:
                raise ValueError(f"cannot infer a square grid from {n} rope positions")
            feat_sizes = (side, side)
        new = cls(
            embedding_dim=module.embedding_dim,
            num_heads=module.num_heads,
            downsample_rate=module.embedding_dim // module.internal_dim,
            dropout=module.dropout_p,
            kv_in_dim=module.kv_in_dim,
            rope_theta=theta,
            rope_k_repeat=module.rope_k_repeat,
            feat_sizes=feat_sizes,
        )
        take = copy.deepcopy if copy_weights else (lambda m: m)
        for name in ("q_proj", "k_proj", "v_proj", "out_proj"):
            setattr(new, name, take(getattr(module, name)))
        new.to(module.q_proj.weight.device)  # tables follow the weights
        return new

    def _apply(self, fn, recurse=True):
        # .half()/.to(dtype) would cast the tables too. sam2 keeps complex64 tables and
        # rotates in float32 for any model dtype, so rebuild them in float32 and only
        # follow the device.
        super()._apply(fn, recurse)
        device = self.rope_cos.device
        cos, sin = axial_rope_tables(self.head_dim, *self.feat_sizes, theta=self.rope_theta)
        self.rope_cos, self.rope_sin = cos.to(device), sin.to(device)
        return self

    def _separate_heads(self, x: Tensor) -> Tensor:
        # [B, N, C] -> [B, heads, N, C/heads]
        return x.unflatten(-1, (self.num_heads, -1)).transpose(1, 2)

    def _tables(self, n: int) -> tuple[Tensor, Tensor]:
        if n == self.rope_cos.shape[0]:
            return self.rope_cos, self.rope_sin
        # sam2 recomputes for a square grid of the query length; n is a static
        # Python int at trace time, so this stays out of the exported graph's control flow.
        side = math.isqrt(n)
        if side * side != n:
            raise ValueError(f"query length {n} is neither the cached grid nor a square")
        cos, sin = axial_rope_tables(self.head_dim, side, side, theta=self.rope_theta)
        return cos.to(self.rope_cos.device), sin.to(self.rope_sin.device)

    def _rotate_keys(self, k: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
        if not self.rope_k_repeat:
            return _rotate(k, cos, sin)  # must match q's length, like sam2
        # Keys are M memory frames of the query grid: view them as [.., M, Nq, D] so the
        # same tables broadcast over frames. M stays symbolic (no repeat count needed).
        nq = cos.shape[0]
        return _rotate(k.unflatten(-2, (-1, nq)), cos, sin).flatten(-3, -2)

    def forward(
        self,
        q: Tensor,
        k: Tensor,
        v: Tensor,
        num_k_exclude_rope: int = 0,
        attn_bias: Tensor | None = None,
    ) -> Tensor:
        """q [B, Nq, C], k/v [B, Nk, kv_in_dim] -> [B, Nq, C].

        num_k_exclude_rope: trailing key tokens (object pointers) left unrotated.
        attn_bias: additive float bias broadcastable to [B, heads, Nq, Nk];
        use a large negative value for keys that must be ignored.
        """
        q = self._separate_heads(self.q_proj(q))
        k = self._separate_heads(self.k_proj(k))
        v = self._separate_heads(self.v_proj(v))

        # Only checked without rope_k_repeat: a check on the (dynamic) memory length
        # would become a shape guard in torch.export.
        if not self.rope_k_repeat and q.shape[-2] != k.shape[-2]:
            raise ValueError("keys longer than queries need rope_k_repeat=True")
        cos, sin = self._tables(q.shape[-2])
        q = _rotate(q, cos, sin)
        if num_k_exclude_rope > 0:
            n_rope = k.shape[-2] - num_k_exclude_rope
            k_rope = k[:, :, :n_rope]
            if n_rope > 0:  # sam2 also leaves keys alone when all are excluded
                k_rope = self._rotate_keys(k_rope, cos, sin)
            k = torch.cat([k_rope, k[:, :, n_rope:]], dim=-2)
        else:
            k = self._rotate_keys(k, cos, sin)

        if attn_bias is not None:
            if not torch.is_floating_point(attn_bias):
                raise TypeError("attn_bias must be an additive float bias (see slot_mask_to_key_bias)")
            attn_bias = attn_bias.to(q.dtype)
        dropout_p = self.dropout_p if self.training else 0.0
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_bias, dropout_p=dropout_p)
        out = out.transpose(1, 2).flatten(-2)  # [B, Nq, C]
        return self.out_proj(out)


def slot_mask_to_key_bias(valid: Tensor, tokens_per_slot: int, dtype: torch.dtype = torch.float32) -> Tensor:
    """Per-slot validity [S] or [B, S] (bool, or float/int with nonzero = valid) ->
    additive key bias [1 or B, 1, 1, S * tokens_per_slot].

    Empty slots get finfo.min: after softmax their weight is exactly 0, so the result
    equals attending to the valid slots only. (A finite value, not -inf, so a row with
    no valid slot gives a finite average instead of NaN.)
    """
    keep = valid if valid.dtype == torch.bool else valid != 0
    bias = (~keep).to(dtype) * torch.finfo(dtype).min
    if bias.dim() == 1:
        bias = bias.unsqueeze(0)
    bias = bias.unsqueeze(-1).expand(-1, -1, tokens_per_slot).flatten(-2)  # slot-major, like memory
    return bias[:, None, None, :]


class RealMemoryAttentionLayer(MemoryAttentionLayer):
    """sam2 MemoryAttentionLayer whose cross-attention also takes attn_bias.

    Instances are made by patch_memory_attention (class swap on a deep copy), so
    parameters and flags are exactly sam2's.
    """

    def _forward_ca(self, tgt, memory, query_pos, pos, num_k_exclude_rope=0, attn_bias=None):
        tgt2 = self.norm2(tgt)
        tgt2 = self.cross_attn_image(
            q=tgt2 + query_pos if self.pos_enc_at_cross_attn_queries else tgt2,
            k=memory + pos if self.pos_enc_at_cross_attn_keys else memory,
            v=memory,
            num_k_exclude_rope=num_k_exclude_rope,
            attn_bias=attn_bias,
        )
        return tgt + self.dropout2(tgt2)

    def forward(self, tgt, memory, pos=None, query_pos=None, num_k_exclude_rope=0, attn_bias=None):
        tgt = self._forward_sa(tgt, query_pos)
        tgt = self._forward_ca(tgt, memory, query_pos, pos, num_k_exclude_rope, attn_bias)
        tgt2 = self.linear2(self.dropout(self.activation(self.linear1(self.norm3(tgt)))))
        return tgt + self.dropout3(tgt2)


class RealMemoryAttention(MemoryAttention):
    """sam2 MemoryAttention with RealRoPEAttention inside; same call signature plus
    memory_key_bias (additive, broadcastable to [B, heads, HW, Nk], batch-first B)."""

    def forward(
        self,
        curr,
        memory: Tensor,
        curr_pos=None,
        memory_pos: Tensor | None = None,
        num_obj_ptr_tokens: int = 0,
        memory_key_bias: Tensor | None = None,
    ) -> Tensor:
        if isinstance(curr, (list, tuple)):  # sam2/GLUS pass one-element lists
            assert len(curr) == 1 and len(curr_pos) == 1
            curr, curr_pos = curr[0], curr_pos[0]

        output = curr
        if self.pos_enc_at_input and curr_pos is not None:
            output = output + 0.1 * curr_pos
        if self.batch_first:  # inputs are sequence-first [N, B, C]
            output = output.transpose(0, 1)
            curr_pos = curr_pos.transpose(0, 1) if curr_pos is not None else None
            memory = memory.transpose(0, 1)
            memory_pos = memory_pos.transpose(0, 1) if memory_pos is not None else None

        for layer in self.layers:
            output = layer(
                tgt=output,
                memory=memory,
                pos=memory_pos,
                query_pos=curr_pos,
                num_k_exclude_rope=num_obj_ptr_tokens,
                attn_bias=memory_key_bias,
            )
        output = self.norm(output)
        return output.transpose(0, 1) if self.batch_first else output


def patch_memory_attention(
    memory_attention: MemoryAttention, feat_sizes: Sequence[int] | None = None
) -> RealMemoryAttention:
    """Deep copy of a sam2 MemoryAttention with every RoPEAttention (self_attn and
    cross_attn_image of each layer) replaced by RealRoPEAttention. The original is
    untouched; the copy keeps sam2's state_dict keys."""
    if type(memory_attention) is not MemoryAttention:
        raise TypeError(f"expected sam2 MemoryAttention, got {type(memory_attention).__name__}")
    patched = copy.deepcopy(memory_attention)
    for layer in patched.layers:
        if type(layer) is not MemoryAttentionLayer:
            raise TypeError(f"unexpected layer type {type(layer).__name__}")
        for name in ("self_attn", "cross_attn_image"):
            attn = getattr(layer, name)
            if isinstance(attn, RoPEAttention):
                setattr(layer, name, RealRoPEAttention.from_sam2(attn, feat_sizes))
            elif not isinstance(attn, RealRoPEAttention):
                raise TypeError(f"{name}: {type(attn).__name__} is not a RoPE attention")
        # Class swap: same attributes, forward that threads attn_bias through.
        layer.__class__ = RealMemoryAttentionLayer
    patched.__class__ = RealMemoryAttention
    return patched


class MemoryAttentionForExport(nn.Module):
    """Tensor-only forward for export, as GLUS calls memory attention (no obj pointers).

    forward(curr [HW,B,C], curr_pos [HW,B,C], memory [S*HW,B,Cm], memory_pos [S*HW,B,Cm],
            memory_mask [S] or [B,S] | None) -> [HW,B,C]

    Without memory_mask, the memory length (number of frames) may be dynamic.
    With memory_mask, memory holds S fixed slots (e.g. 7) and empty slots are masked
    out of the cross-attention softmax (zero-filled slots would still take weight).
    """

    def __init__(self, patched: RealMemoryAttention) -> None:
        super().__init__()
        if not isinstance(patched, RealMemoryAttention):
            raise TypeError("pass the result of patch_memory_attention")
        self.memory_attention = patched

    def forward(
        self,
        curr: Tensor,
        curr_pos: Tensor,
        memory: Tensor,
        memory_pos: Tensor,
        memory_mask: Tensor | None = None,
    ) -> Tensor:
        bias = None
        if memory_mask is not None:
            tokens_per_slot = memory.shape[0] // memory_mask.shape[-1]
            bias = slot_mask_to_key_bias(memory_mask, tokens_per_slot, curr.dtype)
        return self.memory_attention(
            curr=curr,
            memory=memory,
            curr_pos=curr_pos,
            memory_pos=memory_pos,
            num_obj_ptr_tokens=0,
            memory_key_bias=bias,
        )
