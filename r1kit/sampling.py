"""Token sampling for the engine: per-row temperature / top-k / top-p and a counter-based RNG.

Randomness is a pure function of (seed, sequence index, token index, stream): each row draws its
uniform number from a small integer hash instead of a shared `torch.Generator`. The draws of a row
therefore do not depend on which other rows share its batch, so dropping finished rows (batch
compaction), fanning one prefill out to `n` samples, or repeating a prompt `n` times all give the
same tokens for the same seed. One uniform per row per step is enough: tokens are drawn by
inverse-CDF (a cumulative sum and a `searchsorted`) over the vocabulary in its natural order (also
for rows filtered by top-k/top-p), which also works the same on CPU and CUDA.
"""

from __future__ import annotations

import torch
from torch import Tensor

_MASK32 = 0xFFFFFFFF


def _mul32(x: Tensor, m: int) -> Tensor:
    """(x * m) mod 2**32 for int64 tensors holding 32-bit values, without int64 overflow."""
    high = ((x >> 16) * m) & 0xFFFF
    return ((high << 16) + (x & 0xFFFF) * m) & _MASK32


def hash32(x: Tensor) -> Tensor:
    """The `lowbias32` integer hash (Wellons) on int64 tensors holding 32-bit values."""
    x = x & _MASK32
    x = x ^ (x >> 16)
    x = _mul32(x, 0x7FEB352D)
    x = x ^ (x >> 15)
    x = _mul32(x, 0x846CA68B)
    return x ^ (x >> 16)


def row_uniforms(row_keys: Tensor, counters: Tensor, stream: int = 0) -> Tensor:
    """Uniform numbers in [0, 1), one per row, reproducible from integers alone.

    Args:
        row_keys: (B,) int64, a hash of (seed, sequence index) per row (see `row_keys`).
        counters: (B,) int64, the index of the token being drawn in each row's completion.
        stream: which independent draw of the same token (0 = sampling, 1.. = speculative tests).
    Returns:
        (B,) float32 in [0, 1) with 24 random bits.
    """
    x = hash32(row_keys ^ hash32(counters * 4 + stream + 0x27D4EB2F))
    return (x >> 8).to(torch.float32) * (1.0 / (1 << 24))


def row_keys(seed: int | Tensor, seq_index: Tensor) -> Tensor:
    """(B,) int64 keys of the rows' random streams from a seed (one int, or (B,) int64 of 32-bit values, one
    per row) and (B,) int64 sequence indices. Elementwise: a batch gets the keys each row would get alone."""
    seeds = torch.full_like(seq_index, seed & _MASK32) if isinstance(seed, int) else seed.to(seq_index)
    return hash32(hash32(((seeds & _MASK32) + 0x9E3779B9) & _MASK32) ^ (seq_index + 0x85EBCA6B))


def filter_logits(logits: Tensor, top_k: Tensor | None, top_p: Tensor | None) -> tuple[Tensor, Tensor]:
    """Sort logits descending and mask (to -inf) what top-k, then top-p remove.

    Args:
        logits: (B, V) float, already divided by the temperature.
        top_k: (B,) int64, 0 = no top-k; or None.
        top_p: (B,) float, 1.0 = no top-p; or None.
    Returns:
        (sorted_logits (B, V) with removed entries at -inf, sorted_index (B, V) int64 vocabulary ids).
    """
    sorted_logits, sorted_index = logits.sort(dim=-1, descending=True)
    vocab = logits.shape[-1]
    if top_k is not None:
        ranks = torch.arange(vocab, device=logits.device)
        k = torch.where(top_k > 0, top_k, vocab)
        sorted_logits = sorted_logits.masked_fill(ranks >= k[:, None], float("-inf"))
    if top_p is not None:
        probs = sorted_logits.softmax(dim=-1)
        mass_before = probs.cumsum(dim=-1) - probs
        # keep the smallest prefix whose mass reaches top_p (the first token always survives)
        remove = (mass_before >= top_p[:, None]) & (top_p[:, None] < 1.0)
        sorted_logits = sorted_logits.masked_fill(remove, float("-inf"))
    return sorted_logits, sorted_index


class Workspace:
    """Reused (B, V) fp32 buffers for the sampler, one per name, reallocated only when the shape changes.

    A fresh (B, V) tensor at every step is a fresh allocation of B x V x 4 bytes (9.7 MB at 16 rows of a
    151,936-token vocabulary); glibc hands blocks that large back to the OS when freed, so each step's
    buffers were page-faulted in anew: the draw took 12.9 ms a step instead of 3.4 (docs/LOG.md, 2026-12-08).
    Buffers from `take` are overwritten by the next step: nothing returned to callers may alias them.
    """

    def __init__(self):
        self._buffers: dict[str, Tensor] = {}

    def take(self, name: str, like: Tensor) -> Tensor:
        """The fp32 buffer `name`, of `like`'s shape and device (contents undefined)."""
        buf = self._buffers.get(name)
        if buf is None or buf.shape != like.shape or buf.device != like.device:
            buf = self._buffers[name] = torch.empty(like.shape, dtype=torch.float32, device=like.device)
        return buf


def _inverse_cdf(logp: Tensor, uniforms: Tensor, work: Workspace | None = None) -> Tensor:
    """(B,) indices drawn from exp(logp) (B, V) with (B,) uniforms (intermediates in `work` when given)."""
    if work is None:
        cdf = logp.exp().cumsum(dim=-1)
    else:  # the same kernels, written into reused buffers
        cdf = torch.cumsum(torch.exp(logp, out=work.take("exp", logp)), dim=-1, out=work.take("cdf", logp))
    target = (uniforms * cdf[:, -1]).unsqueeze(-1)
    # right=True: the first index whose cdf exceeds the target, never a zero-probability entry
    index = torch.searchsorted(cdf, target, right=True).squeeze(-1)
    return index.clamp_(max=logp.shape[-1] - 1)


class RowSampling:
    """Per-row sampling settings of an active batch, with the Python-side flags that pick fast paths.

    Attributes:
        temperature: (B,) float32; 0 means greedy.
        top_k: (B,) int64 (0 = off) or None when no row uses it.
        top_p: (B,) float32 (1.0 = off) or None when no row uses it.
    """

    def __init__(self, temperature: Tensor, top_k: Tensor, top_p: Tensor):
        self.temperature, self._top_k, self._top_p = temperature, top_k, top_p
        greedy = temperature <= 0
        sampled = ~greedy
        flags = torch.stack(
            [
                greedy.all(),
                greedy.any(),
                ((top_k > 0) & sampled).any(),
                ((top_p < 1.0) & sampled).any(),
                (greedy | (temperature == 1)).all(),
            ]
        )  # one host copy for every flag
        self.all_greedy, self.any_greedy, use_top_k, use_top_p, unit = flags.tolist()
        # x / 1 == x exactly: with every temperature 1 (greedy rows count as 1) the division is skipped
        self.unit_temperature = unit
        self.greedy = greedy
        self.top_k = top_k if use_top_k else None
        self.top_p = top_p if use_top_p else None
        self.safe_temperature = torch.where(greedy, torch.ones_like(temperature), temperature)

    def select(self, index: Tensor) -> RowSampling:
        """The settings of rows `index` (B',) int64, e.g. after dropping finished rows."""
        return RowSampling(self.temperature[index], self._top_k[index], self._top_p[index])

    def concat(self, other: RowSampling) -> RowSampling:
        """The settings of this batch's rows followed by `other`'s (continuous batching's merge)."""
        return RowSampling(
            torch.cat([self.temperature, other.temperature]),
            torch.cat([self._top_k, other._top_k]),
            torch.cat([self._top_p, other._top_p]),
        )

    def logprobs(self, logits: Tensor) -> tuple[Tensor, Tensor | None]:
        """Log-probabilities of the distribution each row samples from, in vocabulary order.

        Args:
            logits: (B, V) raw model logits.
        Returns:
            (logp (B, V), None). Rows filtered by top-k/top-p have -inf outside their kept set;
            greedy rows get the log-softmax of the raw logits. The order is the vocabulary's for
            every row, whatever the other rows use, so a row's inverse-CDF draw (and therefore its
            token) never depends on its batch-mates' settings. (The second element, once the sort
            permutation, is kept for compatibility and is always None.)
        """
        logits = logits.float()
        if self.all_greedy:
            return logits.log_softmax(dim=-1), None
        scaled = logits / self.safe_temperature[:, None]
        if self.top_k is not None or self.top_p is not None:
            sorted_logits, sorted_index = filter_logits(scaled, self.top_k, self.top_p)
            scaled = torch.empty_like(scaled).scatter_(-1, sorted_index, sorted_logits)
        logp = scaled.log_softmax(dim=-1)
        if self.any_greedy and (self.top_k is not None or self.top_p is not None):
            # greedy rows: raw logits, unfiltered (their temperature is 1 here, so only filtering differs)
            logp = torch.where(self.greedy[:, None], logits.log_softmax(dim=-1), logp)
        return logp, None

    def sample(
        self, logits: Tensor, uniforms: Tensor | None, work: Workspace | None = None
    ) -> tuple[Tensor, Tensor]:
        """Draw one token per row.

        Args:
            logits: (B, V) raw model logits.
            uniforms: (B,) float32 in [0, 1) (see `row_uniforms`); unused when every row is greedy.
            work: reused buffers for the (B, V) intermediates (a decode loop's `Workspace`); the tokens and
                log-probs are the same with or without it.
        Returns:
            (tokens (B,) int64, logprobs (B,) float32 of each token under the distribution used).
        """
        plain = not self.any_greedy and self.top_k is None and self.top_p is None
        if work is not None and plain and not logits.requires_grad:  # (out= buffers take no autograd)
            # plain temperature sampling, every row: `logprobs` and `_inverse_cdf` into reused buffers
            x = logits if logits.dtype == torch.float32 else work.take("x", logits).copy_(logits)
            if not self.unit_temperature:
                x = torch.div(x, self.safe_temperature[:, None], out=work.take("scaled", x))
            logp = torch.log_softmax(x, dim=-1, out=work.take("logp", x))
            tokens = _inverse_cdf(logp, uniforms, work)
            return tokens, logp.gather(-1, tokens[:, None]).squeeze(-1)
        logp, _ = self.logprobs(logits)
        if self.all_greedy:
            tokens = logp.argmax(dim=-1)
            return tokens, logp.gather(-1, tokens[:, None]).squeeze(-1)
        tokens = _inverse_cdf(logp, uniforms)
        if self.any_greedy:
            tokens = torch.where(self.greedy, logp.argmax(dim=-1), tokens)
        return tokens, logp.gather(-1, tokens[:, None]).squeeze(-1)

    def verify_draft(
        self, logits: Tensor, draft: Tensor, uniforms: Tensor, accept_uniforms: Tensor
    ) -> tuple[Tensor, Tensor, Tensor]:
        """Speculative sampling with a deterministic draft token (the MTP head's argmax).

        A sampled row accepts `draft` with probability p(draft), else draws from p with the draft
        removed: the output is distributed exactly as p. A greedy row accepts iff draft is the argmax.

        Args:
            logits: (B, V) raw main-model logits at the draft's position.
            draft: (B,) int64 drafted tokens.
            uniforms, accept_uniforms: (B,) float32 in [0, 1), independent (unused if all greedy).
        Returns:
            (tokens (B,), logprobs (B,) under p, accepted (B,) bool); tokens == draft where accepted.
        """
        logp, _ = self.logprobs(logits)
        if self.all_greedy:
            tokens = logp.argmax(dim=-1)
            return tokens, logp.gather(-1, tokens[:, None]).squeeze(-1), tokens == draft
        p_draft = logp.gather(-1, draft[:, None]).squeeze(-1).exp()
        accept = accept_uniforms < p_draft
        residual = logp.scatter(-1, draft[:, None], float("-inf"))
        tokens = torch.where(accept, draft, _inverse_cdf(residual, uniforms))
        if self.any_greedy:
            best = logp.argmax(dim=-1)
            tokens = torch.where(self.greedy, best, tokens)
            accept = torch.where(self.greedy, best == draft, accept)
        return tokens, logp.gather(-1, tokens[:, None]).squeeze(-1), accept
