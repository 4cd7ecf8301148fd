"""The tokenizer a ``HybridLM`` carries (``model.tokenizer``): UTF-8 bytes 0..255 plus the four
special ids of ``retrieval_heads.tasks.tokenizer`` (PAD 256, BOS 257, EOS 258, SEP 259).

It lives here (the model layer may import only the configuration) and mirrors the task
tokenizer id for id; ``tests/model/test_tl_fit.py`` checks that the two agree. It answers the
calls TransformerLens habits expect (``tokenizer(text)["input_ids"]``, ``encode``,
``decode``, ``bos_token_id``, ``eos_token_id``, ``pad_token_id``).

    >>> tok = ByteCodec()
    >>> tok.encode("hi"), tok.decode([104, 105, tok.eos_token_id])
    ([104, 105], 'hi')
"""

from __future__ import annotations

from collections.abc import Iterable


class ByteCodec:
    PAD, BOS, EOS, SEP = 256, 257, 258, 259
    vocab_size = 260
    bos_token_id, eos_token_id, pad_token_id = BOS, EOS, PAD
    bos_token, eos_token, pad_token = "<bos>", "<eos>", "<pad>"
    padding_side = "right"
    name_or_path = "retrieval-heads-bytes"

    def __len__(self) -> int:
        return self.vocab_size

    def encode(self, text: str, add_special_tokens: bool = False) -> list[int]:
        ids = list(text.encode("utf-8"))
        return [self.BOS] + ids if add_special_tokens else ids

    def decode(self, tokens: Iterable[int], skip_special_tokens: bool = True, stop_at_eos: bool = True) -> str:
        out = bytearray()
        for t in tokens:
            t = int(t)
            if t == self.EOS and stop_at_eos:
                break
            if 0 <= t < 256:
                out.append(t)
        return out.decode("utf-8", errors="replace")

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
