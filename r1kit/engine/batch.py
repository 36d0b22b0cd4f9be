"""The decode batch: prompts prefilled once, their KV cache and every per-row tensor of a running batch.

`DecodeBatch.prefill` left-pads the distinct prompts into one batch, prefills each prompt once and
fans its KV cache out to its `n` samples (`cache.reorder`), then samples each row's first token.
Every `step` feeds one token per row (two with MTP speculative decoding), samples on the device,
and copies a few integers per row to the host: the new tokens and a finish code (the "host
copy", a (4, B) tensor: first token, second token or -1, finish code, tokens so far). Rows that
finish keep riding along until the caller drops them with `select`; `merge` appends the rows of
another, freshly prefilled batch (continuous batching).

Output tables (tokens, log-probs, mask, precomputed uniforms) have one row per sequence of the
call; `rows` maps each batch row to its table row. `select(..., tables=True)` compacts the tables
too, so that table row b is batch row b (what `merge` needs).
"""

from __future__ import annotations

import torch
from torch import Tensor

from r1kit.engine.budget import BudgetForcing
from r1kit.engine.params import Completion, SamplingParams, StreamDelta
from r1kit.engine.sequence import SequenceState
from r1kit.sampling import RowSampling, Workspace, row_keys, row_uniforms


def _encode_prompts(tokenizer, prompts) -> tuple[list[list[int]], list[bool]]:
    """Token ids of each prompt, and whether it ends inside an open thinking block."""
    prompt_ids, in_think = [], []
    for p in prompts:
        if isinstance(p, str):
            if tokenizer is None:
                raise ValueError("string prompts need a tokenizer")
            ids, text = tokenizer.encode(p), p
        else:
            ids = [int(t) for t in p]
            text = tokenizer.decode(ids) if tokenizer is not None else ""
        if not ids:
            raise ValueError("empty prompt")
        prompt_ids.append(ids)
        # the R1 generation prompt ends with "<think>\n": generation starts inside the block
        in_think.append(text.rfind("<think>") > text.rfind("</think>"))
    return prompt_ids, in_think


class DecodeBatch:
    """The state of one batch of sequences: prompts, per-row tensors, KV cache and output buffers.

    Args:
        engine: the `Engine` (its model, tokenizer, device and `last_logits_only`).
        prompts: P prompts, each a string or token ids.
        params: one `SamplingParams` for all prompts or one per prompt; None = defaults.
        keys_per_request: key each sequence's random stream by its sample index within its
            prompt (a session's requests) instead of its position in the call.

    Attributes:
        seqs: every sequence of the call, in output order (prompt-major).
        row_seqs: the sequence of each current batch row (shrinks with `select`, grows with `merge`).
        speculative: whether the batch drafts with the MTP head.
    """

    def __init__(self, engine, prompts, params, keys_per_request: bool = False):
        if not prompts:
            raise ValueError("no prompts")
        self.model, self.tokenizer = engine.model, engine.tokenizer
        self.eos_ids = list(engine.eos_token_ids)
        self.last_logits_only = engine.last_logits_only
        self.decoder = getattr(engine, "decoder", None)
        params = params if params is not None else SamplingParams()
        per_prompt = [params] * len(prompts) if isinstance(params, SamplingParams) else list(params)
        if len(per_prompt) != len(prompts):
            raise ValueError(f"{len(prompts)} prompts but {len(per_prompt)} SamplingParams")
        self.params = per_prompt
        self.device = engine.device
        self.dtype = next(self.model.parameters()).dtype
        self.prompt_ids, in_think_prompt = _encode_prompts(self.tokenizer, prompts)

        self.seqs: list[SequenceState] = []
        for i, (ids, sp) in enumerate(zip(self.prompt_ids, per_prompt)):
            for j in range(sp.n):
                key = j if keys_per_request else None
                self.seqs.append(SequenceState(len(self.seqs), i, j, sp, len(ids), key_index=key))
        self.row_seqs = list(self.seqs)
        if self.tokenizer is None and any(s.params.stop or s.params.uses_budget_forcing for s in self.seqs):
            raise ValueError("stop strings and budget forcing need a tokenizer")
        self.speculative = any(sp.speculative for sp in per_prompt)
        self._work = Workspace()  # the sampler's (rows, vocab) buffers, reused across steps
        if self.speculative and not all(sp.speculative for sp in per_prompt):
            raise ValueError("speculative decoding is all or nothing within one call")
        if self.speculative and getattr(self.model, "mtp_logits", None) is None:
            raise ValueError("speculative decoding needs a model with an MTP head (mtp_logits)")
        self.in_think_rows = [in_think_prompt[s.prompt_index] for s in self.seqs]

    # ---------------------------------------------------------------- set-up
    def prefill(self) -> Tensor:
        """Prefill, fan out, allocate the per-row state and sample each row's first token.

        Returns:
            the (4, R) host copy of the first step (see the module docstring).
        """
        return self._plain_step(self._prefill())

    def _prefill(self) -> Tensor:
        """Run the prompts through the model; returns the (R, V) logits of each row's first token."""
        seqs = self.seqs
        lens = [len(ids) for ids in self.prompt_ids]
        width = max(lens)
        self.max_new = max(s.params.max_new_tokens for s in seqs)
        slots = self.max_new * (2 if self.speculative else 1) + 2
        ids, mask = self._padded_prompts(width, width + slots)
        self.padded = min(lens) != width
        positions = (mask[:, :width].cumsum(-1) - 1).clamp_(min=0)
        self.cache = self.model.new_cache(
            len(lens), width + slots, device=self.device, dtype=self._cache_dtype()
        )
        if self.decoder is not None:
            self.decoder.begin()  # fused decode weights current with this call's model weights
        attn = mask[:, :width] if self.padded else None
        # only the last position's logits are needed (the first token of each row)
        keep = {"logits_to_keep": 1} if self.last_logits_only else {}
        if self.speculative:
            logits, hidden = self.model(
                ids, attention_mask=attn, positions=positions, cache=self.cache, return_hidden=True, **keep
            )
        else:
            logits = self.model(ids, attention_mask=attn, positions=positions, cache=self.cache, **keep)
        fan_out = torch.tensor([s.prompt_index for s in seqs], device=self.device)
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
        self._init_rows(mask.index_select(0, fan_out))
        if self.speculative:
            self.has_mask = self.padded
            self.draft = None
            self.h_last = hidden[:, -1:].index_select(0, fan_out)
        return logits

    def _cache_dtype(self) -> torch.dtype:
        """The KV cache's dtype: the model's, except that a half-precision model with grouped-query attention
        on a CPU decodes over an fp32 cache (twice the cache memory). There a bf16 batched matmul at decode
        shapes (a few query rows per kv head) measured 2-4x slower than fp32 and copied the cache slice it
        read at every step; attention over an fp32 cache runs in fp32 (docs/LOG.md, 2026-12-08)."""
        from r1kit.model.attention import Attention

        half = self.dtype in (torch.bfloat16, torch.float16)
        layers = getattr(getattr(self.model, "model", None), "layers", None)
        gqa = layers is not None and all(type(b.self_attn) is Attention for b in layers)
        return torch.float32 if half and self.device.type == "cpu" and gqa else self.dtype

    def _padded_prompts(self, width: int, max_len: int) -> tuple[Tensor, Tensor]:
        """(P, width) left-padded prompt ids and the (P, max_len) attention mask (1 from `width` on)."""
        pad = getattr(self.tokenizer, "pad_id", None) or 0
        ids = torch.full((len(self.prompt_ids), width), pad, dtype=torch.long)
        mask = torch.zeros((len(self.prompt_ids), max_len), dtype=torch.long)
        mask[:, width:] = 1
        for i, p in enumerate(self.prompt_ids):
            ids[i, width - len(p) :] = torch.tensor(p)
            mask[i, width - len(p) : width] = 1
        return ids.to(self.device), mask.to(self.device)

    def _init_rows(self, attn: Tensor) -> None:
        """Per-row state, batch R (compacted along dim 0 as rows finish), and the output tables."""
        dev, seqs = self.device, self.seqs
        self.rows = torch.arange(len(seqs), device=dev)
        self.attn = attn
        self.pos = torch.tensor([s.num_prompt_tokens for s in seqs], device=dev)
        self.count = torch.zeros(len(seqs), dtype=torch.long, device=dev)
        self.live = torch.ones(len(seqs), dtype=torch.bool, device=dev)
        self.limit = torch.tensor([s.params.max_new_tokens for s in seqs], device=dev)
        self.sampling = RowSampling(
            torch.tensor([float(s.params.temperature) for s in seqs], device=dev),
            torch.tensor([s.params.top_k for s in seqs], device=dev),
            torch.tensor([float(s.params.top_p) for s in seqs], device=dev),
        )
        self.uniforms = self._uniform_tables()
        self.stop_ids = self._stop_table()
        self.budget = None
        if any(s.params.uses_budget_forcing for s in seqs):
            self.budget = BudgetForcing.for_rows(seqs, self.in_think_rows, self.tokenizer, dev)
        # output buffers over all R rows (+2 scratch columns for rows that already finished)
        self.out_tokens = torch.zeros((len(seqs), self.max_new + 2), dtype=torch.long, device=dev)
        self.out_logp = torch.zeros((len(seqs), self.max_new + 2), dtype=torch.float32, device=dev)
        self.out_mask = torch.zeros((len(seqs), self.max_new + 2), dtype=torch.bool, device=dev)

    def _uniform_tables(self) -> list[Tensor]:
        """(R, max_new + 2) uniforms of every token a row may draw, one table per random stream."""
        dev, seqs = self.device, self.seqs
        seeds = {
            id(sp): sp.seed if sp.seed is not None else int(torch.randint(0, 2**31, ())) for sp in self.params
        }
        keys = row_keys(
            torch.tensor([seeds[id(s.params)] & 0xFFFFFFFF for s in seqs], device=dev),
            torch.tensor([s.key_index for s in seqs], device=dev),
        )  # one elementwise hash for every row (one call per row cost ~5 ms at 64 rows)
        # every uniform a row may draw, hashed at once: one gather per step instead of ~25 tiny integer ops
        steps = torch.arange(self.max_new + 2, device=dev)[None]
        return [row_uniforms(keys[:, None], steps, stream) for stream in range(1 + self.speculative)]

    def _stop_table(self) -> Tensor | None:
        """(R, k) token ids that end each row (its stop_token_ids, then the EOS ids unless ignored; -1 pads)."""
        stop_ids = [
            [*s.params.stop_token_ids, *([] if s.params.ignore_eos else self.eos_ids)] for s in self.seqs
        ]
        k = max(len(x) for x in stop_ids)
        return (
            torch.tensor([x + [-1] * (k - len(x)) for x in stop_ids], device=self.device) if k > 0 else None
        )

    # ---------------------------------------------------------------- decoding
    def step(self) -> Tensor:
        """One decode step for every row; returns the (4, B) host copy."""
        return self._speculative_step() if self.speculative else self._plain_step(self._forward())

    def advance(
        self, host: list[list[int]], rows, cancelled: set[int], emit: bool
    ) -> tuple[list[StreamDelta], list[int]]:
        """Host-side bookkeeping of one step for batch rows `rows` (those not finished yet).

        Args:
            host: the host copy as lists (`host.tolist()`).
            rows: the batch rows to look at (rows whose finish code is 0 and that track no text
                and are not cancelled may be skipped).
            cancelled: sequence ids to end now ("cancelled").
            emit: whether to build the `StreamDelta`s.
        Returns:
            (deltas, the batch rows that finished at this step). Rows ended by the host (a cancel,
            a stop string) are stopped on the device too.
        """
        tok_a, tok_b, codes, counts = host
        deltas: list[StreamDelta] = []
        kill, finished = [], []
        for b in rows:
            s = self.row_seqs[b]
            if s.finish_reason is not None:
                continue
            new = [tok_a[b]] if tok_b[b] < 0 else [tok_a[b], tok_b[b]]
            reason, text, stop_row = s.advance(new, codes[b], counts[b], s.seq_index in cancelled)
            if stop_row:
                kill.append(b)
            if reason is not None:
                finished.append(b)
            if emit:
                deltas.append(StreamDelta(s.seq_index, text, new, reason is not None, reason))
        if kill:
            self.live[torch.tensor(kill, device=self.device)] = False
        return deltas, finished

    def _sample(self, logits: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Sample + budget forcing for the current batch: (tokens, logprobs, sampled-mask), each (B,)."""
        uniforms = None if self.sampling.all_greedy else self._uniforms(0)
        tokens, logp = self.sampling.sample(logits, uniforms, self._work)
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
        """Sample one token per row from `logits` (B, V); return the (4, B) host copy."""
        tokens, logp, sampled = self._sample(logits)
        code = self._record(tokens, logp, sampled)
        self.next_input = tokens
        return torch.stack((tokens, torch.full_like(tokens, -1), code, self.count)).cpu()

    def _forward(self) -> Tensor:
        """Feed `next_input` (B,) at each row's position; return the (B, V) next-token logits."""
        if self.decoder is not None:
            logits = self.decoder(self.next_input, self.pos, self.attn if self.padded else None, self.cache)
            self.pos = self.pos + 1
            return logits
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
    def _mtp(self, hidden: Tensor, next_ids: Tensor, positions: Tensor) -> Tensor:
        """MTP logits (B, T, V) at the next T MTP slots."""
        length = self.cache.mtp_length
        attn = self.attn[:, : length + next_ids.shape[1]] if self.has_mask else None
        return self.model.mtp_logits(
            hidden, next_ids, positions=positions, attention_mask=attn, cache=self.cache
        )

    def _speculative_step(self) -> Tensor:
        """One draft-and-verify step; returns the (4, B) host copy."""
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

    # ---------------------------------------------------------------- reshaping: select and merge
    def select(self, keep: list[int], cache: bool = True, tables: bool = False) -> Tensor:
        """Keep batch rows `keep` (in that order); returns them as a (B',) index tensor.

        Args:
            keep: batch rows to keep.
            cache: reorder the KV cache too (False: the caller copies the kept rows itself, as `merge` does).
            tables: also compact the output and uniform tables, so that table row b is batch row b.
        """
        index = torch.tensor(keep, device=self.device)
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
            if self.draft is None:
                self.h_last = self.h_last[index]
            else:
                self.draft = self.draft[index]
        self.row_seqs = [self.row_seqs[b] for b in keep]
        if tables:
            r = self.rows
            self.out_tokens, self.out_logp, self.out_mask = (
                self.out_tokens[r],
                self.out_logp[r],
                self.out_mask[r],
            )
            self.uniforms = [u[r] for u in self.uniforms]
            self.rows = torch.arange(len(r), device=self.device)
        return index

    def merge(self, other: DecodeBatch, keep: list[int] | None = None) -> None:
        """Append the rows of a freshly prefilled batch `other` after this batch's, positions end-aligned.

        The two caches are copied into one whose rows end at the same slot (`concat_aligned`); the
        slots before every row's first real token are dropped, so the cache does not grow with each
        merge. Every per-row tensor and table is concatenated in the same order.

        Args:
            other: a batch after `prefill` (its tables are its own: table row b = batch row b), not speculative.
            keep: rows of this batch to keep (the finished ones dropped in the same copy); None = all.
                This batch's tables must already be compacted (`select(..., tables=True)`).
        """
        cache_rows = None if keep is None else self.select(keep, cache=False, tables=True)
        n_old, n_new = len(self.row_seqs), len(other.row_seqs)
        old_len, new_len = self.cache.length, other.cache.length
        # slots before every row's first real token are dead: drop them (keeps the cache from growing)
        real = self.attn[:, :old_len] != 0  # per-row state is already compacted; the cache is not
        first = int(real.int().argmax(-1).min()) if self.padded else 0
        span = old_len - first
        length = max(span, new_len)
        remaining = int(torch.cat([self.limit - self.count, other.limit - other.count]).max())
        max_len = length + remaining + 2
        concat = getattr(type(self.cache), "concat_aligned", None)
        if concat is None:
            raise ValueError("continuous batching needs a cache with concat_aligned (r1kit KVCache)")
        self.cache = concat([(self.cache, first, cache_rows), (other.cache, 0)], length, max_len)
        attn = torch.zeros((n_old + n_new, max_len), dtype=self.attn.dtype, device=self.device)
        attn[:n_old, length - span : length] = self.attn[:, first:old_len]
        attn[n_old:, length - new_len : length] = other.attn[:, :new_len]
        attn[:, length:] = 1
        self.attn, self.padded = attn, True
        for name in ("pos", "count", "live", "limit", "next_input"):
            setattr(self, name, torch.cat([getattr(self, name), getattr(other, name)]))
        self.stop_ids = _cat_padded(self.stop_ids, other.stop_ids, n_old, n_new, -1)
        self.sampling = self.sampling.concat(other.sampling)
        self.budget = self._merged_budget(other)
        width = max(self.out_tokens.shape[1], other.out_tokens.shape[1])
        for name in ("out_tokens", "out_logp", "out_mask"):
            setattr(
                self, name, _cat_padded(getattr(self, name), getattr(other, name), n_old, n_new, 0, width)
            )
        self.uniforms = [
            _cat_padded(u, v, n_old, n_new, 0, width) for u, v in zip(self.uniforms, other.uniforms)
        ]
        self.max_new = width - 2
        self.rows = torch.arange(n_old + n_new, device=self.device)
        self.row_seqs += other.row_seqs

    def _merged_budget(self, other: DecodeBatch) -> BudgetForcing | None:
        """Budget-forcing state of the merged batch (neutral rows for a side that has none)."""
        if self.budget is None and other.budget is None:
            return None
        if self.budget is None:
            mine = other.budget.neutral(self.row_seqs, self.tokenizer, self.device)
            return mine.concat(other.budget)
        if other.budget is None:
            return self.budget.concat(self.budget.neutral(other.row_seqs, other.tokenizer, other.device))
        return self.budget.concat(other.budget)

    # ---------------------------------------------------------------- results
    def completions(self) -> list[Completion]:
        """Every sequence's `Completion`, in output order (one host transfer of the output buffers).
        Only for a batch that was never merged nor table-compacted (one call's `generate`/`stream`)."""
        tokens, logp, mask = self.out_tokens.tolist(), self.out_logp.tolist(), self.out_mask.tolist()
        out = []
        for s in self.seqs:
            n, i = s.length, s.seq_index
            out.append(s.completion(tokens[i][:n], logp[i][:n], mask[i][:n], self.tokenizer, self.eos_ids))
        return out

    def completions_of(self, batch_rows: list[int]) -> list[Completion]:
        """The `Completion`s of the finished sequences at batch rows `batch_rows`."""
        rows = self.rows[torch.tensor(batch_rows, device=self.device)]
        tokens, logp = self.out_tokens[rows].tolist(), self.out_logp[rows].tolist()
        mask = self.out_mask[rows].tolist()
        out = []
        for i, b in enumerate(batch_rows):
            s = self.row_seqs[b]
            n = s.length
            out.append(s.completion(tokens[i][:n], logp[i][:n], mask[i][:n], self.tokenizer, self.eos_ids))
        return out


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
