"""GLUS's prompt, frame and memory rules as plain Python.

Shared by the PyTorch reference and the torch-free runtime, so this module imports nothing
beyond the standard library. Every rule restates what GLUS's published inference code
(``inference_iter.py``, ``model/GLUS.py``, ``model/llava``; transformers 4.31) does, stated at
the constant or function that restates it. Where GLUS would crash on a bad input we raise ValueError.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Sequence

# ---------------------------------------------------------------------------------------------
# Constants
# ---------------------------------------------------------------------------------------------
NUM_CONTEXT = 4  # context frames per prompt (GLUS --context_frame_num)
NUM_QUERY = 4  # query frames (rounds) per prompt window (GLUS --question_frame_num)
MEM_STRIDE = 3  # memory stride r (GLUS --mem_stride, inference default)
NUM_MASKMEM = 7  # SAM2 memory slots read per frame (GLUS num_maskmem)
IMAGE_TOKEN_INDEX = -200  # LLaVA placeholder id, replaced by one frame's projected CLIP tokens
TOKENS_PER_IMAGE = 64  # 256 CLIP patch tokens average-pooled by 4

SEG_TOKEN = "[SEG]"
IM_START = "<im_start>"
IM_END = "<im_end>"
IMAGE_PLACEHOLDER = "<image>"
BOS_TOKEN = "<s>"
EOS_TOKEN = "</s>"
UNK_TOKEN = "<unk>"

# llava_v1 conversation template (model/llava/conversation.py, conv_llava_v1: SeparatorStyle.TWO,
# sep=" ", sep2="</s>", roles USER/ASSISTANT).
SYSTEM = (
    "A chat between a curious human and an artificial intelligence assistant. "
    "The assistant gives helpful, detailed, and polite answers to the human's questions."
)
USER_ROLE = "USER"
ASSISTANT_ROLE = "ASSISTANT"
SEP = " "
SEP2 = EOS_TOKEN

ANSWER_PREFIX = "Sure, the segmentation result is "
# What GLUS writes back to history: the decoded answer after the last "ASSISTANT: " + "."
ANSWER_SEG = "Sure, the segmentation result is [SEG]."
# What GLUS writes when the generated token is not [SEG] (answer prefix + "[SEG] .").
ANSWER_NO_SEG = "Sure, the segmentation result is [SEG] ."

# Every <image> is written <im_start><image><im_end> (GLUS --use_mm_start_end is always on).
IMAGE_TEXT = IM_START + IMAGE_PLACEHOLDER + IM_END
CONTEXT_SENTENCE = "Please finished the following tasks on the context frames above."
QUESTION_TEMPLATE = "Can you segment the {expr} in this frame?"

# Added tokens whose neighbouring whitespace the slow tokenizer strips (plain-str added
# tokens in transformers 4.31 are stripped on both sides).
STRIPPED_ADDED_TOKENS = (SEG_TOKEN, IM_START, IM_END)
# Special tokens also split out of the text but, being AddedToken(lstrip=False, rstrip=False)
# in LLaMA's tokenizer_config.json, not stripped.
UNSTRIPPED_SPECIAL_TOKENS = (UNK_TOKEN, BOS_TOKEN, EOS_TOKEN)


# ---------------------------------------------------------------------------------------------
# Expressions
# ---------------------------------------------------------------------------------------------
def _check_expression_tokens(expr: str) -> None:
    # "<image>" adds an image placeholder (image count no longer matches the frames); "[SEG]"
    # adds [SEG] tokens, so GLUS's [SEG] count never matches the window and every frame
    # falls into its empty-mask path.
    for bad in (IMAGE_PLACEHOLDER, SEG_TOKEN):
        if bad in expr:
            raise ValueError(f"expression must not contain {bad!r}: {expr!r}")


def normalize_expression(expr: str) -> str:
    """GLUS's expression clean-up: drop ONE trailing '.', then lowercase.

    Whitespace is deliberately not stripped (GLUS does not), and a leading "the" is kept
    ("the the red car" is what the model saw). GLUS crashes (IndexError) on an empty
    expression; we raise ValueError for empty or whitespace-only ones (also once the '.' is
    removed: "." or " ."), and for an expression holding "<image>" (an extra image
    placeholder) or "[SEG]" (GLUS's [SEG] count breaks: every mask would come out empty).
    """
    if not isinstance(expr, str):
        raise ValueError(f"expression must be a str, got {type(expr).__name__}")
    if not expr.strip():
        raise ValueError(f"expression is empty or whitespace-only: {expr!r}")
    _check_expression_tokens(expr)
    if expr.endswith("."):
        expr = expr[:-1]
    if not expr.strip():  # "." or " ." would leave "segment the  in this frame?"
        raise ValueError(f"expression is empty once its trailing '.' is removed: {expr + '.'!r}")
    return expr.lower()


# ---------------------------------------------------------------------------------------------
# Frames
# ---------------------------------------------------------------------------------------------
def _linspace_int(stop: int, num: int) -> list[int]:
    """numpy.linspace(0, stop, num, dtype=int), bit for bit: k * (stop / (num - 1)) in
    float64, last value set to stop, then truncated (values are >= 0, so numpy 1.x's cast
    and numpy 2.x's floor agree)."""
    if num == 1:
        return [0]
    step = stop / (num - 1)
    values = [float(k) * step for k in range(num)]
    values[-1] = float(stop)
    return [int(v) for v in values]


def context_frame_indices(num_frames: int, num_context: int = NUM_CONTEXT) -> list[int]:
    """The context frames (0-based video indices) GLUS shows before the query frames.

    idx = linspace(0, N, C+1, dtype=int); clip k (k = 0 .. ceil(N/C)-1) holds frame
    min(idx[j] + k, idx[j+1] - 1) for j = 0..C-1; GLUS uses the middle clip ceil(N/C) // 2.
    For N < C some values are -1; GLUS indexes a Python list of frame paths with them, so -1
    is the LAST frame. We return them resolved that way (i % N), so every index is in [0, N).
    """
    if isinstance(num_frames, bool) or not isinstance(num_frames, int) or num_frames < 1:
        raise ValueError(f"num_frames must be an int >= 1, got {num_frames!r}")
    if isinstance(num_context, bool) or not isinstance(num_context, int) or num_context < 1:
        raise ValueError(f"num_context must be an int >= 1, got {num_context!r}")
    idx = _linspace_int(num_frames, num_context + 1)
    middle = math.ceil(num_frames / num_context) // 2
    clip = [min(idx[j] + middle, idx[j + 1] - 1) for j in range(num_context)]
    return [i % num_frames for i in clip]


def window_positions(step: int, num_query: int = NUM_QUERY) -> list[int]:
    """0-based query-frame positions in the prompt window of query step ``step`` (1-based).

    The window holds the last min(step, Q) rounds; the current frame (step - 1) is last.
    """
    if isinstance(step, bool) or not isinstance(step, int) or step < 1:
        raise ValueError(f"step must be an int >= 1 (1-based), got {step!r}")
    if isinstance(num_query, bool) or not isinstance(num_query, int) or num_query < 1:
        raise ValueError(f"num_query must be an int >= 1, got {num_query!r}")
    return list(range(max(0, step - num_query), step))


def _check_memory_args(t: int, mem_stride: int, num_maskmem: int) -> None:
    if isinstance(t, bool) or not isinstance(t, int) or t < 0:
        raise ValueError(f"query frame t must be an int >= 0, got {t!r}")
    if isinstance(mem_stride, bool) or not isinstance(mem_stride, int) or mem_stride < 1:
        raise ValueError(f"mem_stride must be an int >= 1, got {mem_stride!r}")
    if isinstance(num_maskmem, bool) or not isinstance(num_maskmem, int) or num_maskmem < 1:
        raise ValueError(f"num_maskmem must be an int >= 1, got {num_maskmem!r}")


def memory_frame_indices(t: int, mem_stride: int = MEM_STRIDE, num_maskmem: int = NUM_MASKMEM) -> list[int]:
    """Memory-bank keys query frame ``t`` (0-based) reads, in GLUS's order t_rel = M .. 1.

    t_rel 1 is the previous frame t-1; t_rel >= 2 is ((t-2)//r)*r - (t_rel-2)*r, i.e. the
    last multiple of r at or below t-2 and the M-2 multiples of r before it. Negative keys are
    skipped, so t = 0 reads nothing. No duplicates can occur: the multiples are <= t-2 < t-1.
    Whether a key is actually in the bank (GLUS skips missing ones) is the caller's job.
    """
    _check_memory_args(t, mem_stride, num_maskmem)
    r = mem_stride
    out = []
    for t_rel in range(num_maskmem, 0, -1):
        if t_rel == 1:
            frame = t - 1
        else:
            frame = ((t - 2) // r) * r - (t_rel - 2) * r  # floor division, as in Python/GLUS
        if frame >= 0:
            out.append(frame)
    return out


def reachable_memory_frames(next_t: int, mem_stride: int = MEM_STRIDE, num_maskmem: int = NUM_MASKMEM) -> list[int]:
    """Stored keys (< next_t) that frame ``next_t`` or any later frame can still read, sorted.

    Use it to evict: after storing frame t, keep only reachable_memory_frames(t + 1).
    It equals set(memory_frame_indices(next_t)): later frames read t'-1 >= next_t - 1 or
    multiples of r at or above the oldest multiple next_t reads, and the only multiple of r
    between the newest one next_t reads and next_t - 1 is next_t - 1 itself, which it reads
    as its previous frame. So at most num_maskmem keys are ever alive (the previous frame and
    the last M-1 multiples of r).
    """
    return sorted(set(memory_frame_indices(next_t, mem_stride, num_maskmem)))


# ---------------------------------------------------------------------------------------------
# Prompt text
# ---------------------------------------------------------------------------------------------
def _context_text() -> str:
    return IMAGE_PLACEHOLDER * NUM_CONTEXT + "\n" + CONTEXT_SENTENCE + "\n"


def _question_text(expr: str) -> str:
    return IMAGE_PLACEHOLDER + "\n" + QUESTION_TEMPLATE.format(expr=expr)


def _with_image_tags(text: str) -> str:
    return text.replace(IMAGE_PLACEHOLDER, IMAGE_TEXT)


def prompt_text(expression: str, past_answers: Sequence[str]) -> str:
    """The full prompt of a step whose window holds len(past_answers) + 1 rounds.

    ``expression`` must already be normalized (normalize_expression). ``past_answers`` are the
    answers of the window's earlier rounds, oldest first; GLUS only ever writes ANSWER_SEG or
    ANSWER_NO_SEG, anything else raises ValueError. Layout (llava_v1):
      SYSTEM + " " + per round "USER: " + user + " " + "ASSISTANT: " + answer + "</s>"
    where the first round's user text is CONTEXT + QUESTION and later ones QUESTION, every
    <image> written <im_start><image><im_end>. The current round's answer is ANSWER_PREFIX and
    GLUS cuts the prompt at its last "</s>", so the text ends "... result is " (space kept).
    """
    if not isinstance(expression, str) or not expression.strip():
        raise ValueError(f"expression must be a non-empty str, got {expression!r}")
    _check_expression_tokens(expression)
    if isinstance(past_answers, str):
        raise ValueError("past_answers must be a sequence of answers, not one str")
    past = list(past_answers)
    if len(past) > NUM_QUERY - 1:
        raise ValueError(f"past_answers holds {len(past)} answers, at most NUM_QUERY - 1 = {NUM_QUERY - 1}")
    for a in past:
        if a not in (ANSWER_SEG, ANSWER_NO_SEG):
            raise ValueError(f"past answer must be ANSWER_SEG or ANSWER_NO_SEG, got {a!r}")

    question = _question_text(expression)
    answers = past + [ANSWER_PREFIX]  # the current round is last
    text = SYSTEM + SEP
    for k, answer in enumerate(answers):
        # GLUS rewrites the window's first user message to CONTEXT + QUESTION when it slides.
        user = _context_text() + question if k == 0 else question
        text += USER_ROLE + ": " + _with_image_tags(user) + SEP
        text += ASSISTANT_ROLE + ": " + answer + SEP2
    # GLUS: "</s>".join(prompt.split("</s>")[:-1]) -- removes the final "</s>" only.
    return text[: -len(SEP2)]


def prefix_text() -> str:
    """The prompt text every step and expression shares: BOS-less system text, "USER: ", the
    NUM_CONTEXT context images and the CONTEXT sentence, up to and including its final "."
    (the newline after it is dropped by the tokenizer, being next to <im_start>)."""
    return SYSTEM + SEP + USER_ROLE + ": " + _with_image_tags(IMAGE_PLACEHOLDER * NUM_CONTEXT) + "\n" + CONTEXT_SENTENCE


def split_prefix(prompt: str) -> tuple[str, str]:
    r"""Split a prompt into (prefix_text(), rest) with prefix + rest == prompt.

    The cut falls before the "\n<im_start>" of the first query frame, i.e. between two pieces
    the tokenizer encodes separately anyway: in the chunk
    "<im_end>\nPlease finished ... above.\n<im_start>" the newlines next to <im_end> and
    <im_start> are stripped, so the chunk is <im_end>, sentencepiece("Please ... above."),
    <im_start>. Hence
        tokenize_with_images(prefix, enc, bos) + tokenize_with_images(rest, enc, None)
    equals tokenize_with_images(prompt, enc, bos): the rest's "\n" vanishes before
    <im_start>, and the rest carries no BOS. The prefix holds NUM_CONTEXT image placeholders.
    """
    prefix = prefix_text()
    if not isinstance(prompt, str) or not prompt.startswith(prefix + "\n" + IM_START):
        raise ValueError("prompt does not start with the GLUS system/context prefix")
    return prefix, prompt[len(prefix) :]


# ---------------------------------------------------------------------------------------------
# Tokenisation
# ---------------------------------------------------------------------------------------------
def split_added_tokens(
    text: str,
    stripped: Sequence[str] = STRIPPED_ADDED_TOKENS,
    unstripped: Sequence[str] = UNSTRIPPED_SPECIAL_TOKENS,
) -> list[tuple[str, bool]]:
    """Split text the way the transformers 4.31 slow tokenizer does before sentencepiece.

    Returns (piece, is_token) pairs: added/special tokens (leftmost, then longest match, like
    its Trie) and the non-empty text between them. Whitespace (str.strip's notion) next to a
    token in ``stripped`` is removed from the neighbouring text, on both sides; tokens in
    ``unstripped`` leave their neighbours alone. Text pieces emptied by stripping vanish.
    """
    tokens = sorted(set(stripped) | set(unstripped), key=len, reverse=True)
    if any(not isinstance(t, str) or not t for t in tokens):
        raise ValueError("added tokens must be non-empty strings")
    # Alternation tries longer tokens first at each position; the scan is leftmost-first.
    pattern = re.compile("|".join(re.escape(t) for t in tokens))
    parts: list[list] = []  # [piece, is_token]
    start = 0
    for m in pattern.finditer(text):
        if m.start() > start:
            parts.append([text[start : m.start()], False])
        parts.append([m.group(), True])
        start = m.end()
    if start < len(text):
        parts.append([text[start:], False])

    strip_set = set(stripped)
    for i, (piece, is_token) in enumerate(parts):
        if not is_token or piece not in strip_set:
            continue
        if i > 0 and not parts[i - 1][1]:
            parts[i - 1][0] = parts[i - 1][0].rstrip()
        if i + 1 < len(parts) and not parts[i + 1][1]:
            parts[i + 1][0] = parts[i + 1][0].lstrip()
    return [(p, tok) for p, tok in parts if tok or p]


def metaspace_input(piece: str) -> str:
    """The text to give a `tokenizers` LLaMA tokenizer so that it yields sentencepiece's ids.

    sentencepiece (add_dummy_prefix) always puts one "\u2581" before a piece; the Metaspace
    pre-tokenizer (prepend_scheme "always") skips it when the text already starts with a space
    or "\u2581", so " x" would lose a token. Prepending a space in that case restores it.
    """
    if piece[:1] in (" ", "\u2581"):
        return " " + piece
    return piece


def tokenize_with_images(text: str, encode: Callable[[str], list[int]], bos_id: int | None) -> list[int]:
    """LLaVA's tokenizer_image_token: BOS, then each "<image>"-separated chunk encoded on its
    own (``encode`` returns ids without BOS, sentencepiece dummy prefix applied per piece),
    chunks joined by IMAGE_TOKEN_INDEX. ``bos_id=None`` leaves BOS out (for the part of a
    prompt after split_prefix's cut)."""
    if not isinstance(text, str):
        raise ValueError(f"text must be a str, got {type(text).__name__}")
    ids = [] if bos_id is None else [bos_id]
    for n, chunk in enumerate(text.split(IMAGE_PLACEHOLDER)):
        if n:
            ids.append(IMAGE_TOKEN_INDEX)
        ids.extend(encode(chunk))
    return ids


def expand_image_positions(ids: Sequence[int], tokens_per_image: int = TOKENS_PER_IMAGE) -> list[tuple[int, int]]:
    """Where each image's embeddings go once every IMAGE_TOKEN_INDEX in ``ids`` is expanded
    to ``tokens_per_image`` embeddings: [(start, end)] half-open, in image order."""
    out = []
    shift = 0
    for i, tok in enumerate(ids):
        if tok == IMAGE_TOKEN_INDEX:
            start = i + shift
            out.append((start, start + tokens_per_image))
            shift += tokens_per_image - 1
    return out


class PromptEncoder:
    """encode_chunk / encode_prompt over a subclass's `_encode_piece` (plain text → ids) and
    `_token_ids` (added/special token text → id); shared by the reference tokenizer
    (transformers) and the runtime one (tokenizers) so both split prompts identically."""

    bos_id: int
    _token_ids: dict

    def _encode_piece(self, text: str) -> list[int]:
        raise NotImplementedError

    def encode_chunk(self, text: str) -> list[int]:
        """Ids of one "<image>"-free chunk, no BOS, as the 4.31 slow tokenizer gives them."""
        ids: list[int] = []
        for piece, is_token in split_added_tokens(text):
            ids.extend([self._token_ids[piece]] if is_token else self._encode_piece(piece))
        return ids

    def encode_prompt(self, text: str) -> list[int]:
        """BOS + chunks joined by IMAGE_TOKEN_INDEX (LLaVA's tokenizer_image_token)."""
        return tokenize_with_images(text, self.encode_chunk, self.bos_id)
