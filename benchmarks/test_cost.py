"""FLOPs per frame and per stage, for the tiny, the medium and the GLUS-7B shape.

The medium model exists to show the engine's gains as they would be at 7B: its reference-loop
FLOPs must split like GLUS-7B's (about 70% LLM, 10% the 8 CLIP encodes, 20% SAM2). The
GLUS-7B figures are counted from its shapes (hiera-L on the meta device), never run here.
Achieved GFLOP/s and the share of the measured peak are computed at the end of the session,
from these counts and the stage benchmarks' latencies (benchmarks/cost.py).
"""

from __future__ import annotations

import pytest

from . import flops

GLUS_SPLIT = {"llm": 0.70, "clip": 0.10, "sam2": 0.20}
SPLIT_TOLERANCE = 0.05  # absolute, per part: "about" 70/10/20


@pytest.mark.parametrize("shape", ["tiny", "medium", "glus-7b"])
def test_flop_split(shape, bench_models, results):
    tokenizer = bench_models["tiny"].tokenizer  # the project's tokenizer: same prompt lengths for all
    if shape in bench_models:
        f = bench_models[shape].flops
    else:
        from .models import cache_root

        f = flops.shape_flops(shape, tokenizer, cache_root())
    summary = f.summary()
    results.put("flops", shape, summary)
    if shape == "tiny":
        return  # the test model: SAM2-heavy, no split to hold
    for part, want in GLUS_SPLIT.items():
        got = summary["reference_split"][part]
        assert abs(got - want) <= SPLIT_TOLERANCE, flops.format_split(shape, summary)


def test_counted_flops_match_a_flop_counter(bench_models):
    """The shape formulas for the LLM and CLIP equal torch's FLOP counter on the tiny model
    (eager attention, so that the counter sees the attention matmuls)."""
    import torch
    from transformers import CLIPVisionConfig, CLIPVisionModel, LlamaModel

    from reference.config import read_config

    glus_dir, clip_dir = bench_models["tiny"].dirs
    cfg = read_config(glus_dir)
    lc = cfg.llama_config()
    lc._attn_implementation = "eager"
    cc = CLIPVisionConfig.from_pretrained(str(clip_dir))
    cc._attn_implementation = "eager"
    llm, clip = LlamaModel(lc).eval(), CLIPVisionModel(cc).eval()
    t = flops.step_tokens(bench_models["tiny"].tokenizer, 5)["full"]
    with torch.no_grad():
        got_llm = flops.counted(lambda: llm(inputs_embeds=torch.zeros(1, t, cfg.hidden_size), use_cache=False))
        got_clip = flops.counted(lambda: clip(torch.zeros(1, 3, 224, 224)))
    last = 2.0 * cfg.vocab_size * cfg.hidden_size + 2.0 * (cfg.hidden_size**2 + cfg.hidden_size * cfg.out_dim)
    assert flops.llm_flops(cfg.raw, t, t, cfg.out_dim) - last == pytest.approx(got_llm, rel=1e-6)
    sizes = dict(
        hidden_size=cc.hidden_size, intermediate_size=cc.intermediate_size, num_hidden_layers=cc.num_hidden_layers
    )
    projector = 2.0 * cc.hidden_size * cfg.hidden_size * 64
    assert flops.clip_flops(sizes, cfg.hidden_size, 1) - projector == pytest.approx(got_clip, rel=1e-6)


def test_machine_peak(peak):
    """The matmul probe ran (its figure is the denominator of every share of peak)."""
    assert peak["gflops_best"] > 0
