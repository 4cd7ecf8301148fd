"""A byte-level tokenizer: token = UTF-8 byte (0..255) plus four special tokens.

Nothing to download, and character offsets map to token positions exactly (for ASCII text
one character is one token), so answer spans are known exactly.

    >>> tok = ByteTokenizer()
    >>> tok.encode("hi")
    [104, 105]
    >>> tok.decode([104, 105, tok.EOS])
    'hi'
"""

from __future__ import annotations

from collections.abc import Iterable


class ByteTokenizer:
    PAD = 256
    BOS = 257
    EOS = 258
    SEP = 259
    vocab_size = 260

    def encode(self, text: str) -> list[int]:
        return list(text.encode("utf-8"))

    def decode(self, tokens: Iterable[int], stop_at_eos: bool = True) -> str:
        out = bytearray()
        for t in tokens:
            t = int(t)
            if t == self.EOS and stop_at_eos:
                break
            if 0 <= t < 256:
                out.append(t)
        return out.decode("utf-8", errors="replace")

    def span(self, text: str, start_char: int, end_char: int) -> tuple[int, int]:
        """Token span [s, e) of the characters text[start_char:end_char]."""
        s = len(text[:start_char].encode("utf-8"))
        return s, s + len(text[start_char:end_char].encode("utf-8"))


TOKENIZER = ByteTokenizer()
