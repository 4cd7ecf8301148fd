"""The byte vocabulary that every model and task of the package shares: UTF-8 bytes 0..255 plus
four special ids. ``tasks.tokenizer.ByteTokenizer`` (task generation) and
``model.tokenizer.ByteCodec`` (the tokenizer a ``HybridLM`` carries) both encode and decode
through these functions, so the two cannot drift apart.

    >>> encode_bytes("hi")
    [104, 105]
    >>> decode_bytes([104, 105, EOS, 33])
    'hi'
    >>> decode_bytes([104, 105, EOS, 33], stop_at_eos=False)
    'hi!'
"""

from __future__ import annotations

from collections.abc import Iterable

PAD, BOS, EOS, SEP = 256, 257, 258, 259
VOCAB_SIZE = 260


def encode_bytes(text: str) -> list[int]:
    """Token ids of ``text``: its UTF-8 bytes."""
    return list(text.encode("utf-8"))


def decode_bytes(tokens: Iterable[int], stop_at_eos: bool = True) -> str:
    """Text of byte ids ``tokens``; special ids are skipped, and decoding stops at the first EOS
    unless ``stop_at_eos`` is False. Invalid UTF-8 becomes U+FFFD."""
    out = bytearray()
    for t in tokens:
        t = int(t)
        if t == EOS and stop_at_eos:
            break
        if 0 <= t < 256:
            out.append(t)
    return out.decode("utf-8", errors="replace")
