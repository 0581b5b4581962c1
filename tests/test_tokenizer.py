"""GLUS tokenisation (reference/tokenizer.py, runtime/tokenizer.py) against sentencepiece itself.

The expected ids are computed independently: split at <image>, then at the added tokens with
a regex, strip the whitespace next to [SEG]/<im_start>/<im_end> (GLUS_INFERENCE.md, quirks),
``sp.encode`` every text piece, BOS first, -200 per image. The tokenizer is the tiny
LLaMA-like one trained on the fly (identity normalisation, byte fallback, dummy prefix).
"""

from __future__ import annotations

import json
import re
import shutil

import pytest
import sentencepiece as spm
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from reference.tokenizer import (
    load_tokenizer,
    save_fast_tokenizer,
    train_tiny_tokenizer,
)
from runtime import rules
from runtime.tokenizer import RuntimeTokenizer

STRIPPED = ("[SEG]", "<im_start>", "<im_end>")
SPLIT_RE = re.compile(r"(\[SEG\]|<im_start>|<im_end>|</s>|<s>|<unk>)")


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    return train_tiny_tokenizer(tmp_path_factory.mktemp("tok") / "glus")


@pytest.fixture(scope="module")
def sp(tiny_dir):
    return spm.SentencePieceProcessor(model_file=str(tiny_dir / "tokenizer.model"))


@pytest.fixture(scope="module")
def tok(tiny_dir):
    return load_tokenizer(tiny_dir)


@pytest.fixture(scope="module")
def rt(tok, tmp_path_factory):
    return RuntimeTokenizer.from_file(save_fast_tokenizer(tok, tmp_path_factory.mktemp("fast")))


def sp_ids(text: str, sp, with_bos: bool = True) -> list[int]:
    """Independent GLUS ids for ``text`` from sentencepiece."""
    base = sp.get_piece_size()
    special = {
        "[SEG]": base,
        "<im_start>": base + 1,
        "<im_end>": base + 2,
        "</s>": sp.eos_id(),
        "<s>": sp.bos_id(),
        "<unk>": sp.unk_id(),
    }
    out = [sp.bos_id()] if with_bos else []
    for n, chunk in enumerate(text.split("<image>")):
        if n:
            out.append(-200)
        parts = SPLIT_RE.split(chunk)  # text, token, text, token, ..., text
        for k, part in enumerate(parts):
            if k % 2:
                out.append(special[part])
                continue
            if k > 0 and parts[k - 1] in STRIPPED:
                part = part.lstrip()
            if k + 1 < len(parts) and parts[k + 1] in STRIPPED:
                part = part.rstrip()
            if part:
                out.extend(sp.encode(part))
    return out


def pieces(ids, sp):
    base = sp.get_piece_size()
    names = {base: "[SEG]", base + 1: "<im_start>", base + 2: "<im_end>", -200: "<IMG>"}
    return [names[i] if i in names else sp.id_to_piece(i) for i in ids]


# --------------------------------------------------------------------------------------------
# Layout
# --------------------------------------------------------------------------------------------
def test_layout_and_ids(tiny_dir, tok, sp):
    base = sp.get_piece_size()
    assert 1000 <= base <= 2000
    assert (sp.unk_id(), sp.bos_id(), sp.eos_id()) == (0, 1, 2)
    assert json.loads((tiny_dir / "added_tokens.json").read_text()) == {
        "[SEG]": base,
        "<im_start>": base + 1,
        "<im_end>": base + 2,
    }
    assert json.loads((tiny_dir / "special_tokens_map.json").read_text())["pad_token"] == "<unk>"
    assert (tok.bos_id, tok.eos_id, tok.unk_id) == (1, 2, 0)
    assert (tok.seg_id, tok.im_start_id, tok.im_end_id) == (base, base + 1, base + 2)
    assert tok.vocab_size == base + 3
    assert tok.hf.pad_token_id == 0


def test_tiny_model_is_llama_like(sp):
    # no whitespace collapsing, newline via byte fallback, digits split
    assert sp.decode(sp.encode("a  b\nc")) == "a  b\nc"
    assert sp.id_to_piece(sp.encode("\n")[-1]) == "<0x0A>"
    assert len(sp.encode("2025")) >= 4


def test_training_is_deterministic(tmp_path):
    a = train_tiny_tokenizer(tmp_path / "a")
    b = train_tiny_tokenizer(tmp_path / "b")
    names = sorted(p.name for p in a.iterdir())
    assert names == sorted(p.name for p in b.iterdir())
    for name in names:
        assert (a / name).read_bytes() == (b / name).read_bytes(), name


def test_missing_files(tiny_dir, tmp_path):
    d = tmp_path / "partial"
    shutil.copytree(tiny_dir, d)
    (d / "added_tokens.json").unlink()
    (d / "special_tokens_map.json").unlink()
    with pytest.raises(FileNotFoundError, match="special_tokens_map.json, added_tokens.json"):
        load_tokenizer(d)


def test_wrong_added_ids(tiny_dir, tmp_path, sp):
    d = tmp_path / "wrong"
    shutil.copytree(tiny_dir, d)
    base = sp.get_piece_size()
    (d / "added_tokens.json").write_text(json.dumps({"<im_start>": base, "[SEG]": base + 1, "<im_end>": base + 2}))
    with pytest.raises(ValueError, match="added"):
        load_tokenizer(d)


def test_loads_next_to_glus_config_json(tiny_dir, tmp_path, sp):
    # a real checkpoint directory also holds config.json with model_type "llava"; AutoTokenizer
    # would then build a tokenizer without the dummy prefix
    d = tmp_path / "with_config"
    shutil.copytree(tiny_dir, d)
    (d / "config.json").write_text(json.dumps({"model_type": "llava", "vocab_size": 1003}))
    text = prompt_for_step(2)
    assert load_tokenizer(d).encode_prompt(text) == sp_ids(text, sp)


def test_conversion_drift_is_caught(tiny_dir, tmp_path):
    # a config that makes transformers drop the dummy prefix must not load silently
    d = tmp_path / "noprefix"
    shutil.copytree(tiny_dir, d)
    cfg = json.loads((d / "tokenizer_config.json").read_text())
    cfg["add_prefix_space"] = False
    (d / "tokenizer_config.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match="disagrees with sentencepiece"):
        load_tokenizer(d)


@pytest.mark.parametrize("legacy", [None, False, True])
def test_legacy_flag_does_not_matter(tiny_dir, tmp_path, sp, legacy):
    # real checkpoints may carry "legacy" or not; GLUS's ids must not depend on it
    d = tmp_path / f"legacy_{legacy}"
    shutil.copytree(tiny_dir, d)
    cfg = json.loads((d / "tokenizer_config.json").read_text())
    cfg.pop("legacy")
    if legacy is not None:
        cfg["legacy"] = legacy
    (d / "tokenizer_config.json").write_text(json.dumps(cfg))
    text = prompt_for_step(5, "  spaced  \u2581 car ")
    assert load_tokenizer(d).encode_prompt(text) == sp_ids(text, sp)


def test_runtime_file_errors(tmp_path, tok):
    with pytest.raises(FileNotFoundError):
        RuntimeTokenizer.from_file(tmp_path / "nope.json")
    path = save_fast_tokenizer(tok, tmp_path / "fast")
    with pytest.raises(ValueError, match="SEG"):
        RuntimeTokenizer.from_file(path, seg_id=tok.seg_id + 1)


# --------------------------------------------------------------------------------------------
# The quirk, as GLUS_INFERENCE.md states it
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "text, expected",
    [
        ("USER: <im_start>", ["\u2581USER", ":", "<im_start>"]),
        ("<im_end>\nCan", ["<im_end>", "\u2581Can"]),
        ("is [SEG].</s>USER", ["\u2581is", "[SEG]", "\u2581.", "</s>", "\u2581USER"]),
        ("is [SEG] .</s>USER", ["\u2581is", "[SEG]", "\u2581.", "</s>", "\u2581USER"]),
        ("result is ", ["\u2581result", "\u2581is", "\u2581"]),
    ],
)
def test_quirk_examples(text, expected, tok, rt, sp):
    assert pieces(tok.encode_chunk(text), sp) == expected
    assert pieces(rt.encode_chunk(text), sp) == expected


# --------------------------------------------------------------------------------------------
# Prompts
# --------------------------------------------------------------------------------------------
S, N = rules.ANSWER_SEG, rules.ANSWER_NO_SEG
HISTORY = [S, N, S, S, N, S, S, N, S]


def prompt_for_step(step: int, expr: str = "the red circle moving left") -> str:
    window = rules.window_positions(step)
    return rules.prompt_text(expr, [HISTORY[p] for p in window[:-1]])


@pytest.mark.parametrize("step", [1, 2, 4, 5, 9])
def test_prompt_ids_against_sentencepiece(step, tok, rt, sp):
    text = prompt_for_step(step)
    ids = tok.encode_prompt(text)
    assert ids == sp_ids(text, sp)
    assert rt.encode_prompt(text) == ids

    window = min(step, 4)
    img = [i for i, t in enumerate(ids) if t == -200]
    assert len(img) == 4 + window
    for i in img:  # every image is wrapped <im_start> IMG <im_end>
        assert ids[i - 1] == tok.im_start_id and ids[i + 1] == tok.im_end_id
    assert img[1:4] == [img[0] + 3, img[0] + 6, img[0] + 9]  # context images back to back
    assert ids.count(tok.seg_id) == window - 1
    assert ids.count(tok.eos_id) == window - 1
    assert ids[0] == tok.bos_id and ids.count(tok.bos_id) == 1
    assert pieces(ids[-2:], sp) == ["\u2581is", "\u2581"]
    # after expansion the images sit where the placeholders were
    spans = rules.expand_image_positions(ids)
    assert [s for s, _ in spans] == [i + 63 * k for k, i in enumerate(img)]


def test_answers_tokenize_alike(tok, sp):
    # "[SEG]." and "[SEG] ." give the same ids: the space after [SEG] is stripped.
    assert tok.encode_prompt(prompt_for_step(2)) == tok.encode_prompt(
        rules.prompt_text("the red circle moving left", [N])
    )


def test_prefix_split_ids(tok, rt, sp):
    prefixes = set()
    for expr in ("the red circle moving left", "a  dog", "café"):
        for step in range(1, 10):
            text = prompt_for_step(step, expr)
            head, rest = rules.split_prefix(text)
            for t in (tok, rt):
                whole = t.encode_prompt(text)
                head_ids = rules.tokenize_with_images(head, t.encode_chunk, t.bos_id)
                rest_ids = rules.tokenize_with_images(rest, t.encode_chunk, None)
                assert head_ids + rest_ids == whole
                assert head_ids.count(-200) == 4 and rest_ids[0] == t.im_start_id
                prefixes.add(tuple(head_ids))
    assert len(prefixes) == 1
    assert list(prefixes.pop()) == sp_ids(rules.prefix_text(), sp)


UNICODE_EXPRESSIONS = [
    "café au lait",
    "naïve Zürich",
    "東京の赤い車",
    "🙂 smiling dog 🐕",
    "car   with  3   spaces",
    "the 2nd car from 1999",
    "Ångström\u00a0nbsp",
    "tab\there",
    "family 👨\u200d👩\u200d👧",
    "ﬁ ligature",
    "e\u0301 combining",
    "Привет мир",
    "  leading and trailing  ",
    "▁weird▁marks",
    "new\nline",
    "Straße.",
    "the <im_end> tag",
    "an </s> inside",
    "<s>x<unk>",
]


@pytest.mark.parametrize("expr", UNICODE_EXPRESSIONS)
def test_unicode_expressions(expr, tok, rt, sp):
    text = rules.prompt_text(rules.normalize_expression(expr), [S])
    ids = tok.encode_prompt(text)
    assert ids == sp_ids(text, sp)
    assert rt.encode_prompt(text) == ids


PRINTABLE = st.characters(blacklist_categories=("Cs", "Cc")) | st.sampled_from(
    [" ", "  ", "\t", "\n", "\u00a0", "\u3000", "\u2581", ".", "<im_start>", "</s>", "<s>"]
)
CHUNK_TEXT = PRINTABLE | st.sampled_from(["[SEG]", "<im_end>", "<unk>"])


@settings(max_examples=200, deadline=None, database=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(expr=st.lists(PRINTABLE, min_size=1, max_size=24).map("".join))
def test_expression_ids_hypothesis(expr, tok, rt, sp):
    try:
        norm = rules.normalize_expression(expr)
    except ValueError:
        assume(False)  # empty / whitespace / "." / "<image>": rejected, tested in test_rules
    text = rules.prompt_text(norm, [N])
    ids = tok.encode_prompt(text)
    assert rt.encode_prompt(text) == ids
    assert ids == sp_ids(text, sp)


@settings(max_examples=200, deadline=None, database=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(chunk=st.lists(CHUNK_TEXT, max_size=24).map("".join))
def test_chunk_ids_hypothesis(chunk, tok, rt, sp):
    # any chunk, including ones starting with spaces or '\u2581' right at the piece start
    assume("<image>" not in chunk)
    ids = tok.encode_chunk(chunk)
    assert rt.encode_chunk(chunk) == ids
    assert ids == sp_ids(chunk, sp, with_bos=False)


def test_decode_round_trip(tok, rt):
    ids = tok.encode_chunk("the red circle moving left")
    assert tok.decode(ids) == "the red circle moving left"
    assert rt.decode(ids) == "the red circle moving left"
