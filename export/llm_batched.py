"""The "llm_batched" graph: the windows of several expressions of one frame in one LLM call.

Written only when asked (`python -m export.build --batched-llm`): the runtime uses it with
batch_llm=True (runtime/tracking.frame_step). Every expression of a frame reads the same shared
prefix, so its KV cache goes in once with a batch of 1 and is broadcast inside the graph (no
copy per expression); the windows, of different lengths, are right-padded into one batch
(runtime.stages.pad_windows) with a mask over the padding, and each row's [SEG] embedding and
next-token logits are read at its own last real token.

Right padding keeps every real token where the one-expression "llm" graph has it: a real token
attends causally to the prefix and the real tokens before it, never to the padding after it, so
in fp32 each row equals that graph's answer (the build measures it: parity "llm_batched_rows").
"""

from __future__ import annotations

import torch
from torch import nn

from .llm import llm_dims
from .onnx_utils import GraphSpec

# Example sizes of the dynamic axes (>= 2, or the exporter bakes them in); the example batch is
# padded, so that the build's parity check runs the padding path.
EXAMPLE_B, EXAMPLE_T, EXAMPLE_P = 2, 5, 3
EXAMPLE_LENGTHS = (5, 3)


class BatchedLlmGraph(nn.Module):
    """(inputs_embeds [B,T,H], position_ids [B,T], new_mask [B,T] (1 real, 0 padding), last [B]
    (each row's last real position), past_kv [L,2,1,KVH,P,HD]) → (seg_embedding [B,out_dim],
    logits [B,V]). No present_kv: the runtime's exact window step drops it anyway."""

    def __init__(self, model):
        super().__init__()
        self.model = model
        self.num_layers = int(model.llm.config.num_hidden_layers)

    def forward(self, inputs_embeds, position_ids, new_mask, last, past_kv):
        from transformers import DynamicCache

        llm = self.model.llm
        b = inputs_embeds.shape[0]
        p = past_kv.shape[4]
        # expand: a view of the batch-1 prefix cache, not B copies of it
        cache = DynamicCache(
            [(past_kv[i, 0].expand(b, -1, -1, -1), past_kv[i, 1].expand(b, -1, -1, -1)) for i in range(self.num_layers)]
        )
        mask = torch.cat([torch.ones(b, p, dtype=new_mask.dtype), new_mask], 1)
        out = llm.model(
            inputs_embeds=inputs_embeds,
            position_ids=position_ids,
            attention_mask=mask,
            past_key_values=cache,
            use_cache=True,
        )
        h = out.last_hidden_state[torch.arange(b), last]  # [B, H], after the final RMSNorm
        # As in LlmGraph: lm_head on [B, 1, H] is a MatMul (quantized with the LLM's weights),
        # the [SEG] head on [B, H] a Gemm (stays fp32).
        logits = llm.lm_head(h[:, None])[:, 0]
        return self.model.seg_head(h), logits


def llm_batched_spec(model) -> GraphSpec:
    d = llm_dims(model)
    g = torch.Generator().manual_seed(0)
    mask = torch.zeros(EXAMPLE_B, EXAMPLE_T, dtype=torch.int64)
    for i, n in enumerate(EXAMPLE_LENGTHS):
        mask[i, :n] = 1
    return GraphSpec(
        name="llm_batched",
        module=BatchedLlmGraph(model).eval(),
        inputs={
            "inputs_embeds": torch.randn(EXAMPLE_B, EXAMPLE_T, d["hidden"], generator=g) * 0.02,
            "position_ids": torch.arange(EXAMPLE_P, EXAMPLE_P + EXAMPLE_T, dtype=torch.int64)[None].repeat(
                EXAMPLE_B, 1
            ),
            "new_mask": mask,
            "last": torch.tensor([n - 1 for n in EXAMPLE_LENGTHS], dtype=torch.int64),
            "past_kv": torch.randn(d["layers"], 2, 1, d["kv_heads"], EXAMPLE_P, d["head_dim"], generator=g),
        },
        outputs=["seg_embedding", "logits"],
        dynamic={
            "inputs_embeds": {0: "B", 1: "T"},
            "position_ids": {0: "B", 1: "T"},
            "new_mask": {0: "B", 1: "T"},
            "last": {0: "B"},
            "past_kv": {4: "P"},
        },
        dim_min={"B": 1, "T": 1, "P": 0},
    )


# The row check's expressions: three window lengths, so that two of the rows are padded.
ROW_CHECK_EXPRESSIONS = ("the square", "the red circle moving left", "the small green triangle moving up and down")


def batched_row_parity(ref, llm_path, batched_path, fp32_llm_path=None) -> dict:
    """Each row of one "llm_batched" call against the "llm" graph's call for that window alone,
    on the model's own prompts (a shared prefix, the window of a fourth query step, random image
    tokens): how far batching moves an answer, at the graphs' own precision. In fp32 the rows
    are expected bit-identical; dynamic int8 quantizes activations per tensor, so a row's scale
    depends on the others' values and rows differ from their own calls slightly. With
    fp32_llm_path (an int8 build's fp32 "llm"), both int8 answers are also held against fp32's."""
    import numpy as np

    from runtime import rules
    from runtime.stages import pad_windows

    from .onnx_utils import cosine, ort_session, rel_error

    m, tok = ref.model, ref.tokenizer
    d = llm_dims(m)
    g = torch.Generator().manual_seed(11)
    images = torch.randn(rules.NUM_CONTEXT + rules.NUM_QUERY, 64, d["hidden"], generator=g) * 0.5
    prefix_ids = tok.encode_prompt(rules.prefix_text())
    past = [rules.ANSWER_SEG] * (rules.NUM_QUERY - 1)
    windows = []
    for e in ROW_CHECK_EXPRESSIONS:
        ids = tok.encode_prompt(rules.prompt_text(e, past))
        if ids[: len(prefix_ids)] != prefix_ids:
            raise ValueError("prompt does not start with the prefix tokens")
        windows.append(ids[len(prefix_ids) :])
    with torch.no_grad():
        prefix = m.embed_prompt(prefix_ids, images[: rules.NUM_CONTEXT]).numpy()
        embeds = [m.embed_prompt(w, images[rules.NUM_CONTEXT :]).numpy() for w in windows]
    p = prefix.shape[1]

    def one_window(path):  # the prefix's cache, then (seg, logits) of each window alone
        session = ort_session(path)
        empty = np.zeros((d["layers"], 2, 1, d["kv_heads"], 0, d["head_dim"]), np.float32)
        kv = session.run(None, {"inputs_embeds": prefix, "position_ids": np.arange(p)[None], "past_kv": empty})[2]
        answers = []
        for e in embeds:
            pos = np.arange(p, p + e.shape[1])[None]
            seg, logits, _ = session.run(None, {"inputs_embeds": e, "position_ids": pos, "past_kv": kv})
            answers.append((seg[0], logits[0]))
        return kv, answers

    kv, want = one_window(llm_path)
    names = ("inputs_embeds", "position_ids", "new_mask", "last")
    feeds = dict(zip(names, pad_windows(embeds, p)), past_kv=kv)
    seg, logits = ort_session(batched_path).run(None, feeds)
    out = {
        "window_tokens": [int(e.shape[1]) for e in embeds],
        "bit_identical": all(np.array_equal(seg[i], w[0]) for i, w in enumerate(want)),
        "seg_rel_error_max": max(rel_error(seg[i], w[0]) for i, w in enumerate(want)),
        "seg_cosine_min": min(cosine(seg[i], w[0]) for i, w in enumerate(want)),
        "next_token_agrees": all(int(np.argmax(logits[i])) == int(np.argmax(w[1])) for i, w in enumerate(want)),
    }
    if fp32_llm_path is not None:
        _, fp32 = one_window(fp32_llm_path)
        out["loop_seg_cosine_to_fp32_min"] = min(cosine(w[0], f[0]) for w, f in zip(want, fp32))
        out["seg_cosine_to_fp32_min"] = min(cosine(seg[i], f[0]) for i, f in enumerate(fp32))
    return out
