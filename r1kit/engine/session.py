"""`EngineSession`: continuous batching, one running decode batch that requests join and leave step by step.

Requests are prefilled on arrival in a `DecodeBatch` of their own and merged into the running
batch (positions end-aligned, `KVCache.concat_aligned`), so they decode with everyone else from
the next step. The server's `Batcher` drives one session from its worker thread.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from r1kit.engine.batch import DecodeBatch
from r1kit.engine.params import Completion, SamplingParams, StreamDelta
from r1kit.engine.sequence import SequenceState


class EngineSession:
    """Continuous batching: one running decode batch that requests join and leave step by step.

    `add` prefills a request on its own (its `n` samples share the prefill), samples its first
    token, and merges its cache rows and per-row state (sampling settings, seeds, stops, budget
    forcing) into the running batch, so it decodes with everyone else from the next `step`. Each
    `step` runs one decode step for every active row; rows that finish stop costing compute
    (the batch is compacted). Random draws are keyed by (request seed, sample index, token index),
    so a seeded request gives the same tokens alone (`Engine.generate([prompt], params)`) or with
    any batch-mates; greedy requests give the same tokens too (up to float ties). Speculative
    decoding is not supported here.

    Sequence ids are session-wide integers (`StreamDelta.seq_index`); a request's `n` samples get
    consecutive ids. `Completion.prompt_index` is the request's number in the session (0, 1, ...).
    Every sequence ends with exactly one delta with `finished=True` (also when cancelled).
    """

    def __init__(self, engine):
        self.engine = engine
        self._state: DecodeBatch | None = None  # the merged running batch
        self._queued: list[StreamDelta] = []  # deltas of first tokens sampled by `add`
        self._cancelled: set[int] = set()
        self._done: dict[int, Completion] = {}
        self._next_seq = 0
        self._next_request = 0
        self.stats: dict[str, int] = {"steps": 0, "requests": 0, "sequences": 0, "max_rows": 0}

    # ------------------------------------------------------------------ API
    def add(self, prompt: str | Sequence[int], params: SamplingParams | None = None) -> list[int]:
        """Admit one request (a prompt and its params, `n` samples); returns its sequence ids."""
        return self.add_many([prompt], [params or SamplingParams()])[0]

    def add_many(
        self, prompts: Sequence[str | Sequence[int]], params: Sequence[SamplingParams]
    ) -> list[list[int]]:
        """Admit several requests with one prefill and one merge; returns each request's sequence ids.

        Each request keeps its own seed streams: admitting them together or one by one gives the same
        tokens.
        """
        if len(prompts) != len(params):
            raise ValueError(f"{len(prompts)} prompts but {len(params)} SamplingParams")
        if any(sp.speculative for sp in params):
            raise ValueError("speculative decoding is not supported with continuous batching (EngineSession)")
        # random streams keyed within the request, not the admission
        batch = DecodeBatch(self.engine, prompts, list(params), keys_per_request=True)
        with torch.no_grad():
            host = batch.prefill()
        ids: list[list[int]] = [[] for _ in prompts]
        tokenizer = self.engine.tokenizer
        for s in batch.seqs:
            ids[s.prompt_index].append(self._next_seq + s.seq_index)
            s.renumber(self._next_seq, self._next_request)
            if tokenizer is not None:
                s.track_text(tokenizer)
        self._next_seq += len(batch.seqs)
        self._next_request += len(prompts)
        self.stats["requests"] += len(prompts)
        self.stats["sequences"] += len(batch.seqs)
        self._queued += self._process(batch, host)
        self._merge(batch)
        self.stats["max_rows"] = max(self.stats["max_rows"], self.active_rows)
        return ids

    def step(self) -> list[StreamDelta]:
        """One decode step for every active row; returns the deltas since the last call (incl. `add`'s)."""
        deltas, self._queued = self._queued, []
        batch = self._state
        if batch is None:
            return deltas
        keep = self._running_rows()
        if not keep:
            self._state = None
            return deltas
        if len(batch.row_seqs) - len(keep) >= max(1, self.engine.compact_fraction * len(batch.row_seqs)):
            batch.select(keep, tables=True)
        with torch.no_grad():
            host = batch.step()
        self.stats["steps"] += 1
        return deltas + self._process(batch, host)

    def cancel(self, seq_id: int) -> None:
        """End sequence `seq_id` at the next step (finish_reason "cancelled", in that step's deltas);
        unknown or finished ids are ignored."""
        if any(s.seq_index == seq_id and s.finish_reason is None for s in self._batch):
            self._cancelled.add(seq_id)

    def pop_completion(self, seq_id: int) -> Completion | None:
        """The `Completion` of a finished sequence (once; None while it runs or after it was popped)."""
        return self._done.pop(seq_id, None)

    @property
    def active_rows(self) -> int:
        """Sequences admitted and not finished."""
        return sum(1 for s in self._batch if s.finish_reason is None)

    def has_work(self) -> bool:
        """Whether `step` has anything to do or report."""
        return bool(self._queued) or self.active_rows > 0

    # ------------------------------------------------------------------ internals
    @property
    def _batch(self) -> list[SequenceState]:
        """The sequence of each row of the running batch (finished ones included until compacted)."""
        return self._state.row_seqs if self._state is not None else []

    def _running_rows(self) -> list[int]:
        return [b for b, s in enumerate(self._batch) if s.finish_reason is None]

    def _process(self, batch: DecodeBatch, host: Tensor) -> list[StreamDelta]:
        """Host-side bookkeeping of one step's (4, B) copy for `batch`; keeps the finished completions."""
        deltas, finished = batch.advance(
            host.tolist(), range(len(batch.row_seqs)), self._cancelled, emit=True
        )
        if finished:
            for b, completion in zip(finished, batch.completions_of(finished)):
                seq_id = batch.row_seqs[b].seq_index
                self._cancelled.discard(seq_id)
                self._done[seq_id] = completion
        return deltas

    def _merge(self, batch: DecodeBatch) -> None:
        """Append the rows of a freshly prefilled `batch` to the running batch (finished rows dropped)."""
        if self._state is not None:
            keep = self._running_rows()
            if not keep:
                self._state = None
            else:
                self._state.merge(batch, keep if len(keep) < len(self._batch) else None)
                return
        self._state = batch
