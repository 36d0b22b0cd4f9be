"""Budget forcing (s1, arXiv 2501.19393) on the device: cap the thinking block or stretch it with "Wait".

Per row it tracks whether the row is inside `<think>` … `</think>` and how long the block is. A row
over its cap gets `</think>` forced; a row that samples `</think>` below its floor gets the
tokens of its wait string forced instead (at most `num_wait` times). Forced tokens go through a
small per-row queue, one token per step, so a multi-token "Wait" costs no extra host work.
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import Tensor

from r1kit.engine.sequence import SequenceState

NO_LIMIT = 1 << 40


class BudgetForcing:
    """Per-row thinking-block state and the forced-token queue (device tensors, batch B).

    Args:
        rows: the sequence of each batch row.
        in_think: (B,) whether each row starts inside the thinking block (the prompt opened it).
        end_id, start_id: token ids of `</think>` and `<think>` (None: never re-enters thinking).
        tokenizer: encodes each wait string once.
        device: where the state lives.
    """

    def __init__(
        self,
        rows: list[SequenceState],
        in_think: list[bool],
        end_id: int,
        start_id: int | None,
        tokenizer,
        device,
    ):
        wait = {s.params.wait_string for s in rows if s.params.uses_budget_forcing}
        self.wait_ids = {w: tokenizer.encode(w) for w in wait}
        width = max([1, *(len(v) for v in self.wait_ids.values())])
        queues = [self.wait_ids.get(s.params.wait_string, [end_id]) for s in rows]
        self.wait_queue = torch.tensor([q + [end_id] * (width - len(q)) for q in queues], device=device)
        self.wait_len = torch.tensor([len(q) for q in queues], device=device)

        def col(values):
            return torch.tensor(values, device=device)

        self.max_think = col([_opt(s.params.max_thinking_tokens) for s in rows])
        self.min_think = col([s.params.min_thinking_tokens for s in rows])
        self.num_wait = col([_opt(s.params.num_wait) for s in rows])
        self.in_think = col(in_think)
        zeros = torch.zeros(len(rows), dtype=torch.long, device=device)
        self.think_count, self.waits, self.q_pos, self.q_len = (
            zeros,
            zeros.clone(),
            zeros.clone(),
            zeros.clone(),
        )
        self.queue = torch.full((len(rows), width), end_id, device=device)
        self.end_id, self.start_id = end_id, start_id

    _ROW_FIELDS = ("wait_queue", "wait_len", "max_think", "min_think", "num_wait", "in_think", "think_count")
    _ROW_FIELDS += ("waits", "q_pos", "q_len", "queue")

    @classmethod
    def for_rows(cls, rows: list[SequenceState], in_think: list[bool], tokenizer, device) -> BudgetForcing:
        """The state of a batch whose rows use budget forcing; `</think>` must be a single token."""
        end_id = single_token_id(tokenizer, "think_end_id", "</think>")
        if end_id is None:
            raise ValueError("budget forcing needs `</think>` to be a single token (tokenizer.think_end_id)")
        start_id = single_token_id(tokenizer, "think_start_id", "<think>")
        return cls(rows, in_think, end_id, start_id, tokenizer, device)

    def neutral(self, rows: list[SequenceState], tokenizer, device) -> BudgetForcing:
        """State for rows that use no budget forcing (outside thinking, no queue), with this batch's
        delimiters: what a batch without budget forcing brings to a merge."""
        return BudgetForcing(rows, [False] * len(rows), self.end_id, self.start_id, tokenizer, device)

    def select(self, index: Tensor) -> None:
        """Keep rows `index` (B',)."""
        for name in self._ROW_FIELDS:
            setattr(self, name, getattr(self, name)[index])

    def concat(self, other: BudgetForcing) -> BudgetForcing:
        """The state of this batch's rows followed by `other`'s (queues padded with `</think>`)."""
        merged = copy.copy(self)
        for name in self._ROW_FIELDS:
            x, y = getattr(self, name), getattr(other, name)
            if x.dim() == 2:
                width = max(x.shape[1], y.shape[1])
                x = F.pad(x, (0, width - x.shape[1]), value=self.end_id)
                y = F.pad(y, (0, width - y.shape[1]), value=self.end_id)
            setattr(merged, name, torch.cat([x, y]))
        return merged

    def pending(self) -> Tensor:
        """(B,) bool: rows with forced tokens still queued."""
        return self.q_pos < self.q_len

    def apply(self, tokens: Tensor, logprobs: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Replace sampled tokens (B,) by forced ones where budget forcing says so.

        Returns:
            (tokens (B,), logprobs (B,) with 0 where forced, forced (B,) bool).
        """
        cap = self.in_think & (self.think_count >= self.max_think)
        suppress = (
            self.in_think
            & ~cap
            & ~self.pending()
            & (tokens == self.end_id)
            & (self.think_count < self.min_think)
            & (self.waits < self.num_wait)
        )
        self.queue = torch.where(suppress[:, None], self.wait_queue, self.queue)
        self.queue[:, 0] = torch.where(cap, self.end_id, self.queue[:, 0])
        self.q_len = torch.where(suppress, self.wait_len, torch.where(cap, 1, self.q_len))
        self.q_pos = torch.where(suppress | cap, 0, self.q_pos)
        self.waits = self.waits + suppress
        forced = self.pending()
        queued = self.queue.gather(1, self.q_pos.clamp(max=self.queue.shape[1] - 1)[:, None]).squeeze(1)
        tokens = torch.where(forced, queued, tokens)
        logprobs = torch.where(forced, 0.0, logprobs)
        self.q_pos = self.q_pos + forced
        self.observe(tokens)
        return tokens, logprobs, forced

    def observe(self, tokens: Tensor) -> None:
        """Update the thinking state with the tokens (B,) appended this step."""
        ending = self.in_think & (tokens == self.end_id)
        self.think_count = self.think_count + (self.in_think & ~ending)
        self.in_think = self.in_think & ~ending
        if self.start_id is not None:
            starting = tokens == self.start_id
            self.in_think = self.in_think | starting
            self.think_count = torch.where(starting, 0, self.think_count)


def _opt(value: int | None) -> int:
    return NO_LIMIT if value is None else value


def single_token_id(tokenizer, attr: str, text: str) -> int | None:
    """The id of a delimiter: the tokenizer's attribute, else its encoding when that is one token."""
    value = getattr(tokenizer, attr, None)
    if value is not None:
        return int(value)
    ids = tokenizer.encode(text)
    return ids[0] if len(ids) == 1 else None
