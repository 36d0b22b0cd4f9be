"""Request batching: one worker thread owns the engine and serves every request.

Requests arrive from the HTTP event loop (or the terminal chat) with `Batcher.submit`. The
worker runs continuous batching on an `EngineSession`: between two decode steps it admits
what is pending (prefill, then the new rows join the running batch), so a request arriving
mid-generation starts at the next step instead of waiting for the batch to drain; finished
rows leave at once. Every request keeps its own sampling settings and seed (seeded requests
give the same tokens whatever their batch-mates). When idle, the worker waits a short window
after the first arrival so requests that come together share one prefill. Per-sequence deltas go
through an `OutputParser` (reasoning/answer split on `</think>`, stop strings, per-request
`max_tokens`) and land in the request's `RequestStream`, a small mailbox the worker appends to
without ever waiting on a client: a slow reader only makes its own mailbox coalesce text, and a
cancelled request (client gone) is dropped from the batch at the next step.

Nothing here imports FastAPI, so the terminal chat reuses it.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from r1kit.tokenizer import THINK_END, THINK_START

log = logging.getLogger(__name__)


# ----------------------------------------------------------------------------------------------
# what a request asks for, and what comes back


@dataclass(frozen=True)
class GenerationParams:
    """Sampling settings of one request (every choice of it shares them).

    Attributes:
        temperature: 0 = greedy.
        top_p: nucleus mass, 1.0 = off.
        top_k: keep the k most likely tokens, 0 = off.
        max_tokens: cap on generated tokens per choice, thinking included.
        stop: strings that end a choice; matched in the answer only when `split_reasoning`.
        seed: makes sampling reproducible; None = server-chosen.
        thinking_budget: budget forcing (s1, arXiv 2501.19393): end thinking after this many tokens.
        min_thinking_tokens: budget forcing: suppress `</think>` (and append "Wait") before this many.
        split_reasoning: chat mode: split the output on `</think>` into reasoning and answer.
        starts_in_reasoning: the prompt already opened `<think>` (R1 templates), so output
            before `</think>` is reasoning even with no opening tag generated.
    """

    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    max_tokens: int = 256
    stop: tuple[str, ...] = ()
    seed: int | None = None
    thinking_budget: int | None = None
    min_thinking_tokens: int | None = None
    split_reasoning: bool = True
    starts_in_reasoning: bool = True


@dataclass
class Delta:
    """New text of choice `index`; `kind` is "reasoning", "content" (chat) or "text" (completions)."""

    index: int
    kind: str
    text: str


@dataclass
class Finish:
    """Choice `index` ended: `reason` is "stop" or "length"; token counts for `usage`."""

    index: int
    reason: str
    completion_tokens: int
    reasoning_tokens: int


@dataclass
class Failure:
    """The request failed inside the worker; `message` is safe to show to the client."""

    message: str


Event = Delta | Finish | Failure


# ----------------------------------------------------------------------------------------------
# text processing of one choice


class OutputParser:
    """Turns one sequence's stream of (text, token ids) into `Delta`s and a `Finish`.

    Chat mode splits reasoning from the answer on `</think>` (a leading `<think>` is dropped;
    whitespace around the delimiter is trimmed), applies stop strings to the answer, and ends
    the choice at `max_tokens`. Text that could still turn into a delimiter or a stop string is
    held back until the next piece decides it, so streaming and non-streaming agree exactly.
    The tags are matched in the text, so a model whose tokenizer has no think tokens (`<`, `think`,
    `>` as three pieces) splits the same. When the prompt did not open `<think>`
    (`starts_in_reasoning` False), output that starts with a generated `<think>` is reasoning up to
    `</think>`; any other output is all content.
    """

    def __init__(self, index: int, params: GenerationParams, think_end_id: int | None = None):
        self.index = index
        self.max_tokens = params.max_tokens
        self.stops = tuple(params.stop)
        self.split = params.split_reasoning
        self.think_end_id = think_end_id
        self.in_reasoning = params.split_reasoning and params.starts_in_reasoning
        self.at_reasoning_start = self.in_reasoning
        self.at_content_start = True
        # not started in reasoning: output is held until it shows whether it opens with "<think>"
        self.maybe_opens = params.split_reasoning and not params.starts_in_reasoning
        self.opened = False  # a generated "<think>" opened the reasoning
        self.head = ""  # the output held while `maybe_opens`
        self.head_tokens = 0
        self.pending = ""  # reasoning text held back (possible delimiter or trailing whitespace)
        self.content_pending = ""  # answer text held back (possible stop string or leading space)
        self.tokens = 0
        self.reasoning_tokens = 0
        self.finished = False

    # -- public

    def feed(self, text: str, token_ids: list[int] | tuple[int, ...] = ()) -> list[Event]:
        """Consume the next piece of output; returns the events it completes (possibly a Finish)."""
        if self.finished:
            return []
        events: list[Event] = []
        n_new = len(token_ids)
        budget = self.max_tokens - self.tokens
        if n_new > budget:
            # the engine batch runs to the longest request's max_tokens: cut this row at its own
            token_ids = list(token_ids)[:budget]
            text = text if budget > 0 else ""
            n_new = budget
        if self.in_reasoning:
            self.reasoning_tokens += self._count_reasoning(token_ids)
        self.tokens += n_new
        held = self.maybe_opens
        self.head_tokens += n_new if held else 0
        if self.split:
            self._feed_chat(text, events)
        else:
            self._emit_content(text, events)
        if held and not self.maybe_opens and self.opened:
            self.reasoning_tokens += self.head_tokens  # the pieces up to and including the "<think>"
        if not self.finished and self.tokens >= self.max_tokens:
            self.finish("length", events)
        return events

    def finish(self, reason: str, events: list[Event] | None = None) -> list[Event]:
        """End the choice (end of sequence, length, stop); flushes held-back text. Idempotent."""
        events = [] if events is None else events
        if self.finished:
            return events
        if self.maybe_opens:  # ended while it could still have been a "<think>": it is content
            self.maybe_opens = False
            self._emit_content(self.head, events)
            self.head = ""
        if self.in_reasoning:
            text = self.pending
            if self.at_reasoning_start:
                text = text.lstrip()  # a partial "<think>" held back turned out to be text
            self.pending = ""
            if text.rstrip():
                events.append(Delta(self.index, "reasoning", text.rstrip()))
        if self.content_pending:
            events.append(Delta(self.index, self._content_kind(), self.content_pending))
        self.content_pending = ""
        self.finished = True
        events.append(Finish(self.index, reason, self.tokens, self.reasoning_tokens))
        return events

    # -- internals

    def _count_reasoning(self, token_ids) -> int:
        """Tokens of this piece that belong to the reasoning (up to and including `</think>`)."""
        ids = list(token_ids)
        if self.think_end_id is not None and self.think_end_id in ids:
            return ids.index(self.think_end_id) + 1
        return len(ids)

    def _content_kind(self) -> str:
        return "content" if self.split else "text"

    def _feed_chat(self, text: str, events: list[Event]) -> None:
        if self.maybe_opens:
            buf = self.head + text
            stripped = buf.lstrip()
            if len(stripped) < len(THINK_START) and THINK_START.startswith(stripped):
                self.head = buf  # empty so far, or maybe the start of a generated "<think>"
                return
            self.maybe_opens, self.head = False, ""
            if stripped.startswith(THINK_START):
                self.in_reasoning = self.at_reasoning_start = self.opened = True
            text = buf
        if not self.in_reasoning:
            self._emit_content(text, events)
            return
        buf = self.pending + text
        if self.at_reasoning_start:
            # drop leading whitespace and one generated "<think>" (the prompt usually opened it already)
            stripped = buf.lstrip()
            if THINK_START.startswith(stripped) and len(stripped) < len(THINK_START):
                self.pending = buf  # empty, or maybe the start of a generated "<think>"
                return
            if stripped.startswith(THINK_START):
                stripped = stripped[len(THINK_START) :].lstrip()
                if not stripped:
                    self.pending = ""
                    return
            buf = stripped
            self.at_reasoning_start = False
        end = buf.find(THINK_END)
        if end >= 0:
            reasoning, rest = buf[:end].rstrip(), buf[end + len(THINK_END) :]
            if reasoning:
                events.append(Delta(self.index, "reasoning", reasoning))
            self.pending = ""
            self.in_reasoning = False
            self._emit_content(rest, events)
            return
        keep = _held_suffix(buf, (THINK_END,))
        # trailing whitespace waits too: it is dropped if `</think>` comes next
        body = buf[: len(buf) - keep]
        ws = len(body) - len(body.rstrip())
        emit_upto = len(body) - ws
        if emit_upto > 0:
            events.append(Delta(self.index, "reasoning", buf[:emit_upto]))
        self.pending = buf[emit_upto:]

    def _emit_content(self, text: str, events: list[Event]) -> None:
        buf = self.content_pending + text
        if self.split and self.at_content_start:
            buf = buf.lstrip()
            if not buf:
                self.content_pending = ""
                return
            self.at_content_start = False
        if self.stops:
            hits = [(buf.find(s), s) for s in self.stops if s in buf]
            if hits:
                cut = min(hits)[0]
                if cut > 0:
                    events.append(Delta(self.index, self._content_kind(), buf[:cut]))
                self.content_pending = ""
                self.finish("stop", events)
                return
            keep = _held_suffix(buf, self.stops)
        else:
            keep = 0
        if len(buf) > keep:
            events.append(Delta(self.index, self._content_kind(), buf[: len(buf) - keep]))
        self.content_pending = buf[len(buf) - keep :]


def _held_suffix(buf: str, needles: tuple[str, ...]) -> int:
    """Length of the longest suffix of `buf` that is a proper prefix of one of `needles`."""
    best = 0
    for needle in needles:
        for k in range(min(len(needle) - 1, len(buf)), best, -1):
            if buf.endswith(needle[:k]):
                best = k
                break
    return best


# ----------------------------------------------------------------------------------------------
# the mailbox between the worker thread and one client


class RequestStream:
    """Events of one request, pushed by the worker thread and read by one consumer.

    The worker never blocks here: `push` appends under a lock and wakes the consumer only on
    the empty -> non-empty transition (one `call_soon_threadsafe` per burst, not per token).
    If the consumer falls behind by more than `max_pending` events, consecutive deltas of the
    same choice are merged, so memory stays bounded without dropping text.

    Read it with `async for events in stream` (asyncio; pass `loop`) or `for events in stream`
    (threads; `loop=None`). `cancel()` tells the worker to stop computing this request and
    closes the stream at once: a reader still iterating ends after what was already pushed,
    whatever the worker does next (its later pushes are dropped).
    """

    def __init__(self, n_choices: int, loop: asyncio.AbstractEventLoop | None = None, max_pending: int = 64):
        self.n_choices = n_choices
        self.max_pending = max_pending
        self._loop = loop
        self._events: collections.deque[Event] = collections.deque()
        self._lock = threading.Lock()
        self._async_wake = asyncio.Event() if loop is not None else None
        self._thread_wake = threading.Event()
        self._cancelled = threading.Event()
        self._open_choices = n_choices
        self.closed = False

    @property
    def cancelled(self) -> bool:
        """True once the consumer has gone."""
        return self._cancelled.is_set()

    def cancel(self) -> None:
        """Stop generating for this request (the client disconnected or gave up) and close the stream.

        Idempotent and callable from any thread.
        """
        if self._cancelled.is_set():
            return
        self._cancelled.set()
        with self._lock:
            was_open = not self.closed
            self.closed = True
        if was_open:
            self._wake()

    def push(self, events: list[Event], wake: bool = True) -> bool:
        """Append events (worker thread). Closes the stream after a Failure or the last Finish.

        Returns whether the consumer needs waking; with `wake=False` the caller wakes it (see
        `wake_streams`, one event-loop call for many streams).
        """
        if not events or self.closed:
            return False
        with self._lock:
            was_empty = not self._events
            for event in events:
                last = self._events[-1] if self._events else None
                if (
                    len(self._events) >= self.max_pending
                    and isinstance(event, Delta)
                    and isinstance(last, Delta)
                    and (last.index, last.kind) == (event.index, event.kind)
                ):
                    last.text += event.text
                else:
                    self._events.append(event)
                if isinstance(event, Finish):
                    self._open_choices -= 1
                if isinstance(event, Failure) or self._open_choices <= 0:
                    self.closed = True
        if was_empty and wake:
            self._wake()
        return was_empty

    def _wake(self) -> None:
        self._thread_wake.set()
        if self._loop is not None:
            try:
                self._loop.call_soon_threadsafe(self._async_wake.set)
            except RuntimeError:  # the event loop is closed: nobody is listening any more
                self._cancelled.set()

    def _set_async_wake(self) -> None:
        self._async_wake.set()

    def _drain(self) -> tuple[list[Event], bool]:
        with self._lock:
            events = list(self._events)
            self._events.clear()
            return events, self.closed

    async def __aiter__(self) -> AsyncIterator[list[Event]]:
        while True:
            await self._async_wake.wait()
            self._async_wake.clear()
            events, closed = self._drain()
            if events:
                yield events
            if closed:
                return

    def __iter__(self) -> Iterator[list[Event]]:
        while True:
            self._thread_wake.wait()
            self._thread_wake.clear()
            events, closed = self._drain()
            if events:
                yield events
            if closed:
                return


def wake_streams(streams: list[RequestStream]) -> None:
    """Wake the consumers of `streams` with one `call_soon_threadsafe` per event loop (not per stream)."""
    by_loop: dict[int, tuple[asyncio.AbstractEventLoop, list[RequestStream]]] = {}
    for stream in streams:
        stream._thread_wake.set()
        if stream._loop is not None:
            by_loop.setdefault(id(stream._loop), (stream._loop, []))[1].append(stream)
    for loop, group in by_loop.values():
        try:
            loop.call_soon_threadsafe(_set_all, group)
        except RuntimeError:  # the event loop is closed: nobody is listening any more
            for stream in group:
                stream._cancelled.set()


def _set_all(streams: list[RequestStream]) -> None:
    for stream in streams:
        stream._set_async_wake()


# ----------------------------------------------------------------------------------------------
# the worker


@dataclass
class _Job:
    prompts: list[list[int]]
    params: GenerationParams
    n: int
    stream: RequestStream
    submitted: float = field(default_factory=time.monotonic)

    @property
    def rows(self) -> int:
        return len(self.prompts) * self.n


@dataclass
class _Row:
    job: _Job
    prompt: list[int]
    parser: OutputParser


class Batcher:
    """Owns the engine in one worker thread and runs concurrent requests in one continuous batch.

    Args:
        engine: an `r1kit.engine.Engine` (the worker drives one `engine.session()`).
        make_sampling_params: `(GenerationParams, n) -> engine params` of one prompt; default
            `default_sampling_params`.
        think_end_id: id of `</think>`, to count reasoning tokens exactly.
        max_batch_rows: most sequences decoding at once (a larger single request runs alone).
        batch_window_s: how long an idle worker waits for more requests after the first arrives.
        admit_fraction, max_admit_wait_s: while decoding, pending requests join once they make up
            `admit_fraction` of the running rows or the oldest has waited `max_admit_wait_s`, so
            each prefill + merge (a copy of the batch's cache) serves several arrivals.

    `stats`: "batches" busy periods (idle -> busy), "rows" sequences admitted, "max_rows" most
    sequences decoding at once, "admissions" prefills, "steps" decode steps, "row_steps" the sum of
    the rows decoding at each step (row_steps / steps = mean batch size).
    """

    def __init__(
        self,
        engine: Any,
        *,
        make_sampling_params: Callable[[GenerationParams, int], Any] | None = None,
        think_end_id: int | None = None,
        max_batch_rows: int = 64,
        batch_window_s: float = 0.005,
        admit_fraction: float = 0.125,
        max_admit_wait_s: float = 0.02,
    ):
        self.engine = engine
        self.make_sampling_params = make_sampling_params or default_sampling_params
        self.think_end_id = think_end_id
        self.max_batch_rows = max_batch_rows
        self.batch_window_s = batch_window_s
        self.admit_fraction = admit_fraction
        self.max_admit_wait_s = max_admit_wait_s
        self._pending: collections.deque[_Job] = collections.deque()
        self._cond = threading.Condition()
        self._stopping = False
        self._thread: threading.Thread | None = None
        self.stats = {"batches": 0, "rows": 0, "max_rows": 0, "admissions": 0, "steps": 0, "row_steps": 0}
        self.timing = {"admit_s": 0.0, "step_s": 0.0, "dispatch_s": 0.0}  # worker time by phase

    # -- lifecycle

    def start(self) -> Batcher:
        """Start the worker thread (idempotent). Returns self."""
        if self._thread is None:
            self._thread = threading.Thread(target=self._loop, name="r1kit-batcher", daemon=True)
            self._thread.start()
        return self

    def stop(self, timeout: float = 5.0) -> None:
        """Ask the worker to exit and wait for it (at most `timeout` seconds).

        Queued requests and running rows end with a "server is shutting down" Failure; the worker
        exits after the decode step under way, so stopping takes about one step whatever is running.
        """
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None

    # -- API

    def submit(
        self,
        prompts: list[list[int]],
        params: GenerationParams,
        n: int = 1,
        loop: asyncio.AbstractEventLoop | None = None,
    ) -> RequestStream:
        """Queue a request: `n` choices per prompt (token ids), choice index = prompt * n + j.

        Returns the `RequestStream` its events arrive on. Thread-safe.
        """
        stream = RequestStream(len(prompts) * n, loop=loop)
        job = _Job([list(p) for p in prompts], params, n, stream)
        with self._cond:
            if self._stopping:
                stream.push([Failure("server is shutting down")])
                return stream
            self._pending.append(job)
            self._cond.notify_all()
        return stream

    def pending_rows(self) -> int:
        """Sequences waiting for the worker (not counting the batch being run)."""
        with self._cond:
            return sum(job.rows for job in self._pending)

    # -- worker

    def _loop(self) -> None:
        session = self.engine.session()
        rows: dict[int, _Row] = {}  # engine sequence id -> its row
        while True:
            jobs = self._admit(session)
            if jobs is None:
                return
            if self._stopping:
                self._abort(session, rows)
            t0 = time.perf_counter()
            if jobs:
                self._add(session, jobs, rows)
            if not session.has_work():
                continue
            t1 = time.perf_counter()
            try:
                self.stats["row_steps"] += session.active_rows
                deltas = session.step()
                self.stats["steps"] += 1
            except Exception as err:  # never let one bad step kill the server
                log.exception("generation failed")
                for job in {id(r.job): r.job for r in rows.values()}.values():
                    job.stream.push([Failure(f"generation failed: {type(err).__name__}")])
                rows.clear()
                session = self.engine.session()
                continue
            t2 = time.perf_counter()
            self._dispatch(session, deltas, rows)
            timing = self.timing
            timing["admit_s"] += t1 - t0
            timing["step_s"] += t2 - t1
            timing["dispatch_s"] += time.perf_counter() - t2

    def _abort(self, session, rows: dict[int, _Row]) -> None:
        """Shutting down: end every running request with a Failure and cancel its rows."""
        for job in {id(r.job): r.job for r in rows.values() if not r.parser.finished}.values():
            job.stream.push([Failure("server is shutting down")])
        for seq, row in rows.items():
            if not row.parser.finished:
                row.parser.finished = True
                session.cancel(seq)

    def _admit(self, session) -> list[_Job] | None:
        """Pending jobs that fit next to the running rows; blocks while there is nothing to do.

        Returns None when the worker should exit (stopping and nothing left to finish).
        """
        with self._cond:
            idle = not session.has_work()
            while idle and not self._pending and not self._stopping:
                self._cond.wait()
            if self._stopping:
                for job in self._pending:
                    job.stream.push([Failure("server is shutting down")])
                self._pending.clear()
                return None if idle else []  # `_abort` cancels the running rows; admit nothing
            if idle and self._pending:
                # a short window lets requests that arrive together share one prefill
                deadline = time.monotonic() + self.batch_window_s
                while (remaining := deadline - time.monotonic()) > 0 and not self._stopping:
                    if sum(job.rows for job in self._pending) >= self.max_batch_rows:
                        break
                    self._cond.wait(remaining)
            active = session.active_rows
            if not idle and active and self._pending:
                waiting = sum(job.rows for job in self._pending)
                oldest = time.monotonic() - self._pending[0].submitted
                if waiting < self.admit_fraction * active and oldest < self.max_admit_wait_s:
                    return []  # let a few more arrive: one prefill + merge for all of them
            free = self.max_batch_rows - active
            jobs: list[_Job] = []
            while self._pending:
                job = self._pending[0]
                if job.stream.cancelled:
                    self._pending.popleft()
                    continue
                if job.rows > free and (jobs or session.active_rows):
                    break  # first come, first served: wait for rows to free up
                jobs.append(self._pending.popleft())
                free -= job.rows
            if jobs and idle:
                self.stats["batches"] += 1
            return jobs

    def _add(self, session, jobs: list[_Job], rows: dict[int, _Row]) -> None:
        """Prefill requests into the running batch: one prefill and one merge for all of them.

        If that fails (one bad request), each request is retried alone so only the bad one fails.
        """
        prompts, params = [], []
        for job in jobs:
            sampling = self.make_sampling_params(job.params, job.n)
            prompts += job.prompts
            params += [sampling] * len(job.prompts)
        try:
            ids = session.add_many(prompts, params)
        except Exception as err:
            if len(jobs) > 1:
                for job in jobs:
                    self._add(session, [job], rows)
                return
            log.exception("could not start a request")
            jobs[0].stream.push([Failure(f"generation failed: {type(err).__name__}")])
            return
        self.stats["admissions"] += 1
        self.stats["rows"] += sum(job.rows for job in jobs)
        self.stats["max_rows"] = max(self.stats["max_rows"], session.active_rows)
        k = 0
        for job in jobs:
            for p, prompt in enumerate(job.prompts):
                for j, seq in enumerate(ids[k]):
                    rows[seq] = _Row(job, prompt, OutputParser(p * job.n + j, job.params, self.think_end_id))
                k += 1

    def _dispatch(self, session, deltas, rows: dict[int, _Row]) -> None:
        """Feed one step's deltas to the requests' parsers and mailboxes; cancel rows nobody reads."""
        touched: dict[int, tuple[_Job, list[Event]]] = {}
        for delta in deltas:
            row = rows.get(delta.seq_index)
            if row is None:
                continue
            if delta.finished:
                rows.pop(delta.seq_index)
                session.pop_completion(delta.seq_index)  # the parser has everything; free it
            if row.parser.finished:
                continue
            events = row.parser.feed(delta.text, delta.token_ids)
            if delta.finished:
                row.parser.finish("length" if delta.finish_reason == "length" else "stop", events)
            elif row.parser.finished:
                session.cancel(delta.seq_index)  # a stop string in the answer: stop computing the row
            touched.setdefault(id(row.job), (row.job, []))[1].extend(events)
        wake_streams([job.stream for job, events in touched.values() if job.stream.push(events, wake=False)])
        for seq, row in rows.items():
            if row.job.stream.cancelled and not row.parser.finished:
                row.parser.finished = True
                session.cancel(seq)


def default_sampling_params(params: GenerationParams, n: int) -> Any:
    """`r1kit.engine.SamplingParams` of one request prompt with `n` samples.

    Stop strings are not passed: `OutputParser` applies them (to the answer only, in chat mode).
    """
    from r1kit.engine import SamplingParams

    return SamplingParams(
        n=n,
        temperature=params.temperature,
        top_p=params.top_p,
        top_k=params.top_k,
        max_new_tokens=params.max_tokens,
        seed=params.seed,
        max_thinking_tokens=params.thinking_budget,
        min_thinking_tokens=params.min_thinking_tokens or 0,
    )
