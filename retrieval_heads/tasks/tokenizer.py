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

from .. import byte_vocab
from ..byte_vocab import decode_bytes, encode_bytes


class ByteTokenizer:
    PAD, BOS, EOS, SEP = byte_vocab.PAD, byte_vocab.BOS, byte_vocab.EOS, byte_vocab.SEP
    vocab_size = byte_vocab.VOCAB_SIZE

    def encode(self, text: str) -> list[int]:
        return encode_bytes(text)

    def decode(self, tokens: Iterable[int], stop_at_eos: bool = True) -> str:
        return decode_bytes(tokens, stop_at_eos=stop_at_eos)

    def span(self, text: str, start_char: int, end_char: int) -> tuple[int, int]:
        """Token span [s, e) of the characters text[start_char:end_char]."""
        s = len(text[:start_char].encode("utf-8"))
        return s, s + len(text[start_char:end_char].encode("utf-8"))


TOKENIZER = ByteTokenizer()
