"""The "llm" graph: LLaMA decoder over input embeddings with a stacked KV cache in and out.

Token embeddings are looked up outside the graph (`embedding_table`), because GLUS splices 64
projected CLIP tokens into the sequence for every <image> placeholder; the graph only sees
embeddings. One graph serves both the shared-prefix prefill (P = 0) and each query step on top
of the prefix's cache (P = prefix length, position_ids continuing from P).
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from .onnx_utils import GraphSpec

# Example sizes of the dynamic axes: both >= 2 or the exporter bakes them in as constants.
EXAMPLE_T = 5
EXAMPLE_P = 3


def llm_dims(model) -> dict[str, int]:
    """Layers, KV heads, head dim, hidden and vocab of the LLM: the shapes of past_kv etc."""
    cfg = model.llm.config
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
    return {
        "layers": int(cfg.num_hidden_layers),
        "kv_heads": int(cfg.num_key_value_heads),
        "head_dim": int(head_dim),
        "hidden": int(cfg.hidden_size),
        "vocab": int(model.llm.lm_head.out_features),
        "out_dim": int(model.cfg.out_dim),
    }


class LlmGraph(nn.Module):
    """(inputs_embeds [1,T,H], position_ids [1,T], past_kv [L,2,1,KVH,P,HD])
    → (seg_embedding [1,out_dim], logits [1,V], present_kv [L,2,1,KVH,P+T,HD]).

    No attention mask is passed: transformers then builds the causal mask from the cache
    length, i.e. new token i sees every past entry and new tokens 0..i — what a prefill of the
    whole prompt computes (tests check prefix + rest == full prefill).
    """

    def __init__(self, model):
        super().__init__()
        self.model = model
        self.num_layers = int(model.llm.config.num_hidden_layers)

    def forward(self, inputs_embeds: torch.Tensor, position_ids: torch.Tensor, past_kv: torch.Tensor):
        from transformers import DynamicCache

        llm = self.model.llm
        # One DynamicLayer per decoder layer, filled with (keys, values); with P = 0 these are
        # empty tensors and the cache simply grows to T.
        cache = DynamicCache([(past_kv[i, 0], past_kv[i, 1]) for i in range(self.num_layers)])
        out = llm.model(
            inputs_embeds=inputs_embeds,
            position_ids=position_ids,
            past_key_values=cache,
            use_cache=True,
        )
        last = out.last_hidden_state[:, -1:]  # [1, 1, H], after the final RMSNorm
        # lm_head on [1, 1, H] exports as MatMul (a [1, H] input becomes Gemm, which weight-only
        # quantizers skip); only the last position's logits are needed (next token).
        logits = llm.lm_head(last)[:, 0]
        # text_hidden_fcs on [1, H]: a Gemm, so it stays fp32 when the MatMuls are quantized —
        # it is small and sits directly on the [SEG] embedding path.
        seg = self.model.seg_head(last[:, 0])
        layers = cache.layers
        present = torch.stack([torch.stack([layer.keys, layer.values]) for layer in layers])
        return seg, logits, present


def llm_spec(model) -> GraphSpec:
    d = llm_dims(model)
    g = torch.Generator().manual_seed(0)
    embeds = torch.randn(1, EXAMPLE_T, d["hidden"], generator=g) * 0.02
    position_ids = torch.arange(EXAMPLE_P, EXAMPLE_P + EXAMPLE_T, dtype=torch.int64)[None]
    past = torch.randn(d["layers"], 2, 1, d["kv_heads"], EXAMPLE_P, d["head_dim"], generator=g)
    return GraphSpec(
        name="llm",
        module=LlmGraph(model).eval(),
        inputs={"inputs_embeds": embeds, "position_ids": position_ids, "past_kv": past},
        outputs=["seg_embedding", "logits", "present_kv"],
        dynamic={"inputs_embeds": {1: "T"}, "position_ids": {1: "T"}, "past_kv": {4: "P"}},
        dim_min={"T": 1, "P": 0},
    )


def embedding_table(model) -> np.ndarray:
    """[V, H] float32 token embeddings, GLUS's added rows ([SEG], <im_start>, <im_end>) included."""
    weight = model.llm.get_input_embeddings().weight.detach()
    return np.ascontiguousarray(weight.float().cpu().numpy())
