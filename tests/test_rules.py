"""GLUS's frame/memory/prompt rules against hand-computed values (runtime/rules.py)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from runtime import rules

REPO = Path(__file__).resolve().parents[1]


# --------------------------------------------------------------------------------------------
# Context frames
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "n, expected",
    [
        # N=1: linspace(0,1,5)=[0,.25,.5,.75,1] -> [0,0,0,0,1]; 1 clip, k=0:
        #   min(0,-1)=-1, min(0,-1)=-1, min(0,-1)=-1, min(0,0)=0 -> [-1,-1,-1,0] -> -1 = last = 0
        (1, [0, 0, 0, 0]),
        # N=2: [0,.5,1,1.5,2] -> [0,0,1,1,2]; k=0: min(0,-1)=-1, min(0,0)=0, min(1,0)=0,
        #   min(1,1)=1 -> [-1,0,0,1] -> [1,0,0,1]
        (2, [1, 0, 0, 1]),
        # N=3: [0,.75,1.5,2.25,3] -> [0,0,1,2,3]; k=0: min(0,-1)=-1, min(0,0)=0, min(1,1)=1,
        #   min(2,2)=2 -> [-1,0,1,2] -> [2,0,1,2]
        (3, [2, 0, 1, 2]),
        # N=4: [0,1,2,3,4]; k=0: [0,1,2,3]
        (4, [0, 1, 2, 3]),
        # N=5: [0,1.25,2.5,3.75,5] -> [0,1,2,3,5]; ceil(5/4)=2, k=1: min(1,0)=0, min(2,1)=1,
        #   min(3,2)=2, min(4,4)=4
        (5, [0, 1, 2, 4]),
        # N=6: [0,1.5,3,4.5,6] -> [0,1,3,4,6]; ceil=2, k=1: min(1,0)=0, min(2,2)=2,
        #   min(4,3)=3, min(5,5)=5
        (6, [0, 2, 3, 5]),
        # N=10 (GLUS_INFERENCE.md): [0,2,5,7,10]; ceil=3, k=1: 1, 3, 6, 8
        (10, [1, 3, 6, 8]),
        # N=17: [0,4.25,8.5,12.75,17] -> [0,4,8,12,17]; ceil=5, k=2: min(2,3)=2, min(6,7)=6,
        #   min(10,11)=10, min(14,16)=14
        (17, [2, 6, 10, 14]),
        # N=100: [0,25,50,75,100]; ceil=25, k=12: 12, 37, 62, 87
        (100, [12, 37, 62, 87]),
    ],
)
def test_context_frames_by_hand(n, expected):
    assert rules.context_frame_indices(n) == expected


def _glus_context_with_numpy(n: int, c: int) -> list[int]:
    """GLUS's loop, with numpy's linspace, and Python list indexing for the -1s."""
    idx = np.linspace(0, n, c + 1, dtype=int)
    clips = []
    for k in range(-(-n // c)):
        clips.append([min(int(idx[j]) + k, int(idx[j + 1]) - 1) for j in range(c)])
    frames = list(range(n))
    return [frames[i] for i in clips[len(clips) // 2]]


@pytest.mark.parametrize("c", [1, 2, 3, 4, 5, 7])
def test_context_frames_match_numpy_linspace(c):
    for n in range(1, 400):
        assert rules.context_frame_indices(n, c) == _glus_context_with_numpy(n, c), (n, c)


@pytest.mark.parametrize("bad", [0, -3, 2.0, "4", None, True])
def test_context_frames_bad_count(bad):
    with pytest.raises(ValueError, match="num_frames"):
        rules.context_frame_indices(bad)


# --------------------------------------------------------------------------------------------
# Query window
# --------------------------------------------------------------------------------------------
def test_window_positions():
    assert rules.window_positions(1) == [0]
    assert rules.window_positions(2) == [0, 1]
    assert rules.window_positions(4) == [0, 1, 2, 3]
    assert rules.window_positions(5) == [1, 2, 3, 4]
    assert rules.window_positions(9) == [5, 6, 7, 8]
    assert rules.window_positions(3, num_query=2) == [1, 2]
    with pytest.raises(ValueError, match="step"):
        rules.window_positions(0)


# --------------------------------------------------------------------------------------------
# Memory bank
# --------------------------------------------------------------------------------------------
# r = 3, M = 7: t_rel=1 -> t-1; t_rel=2..7 -> b - (t_rel-2)*3 with b = ((t-2)//3)*3, listed
# t_rel = 7 .. 1 (oldest multiple first, previous frame last), negatives dropped.
MEMORY_TABLE = {
    0: [],  # b = (-2//3)*3 = -3, t-1 = -1
    1: [0],  # b = -3
    2: [0, 1],  # b = 0
    3: [0, 2],  # b = 0
    4: [0, 3],  # b = 0 (3 only as the previous frame)
    5: [0, 3, 4],  # b = 3
    6: [0, 3, 5],
    7: [0, 3, 6],
    8: [0, 3, 6, 7],  # b = 6
    9: [0, 3, 6, 8],
    10: [0, 3, 6, 9],
    11: [0, 3, 6, 9, 10],  # b = 9
    12: [0, 3, 6, 9, 11],
    13: [0, 3, 6, 9, 12],
    14: [0, 3, 6, 9, 12, 13],  # b = 12
    15: [0, 3, 6, 9, 12, 14],
    16: [0, 3, 6, 9, 12, 15],
    17: [0, 3, 6, 9, 12, 15, 16],  # b = 15: all seven slots
    18: [0, 3, 6, 9, 12, 15, 17],
    19: [0, 3, 6, 9, 12, 15, 18],
    20: [3, 6, 9, 12, 15, 18, 19],  # b = 18, b - 15 = 3: frame 0 drops out
}


@pytest.mark.parametrize("t", sorted(MEMORY_TABLE))
def test_memory_frames_table(t):
    assert rules.memory_frame_indices(t) == MEMORY_TABLE[t]


def test_memory_frames_other_strides():
    # r = 1: previous 7 frames, oldest first: t=10 -> b=8 -> 3,4,5,6,7,8 then 9
    assert rules.memory_frame_indices(10, mem_stride=1) == [3, 4, 5, 6, 7, 8, 9]
    # M = 1: only the previous frame
    assert rules.memory_frame_indices(10, num_maskmem=1) == [9]
    # r = 5, t = 23: b = (21//5)*5 = 20 -> 20-25 <0 ... -> 0,5,10,15,20 then 22
    assert rules.memory_frame_indices(23, mem_stride=5) == [0, 5, 10, 15, 20, 22]


def test_memory_frames_no_duplicates_and_bounded():
    for r in (1, 2, 3, 4, 7):
        for t in range(200):
            m = rules.memory_frame_indices(t, mem_stride=r)
            assert len(m) == len(set(m)) <= rules.NUM_MASKMEM
            assert all(0 <= k < t for k in m)


@pytest.mark.parametrize("kw", [{"t": -1}, {"t": 3, "mem_stride": 0}, {"t": 3, "num_maskmem": 0}])
def test_memory_frames_bad_args(kw):
    with pytest.raises(ValueError):
        rules.memory_frame_indices(**kw)


def test_reachable_memory_frames_is_what_the_future_reads():
    for r in (1, 2, 3, 5):
        for t in range(120):
            future = set()
            for later in range(t, t + 10 * r + 10):
                future |= {k for k in rules.memory_frame_indices(later, mem_stride=r) if k < t}
            assert rules.reachable_memory_frames(t, mem_stride=r) == sorted(future), (r, t)
    # After storing frame 19, frame 20 onwards can still read 3..15 (multiples), 18, 19.
    assert rules.reachable_memory_frames(20) == [3, 6, 9, 12, 15, 18, 19]


# --------------------------------------------------------------------------------------------
# Expressions
# --------------------------------------------------------------------------------------------
def test_normalize_expression():
    assert rules.normalize_expression("The red car.") == "the red car"
    assert rules.normalize_expression("the the red car") == "the the red car"
    assert rules.normalize_expression("A Dog..") == "a dog."  # only one '.' removed
    assert rules.normalize_expression(" CAT ") == " cat "  # GLUS keeps whitespace
    assert rules.normalize_expression("Ça VA.") == "ça va"
    assert rules.normalize_expression("car. ") == "car. "  # '.' not last: kept


@pytest.mark.parametrize("bad", ["", "   ", "\n\t", ".", " .", None, 3, b"car", "the <image> car", "a [SEG] car"])
def test_normalize_expression_rejects(bad):
    with pytest.raises(ValueError):
        rules.normalize_expression(bad)


# --------------------------------------------------------------------------------------------
# Prompt text
# --------------------------------------------------------------------------------------------
SYS = (
    "A chat between a curious human and an artificial intelligence assistant. The assistant "
    "gives helpful, detailed, and polite answers to the human's questions. "
)
CTX = (
    "<im_start><image><im_end><im_start><image><im_end><im_start><image><im_end>"
    "<im_start><image><im_end>\nPlease finished the following tasks on the context frames above.\n"
)
Q = "<im_start><image><im_end>\nCan you segment the the red circle moving left in this frame?"
EXPR = "the red circle moving left"
S, N = "Sure, the segmentation result is [SEG].", "Sure, the segmentation result is [SEG] ."

STEP1 = SYS + "USER: " + CTX + Q + " ASSISTANT: Sure, the segmentation result is "
STEP2_SEG = (
    SYS + "USER: " + CTX + Q + " ASSISTANT: Sure, the segmentation result is [SEG].</s>"
    "USER: " + Q + " ASSISTANT: Sure, the segmentation result is "
)
STEP2_NOSEG = (
    SYS + "USER: " + CTX + Q + " ASSISTANT: Sure, the segmentation result is [SEG] .</s>"
    "USER: " + Q + " ASSISTANT: Sure, the segmentation result is "
)
# full window; answers of frames 0,1,2 = SEG, NO_SEG, SEG
STEP4 = (
    SYS + "USER: " + CTX + Q + " ASSISTANT: Sure, the segmentation result is [SEG].</s>"
    "USER: " + Q + " ASSISTANT: Sure, the segmentation result is [SEG] .</s>"
    "USER: " + Q + " ASSISTANT: Sure, the segmentation result is [SEG].</s>"
    "USER: " + Q + " ASSISTANT: Sure, the segmentation result is "
)
# sliding; window frames 1..4, answers of frames 1,2,3 = NO_SEG, SEG, SEG; context moves to
# the window's first round
STEP5 = (
    SYS + "USER: " + CTX + Q + " ASSISTANT: Sure, the segmentation result is [SEG] .</s>"
    "USER: " + Q + " ASSISTANT: Sure, the segmentation result is [SEG].</s>"
    "USER: " + Q + " ASSISTANT: Sure, the segmentation result is [SEG].</s>"
    "USER: " + Q + " ASSISTANT: Sure, the segmentation result is "
)
# window frames 5..8, answers of frames 5,6,7 = SEG, SEG, NO_SEG
STEP9 = (
    SYS + "USER: " + CTX + Q + " ASSISTANT: Sure, the segmentation result is [SEG].</s>"
    "USER: " + Q + " ASSISTANT: Sure, the segmentation result is [SEG].</s>"
    "USER: " + Q + " ASSISTANT: Sure, the segmentation result is [SEG] .</s>"
    "USER: " + Q + " ASSISTANT: Sure, the segmentation result is "
)
# answers GLUS wrote per query frame 0..8
HISTORY = [S, N, S, S, N, S, S, N, S]


def past_for_step(step: int) -> list[str]:
    window = rules.window_positions(step)
    return [HISTORY[p] for p in window[:-1]]


def test_constants():
    assert rules.SYSTEM + " " == SYS
    assert rules.ANSWER_SEG == S and rules.ANSWER_NO_SEG == N
    assert rules.ANSWER_PREFIX == "Sure, the segmentation result is "
    assert (rules.NUM_CONTEXT, rules.NUM_QUERY, rules.MEM_STRIDE, rules.NUM_MASKMEM) == (4, 4, 3, 7)
    assert (rules.IMAGE_TOKEN_INDEX, rules.TOKENS_PER_IMAGE) == (-200, 64)


@pytest.mark.parametrize(
    "step, expected",
    [(1, STEP1), (4, STEP4), (5, STEP5), (9, STEP9)],
)
def test_prompt_text_literal(step, expected):
    assert rules.prompt_text(EXPR, past_for_step(step)) == expected


def test_prompt_text_step2_both_answers():
    assert rules.prompt_text(EXPR, [S]) == STEP2_SEG
    assert rules.prompt_text(EXPR, [N]) == STEP2_NOSEG


def test_prompt_text_rejects():
    with pytest.raises(ValueError, match="past_answers"):
        rules.prompt_text(EXPR, [S, S, S, S])
    with pytest.raises(ValueError, match="past answer"):
        rules.prompt_text(EXPR, ["Sure."])
    with pytest.raises(ValueError, match="past_answers"):
        rules.prompt_text(EXPR, S)
    with pytest.raises(ValueError, match="expression"):
        rules.prompt_text("", [])
    with pytest.raises(ValueError, match="expression"):
        rules.prompt_text("a [SEG]", [])


def test_prefix_split_text():
    prefix = SYS + "USER: " + CTX[:-1]  # up to "above.", the newline stays with the rest
    for step in range(1, 10):
        p = rules.prompt_text(EXPR, past_for_step(step))
        head, rest = rules.split_prefix(p)
        assert head == prefix == rules.prefix_text()
        assert head + rest == p
        assert rest.startswith("\n<im_start><image><im_end>\nCan you segment")
    with pytest.raises(ValueError, match="prefix"):
        rules.split_prefix("USER: hello")


# --------------------------------------------------------------------------------------------
# Tokenisation helpers (with a toy encoder; the real tokenizers are in test_tokenizer.py)
# --------------------------------------------------------------------------------------------
def test_split_added_tokens():
    got = rules.split_added_tokens("is [SEG].</s>USER: <im_start>")
    assert got == [("is", False), ("[SEG]", True), (".", False), ("</s>", True), ("USER:", False), ("<im_start>", True)]
    got = rules.split_added_tokens("<im_end>\n Can <im_end> \n <im_start>  x </s> y")
    # "\n Can " loses both ends (tokens on both sides), " \n " vanishes, "  x " only loses
    # its left side (</s> strips nothing), " y" keeps its space.
    assert got == [
        ("<im_end>", True),
        ("Can", False),
        ("<im_end>", True),
        ("<im_start>", True),
        ("x ", False),
        ("</s>", True),
        (" y", False),
    ]
    assert rules.split_added_tokens("") == []
    assert rules.split_added_tokens("plain  text ") == [("plain  text ", False)]


def test_tokenize_with_images_toy_encoder():
    enc = lambda s: [len(s)]  # noqa: E731 -- one id per chunk: its length
    assert rules.tokenize_with_images("ab<image>cde<image>", enc, 1) == [1, 2, -200, 3, -200, 0]
    assert rules.tokenize_with_images("x", enc, None) == [1]


def test_expand_image_positions():
    # images at 1, 3, 4; each expands to 64 -> shift 63 per earlier image
    ids = [1, -200, 5, -200, -200, 7]
    assert rules.expand_image_positions(ids) == [(1, 65), (66, 130), (130, 194)]
    assert rules.expand_image_positions([1, 2]) == []
    assert rules.expand_image_positions([-200], tokens_per_image=2) == [(0, 2)]


def test_metaspace_input():
    assert rules.metaspace_input("x y") == "x y"
    assert rules.metaspace_input(" x") == "  x"
    assert rules.metaspace_input("\u2581x") == " \u2581x"


# --------------------------------------------------------------------------------------------
# No torch in the runtime path
# --------------------------------------------------------------------------------------------
def test_rules_and_runtime_tokenizer_do_not_import_torch():
    code = (
        "import sys; import runtime.rules, runtime.tokenizer; "
        "bad = [m for m in ('torch', 'transformers', 'sentencepiece') if m in sys.modules]; "
        "print(bad); sys.exit(1 if bad else 0)"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, check=False, text=True)
    assert out.returncode == 0, out.stdout + out.stderr
