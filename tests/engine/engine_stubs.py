"""Stand-ins for the engine tests: a char-level tokenizer and a bigram model with a fake KV cache."""

from __future__ import annotations

import torch
from torch import nn

SPECIALS = ["<pad>", "<eos>", "<think>", "</think>"]


class CharTokenizer:
    """Character-level tokenizer with the special tokens the engine looks for (duck-typed)."""

    def __init__(self, chars: str = "abcdefghijklmnopqrstuvwxyz0123456789 +=.,!?\nWé"):
        self.vocab = SPECIALS + list(chars)
        self.index = {t: i for i, t in enumerate(self.vocab)}
        self.pad_id, self.eos_id, self.think_start_id, self.think_end_id = 0, 1, 2, 3

    @property
    def vocab_size(self) -> int:
        return len(self.vocab)

    def encode(self, text: str) -> list[int]:
        ids, i = [], 0
        while i < len(text):
            special = next((s for s in SPECIALS if text.startswith(s, i)), None)
            if special is not None:
                ids.append(self.index[special])
                i += len(special)
            else:
                ids.append(self.index[text[i]])
                i += 1
        return ids

    def decode(self, ids) -> str:
        return "".join(self.vocab[i] for i in ids)


class StubCache:
    """Only the bookkeeping of a KV cache: length, reorder, truncate."""

    def __init__(self, batch: int, max_len: int):
        self.batch, self.max_len, self.length = batch, max_len, 0
        self.reorders: list[list[int]] = []

    def reorder(self, index):
        self.reorders.append(index.tolist())
        self.batch = len(index)

    def truncate(self, length):
        self.length = length

    @classmethod
    def concat_aligned(cls, parts, length, max_len):
        """Continuous batching's merge: rows stacked, positions end-aligned at `length`."""
        rows = [cache.batch if not rest or rest[-1] is None else len(rest[-1]) for cache, _, *rest in parts]
        merged = cls(sum(rows), max_len)
        merged.length = length
        return merged


class BigramModel(nn.Module):
    """logits[b, t] = table[input_ids[b, t]]: the next token depends only on the current one."""

    def __init__(self, table: torch.Tensor):
        super().__init__()
        self.table = nn.Parameter(table.float(), requires_grad=False)
        self.calls: list[tuple[int, int]] = []

    def new_cache(self, batch, max_len, device=None, dtype=None):
        return StubCache(batch, max_len)

    def forward(self, input_ids, attention_mask=None, positions=None, cache=None, return_hidden=False):
        self.calls.append(tuple(input_ids.shape))
        if cache is not None:
            assert cache.batch == input_ids.shape[0]
            cache.length += input_ids.shape[1]
            if attention_mask is not None:
                assert attention_mask.shape == (input_ids.shape[0], cache.length)
        return self.table[input_ids]


def bigram_table(tok: CharTokenizer, chain: dict[str, str], default: str = "a") -> torch.Tensor:
    """A table whose greedy continuation of token x is chain[x] (else `default`)."""
    v = tok.vocab_size
    table = torch.zeros(v, v)
    for i, t in enumerate(tok.vocab):
        table[i, tok.index[chain.get(t, default)]] = 10.0
    return table
