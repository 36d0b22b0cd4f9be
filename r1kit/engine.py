"""Engine: batched KV-cache generation with sampling, stops, budget forcing, MTP drafts and streaming.

One loop serves `generate` and `stream`. A call left-pads the distinct prompts into one batch,
prefills each prompt once and fans its KV cache out to its `n` samples (`cache.reorder`). Every
step then feeds one token per row (two with MTP speculative decoding), samples on the device, and
copies a few integers per row to the host: the new tokens and a finish code. Rows that finish keep
riding along until enough of them have finished, then the batch is compacted (`cache.reorder`).
Text is decoded only for rows that need it (streaming, stop strings); `generate` decodes once at
the end.

`Engine.session()` returns an `EngineSession` for continuous batching (the server): requests are
prefilled on arrival and their cache rows merged into the running batch (positions end-aligned,
`KVCache.concat_aligned`), so they decode with everyone else from the next step.

Forced tokens (budget forcing's `</think>` and "Wait") are part of the completion with mask 0 and
log-prob 0, so RL losses can skip them. Log-probs of sampled tokens are under the distribution
actually sampled from (after temperature, top-k, top-p); greedy rows report the raw log-softmax.
"""

from __future__ import annotations

import inspect
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor

from r1kit.sampling import RowSampling, row_keys, row_uniforms

_NO_LIMIT = 1 << 40
_REASON = {1: "stop", 2: "length"}


@dataclass
class SamplingParams:
    """How to sample the completions of one prompt (or of every prompt of a call).

    Attributes:
        n: completions per prompt; they share the prompt's prefill.
        temperature: softmax temperature; 0 = greedy (argmax).
        top_p: nucleus sampling mass (1.0 = off), applied after top-k.
        top_k: keep the k most likely tokens (0 = off).
        max_new_tokens: completion length cap, forced tokens included.
        stop: stop strings; the text is cut before the first one, tokens after it are dropped.
        stop_token_ids: extra token ids that end a completion like EOS (kept in token_ids).
        ignore_eos: do not stop on the tokenizer's EOS.
        seed: seed of this call's random streams; None draws one from torch's global RNG.
            Row i of a call samples from a stream keyed by (seed, i), so results do not depend
            on batch composition.
        max_thinking_tokens: budget forcing cap: once this many tokens were generated inside
            the thinking block, force `</think>` (s1, arXiv 2501.19393). None = no cap.
        min_thinking_tokens: budget forcing floor: while the thinking block is shorter, a sampled
            `</think>` is replaced by `wait_string` (at most `num_wait` times).
        num_wait: most "Wait" insertions per completion (None = unlimited). s1's "ignore the end of
            thinking N times" is `min_thinking_tokens=max_new_tokens, num_wait=N`.
        wait_string: the text appended in place of a suppressed `</think>`.
        speculative: draft with the model's MTP head and verify with the main model (needs
            `num_mtp_layers == 1`); greedy output is identical to plain greedy decoding.
    """

    n: int = 1
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    max_new_tokens: int = 256
    stop: list[str] = field(default_factory=list)
    stop_token_ids: list[int] = field(default_factory=list)
    ignore_eos: bool = False
    seed: int | None = None
    max_thinking_tokens: int | None = None
    min_thinking_tokens: int = 0
    num_wait: int | None = None
    wait_string: str = "Wait"
    speculative: bool = False

    def __post_init__(self) -> None:
        if self.n < 1 or self.max_new_tokens < 1:
            raise ValueError(f"n and max_new_tokens must be >= 1, got {self.n} and {self.max_new_tokens}")
        if self.temperature < 0 or not 0 < self.top_p <= 1 or self.top_k < 0:
            raise ValueError("need temperature >= 0, 0 < top_p <= 1 and top_k >= 0")
        if isinstance(self.stop, str):
            self.stop = [self.stop]

    @property
    def uses_budget_forcing(self) -> bool:
        """Whether this request caps or extends the thinking block."""
        return self.max_thinking_tokens is not None or (self.min_thinking_tokens > 0 and self.num_wait != 0)


@dataclass
class Completion:
    """One generated sequence.

    Attributes:
        prompt_index: index of its prompt in the call.
        sample_index: which of the prompt's `n` samples (0..n-1).
        token_ids: (L,) generated token ids, EOS / stop token included when it ended the sequence.
        text: decoded completion; excludes EOS and everything from the first stop string on.
        logprobs: (L,) log-prob of each token under the sampling distribution used (0.0 when forced).
        mask: (L,) 1 for sampled tokens, 0 for forced ones (budget forcing).
        finish_reason: "stop" (EOS, stop token or stop string), "length", or "cancelled".
        num_prompt_tokens: length of the prompt in tokens.
    """

    prompt_index: int
    sample_index: int
    token_ids: list[int]
    text: str
    logprobs: list[float]
    mask: list[int]
    finish_reason: str
    num_prompt_tokens: int


@dataclass
class StreamDelta:
    """What one step added to one sequence.

    Attributes:
        seq_index: the sequence (position in `generate`'s output order: prompt-major, then sample).
        text: newly decoded text (multi-byte characters are never split; text that could start a
            stop string is held back until resolved).
        token_ids: the new token ids (1 per step; up to 2 with speculative decoding).
        finished: whether the sequence ended at this step.
        finish_reason: like `Completion.finish_reason` when finished, else None.
    """

    seq_index: int
    text: str
    token_ids: list[int]
    finished: bool = False
    finish_reason: str | None = None


class _Detokenizer:
    """Incremental decoding that never splits a multi-byte character (the vLLM/HF-streamer scheme)."""

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer
        self.tokens: list[int] = []
        self.prefix_offset = 0
        self.read_offset = 0
        self.text = ""

    def add(self, token_ids: list[int]) -> str:
        """Append tokens; return the text they completed (may be empty while a character is partial)."""
        self.tokens.extend(token_ids)
        decode = self.tokenizer.decode
        prefix = decode(self.tokens[self.prefix_offset : self.read_offset])
        full = decode(self.tokens[self.prefix_offset :])
        if len(full) > len(prefix) and not full.endswith("\ufffd"):
            delta = full[len(prefix) :]
            self.prefix_offset, self.read_offset = self.read_offset, len(self.tokens)
            self.text += delta
            return delta
        return ""


class _Sequence:
    """Host-side record of one output sequence."""

    def __init__(
        self, seq_index: int, prompt_index: int, sample_index: int, params: SamplingParams, n_prompt: int
    ):
        self.seq_index = seq_index
        self.prompt_index = prompt_index
        self.sample_index = sample_index
        self.params = params
        self.num_prompt_tokens = n_prompt
        self.finish_reason: str | None = None
        self.length = 0  # tokens kept in the completion
        self.detok: _Detokenizer | None = None
        self.emitted = 0  # characters of detok.text already streamed
        self.stop_at: int | None = None  # character index of the first stop string
        self.max_stop = max((len(s) for s in params.stop), default=0)
        self.key_index = seq_index  # which random stream of its seed the sequence draws from

    def advance(self, new: list[int], code: int, count: int, cancelled: bool) -> tuple[str | None, str, bool]:
        """Host-side bookkeeping of one step: the row got tokens `new`, finish `code`, `count` tokens so far.

        Returns (finish reason or None, newly visible text, whether the device row must be stopped: a
        cancel or a stop string the device does not know about).
        """
        self.length = count
        reason = _REASON.get(code)
        kill = False
        if reason is None and cancelled:
            reason, kill = "cancelled", True
        text = ""
        if self.detok is not None:
            # the EOS / stop token is kept in token_ids but not decoded into text
            self.detok.add(new[:-1] if code == 1 else new)
            if self.params.stop and self._find_stop():
                if reason is None:
                    kill = True
                reason = "stop"
            end = len(self.detok.text) if self.stop_at is None else self.stop_at
            if reason is None:
                end = min(end, len(self.detok.text) - max(self.max_stop - 1, 0))
            if end > self.emitted:
                text, self.emitted = self.detok.text[self.emitted : end], end
        if reason is not None:
            self.finish_reason = reason
        return reason, text, kill

    def _find_stop(self) -> bool:
        """Search the newly decoded text for a stop string; record where the first one starts."""
        if self.stop_at is not None:
            return True
        text = self.detok.text
        start = max(0, self.emitted - self.max_stop)
        hits = [i for i in (text.find(stop, start) for stop in self.params.stop) if i >= 0]
        if hits:
            self.stop_at = min(hits)
            return True
        return False

    def completion(self, ids: list[int], logp: list[float], mask: list, tokenizer) -> Completion:
        """The finished `Completion` from this sequence's output rows (already cut to its length)."""
        text = ""
        if tokenizer is not None:
            eos = getattr(tokenizer, "eos_id", None)
            n = len(ids)
            ended_by_token = self.finish_reason == "stop" and self.stop_at is None and n > 0
            stop_ids = set(self.params.stop_token_ids) | (
                {eos} if eos is not None and not self.params.ignore_eos else set()
            )
            visible = ids[:-1] if ended_by_token and ids[-1] in stop_ids else ids
            text = self.detok.text if self.detok is not None else tokenizer.decode(visible)
            if self.stop_at is not None:
                text = text[: self.stop_at]
        return Completion(
            prompt_index=self.prompt_index,
            sample_index=self.sample_index,
            token_ids=ids,
            text=text,
            logprobs=logp,
            mask=[int(m) for m in mask],
            finish_reason=self.finish_reason or "length",
            num_prompt_tokens=self.num_prompt_tokens,
        )


class _BudgetForcing:
    """Per-row thinking-block state and the forced-token queue (device tensors, batch B)."""

    def __init__(
        self,
        rows: list[_Sequence],
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

    def select(self, index: Tensor) -> None:
        """Keep rows `index` (B',)."""
        for name in self._ROW_FIELDS:
            setattr(self, name, getattr(self, name)[index])

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
    return _NO_LIMIT if value is None else value


def _single_token_id(tokenizer, attr: str, text: str) -> int | None:
    """The id of a delimiter: the tokenizer's attribute, else its encoding when that is one token."""
    value = getattr(tokenizer, attr, None)
    if value is not None:
        return int(value)
    ids = tokenizer.encode(text)
    return ids[0] if len(ids) == 1 else None


class GenerationStream:
    """Iterator over the steps of one generation call; each item is a list of `StreamDelta`.

    `cancel(seq_index)` ends a sequence at the next step (finish_reason "cancelled").
    After the iteration ends, `completions()` returns the final `Completion` list.
    """

    def __init__(self, run: _Run):
        self._run = run
        self._steps = run.steps(stream=True)

    def __iter__(self) -> Iterator[list[StreamDelta]]:
        return self._steps

    def __next__(self) -> list[StreamDelta]:
        return next(self._steps)

    def cancel(self, seq_index: int) -> None:
        """Stop sequence `seq_index`; it finishes with reason "cancelled" at the next step."""
        self._run.cancelled.add(seq_index)

    def completions(self) -> list[Completion]:
        """The finished completions (drains the stream first if needed)."""
        for _ in self._steps:
            pass
        return self._run.completions()

    @property
    def stats(self) -> dict[str, float]:
        """Counters of the run: steps, tokens, speculative drafts proposed/accepted."""
        return self._run.stats


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
    """

    def __init__(self, engine: Engine):
        self.engine = engine
        self._state: _Run | None = None  # the merged running batch
        self._batch: list[_Sequence] = []  # sequence of each batch row of _state
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
        run = _Run(self.engine, prompts, list(params))
        for s in run.seqs:
            s.key_index = s.sample_index  # random streams keyed within the request, not the admission
        with torch.no_grad():
            host = run._plain_step(run._setup())
        ids: list[list[int]] = [[] for _ in prompts]
        for s in run.seqs:
            ids[s.prompt_index].append(self._next_seq + s.seq_index)
        for s in run.seqs:
            s.seq_index += self._next_seq
            s.prompt_index += self._next_request
            if self.engine.tokenizer is not None:
                s.detok = _Detokenizer(self.engine.tokenizer)
        self._next_seq += len(run.seqs)
        self._next_request += len(prompts)
        self.stats["requests"] += len(prompts)
        self.stats["sequences"] += len(run.seqs)
        self._queued += self._process(run, run.seqs, host)
        self._merge(run)
        self.stats["max_rows"] = max(self.stats["max_rows"], self.active_rows)
        return ids

    def step(self) -> list[StreamDelta]:
        """One decode step for every active row; returns the deltas since the last call (incl. `add`'s)."""
        deltas, self._queued = self._queued, []
        st = self._state
        if st is None:
            return deltas
        keep = [b for b, s in enumerate(self._batch) if s.finish_reason is None]
        if not keep:
            self._state, self._batch = None, []
            return deltas
        if len(self._batch) - len(keep) >= max(1, self.engine.compact_fraction * len(self._batch)):
            self._keep_rows(keep)
        with torch.no_grad():
            host = st._plain_step(st._forward())
        self.stats["steps"] += 1
        return deltas + self._process(st, self._batch, host)

    def cancel(self, seq_id: int) -> None:
        """End sequence `seq_id` at the next step (finish_reason "cancelled"); unknown/finished ids are ignored."""
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
    def _process(self, run: _Run, seqs: list[_Sequence], host: Tensor) -> list[StreamDelta]:
        """Host-side bookkeeping of one step's (4, B) copy for batch rows `seqs` of `run`."""
        tok_a, _, codes, counts = host.tolist()
        deltas, kill, finished = [], [], []
        for b, s in enumerate(seqs):
            if s.finish_reason is not None:
                continue
            new = [tok_a[b]]
            reason, text, stop_row = s.advance(new, codes[b], counts[b], s.seq_index in self._cancelled)
            if stop_row:
                kill.append(b)
            if reason is not None:
                finished.append(b)
                self._cancelled.discard(s.seq_index)
            deltas.append(StreamDelta(s.seq_index, text, new, reason is not None, reason))
        if kill:
            run.live[torch.tensor(kill, device=run.device)] = False
        if finished:
            rows = run.rows[torch.tensor(finished, device=run.device)]
            tokens, logp = run.out_tokens[rows].tolist(), run.out_logp[rows].tolist()
            mask = run.out_mask[rows].tolist()
            for i, b in enumerate(finished):
                s, n = seqs[b], seqs[b].length
                self._done[s.seq_index] = s.completion(tokens[i][:n], logp[i][:n], mask[i][:n], run.tok)
        return deltas

    def _keep_rows(self, keep: list[int], cache: bool = True) -> Tensor:
        """Drop finished rows of the running batch (cache unless `cache` is False, per-row state, output
        tables); returns the kept rows' index."""
        st = self._state
        index = torch.tensor(keep, device=st.device)
        st._select(index, cache=cache)
        _own_tables(st)
        self._batch = [self._batch[b] for b in keep]
        return index

    def _merge(self, run: _Run) -> None:
        """Append the rows of a freshly prefilled `run` to the running batch, positions end-aligned."""
        _own_tables(run)
        cache_rows = None  # rows of the old cache to carry over (None = all)
        if self._state is not None:
            keep = [b for b, s in enumerate(self._batch) if s.finish_reason is None]
            if keep and len(keep) < len(self._batch):
                cache_rows = self._keep_rows(keep, cache=False)  # the merge below copies the kept rows
            if not keep:
                self._state, self._batch = None, []
        if self._state is None:
            self._state, self._batch = run, list(run.seqs)
            return
        old, dev = self._state, run.device
        n_old = len(self._batch)
        old_len, new_len = old.cache.length, run.cache.length
        # slots before every row's first real token are dead: drop them (keeps the cache from growing)
        real = old.attn[:, :old_len] != 0  # per-row state is already compacted; the cache is not
        first = int(real.int().argmax(-1).min()) if old.padded else 0
        span = old_len - first
        length = max(span, new_len)
        remaining = int(torch.cat([old.limit - old.count, run.limit - run.count]).max())
        max_len = length + remaining + 2
        merge = getattr(type(old.cache), "concat_aligned", None)
        if merge is None:
            raise ValueError("continuous batching needs a cache with concat_aligned (r1kit KVCache)")
        old.cache = merge([(old.cache, first, cache_rows), (run.cache, 0)], length, max_len)
        attn = torch.zeros((n_old + len(run.seqs), max_len), dtype=old.attn.dtype, device=dev)
        attn[:n_old, length - span : length] = old.attn[:, first:old_len]
        attn[n_old:, length - new_len : length] = run.attn[:, :new_len]
        attn[:, length:] = 1
        old.attn, old.padded = attn, True
        for name in ("pos", "count", "live", "limit", "next_input"):
            setattr(old, name, torch.cat([getattr(old, name), getattr(run, name)]))
        old.stop_ids = _cat_padded(old.stop_ids, run.stop_ids, n_old, len(run.seqs), -1)
        a, b = old.sampling, run.sampling
        old.sampling = RowSampling(
            torch.cat([a.temperature, b.temperature]),
            torch.cat([a._top_k, b._top_k]),
            torch.cat([a._top_p, b._top_p]),
        )
        old.budget = _merge_budget(old, self._batch, run)
        width = max(old.out_tokens.shape[1], run.out_tokens.shape[1])
        for name in ("out_tokens", "out_logp", "out_mask"):
            setattr(
                old, name, _cat_padded(getattr(old, name), getattr(run, name), n_old, len(run.seqs), 0, width)
            )
        old.uniforms = [
            _cat_padded(u, v, n_old, len(run.seqs), 0, width) for u, v in zip(old.uniforms, run.uniforms)
        ]
        old.max_new = width - 2
        old.rows = torch.arange(n_old + len(run.seqs), device=dev)
        self._batch += run.seqs


def _own_tables(run: _Run) -> None:
    """Make a run's output/uniform tables per batch row (row b of the tables = batch row b)."""
    if len(run.rows) == run.out_tokens.shape[0] and bool(
        (run.rows == torch.arange(len(run.rows), device=run.device)).all()
    ):
        return
    r = run.rows
    run.out_tokens, run.out_logp, run.out_mask = run.out_tokens[r], run.out_logp[r], run.out_mask[r]
    run.uniforms = [u[r] for u in run.uniforms]
    run.rows = torch.arange(len(r), device=run.device)


def _cat_padded(
    a: Tensor | None, b: Tensor | None, n_a: int, n_b: int, fill, width: int | None = None
) -> Tensor | None:
    """Concatenate (n_a, wa) and (n_b, wb) tables along rows, padding columns with `fill` (None = no table)."""
    if a is None and b is None:
        return None
    ref = a if a is not None else b
    width = width or max(t.shape[1] for t in (a, b) if t is not None)
    out = torch.full((n_a + n_b, width), fill, dtype=ref.dtype, device=ref.device)
    if a is not None:
        out[:n_a, : a.shape[1]] = a
    if b is not None:
        out[n_a:, : b.shape[1]] = b
    return out


def _merge_budget(old: _Run, old_seqs: list[_Sequence], new: _Run) -> _BudgetForcing | None:
    """Budget-forcing state of the merged batch (neutral rows for a side that has none)."""
    if old.budget is None and new.budget is None:
        return None
    ref = old.budget if old.budget is not None else new.budget
    parts = []
    for run, seqs in ((old, old_seqs), (new, new.seqs)):
        if run.budget is None:
            parts.append(
                _BudgetForcing(seqs, [False] * len(seqs), ref.end_id, ref.start_id, run.tok, run.device)
            )
        else:
            parts.append(run.budget)
    a, b = parts
    merged = a
    n_a, n_b = len(old_seqs), len(new.seqs)
    for name in _BudgetForcing._ROW_FIELDS:
        x, y = getattr(a, name), getattr(b, name)
        if x.dim() == 2:
            value = _cat_padded(x, y, n_a, n_b, ref.end_id)
        else:
            value = torch.cat([x, y])
        setattr(merged, name, value)
    return merged


class Engine:
    """Batched generation for a `Transformer` (or any model with the same forward / cache contract).

    Args:
        model: `model(input_ids, attention_mask=, positions=, cache=) -> logits (B, T, V)` and
            `model.new_cache(batch, max_len, device=, dtype=)`; `mtp_logits` for speculative decoding.
        tokenizer: `encode(str) -> list[int]`, `decode(list[int]) -> str`, `eos_id`; optionally
            `pad_id`, `think_start_id`, `think_end_id`. None: prompts must be token ids and
            completions carry no text.
        compact_fraction: drop finished rows from the batch once at least this fraction of it
            has finished (and at least one row).
    """

    def __init__(self, model, tokenizer=None, compact_fraction: float = 0.125):
        self.model = model
        self.tokenizer = tokenizer
        self.compact_fraction = compact_fraction
        self.last_stats: dict[str, float] = {}
        try:  # models that can skip the prefill's unused logits (r1kit's Transformer)
            self._last_only = "logits_to_keep" in inspect.signature(model.forward).parameters
        except (TypeError, ValueError):
            self._last_only = False

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def generate(
        self,
        prompts: Sequence[str | Sequence[int]],
        params: SamplingParams | Sequence[SamplingParams] | None = None,
    ) -> list[Completion]:
        """Generate completions for every prompt.

        Args:
            prompts: P prompts, each a (templated) string or a list of token ids.
            params: one `SamplingParams` for all prompts, or one per prompt (each with its own
                n, stops, limits, temperature...). Default: `SamplingParams()`.
        Returns:
            sum(n) completions, prompt-major: prompt 0's samples first, then prompt 1's, ...
        """
        run = _Run(self, prompts, params)
        for _ in run.steps(stream=False):
            pass
        self.last_stats = run.stats
        return run.completions()

    def stream(
        self,
        prompts: Sequence[str | Sequence[int]],
        params: SamplingParams | Sequence[SamplingParams] | None = None,
    ) -> GenerationStream:
        """Like `generate` but step by step: iterate to get per-step lists of `StreamDelta`."""
        return GenerationStream(_Run(self, prompts, params))

    def session(self) -> EngineSession:
        """A continuous-batching session: requests join a running decode batch (`EngineSession`)."""
        return EngineSession(self)


class _Run:
    """The state of one generation call: prompts, per-row tensors, KV cache and output buffers."""

    def __init__(self, engine: Engine, prompts, params):
        if not prompts:
            raise ValueError("no prompts")
        self.engine, self.model, self.tok = engine, engine.model, engine.tokenizer
        params = params if params is not None else SamplingParams()
        per_prompt = [params] * len(prompts) if isinstance(params, SamplingParams) else list(params)
        if len(per_prompt) != len(prompts):
            raise ValueError(f"{len(prompts)} prompts but {len(per_prompt)} SamplingParams")
        self.params = per_prompt
        self.device = engine.device
        self.dtype = next(self.model.parameters()).dtype
        self.cancelled: set[int] = set()
        self.stats: dict[str, float] = {"steps": 0, "tokens": 0, "drafts": 0, "accepted": 0}

        self.prompt_ids: list[list[int]] = []
        in_think_prompt = []
        for p in prompts:
            if isinstance(p, str):
                if self.tok is None:
                    raise ValueError("string prompts need a tokenizer")
                ids, text = self.tok.encode(p), p
            else:
                ids = [int(t) for t in p]
                text = self.tok.decode(ids) if self.tok is not None else ""
            if not ids:
                raise ValueError("empty prompt")
            self.prompt_ids.append(ids)
            # the R1 generation prompt ends with "<think>\n": generation starts inside the block
            in_think_prompt.append(text.rfind("<think>") > text.rfind("</think>"))

        self.seqs: list[_Sequence] = []
        for i, (ids, sp) in enumerate(zip(self.prompt_ids, per_prompt)):
            for j in range(sp.n):
                self.seqs.append(_Sequence(len(self.seqs), i, j, sp, len(ids)))
        if self.tok is None and any(s.params.stop or s.params.uses_budget_forcing for s in self.seqs):
            raise ValueError("stop strings and budget forcing need a tokenizer")
        self.speculative = any(sp.speculative for sp in per_prompt)
        if self.speculative and not all(sp.speculative for sp in per_prompt):
            raise ValueError("speculative decoding is all or nothing within one call")
        if self.speculative and getattr(self.model, "mtp_logits", None) is None:
            raise ValueError("speculative decoding needs a model with an MTP head (mtp_logits)")
        self.in_think_rows = [in_think_prompt[s.prompt_index] for s in self.seqs]

    # ---------------------------------------------------------------- set-up
    def _setup(self) -> Tensor:
        """Prefill, fan out, allocate state. Returns the (R, V) logits of each row's first token."""
        dev, seqs = self.device, self.seqs
        lens = [len(ids) for ids in self.prompt_ids]
        width = max(lens)
        self.max_new = max(s.params.max_new_tokens for s in seqs)
        slots = self.max_new * (2 if self.speculative else 1) + 2
        max_len = width + slots
        pad = getattr(self.tok, "pad_id", None) or 0
        ids = torch.full((len(lens), width), pad, dtype=torch.long)
        mask = torch.zeros((len(lens), max_len), dtype=torch.long)
        mask[:, width:] = 1
        for i, p in enumerate(self.prompt_ids):
            ids[i, width - len(p) :] = torch.tensor(p)
            mask[i, width - len(p) : width] = 1
        ids, mask = ids.to(dev), mask.to(dev)
        self.padded = min(lens) != width
        positions = (mask[:, :width].cumsum(-1) - 1).clamp_(min=0)
        self.cache = self.model.new_cache(len(lens), max_len, device=dev, dtype=self.dtype)
        attn = mask[:, :width] if self.padded else None
        # only the last position's logits are needed (the first token of each row)
        keep = {"logits_to_keep": 1} if self.engine._last_only else {}
        if self.speculative:
            logits, hidden = self.model(
                ids, attention_mask=attn, positions=positions, cache=self.cache, return_hidden=True, **keep
            )
        else:
            logits = self.model(ids, attention_mask=attn, positions=positions, cache=self.cache, **keep)
        fan_out = torch.tensor([s.prompt_index for s in seqs], device=dev)
        if self.speculative and width > 1:
            # MTP slot s pairs h_s with token s+1; for s < width-1 that token is in the prompt, so these
            # slots are filled once per prompt before the fan-out (slot width-1 waits for the first sample)
            self.model.mtp_logits(
                hidden[:, :-1],
                ids[:, 1:],
                positions=positions[:, :-1],
                attention_mask=None if attn is None else attn[:, :-1],
                cache=self.cache,
            )
        if len(seqs) != len(lens):
            self.cache.reorder(fan_out)
        logits = logits[:, -1].index_select(0, fan_out)

        # per-row state, batch R (compacted along dim 0 as rows finish)
        self.rows = torch.arange(len(seqs), device=dev)
        self.attn = mask.index_select(0, fan_out)
        self.pos = torch.tensor([s.num_prompt_tokens for s in seqs], device=dev)
        self.count = torch.zeros(len(seqs), dtype=torch.long, device=dev)
        self.live = torch.ones(len(seqs), dtype=torch.bool, device=dev)
        self.limit = torch.tensor([s.params.max_new_tokens for s in seqs], device=dev)
        self.sampling = RowSampling(
            torch.tensor([float(s.params.temperature) for s in seqs], device=dev),
            torch.tensor([s.params.top_k for s in seqs], device=dev),
            torch.tensor([float(s.params.top_p) for s in seqs], device=dev),
        )
        seeds = {
            id(sp): sp.seed if sp.seed is not None else int(torch.randint(0, 2**31, ())) for sp in self.params
        }
        keys = torch.cat(
            [row_keys(seeds[id(s.params)], torch.tensor([s.key_index], device=dev)) for s in seqs]
        )
        # every uniform a row may draw, hashed at once: one gather per step instead of ~25 tiny integer ops
        steps = torch.arange(self.max_new + 2, device=dev)[None]
        self.uniforms = [row_uniforms(keys[:, None], steps, stream) for stream in range(1 + self.speculative)]
        eos = getattr(self.tok, "eos_id", None)
        stop_ids = [
            [*s.params.stop_token_ids, *([eos] if eos is not None and not s.params.ignore_eos else [])]
            for s in seqs
        ]
        k = max(len(x) for x in stop_ids)
        self.stop_ids = (
            torch.tensor([x + [-1] * (k - len(x)) for x in stop_ids], device=dev) if k > 0 else None
        )
        self.budget = None
        if any(s.params.uses_budget_forcing for s in seqs):
            end_id = _single_token_id(self.tok, "think_end_id", "</think>")
            if end_id is None:
                raise ValueError(
                    "budget forcing needs `</think>` to be a single token (tokenizer.think_end_id)"
                )
            start_id = _single_token_id(self.tok, "think_start_id", "<think>")
            self.budget = _BudgetForcing(seqs, self.in_think_rows, end_id, start_id, self.tok, dev)
        # output buffers over all R rows (+2 scratch columns for rows that already finished)
        self.out_tokens = torch.zeros((len(seqs), self.max_new + 2), dtype=torch.long, device=dev)
        self.out_logp = torch.zeros((len(seqs), self.max_new + 2), dtype=torch.float32, device=dev)
        self.out_mask = torch.zeros((len(seqs), self.max_new + 2), dtype=torch.bool, device=dev)
        if self.speculative:
            self.has_mask = self.padded
            self.draft = None
            self.h_last = hidden[:, -1:].index_select(0, fan_out)
        return logits

    # ---------------------------------------------------------------- the loop
    def steps(self, stream: bool) -> Iterator[list[StreamDelta]]:
        """Run the generation; yield the per-step deltas (empty lists when `stream` is False)."""
        with torch.no_grad():
            logits = self._setup()
            track_text = [stream or bool(s.params.stop) for s in self.seqs]
            any_text = any(track_text)
            if any_text:
                for s, t in zip(self.seqs, track_text):
                    if t:
                        s.detok = _Detokenizer(self.tok)
            n_live = len(self.seqs)
            active = list(range(len(self.seqs)))  # global sequence index of each batch row
            host = self._plain_step(logits)  # the first token comes from the prefill's logits
            while True:
                # host: (4, B) first token, second token (-1: none), finish code, tokens so far
                tok_a, tok_b, codes, counts = host.tolist()
                self.stats["steps"] += 1
                if self.speculative and self.stats["steps"] > 1:
                    self.stats["drafts"] += n_live
                    self.stats["accepted"] += sum(1 for b in tok_b if b >= 0)
                deltas: list[StreamDelta] = []
                kill: list[int] = []
                if any_text or self.cancelled:
                    rows = range(len(active))
                else:  # fast path: only rows that just finished need host-side work
                    rows = [b for b, c in enumerate(codes) if c]
                for b in rows:
                    s = self.seqs[active[b]]
                    if s.finish_reason is not None:
                        continue
                    new = [tok_a[b]] if tok_b[b] < 0 else [tok_a[b], tok_b[b]]
                    reason, text, stop_row = s.advance(
                        new, codes[b], counts[b], s.seq_index in self.cancelled
                    )
                    if stop_row:
                        kill.append(b)
                    if reason is not None:
                        n_live -= 1
                    if stream:
                        deltas.append(StreamDelta(s.seq_index, text, new, reason is not None, reason))
                if kill:
                    self.live[torch.tensor(kill, device=self.device)] = False
                yield deltas
                if n_live == 0:
                    break
                keep = [b for b, g in enumerate(active) if self.seqs[g].finish_reason is None]
                if len(active) - len(keep) >= max(1, self.engine.compact_fraction * len(active)):
                    active = [active[b] for b in keep]
                    self._select(torch.tensor(keep, device=self.device))
                host = self._speculative_step() if self.speculative else self._plain_step(self._forward())
            self.stats["tokens"] = sum(s.length for s in self.seqs)
            if self.stats["drafts"]:
                self.stats["acceptance_rate"] = self.stats["accepted"] / self.stats["drafts"]

    def _select(self, index: Tensor, cache: bool = True) -> None:
        """Keep batch rows `index` (B',): compaction of the cache (unless `cache` is False) and every
        per-row tensor."""
        if cache:
            self.cache.reorder(index)
        for name in ("rows", "attn", "pos", "count", "live", "limit", "next_input"):
            setattr(self, name, getattr(self, name)[index])
        if self.stop_ids is not None:
            self.stop_ids = self.stop_ids[index]
        self.sampling = self.sampling.select(index)
        if self.budget is not None:
            self.budget.select(index)
        if self.speculative:
            self._select_speculative(index)

    def _sample(self, logits: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Sample + budget forcing for the current batch: (tokens, logprobs, sampled-mask), each (B,)."""
        uniforms = None if self.sampling.all_greedy else self._uniforms(0)
        tokens, logp = self.sampling.sample(logits, uniforms)
        if self.budget is None:
            return tokens, logp, torch.ones_like(tokens, dtype=torch.bool)
        tokens, logp, forced = self.budget.apply(tokens, logp)
        return tokens, logp, ~forced

    def _uniforms(self, stream: int, ahead: int = 0) -> Tensor:
        """(B,) uniforms of each row's current token (+ `ahead`) from the precomputed table."""
        return self.uniforms[stream][self.rows, self.count + ahead]

    def _record(self, tokens: Tensor, logp: Tensor, sampled: Tensor, valid: Tensor | None = None) -> Tensor:
        """Write one token per live row into the output buffers; return the (B,) finish code."""
        live = self.live if valid is None else self.live & valid
        col = torch.where(live, self.count, self.max_new + 1)
        self.out_tokens[self.rows, col] = tokens
        self.out_logp[self.rows, col] = logp
        self.out_mask[self.rows, col] = sampled
        self.count = self.count + live
        hit_stop = sampled & (tokens[:, None] == self.stop_ids).any(-1) if self.stop_ids is not None else None
        hit_len = self.count >= self.limit
        if hit_stop is None:
            code = (live & hit_len).long() * 2
        else:
            code = torch.where(hit_stop, 1, torch.where(hit_len, 2, 0)) * live
        self.live = self.live & (code == 0)
        return code

    def _plain_step(self, logits: Tensor) -> Tensor:
        """Sample one token per row from `logits` (B, V); return the (4, B) host copy (see `steps`)."""
        tokens, logp, sampled = self._sample(logits)
        code = self._record(tokens, logp, sampled)
        self.next_input = tokens
        return torch.stack((tokens, torch.full_like(tokens, -1), code, self.count)).cpu()

    def _forward(self) -> Tensor:
        """Feed `next_input` (B,) at each row's position; return the (B, V) next-token logits."""
        attn = self.attn[:, : self.cache.length + 1] if self.padded else None
        out = self.model(
            self.next_input[:, None], attention_mask=attn, positions=self.pos[:, None], cache=self.cache
        )
        self.pos = self.pos + 1
        return out[:, -1]

    # ---------------------------------------------------------------- speculative decoding (MTP)
    # The MTP slot s of the cache holds the MTP block's keys for (h_s, token s+1), so the main and MTP
    # caches stay aligned and share one padding mask. Each step feeds [x, draft] to the main model
    # (slots L, L+1) and [(h_x, y0), (h_draft, y1)] to the MTP block; a row that rejects the draft
    # marks slot L+1 as a hole (mask 0) in both caches. When every row rejects, `truncate` drops it.
    def _select_speculative(self, index: Tensor) -> None:
        if self.draft is None:
            self.h_last = self.h_last[index]
        else:
            self.draft = self.draft[index]

    def _mtp(self, hidden: Tensor, next_ids: Tensor, positions: Tensor) -> Tensor:
        """MTP logits (B, T, V) at the next T MTP slots."""
        length = self.cache.mtp_length
        attn = self.attn[:, : length + next_ids.shape[1]] if self.has_mask else None
        return self.model.mtp_logits(
            hidden, next_ids, positions=positions, attention_mask=attn, cache=self.cache
        )

    def _speculative_step(self) -> Tensor:
        """One draft-and-verify step; returns the (4, B) host copy (see `steps`)."""
        x = self.next_input
        if self.draft is None:  # first step: the MTP slot of the prompt's last token needs the first sample
            self.draft = self._mtp(self.h_last, x[:, None], self.pos[:, None] - 1)[:, -1].argmax(-1)
            self.h_last = None
        length = self.cache.length
        self.attn[:, length : length + 2] = 1
        positions = torch.stack((self.pos, self.pos + 1), dim=1)
        attn = self.attn[:, : length + 2] if self.has_mask else None
        inputs = torch.stack((x, self.draft), dim=1)
        logits, hidden = self.model(
            inputs, attention_mask=attn, positions=positions, cache=self.cache, return_hidden=True
        )

        sampling, draft = self.sampling, self.draft
        if sampling.all_greedy:
            y0, lp0 = sampling.sample(logits[:, 0], None)
            accept = y0 == draft
        else:
            y0, lp0, accept = sampling.verify_draft(
                logits[:, 0],
                draft,
                self._uniforms(0),
                self._uniforms(1),
            )
        u1 = None if sampling.all_greedy else self._uniforms(0, ahead=1)
        y1, lp1 = sampling.sample(logits[:, 1], u1)
        ones = torch.ones_like(accept)
        code = self._record(y0, lp0, ones)
        second = torch.where(self.live & accept, y1, -1)  # y1 counts only if the row did not end at y0
        code = code + self._record(y1, lp1, ones, valid=accept)

        mtp = self._mtp(hidden, torch.stack((y0, y1), dim=1), positions)
        self.draft = torch.where(accept, mtp[:, 1].argmax(-1), mtp[:, 0].argmax(-1))
        self.next_input = torch.where(accept, y1, y0)
        self.pos = self.pos + 1 + accept
        if not bool(accept.any()):
            self.cache.truncate(length + 1)
        else:
            self.attn[:, length + 1] = accept
            self.has_mask = True
        return torch.stack((y0, second, code, self.count)).cpu()

    # ---------------------------------------------------------------- results
    def completions(self) -> list[Completion]:
        """Collect the finished sequences (one host transfer of the output buffers)."""
        tokens, logp, mask = self.out_tokens.tolist(), self.out_logp.tolist(), self.out_mask.tolist()
        out = []
        for s in self.seqs:
            n, i = s.length, s.seq_index
            out.append(s.completion(tokens[i][:n], logp[i][:n], mask[i][:n], self.tok))
        return out


__all__ = ["Completion", "Engine", "EngineSession", "GenerationStream", "SamplingParams", "StreamDelta"]
