"""Sampling transforms and the counter-based RNG: right distribution, right log-probs, reproducible."""

from __future__ import annotations

import pytest
import torch

from r1kit.sampling import RowSampling, filter_logits, row_keys, row_uniforms


def _settings(batch, temperature=1.0, top_k=0, top_p=1.0):
    return RowSampling(
        torch.full((batch,), float(temperature)),
        torch.full((batch,), top_k),
        torch.full((batch,), float(top_p)),
    )


def _empirical(sampling, logits, draws):
    keys = row_keys(0, torch.arange(draws))
    tokens, logp = sampling.sample(
        logits.expand(draws, -1), row_uniforms(keys, torch.zeros(draws, dtype=torch.long))
    )
    return torch.bincount(tokens, minlength=logits.shape[-1]).float() / draws, tokens, logp


def test_uniforms_are_uniform_and_reproducible():
    keys = row_keys(7, torch.arange(4096))
    u = row_uniforms(keys, torch.full((4096,), 3))
    assert torch.equal(u, row_uniforms(row_keys(7, torch.arange(4096)), torch.full((4096,), 3)))
    assert 0 <= u.min() and u.max() < 1
    assert abs(u.mean() - 0.5) < 0.02 and abs(u.std() - 12**-0.5) < 0.02
    assert not torch.equal(u, row_uniforms(keys, torch.full((4096,), 4)))
    assert not torch.equal(u, row_uniforms(keys, torch.full((4096,), 3), stream=1))


def test_sampling_matches_the_filtered_distribution():
    logits = torch.tensor([[2.0, 1.5, 1.0, 0.5, 0.0, -1.0]])
    for temperature, top_k, top_p in [
        (1.0, 0, 1.0),
        (0.5, 0, 1.0),
        (1.0, 3, 1.0),
        (1.0, 0, 0.7),
        (2.0, 4, 0.9),
    ]:
        sampling = _settings(20000, temperature, top_k, top_p)
        freq, tokens, logp = _empirical(sampling, logits, 20000)
        sorted_logits, index = filter_logits(
            logits / temperature, torch.tensor([top_k]), torch.tensor([top_p])
        )
        expected = torch.zeros(6).scatter(0, index[0], sorted_logits[0].softmax(-1))
        assert (freq - expected).abs().max() < 0.015, (temperature, top_k, top_p)
        assert torch.allclose(logp, expected.log()[tokens])


def test_top_p_keeps_the_smallest_prefix_reaching_p():
    logits = torch.tensor([[0.5, 0.3, 0.2]]).log()
    sorted_logits, _ = filter_logits(logits, None, torch.tensor([0.75]))
    assert torch.isfinite(sorted_logits).tolist() == [[True, True, False]]
    sorted_logits, _ = filter_logits(logits, None, torch.tensor([0.5]))
    assert torch.isfinite(sorted_logits).tolist() == [[True, False, False]]


def test_greedy_rows_take_the_argmax_with_raw_logprobs():
    logits = torch.tensor([[0.0, 3.0, 1.0], [0.0, 3.0, 1.0]])
    sampling = RowSampling(torch.tensor([0.0, 1.0]), torch.tensor([0, 1]), torch.tensor([1.0, 1.0]))
    tokens, logp = sampling.sample(logits, torch.tensor([0.99, 0.99]))
    assert tokens.tolist() == [1, 1]
    assert torch.allclose(logp[0], logits[0].log_softmax(-1)[1])
    assert logp[1] == 0.0  # top-1: the only token left


def test_draft_verification_preserves_the_distribution():
    logits = torch.tensor([[1.0, 0.5, 0.0, -0.5]])
    n = 20000
    sampling = _settings(n)
    keys = row_keys(1, torch.arange(n))
    counter = torch.zeros(n, dtype=torch.long)
    for draft in (0, 2):
        tokens, logp, accepted = sampling.verify_draft(
            logits.expand(n, -1),
            torch.full((n,), draft),
            row_uniforms(keys, counter),
            row_uniforms(keys, counter, 1),
        )
        p = logits[0].softmax(-1)
        freq = torch.bincount(tokens, minlength=4).float() / n
        assert (freq - p).abs().max() < 0.015
        assert abs(accepted.float().mean() - p[draft]) < 0.015
        assert torch.equal(tokens[accepted], torch.full_like(tokens[accepted], draft))
        assert torch.allclose(logp, p.log()[tokens])
    greedy = _settings(2, temperature=0)
    tokens, _, accepted = greedy.verify_draft(logits.expand(2, -1), torch.tensor([0, 1]), None, None)
    assert tokens.tolist() == [0, 0] and accepted.tolist() == [True, False]


def _lowbias32(x: int) -> int:
    """The `lowbias32` hash in plain Python integers (an independent reference for `hash32`)."""
    x &= 0xFFFFFFFF
    x ^= x >> 16
    x = (x * 0x7FEB352D) & 0xFFFFFFFF
    x ^= x >> 15
    x = (x * 0x846CA68B) & 0xFFFFFFFF
    return x ^ (x >> 16)


def test_row_keys_of_a_seed_per_row_equal_each_row_alone():
    seeds = [0, 7, 2**40 + 3, -5, 7]
    index = torch.tensor([0, 1, 2, 3, 9])
    batched = row_keys(torch.tensor([s & 0xFFFFFFFF for s in seeds]), index)
    alone = torch.cat([row_keys(s, index[i : i + 1]) for i, s in enumerate(seeds)])
    assert torch.equal(batched, alone)
    # each key is lowbias32(lowbias32(seed + C1) ^ (index + C2)) mod 2**32, seed taken mod 2**32
    want = [
        _lowbias32(_lowbias32((s + 0x9E3779B9) & 0xFFFFFFFF) ^ (int(i) + 0x85EBCA6B))
        for s, i in zip(seeds, index)
    ]
    assert batched.tolist() == want


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_sampling_into_a_reused_workspace_draws_the_same_tokens_and_logprobs(dtype, temperature):
    from r1kit.sampling import Workspace

    work = Workspace()
    gen = torch.Generator().manual_seed(0)
    kept = []
    for rows in (5, 5, 3):  # the buffers are reused, then reallocated for a smaller batch
        logits = (3 * torch.randn(rows, 257, generator=gen)).to(dtype)
        sampling = RowSampling(
            torch.full((rows,), temperature), torch.zeros(rows, dtype=torch.long), torch.ones(rows)
        )
        u = row_uniforms(row_keys(rows, torch.arange(rows)), torch.zeros(rows, dtype=torch.long))
        want = sampling.sample(logits, u)
        got = sampling.sample(logits, u, work)
        assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])
        kept.append((got, [t.clone() for t in want]))
    assert work.take("logp", torch.empty(3, 257)) is work.take("logp", torch.empty(3, 257))  # reused
    # what a call returned does not alias the buffers the later calls overwrote
    assert all(torch.equal(g[0], w[0]) and torch.equal(g[1], w[1]) for g, w in kept)
