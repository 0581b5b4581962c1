"""GLUS's training prompts as token ids, and the answer tokens each is trained on."""

from __future__ import annotations

from runtime import rules


class PromptCache:
    """Token ids of GLUS prompts and their answer targets, per (expression, window length)."""

    def __init__(self, tok):
        self.tok = tok
        self.marker = tok.encode_chunk(rules.ASSISTANT_ROLE + ":")
        self._cache: dict = {}

    def prefix_ids(self) -> list[int]:
        """BOS, system, "USER:", the 4 context images and the context sentence."""
        if "prefix" not in self._cache:
            self._cache["prefix"] = self.tok.encode_prompt(rules.prefix_text())
        return self._cache["prefix"]

    def get(self, expr: str, n_rounds: int):
        """(ids after the prefix, [(position in the whole prompt, target id)])."""
        key = (expr, n_rounds)
        if key not in self._cache:
            text = rules.prompt_text(expr, [rules.ANSWER_SEG] * (n_rounds - 1))
            ids = self.tok.encode_prompt(text)
            _, rest = rules.split_prefix(text)
            rest_ids = rules.tokenize_with_images(rest, self.tok.encode_chunk, None)
            if self.prefix_ids() + rest_ids != ids:
                raise AssertionError("prefix + rest tokenisation differs from the whole prompt")
            self._cache[key] = (rest_ids, self.answer_targets(ids))
        return self._cache[key]

    def answer_targets(self, ids: list[int]) -> list[tuple[int, int]]:
        """[(expanded position whose hidden state predicts, target id)]: every assistant answer
        token (as GLUS's labels), then [SEG] from the last prompt position (the current round)."""
        pos, shift = [], 0
        for t in ids:
            pos.append(len(pos) + shift)
            if t == rules.IMAGE_TOKEN_INDEX:
                shift += rules.TOKENS_PER_IMAGE - 1
        m = self.marker
        starts = [k + len(m) for k in range(len(ids) - len(m) + 1) if ids[k : k + len(m)] == m]
        out = []
        eos = self.tok.eos_id
        for s in starts:
            k = s
            while k < len(ids):
                if k == len(ids) - 1 and not self.tok.decode([ids[k]]).strip():
                    break  # the trailing "▁" of the current round: GLUS never trains on it
                out.append((pos[k] - 1, ids[k]))
                if ids[k] == eos:
                    break
                k += 1
        out.append((pos[-1], self.tok.seg_id))
        return out
