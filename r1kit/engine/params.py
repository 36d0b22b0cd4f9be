"""The engine's public data types: what a call asks for (`SamplingParams`) and what comes back
(`Completion` at the end, `StreamDelta` step by step)."""

from __future__ import annotations

from dataclasses import dataclass, field


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
        ignore_eos: do not stop on the end-of-turn ids (`Engine.eos_token_ids`: the tokenizer's EOS and
            the model's generation_config.json ids).
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
