"""The tokenizer a ``HybridLM`` carries (``model.tokenizer``): UTF-8 bytes 0..255 plus the four
special ids of ``retrieval_heads.byte_vocab`` (PAD 256, BOS 257, EOS 258, SEP 259).

It encodes and decodes through ``byte_vocab``, as the task tokenizer does, so the two agree id
for id (``tests/model/test_tl_fit.py`` checks it). It answers the
calls TransformerLens habits expect (``tokenizer(text)["input_ids"]``, ``encode``,
``decode``, ``bos_token_id``, ``eos_token_id``, ``pad_token_id``).

    >>> tok = ByteCodec()
    >>> tok.encode("hi"), tok.decode([104, 105, tok.eos_token_id])
    ([104, 105], 'hi')
"""

from __future__ import annotations

from collections.abc import Iterable

from .. import byte_vocab
from ..byte_vocab import decode_bytes, encode_bytes


class ByteCodec:
    PAD, BOS, EOS, SEP = byte_vocab.PAD, byte_vocab.BOS, byte_vocab.EOS, byte_vocab.SEP
    vocab_size = byte_vocab.VOCAB_SIZE
    bos_token_id, eos_token_id, pad_token_id = BOS, EOS, PAD
    bos_token, eos_token, pad_token = "<bos>", "<eos>", "<pad>"
    padding_side = "right"
    name_or_path = "retrieval-heads-bytes"

    def __len__(self) -> int:
        return self.vocab_size

    def encode(self, text: str, add_special_tokens: bool = False) -> list[int]:
        ids = encode_bytes(text)
        return [self.BOS] + ids if add_special_tokens else ids

    def decode(self, tokens: Iterable[int], skip_special_tokens: bool = True, stop_at_eos: bool = True) -> str:
        return decode_bytes(tokens, stop_at_eos=stop_at_eos)

    def batch_decode(self, batch, **kw) -> list[str]:
        return [self.decode(row, **kw) for row in batch]

    def convert_ids_to_tokens(self, ids):
        names = {self.PAD: self.pad_token, self.BOS: self.bos_token, self.EOS: self.eos_token, self.SEP: "<sep>"}
        one = not isinstance(ids, (list, tuple))
        out = [names.get(int(i), bytes([int(i)]).decode("latin-1") if 0 <= int(i) < 256 else "<unk>")
               for i in ([ids] if one else ids)]
        return out[0] if one else out

    def __call__(self, text, add_special_tokens: bool = False, **_):
        texts = [text] if isinstance(text, str) else list(text)
        ids = [self.encode(t, add_special_tokens) for t in texts]
        return {"input_ids": ids[0] if isinstance(text, str) else ids}
