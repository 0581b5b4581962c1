"""GLUS's tokenizer: the LLaMA sentencepiece layout LISA/GLUS saved, and a tiny trained one.

GLUS ran the *slow* LLaMA tokenizer of transformers 4.31. Its ids are what we reproduce:
text is split at the added/special tokens first, whitespace next to [SEG], <im_start>,
<im_end> is stripped (they were plain-str added tokens), then every remaining piece is
sentencepiece-encoded on its own (each with the dummy prefix). We do that split ourselves
(rules.split_added_tokens) and let transformers encode the plain pieces, so the behaviour
does not hang on how a transformers version configures AddedToken stripping.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

from runtime import rules

REQUIRED_FILES = (
    "tokenizer.model",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
)
# GLUS/LISA order: [SEG] added first (normal token), then <im_start>, <im_end> (special).
ADDED_TOKENS = (rules.SEG_TOKEN, rules.IM_START, rules.IM_END)


class GlusTokenizer(rules.PromptEncoder):
    """Thin wrapper exposing the ids GLUS's prompts need.

    ``hf`` is the transformers tokenizer (LlamaTokenizer.from_pretrained of the directory).
    """

    def __init__(self, hf, base_vocab_size: int):
        self.hf = hf
        self.base_vocab_size = base_vocab_size
        vocab = hf.get_vocab()
        self.bos_id = _token_id(vocab, rules.BOS_TOKEN)
        self.eos_id = _token_id(vocab, rules.EOS_TOKEN)
        self.unk_id = _token_id(vocab, rules.UNK_TOKEN)
        self.seg_id = _token_id(vocab, rules.SEG_TOKEN)
        self.im_start_id = _token_id(vocab, rules.IM_START)
        self.im_end_id = _token_id(vocab, rules.IM_END)
        expected = {t: base_vocab_size + k for k, t in enumerate(ADDED_TOKENS)}
        got = {rules.SEG_TOKEN: self.seg_id, rules.IM_START: self.im_start_id, rules.IM_END: self.im_end_id}
        if got != expected:
            raise ValueError(f"added token ids {got} are not the GLUS layout {expected}")
        self.vocab_size = len(hf)  # incl. added tokens
        if self.vocab_size != base_vocab_size + len(ADDED_TOKENS):
            raise ValueError(f"vocab size {self.vocab_size} != base {base_vocab_size} + {len(ADDED_TOKENS)}")
        self._token_ids = {
            rules.SEG_TOKEN: self.seg_id,
            rules.IM_START: self.im_start_id,
            rules.IM_END: self.im_end_id,
            rules.BOS_TOKEN: self.bos_id,
            rules.EOS_TOKEN: self.eos_id,
            rules.UNK_TOKEN: self.unk_id,
        }

    def _encode_piece(self, text: str) -> list[int]:
        return list(self.hf.encode(rules.metaspace_input(text), add_special_tokens=False))

    def decode(self, ids) -> str:
        return self.hf.decode([i for i in ids if i != rules.IMAGE_TOKEN_INDEX], skip_special_tokens=False)


def _token_id(vocab: dict, token: str) -> int:
    if token not in vocab:
        raise ValueError(f"tokenizer has no {token!r} token")
    return vocab[token]


def load_tokenizer(path) -> GlusTokenizer:
    """Load the GLUS tokenizer directory (tokenizer.model + the three JSON files)."""
    path = Path(path)
    missing = [f for f in REQUIRED_FILES if not (path / f).is_file()]
    if missing:
        raise FileNotFoundError(f"tokenizer directory {path} lacks {', '.join(missing)}")
    import sentencepiece as spm
    from transformers import LlamaTokenizer

    sp = spm.SentencePieceProcessor(model_file=str(path / "tokenizer.model"))
    base = sp.get_piece_size()
    added = json.loads((path / "added_tokens.json").read_text(encoding="utf-8"))
    expected = {t: base + k for k, t in enumerate(ADDED_TOKENS)}
    if added != expected:
        raise ValueError(f"added_tokens.json {added} is not the GLUS layout {expected}")
    # Not AutoTokenizer: next to GLUS's config.json (model_type "llava") transformers 5.23
    # picks a generic TokenizersBackend whose conversion drops the dummy prefix. Not
    # LlamaTokenizer(vocab_file=...) either: in transformers 5.23 it builds a broken tokenizer
    # (the added tokens get tiny ids, text becomes one token).
    # LlamaTokenizer.from_pretrained(dir) converts tokenizer.model correctly.
    hf = LlamaTokenizer.from_pretrained(str(path))
    hf.pad_token = hf.unk_token  # GLUS: pad = unk
    tok = GlusTokenizer(hf, base)
    # Guard against a transformers conversion that drifts from sentencepiece (another
    # prepend scheme, lost byte fallback, ...): plain pieces must get sentencepiece's ids.
    for probe in _PROBES:
        if tok._encode_piece(probe) != sp.encode(probe):
            raise ValueError(f"transformers' tokenizer from {path} disagrees with sentencepiece on {probe!r}")
    return tok


_PROBES = (
    "USER:",
    "Sure, the segmentation result is ",
    " x",
    "a  b\n\tc",
    "caf\u00e9 2025 \U0001f642",
)


def save_fast_tokenizer(tok: GlusTokenizer, out_dir) -> Path:
    """Write ``tokenizer.json`` (the `tokenizers` library format) for the runtime."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    out = out_dir / "tokenizer.json"
    tok.hf.backend_tokenizer.save(str(out))
    return out


# ---------------------------------------------------------------------------------------------
# Tiny LLaMA-like tokenizer for tests
# ---------------------------------------------------------------------------------------------
_COLOURS = ["red", "blue", "green", "yellow", "black", "white", "orange", "purple", "grey", "pink"]
_SHAPES = ["circle", "square", "triangle", "star", "box", "ball", "car", "dog", "cat", "person"]
_MOTIONS = [
    "moving left",
    "moving right",
    "moving up",
    "moving down",
    "that stops",
    "that bounces",
    "that enters the frame",
    "that leaves the frame",
    "turning around",
    "standing still",
    "jumping over the line",
    "walking slowly",
    "running fast",
    "following the other one",
]
_SIZES = ["big", "small", "large", "tiny", "tall", "short"]
_GENERAL = [
    "The quick brown fox jumps over the lazy dog.",
    "A man is riding a bicycle down the street while the sun sets behind the hills.",
    "Two children are playing football in the park near the old tree.",
    "She opened the window and looked at the birds flying over the river.",
    "It was the best of times, it was the worst of times.",
    "Please describe what happens in this video from the first to the last frame.",
    "The object on the left moves faster than the one on the right.",
    "Which animal is closest to the camera at the end of the clip?",
    "Numbers like 12, 345 and 2025 appear on the signs: 7 cars, 3 buses, 10 people.",
    "Hello, world! How are you doing today? I'm fine, thanks.",
    "The first one, the second one, and the third one are all different colours.",
]
_UNICODE = [
    "café",
    "naïve",
    "Zürich",
    "façade",
    "crème brûlée",
    "señor",
    "über",
    "Ångström",
    "東京の猫",
    "赤い車",
    "Привет мир",
    "γάτα",
    "Straße",
    "smörgåsbord",
    "jalapeño",
]


def _tiny_corpus() -> list[str]:
    lines = [rules.SYSTEM, rules.CONTEXT_SENTENCE, rules.ANSWER_SEG, rules.ANSWER_NO_SEG]
    lines += [f"USER: Can you segment the {c} {s} in this frame? ASSISTANT: Sure." for c in _COLOURS for s in _SHAPES]
    for i, c in enumerate(_COLOURS):
        for j, s in enumerate(_SHAPES):
            m = _MOTIONS[(i + j) % len(_MOTIONS)]
            z = _SIZES[(i * 3 + j) % len(_SIZES)]
            lines.append(f"the {z} {c} {s} {m}")
            lines.append(f"The {c} {s} {m}.")
    lines += _GENERAL * 3
    lines += [" ".join(_UNICODE[k : k + 4]) for k in range(len(_UNICODE))]
    return lines


def train_tiny_tokenizer(out_dir, vocab_size: int = 1000) -> Path:
    """Train a LLaMA-like sentencepiece BPE model on a built-in corpus and write the full GLUS
    tokenizer layout into ``out_dir``. Deterministic: same bytes for the same call.

    LLaMA-like means identity normalisation, no whitespace collapsing, byte fallback, dummy
    prefix, split digits, <unk>=0 <s>=1 </s>=2: a default-trained model collapses spaces and
    newlines and would hide tokenisation bugs.
    """
    import sentencepiece as spm

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(_tiny_corpus()),
        model_writer=model,
        model_type="bpe",
        vocab_size=vocab_size,
        character_coverage=1.0,
        normalization_rule_name="identity",
        remove_extra_whitespaces=False,
        add_dummy_prefix=True,
        byte_fallback=True,
        split_digits=True,
        allow_whitespace_only_pieces=True,
        split_by_unicode_script=True,
        split_by_whitespace=True,
        max_sentencepiece_length=16,
        unk_id=0,
        bos_id=1,
        eos_id=2,
        pad_id=-1,
        unk_surface=" \u2047 ",
        num_threads=1,
        shuffle_input_sentence=False,
        hard_vocab_limit=False,
        minloglevel=2,
    )
    (out_dir / "tokenizer.model").write_bytes(model.getvalue())
    base = spm.SentencePieceProcessor(model_proto=model.getvalue()).get_piece_size()
    write_glus_layout(out_dir, base)
    return out_dir


def _added_token_dict(content: str) -> dict:
    return {
        "__type": "AddedToken",
        "content": content,
        "lstrip": False,
        "normalized": True,
        "rstrip": False,
        "single_word": False,
    }


def write_glus_layout(out_dir, base_vocab_size: int) -> None:
    """The JSON files transformers 4.31 ``save_pretrained`` wrote for LISA/GLUS, next to an
    existing tokenizer.model with ``base_vocab_size`` pieces."""
    out_dir = Path(out_dir)
    config = {
        "add_bos_token": True,
        "add_eos_token": False,
        "bos_token": _added_token_dict(rules.BOS_TOKEN),
        "clean_up_tokenization_spaces": False,
        "eos_token": _added_token_dict(rules.EOS_TOKEN),
        "legacy": True,
        "model_max_length": 512,
        "pad_token": None,
        "padding_side": "right",
        "sp_model_kwargs": {},
        "tokenizer_class": "LlamaTokenizer",
        "unk_token": _added_token_dict(rules.UNK_TOKEN),
    }
    special = {
        "bos_token": rules.BOS_TOKEN,
        "eos_token": rules.EOS_TOKEN,
        "pad_token": rules.UNK_TOKEN,
        "unk_token": rules.UNK_TOKEN,
    }
    added = {t: base_vocab_size + k for k, t in enumerate(ADDED_TOKENS)}
    for name, obj in (
        ("tokenizer_config.json", config),
        ("special_tokens_map.json", special),
        ("added_tokens.json", added),
    ):
        (out_dir / name).write_text(json.dumps(obj, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
