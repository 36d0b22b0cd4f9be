"""Host-side state of one output sequence: incremental detokenization, stop strings, the final `Completion`.

The device knows only token ids, EOS / stop token ids and length limits; everything about text
(streamed deltas that never split a character, stop strings, held-back text that could still
become one) lives here, one `SequenceState` per sequence.
"""

from __future__ import annotations

from r1kit.engine.params import Completion, SamplingParams

# finish codes the device copies to the host each step (0: still running)
FINISH_REASONS = {1: "stop", 2: "length"}


class Detokenizer:
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


class SequenceState:
    """Host-side record of one output sequence.

    Attributes:
        seq_index: the sequence's id: its position in the call's output (prompt-major), or its
            session-wide id in an `EngineSession`.
        prompt_index, sample_index: its prompt (in the call or the session) and which of its `n` samples.
        params: the prompt's `SamplingParams`.
        num_prompt_tokens: prompt length in tokens.
        key_index: which random stream of its seed the sequence draws from (see `r1kit.sampling`).
        finish_reason: None while it runs.
        length: tokens kept in the completion so far.
    """

    def __init__(
        self,
        seq_index: int,
        prompt_index: int,
        sample_index: int,
        params: SamplingParams,
        n_prompt: int,
        key_index: int | None = None,
    ):
        self.seq_index = seq_index
        self.prompt_index = prompt_index
        self.sample_index = sample_index
        self.params = params
        self.num_prompt_tokens = n_prompt
        self.key_index = seq_index if key_index is None else key_index
        self.finish_reason: str | None = None
        self.length = 0
        self.detok: Detokenizer | None = None
        self.emitted = 0  # characters of detok.text already streamed
        self.stop_at: int | None = None  # character index of the first stop string
        self.max_stop = max((len(s) for s in params.stop), default=0)

    def track_text(self, tokenizer) -> None:
        """Decode this sequence's text as it grows (streaming, stop strings)."""
        self.detok = Detokenizer(tokenizer)

    def renumber(self, seq_offset: int, prompt_offset: int) -> None:
        """Shift the sequence and prompt ids (a session numbers requests across admissions)."""
        self.seq_index += seq_offset
        self.prompt_index += prompt_offset

    def advance(self, new: list[int], code: int, count: int, cancelled: bool) -> tuple[str | None, str, bool]:
        """Host-side bookkeeping of one step: the row got tokens `new`, finish `code`, `count` tokens so far.

        Returns (finish reason or None, newly visible text, whether the device row must be stopped: a
        cancel or a stop string the device does not know about).
        """
        self.length = count
        reason = FINISH_REASONS.get(code)
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

    def completion(self, ids: list[int], logp: list[float], mask: list, tokenizer, eos_ids=()) -> Completion:
        """The finished `Completion` from this sequence's output rows (already cut to its length);
        `eos_ids`: the engine's end-of-turn ids (a final one is kept in token_ids, not in text)."""
        text = ""
        if tokenizer is not None:
            n = len(ids)
            ended_by_token = self.finish_reason == "stop" and self.stop_at is None and n > 0
            stop_ids = set(self.params.stop_token_ids) | (set() if self.params.ignore_eos else set(eos_ids))
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
