"""kernels.rope_shift against transformers' own LLaMA rotary embedding."""

import numpy as np
import pytest
import torch
from transformers import LlamaConfig
from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding, apply_rotary_pos_emb

from kernels.rope_shift import shift_keys


@pytest.mark.parametrize("theta,head_dim", [(10000.0, 32), (500000.0, 64)])
@pytest.mark.parametrize("p,delta", [(5, 17), (300, -120), (0, 2047)])
def test_shift_equals_rotation_at_the_new_position(theta, head_dim, p, delta):
    cfg = LlamaConfig(hidden_size=head_dim * 2, num_attention_heads=2, rope_theta=theta)
    rope = LlamaRotaryEmbedding(cfg)
    k = torch.randn(1, 2, 3, head_dim)  # [B, heads, T, hd]
    q = torch.zeros_like(k)

    def at(pos):
        ids = torch.arange(pos, pos + 3)[None]
        cos, sin = rope(k, ids)
        return apply_rotary_pos_emb(q, k, cos, sin)[1].numpy()

    np.testing.assert_allclose(shift_keys(at(p), delta, theta), at(p + delta), atol=2e-4, rtol=1e-4)
