"""GLUS prompt tokenisation for the torch-free runtime, on top of the `tokenizers` library.

Loads the ``tokenizer.json`` written by reference.tokenizer.save_fast_tokenizer and gives the
same ids as the reference (and as GLUS's transformers 4.31 slow tokenizer): added tokens are
split out first with whitespace next to [SEG]/<im_start>/<im_end> stripped
(runtime.rules.split_added_tokens), every other piece is encoded on its own.
No torch or transformers import.
"""

from __future__ import annotations

from pathlib import Path

from tokenizers import Tokenizer

from . import rules


class RuntimeTokenizer(rules.PromptEncoder):
    """Same ``encode_chunk`` / ``encode_prompt`` API as reference.tokenizer.GlusTokenizer."""

    def __init__(
        self,
        tokenizer: Tokenizer,
        *,
        bos_id: int,
        eos_id: int,
        unk_id: int,
        seg_id: int,
        im_start_id: int,
        im_end_id: int,
    ):
        self.tokenizer = tokenizer
        self.bos_id, self.eos_id, self.unk_id = bos_id, eos_id, unk_id
        self.seg_id, self.im_start_id, self.im_end_id = seg_id, im_start_id, im_end_id
        self.vocab_size = tokenizer.get_vocab_size(with_added_tokens=True)
        self._token_ids = {
            rules.BOS_TOKEN: bos_id,
            rules.EOS_TOKEN: eos_id,
            rules.UNK_TOKEN: unk_id,
            rules.SEG_TOKEN: seg_id,
            rules.IM_START: im_start_id,
            rules.IM_END: im_end_id,
        }
        for text, want in self._token_ids.items():
            got = tokenizer.token_to_id(text)
            if got != want:
                raise ValueError(f"token {text!r} has id {got} in the tokenizer, expected {want}")

    @classmethod
    def from_file(
        cls,
        path,
        *,
        bos_id: int | None = None,
        eos_id: int | None = None,
        unk_id: int | None = None,
        seg_id: int | None = None,
        im_start_id: int | None = None,
        im_end_id: int | None = None,
    ) -> RuntimeTokenizer:
        """Load ``tokenizer.json``. Ids left as None are looked up by token text; given ids
        are checked against the file (ValueError on a mismatch)."""
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"tokenizer file not found: {path}")
        tk = Tokenizer.from_file(str(path))
        tk.no_truncation()  # ids of long prompts must never be cut or padded
        tk.no_padding()

        def pick(given, text):
            if given is not None:
                return given
            found = tk.token_to_id(text)
            if found is None:
                raise ValueError(f"{path} has no {text!r} token")
            return found

        return cls(
            tk,
            bos_id=pick(bos_id, rules.BOS_TOKEN),
            eos_id=pick(eos_id, rules.EOS_TOKEN),
            unk_id=pick(unk_id, rules.UNK_TOKEN),
            seg_id=pick(seg_id, rules.SEG_TOKEN),
            im_start_id=pick(im_start_id, rules.IM_START),
            im_end_id=pick(im_end_id, rules.IM_END),
        )

    def _encode_piece(self, text: str) -> list[int]:
        return self.tokenizer.encode(rules.metaspace_input(text), add_special_tokens=False).ids

    def decode(self, ids) -> str:
        return self.tokenizer.decode([i for i in ids if i != rules.IMAGE_TOKEN_INDEX], skip_special_tokens=False)
