"""`Engine`: the entry point (`generate`, `stream`, `session`), and the loop of one generation call.

A call builds one `DecodeBatch`, prefills it and steps it until every sequence has finished.
Rows that finish keep riding along until enough of them have finished (`compact_fraction`), then
the batch is compacted (`DecodeBatch.select`). Text is decoded only for rows that need it
(streaming, stop strings); `generate` decodes once at the end.
"""

from __future__ import annotations

import inspect
from collections.abc import Iterator, Sequence

import torch

from r1kit.engine.batch import DecodeBatch
from r1kit.engine.decode import COMPILE_CHOICES, DecodeStep
from r1kit.engine.params import Completion, SamplingParams, StreamDelta
from r1kit.engine.session import EngineSession


class GenerationStream:
    """Iterator over the steps of one generation call; each item is a list of `StreamDelta`.

    `cancel(seq_index)` ends a sequence at the next step (finish_reason "cancelled", reported in
    that step's delta). After the iteration ends, `completions()` returns the final `Completion` list.

    Args:
        batch: the call's `DecodeBatch` (not prefilled yet).
        compact_fraction: drop finished rows once at least this fraction of the batch has finished.
        stream: build the per-step deltas (False: every step yields an empty list, as `generate` wants).

    Attributes:
        stats: counters of the run: steps, tokens, speculative drafts proposed and accepted, and
            `acceptance_rate` when there were drafts.
    """

    def __init__(self, batch: DecodeBatch, compact_fraction: float, stream: bool = True):
        self._batch = batch
        self._compact_fraction = compact_fraction
        self._cancelled: set[int] = set()
        self.stats: dict[str, float] = {"steps": 0, "tokens": 0, "drafts": 0, "accepted": 0}
        self._steps = self._run(stream)

    def __iter__(self) -> Iterator[list[StreamDelta]]:
        return self._steps

    def __next__(self) -> list[StreamDelta]:
        return next(self._steps)

    def cancel(self, seq_index: int) -> None:
        """Stop sequence `seq_index`; it finishes with reason "cancelled" at the next step."""
        self._cancelled.add(seq_index)

    def completions(self) -> list[Completion]:
        """The finished completions (drains the stream first if needed)."""
        for _ in self._steps:
            pass
        return self._batch.completions()

    def _run(self, stream: bool) -> Iterator[list[StreamDelta]]:
        """Run the generation; yield the per-step deltas (empty lists when `stream` is False)."""
        batch, stats = self._batch, self.stats
        with torch.no_grad():
            text = batch.tokenizer is not None
            track_text = [text and (stream or bool(s.params.stop)) for s in batch.seqs]
            every_row = stream or any(track_text)
            for s, track in zip(batch.seqs, track_text):
                if track:
                    s.track_text(batch.tokenizer)
            n_live = len(batch.seqs)
            host = batch.prefill()  # the first token comes from the prefill's logits
            while True:
                step = host.tolist()
                tok_b, codes = step[1], step[2]
                stats["steps"] += 1
                if batch.speculative and stats["steps"] > 1:
                    stats["drafts"] += n_live
                    stats["accepted"] += sum(1 for b in tok_b if b >= 0)
                if every_row or self._cancelled:
                    rows = range(len(batch.row_seqs))
                else:  # fast path: only rows that just finished need host-side work
                    rows = [b for b, c in enumerate(codes) if c]
                deltas, finished = batch.advance(step, rows, self._cancelled, emit=stream)
                n_live -= len(finished)
                yield deltas
                if n_live == 0:
                    break
                keep = [b for b, s in enumerate(batch.row_seqs) if s.finish_reason is None]
                dropped = len(batch.row_seqs) - len(keep)
                if dropped >= max(1, self._compact_fraction * len(batch.row_seqs)):
                    batch.select(keep)
                host = batch.step()
            stats["tokens"] = sum(s.length for s in batch.seqs)
            if stats["drafts"]:
                stats["acceptance_rate"] = stats["accepted"] / stats["drafts"]


def _resolve_eos_ids(model, tokenizer, explicit) -> tuple[int, ...]:
    """`explicit` when given, else the tokenizer's EOS then the model's end-of-turn ids (distinct, in order)."""
    from r1kit.model.hf import token_ids

    vocab = getattr(getattr(model, "config", None), "vocab_size", None)
    if explicit is not None:
        return token_ids(list(explicit) if not isinstance(explicit, int) else explicit, vocab, "Engine")
    eos = getattr(tokenizer, "eos_id", None)
    ids = [*([eos] if eos is not None else []), *getattr(model, "generation_eos_ids", ())]
    return tuple(dict.fromkeys(ids))


def _compile_choice(explicit: str | None) -> str:
    """`explicit`, else $R1KIT_ENGINE_COMPILE, else "auto"; a value not in COMPILE_CHOICES is a UserError."""
    import os

    from r1kit.config import UserError

    value = explicit if explicit is not None else os.environ.get("R1KIT_ENGINE_COMPILE", "auto")
    if value not in COMPILE_CHOICES:
        where = "Engine(compile=...)" if explicit is not None else "R1KIT_ENGINE_COMPILE"
        raise UserError(f"{where} must be one of {', '.join(COMPILE_CHOICES)}; got {value!r}")
    return value


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
        eos_token_ids: the token ids that end a completion (an int or a list). None: the
            tokenizer's `eos_id` plus the model's own end-of-turn ids (`model.generation_eos_ids`,
            which `Transformer.from_pretrained` reads from generation_config.json, else config.json),
            so a model built without a tokenizer still stops at e.g. `<|im_end|>`.

    Attributes:
        last_stats: `GenerationStream.stats` of the last `generate` call.
        eos_token_ids: the resolved end-of-turn ids (a tuple; `SamplingParams.ignore_eos` ignores them).
        last_logits_only: whether the model's forward takes `logits_to_keep` (r1kit's Transformer),
            so a prefill computes only the last position's logits.
        decoder: the `DecodeStep` that runs one-token decode steps on r1kit's `Transformer` (None for
            other models, which decode through `model.forward`).

    Decode speed (r1kit's `Transformer` only; README "Decode step"):
        compile: "auto" (default; the `R1KIT_ENGINE_COMPILE` environment variable overrides it),
            "on" or "off": whether the decode step runs through `torch.compile` (`DecodeStep`).
        head_dtype: "model" or "bf16": decode with a bf16 copy of the output head (`DecodeWeights`).
        fuse_weights: decode with fused q/k/v and gate/up copies; None = on CUDA only (`DecodeStep`).
    """

    def __init__(
        self,
        model,
        tokenizer=None,
        compact_fraction: float = 0.125,
        eos_token_ids=None,
        compile: str | None = None,
        head_dtype: str = "model",
        fuse_weights: bool | None = None,
    ):
        self.model = model
        self.decoder = None
        if DecodeStep.supports(model):
            self.decoder = DecodeStep(model, _compile_choice(compile), head_dtype, fuse_weights=fuse_weights)
        self.tokenizer = tokenizer
        self.eos_token_ids = _resolve_eos_ids(model, tokenizer, eos_token_ids)
        self.compact_fraction = compact_fraction
        self.last_stats: dict[str, float] = {}
        try:
            self.last_logits_only = "logits_to_keep" in inspect.signature(model.forward).parameters
        except (TypeError, ValueError):
            self.last_logits_only = False

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def generate(
        self,
        prompts: Sequence[str | Sequence[int]],
        params: SamplingParams | Sequence[SamplingParams] | None = None,
        *,
        keys_per_request: bool = False,
    ) -> list[Completion]:
        """Generate completions for every prompt.

        Args:
            prompts: P prompts, each a (templated) string or a list of token ids.
            params: one `SamplingParams` for all prompts, or one per prompt (each with its own
                n, stops, limits, temperature...). Default: `SamplingParams()`.
            keys_per_request: key each sample's random stream by (its request's seed, its index
                among the request's n) instead of its row in the call, so a request with its own
                seed gets the same samples whatever else is in the call (an evaluation chunked
                any way); requests sharing one seed then share streams.
        Returns:
            sum(n) completions, prompt-major: prompt 0's samples first, then prompt 1's, ...
        """
        batch = DecodeBatch(self, prompts, params, keys_per_request=keys_per_request)
        run = GenerationStream(batch, self.compact_fraction, stream=False)
        for _ in run:
            pass
        self.last_stats = run.stats
        return run.completions()

    def stream(
        self,
        prompts: Sequence[str | Sequence[int]],
        params: SamplingParams | Sequence[SamplingParams] | None = None,
    ) -> GenerationStream:
        """Like `generate` but step by step: iterate to get per-step lists of `StreamDelta`."""
        return GenerationStream(DecodeBatch(self, prompts, params), self.compact_fraction)

    def session(self) -> EngineSession:
        """A continuous-batching session: requests join a running decode batch (`EngineSession`)."""
        return EngineSession(self)
