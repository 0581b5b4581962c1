"""Checks of what a caller hands the runtime: frames, expressions, key frames, options.

Each raises InputError with what is wrong, before any native call sees the input. Torch-free,
graph-free: the facts an expression check needs (the tokenizer, the LLM's positions) are passed in.
"""

from __future__ import annotations

import numpy as np

from . import preprocess, rules
from .errors import InputError

KV_POLICIES = ("exact", "incremental")


def check_frame(frame) -> np.ndarray:
    """An RGB uint8 H x W x 3 array (preprocess.check_frame), or InputError."""
    try:
        return preprocess.check_frame(frame)
    except (TypeError, ValueError) as e:
        raise InputError(f"bad frame: {e}") from None


def check_expression(expression, tokenizer, max_positions: int) -> str:
    """The normalised expression, if its longest prompt (Q-1 past answers) fits the LLM."""
    try:
        expr = rules.normalize_expression(expression)
        worst = rules.prompt_text(expr, [rules.ANSWER_NO_SEG] * (rules.NUM_QUERY - 1))
    except ValueError as e:
        raise InputError(f"bad expression {expression!r}: {e}") from None
    ids = tokenizer.encode_prompt(worst)
    n = len(ids) + ids.count(rules.IMAGE_TOKEN_INDEX) * (rules.TOKENS_PER_IMAGE - 1)
    if n > max_positions:
        raise InputError(
            f"expression too long: its full prompt takes {n} positions, the engine's LLM has {max_positions}"
        )
    return expr


def check_kv_policy(kv_policy: str, rope_type: str = "default") -> str:
    if kv_policy not in KV_POLICIES:
        raise InputError(f"kv_policy must be 'exact' or 'incremental', got {kv_policy!r}")
    if kv_policy == "incremental" and rope_type != "default":
        raise InputError("kv_policy='incremental' supports LLaMA's default RoPE only")
    return kv_policy


def check_llm_every(llm_every) -> int:
    """segment_video's and stream's llm_every: a positive int (1: GLUS, the LLM on every frame)."""
    if isinstance(llm_every, bool) or not isinstance(llm_every, (int, np.integer)) or llm_every < 1:
        raise InputError(f"llm_every must be a positive integer (1: every frame), got {llm_every!r}")
    return int(llm_every)


def check_key_frames(key_frames, n_expressions: int, n_frames: int):
    """segment_video's key_frames: None (every expression from frame 0, GLUS's default), "auto"
    (self-refined), one int for every expression, or one int-or-None per expression. Returns
    "auto" or a list of ints, one per expression."""
    if isinstance(key_frames, str):
        if key_frames != "auto":
            raise InputError(
                f"key_frames must be None, 'auto', a frame index or one per expression, got {key_frames!r}"
            )
        return "auto"
    if key_frames is None or isinstance(key_frames, (int, np.integer)):
        key_frames = [key_frames] * n_expressions
    key_frames = list(key_frames)
    if len(key_frames) != n_expressions:
        raise InputError(f"{len(key_frames)} key frames for {n_expressions} expressions")
    for k in key_frames:
        if k is not None and not (isinstance(k, (int, np.integer)) and not isinstance(k, bool) and 0 <= k < n_frames):
            raise InputError(f"key frame {k!r} is outside the video (0..{n_frames - 1})")
    return [int(k or 0) for k in key_frames]
