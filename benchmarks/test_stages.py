"""Per-stage latency of the engine (ONNX Runtime, CPU), with pytest-benchmark.

Each stage is timed on its own with realistic inputs: one frame for CLIP and SAM2, the
steady-state prompt (full window of 4 rounds) for the LLM. The LLM and SAM2 image-encoder stages
run on the fp32 and the int8 engine (an int8 build quantizes both); the other graphs are the
same fp32 graphs in both engines. Rounds are set so each
benchmark takes about Settings.stage_budget_s.
"""

from __future__ import annotations

import time

import numpy as np
import pytest

from runtime import rules

from .harness import EXPRESSION, MODELS

LLM_STAGES = ("llm_prefix", "llm_window_exact", "llm_window_incremental")
STAGES = [("vision", "fp32")]
STAGES += [(s, p) for s in LLM_STAGES for p in ("fp32", "int8")]
STAGES += [("sam_image", p) for p in ("fp32", "int8")]
STAGES += [(f"memory_attention_m{m}", "fp32") for m in range(rules.NUM_MASKMEM + 1)]
STAGES += [("mask_decoder", "fp32"), ("memory_encoder", "fp32")]


class StageInputs:
    """Inputs of every stage for one engine, computed once by running the stages before."""

    def __init__(self, engine, frame_size):  # engine: runtime.stages.Stages
        from .harness import synth_video

        frames, _, _ = synth_video(rules.NUM_CONTEXT + rules.NUM_QUERY, frame_size)
        e = engine
        self.frame = frames[-1]
        self.expr = e.check_expression(EXPRESSION)
        self.context = e.clip_tokens(frames[: rules.NUM_CONTEXT])
        self.window = list(e.clip_tokens(frames[rules.NUM_CONTEXT :]))
        self.prefix = e.prefix(self.context)
        self.past = [rules.ANSWER_SEG] * (rules.NUM_QUERY - 1)
        self.feats = e.sam_features(self.frame)
        seg, _ = e.llm_step(self.prefix, self.expr, self.past, self.window)
        self.seg = seg[None].astype(np.float32)
        self.cond = e.condition(self.feats, None)
        self.low = e.decode(self.cond, self.feats, self.seg)[0]
        mem = e.encode_memory(self.cond, self.low)  # a real memory, repeated
        self.memories = {m: np.repeat(mem, m, 0) for m in range(1, rules.NUM_MASKMEM + 1)}


def stage_call(engine, x: StageInputs, stage: str):
    """A no-argument callable running `stage` once (engine: runtime.stages.Stages)."""
    from runtime.tracking import Track, incremental_llm_step

    g = engine.graphs
    if stage == "vision":
        return lambda: engine.clip_tokens([x.frame])
    if stage == "llm_prefix":
        return lambda: engine.prefix(x.context)
    if stage == "llm_window_exact":
        return lambda: engine.llm_step(x.prefix, x.expr, x.past, x.window)
    if stage == "llm_window_incremental":
        # One track called again and again: after its first call every call slides the window
        # (drops the oldest round, computes the newest): the steady state.
        track = Track(x.expr, None)
        return lambda: incremental_llm_step(engine, track, x.prefix, x.past, x.window)
    if stage == "sam_image":
        return lambda: engine.sam_features(x.frame)
    if stage.startswith("memory_attention_m"):
        m = int(stage.removeprefix("memory_attention_m"))
        if m == 0:
            return lambda: engine.condition(x.feats, None)
        return lambda: g["memory_attention"].run(x.feats[2], x.memories[m])
    if stage == "mask_decoder":
        return lambda: g["mask_decoder"].run(x.cond, x.feats[0], x.feats[1], x.seg)
    if stage == "memory_encoder":
        return lambda: g["memory_encoder"].run(x.cond, x.low)
    raise ValueError(stage)


_inputs: dict = {}


def inputs_for(mb, precision: str, frame_size) -> StageInputs:
    key = (mb.name, precision)
    if key not in _inputs:
        _inputs[key] = StageInputs(mb.stages(precision), frame_size)
    return _inputs[key]


@pytest.mark.parametrize("model", MODELS)
@pytest.mark.parametrize("stage,precision", STAGES, ids=[f"{s}-{p}" for s, p in STAGES])
def test_stage_latency(benchmark, model, stage, precision, bench_models, settings, results):
    mb = bench_models[model]
    fn = stage_call(mb.stages(precision), inputs_for(mb, precision, settings.frame_size), stage)
    t = time.perf_counter()
    out = fn()  # warm-up, and one call's time sets the rounds
    one = time.perf_counter() - t
    assert out is not None
    rounds = int(min(200, max(3, settings.stage_budget_s / max(one, 1e-6))))
    benchmark.group = f"{model} {stage}"
    benchmark.extra_info.update(model=model, stage=stage, precision=precision)
    benchmark.pedantic(fn, rounds=rounds, iterations=1, warmup_rounds=0)
    stats = getattr(benchmark, "stats", None)
    if stats is None:  # --benchmark-disable: nothing timed
        return
    s = stats.stats
    section = results.entry("stages", model)
    section.setdefault("stages", {})[f"{stage}|{precision}"] = {
        "stage": stage,
        "precision": precision,
        "flop_key": stage,
        "rounds": int(s.rounds),
        "median_ms": 1000 * s.median,
        "mean_ms": 1000 * s.mean,
        "stddev_ms": 1000 * s.stddev,
        "min_ms": 1000 * s.min,
    }
