"""Continuous batching (`EngineSession`): requests joining a running batch give the same output as alone."""

from __future__ import annotations

import pytest
import torch
from engine_stubs import BigramModel, bigram_table

from r1kit.engine import Engine, SamplingParams
from r1kit.model import ModelConfig, Transformer


def _model(family: str) -> Transformer:
    small = dict(vocab_size=64, num_hidden_layers=2, initializer_range=0.15)
    if family == "llama":  # GQA: 4 query heads over 2 KV heads
        cfg = ModelConfig.preset("tiny-llama", hidden_size=32, intermediate_size=64, **small)
    else:  # MLA (absorbed decode over the latent cache) + MoE
        cfg = ModelConfig.preset("tiny-v3", **small)
    torch.manual_seed(0)
    return Transformer(cfg).eval()


def _run(session, schedule, steps_between):
    """Add `schedule[i]` = (prompt, params) after `steps_between[i]` steps; run to the end."""
    ids, deltas = [], []
    for (prompt, params), wait in zip(schedule, steps_between):
        for _ in range(wait):
            deltas += session.step()
        ids.append(session.add(prompt, params))
    while session.has_work():
        deltas += session.step()
    return ids, deltas


@pytest.mark.parametrize("family", ["llama", "deepseek_v3"])
def test_greedy_request_joining_mid_batch_equals_alone(family):
    engine = Engine(_model(family))
    schedule = [
        ([5, 6, 7, 8, 9, 10, 11, 12, 13], SamplingParams(temperature=0, max_new_tokens=12)),
        ([14, 15], SamplingParams(temperature=0, max_new_tokens=6)),  # shorter than the running span
        ([20 + i for i in range(30)], SamplingParams(temperature=0, max_new_tokens=9)),  # longer: re-aligns
        ([3, 4, 5], SamplingParams(n=2, temperature=0, max_new_tokens=7)),  # after the first rows left
    ]
    session = engine.session()
    ids, _ = _run(session, schedule, [0, 3, 2, 9])
    assert session.stats["max_rows"] >= 3
    for (prompt, params), seq_ids in zip(schedule, ids):
        alone = engine.generate([prompt], params)
        joined = [session.pop_completion(i) for i in seq_ids]
        assert [c.token_ids for c in joined] == [c.token_ids for c in alone]
        for c, a in zip(joined, alone):
            assert max(abs(x - y) for x, y in zip(c.logprobs, a.logprobs)) <= 1e-4
            assert c.finish_reason == a.finish_reason == "length"


def test_seeded_sampling_is_independent_of_batch_mates():
    engine = Engine(_model("llama"))
    seeded = ([7, 8, 9, 10], SamplingParams(n=2, temperature=1.0, top_p=0.9, seed=1234, max_new_tokens=10))
    others = [
        ([1, 2, 3, 4, 5, 6], SamplingParams(temperature=0.7, top_k=5, max_new_tokens=14)),
        ([11, 12], SamplingParams(temperature=1.3, max_new_tokens=8, seed=9)),
    ]
    alone = engine.generate([seeded[0]], seeded[1])
    for order, waits in (([others[0], seeded, others[1]], [0, 4, 1]), ([seeded, others[1]], [0, 0])):
        session = engine.session()
        ids, _ = _run(session, order, waits)
        joined = [session.pop_completion(i) for i in ids[order.index(seeded)]]
        assert [c.token_ids for c in joined] == [c.token_ids for c in alone]
        for c, a in zip(joined, alone):
            assert max(abs(x - y) for x, y in zip(c.logprobs, a.logprobs)) <= 1e-4
    # admitting requests together (one prefill) keys them the same way
    session = engine.session()
    ids = session.add_many([others[0][0], seeded[0]], [others[0][1], seeded[1]])
    while session.has_work():
        session.step()
    assert [session.pop_completion(i).token_ids for i in ids[1]] == [c.token_ids for c in alone]


def test_stops_budget_forcing_streaming_and_cancel_in_a_session(char_tok):
    chain = {"a": "b", "b": "c", "c": "d", "d": "a", "\n": "a", "</think>": "z", "z": "<eos>"}
    engine = Engine(BigramModel(bigram_table(char_tok, chain)), char_tok)
    schedule = [
        ("a", SamplingParams(temperature=0, max_new_tokens=30, stop=["da"])),
        ("q<think>\n", SamplingParams(temperature=0, max_new_tokens=20, max_thinking_tokens=5)),
        ("b", SamplingParams(n=2, temperature=0, max_new_tokens=9)),
        ("c", SamplingParams(temperature=0, max_new_tokens=40)),  # cancelled below
    ]
    session = engine.session()
    ids, deltas = [], []
    for prompt, params in schedule:
        ids.append(session.add(prompt, params))
        deltas += session.step()
    session.cancel(ids[3][0])
    while session.has_work():
        deltas += session.step()
    for (prompt, params), seq_ids in zip(schedule[:3], ids[:3]):
        alone = engine.generate([prompt], params)
        joined = [session.pop_completion(i) for i in seq_ids]
        for c, a in zip(joined, alone):
            assert (c.text, c.token_ids, c.mask, c.finish_reason) == (
                a.text,
                a.token_ids,
                a.mask,
                a.finish_reason,
            )
            streamed = "".join(d.text for d in deltas if d.seq_index == seq_ids[c.sample_index])
            assert streamed == c.text
    assert session.pop_completion(ids[1][0]) is None  # popped once
    cancelled = session.pop_completion(ids[3][0])
    assert cancelled.finish_reason == "cancelled" and len(cancelled.token_ids) < 40
    ends = [d for d in deltas if d.finished]
    assert sorted(d.seq_index for d in ends) == sorted(i for seq in ids for i in seq)  # each ends once
    assert not session.has_work() and session.step() == []


def test_session_rejects_speculative():
    engine = Engine(_model("llama"))
    with pytest.raises(ValueError, match="speculative"):
        engine.session().add([1, 2], SamplingParams(speculative=True))


@pytest.mark.parametrize("family", ["llama", "deepseek_v3"])
def test_join_right_after_a_row_finished_drops_it_in_the_merge(family):
    engine = Engine(_model(family))
    a = ([5, 6, 7], SamplingParams(temperature=0, max_new_tokens=3))
    b = ([8, 9, 10, 11, 12], SamplingParams(temperature=0, max_new_tokens=10))
    c = ([13, 14, 15, 16, 17, 18, 19], SamplingParams(temperature=0, max_new_tokens=6))
    session = engine.session()
    (ida,), (idb,) = session.add_many([a[0], b[0]], [a[1], b[1]])
    while not any(d.finished and d.seq_index == ida for d in session.step()):
        pass
    assert len(session._batch) == 2  # the finished row is still in the batch: the merge must drop it
    (idc,) = session.add(*c)
    assert len(session._batch) == 2
    while session.has_work():
        session.step()
    for (prompt, params), seq in ((a, ida), (b, idb), (c, idc)):
        (alone,) = engine.generate([prompt], params)
        assert session.pop_completion(seq).token_ids == alone.token_ids


def test_draws_do_not_depend_on_batch_mates_top_k_or_top_p():
    """Rows sample by inverse CDF in vocabulary order whatever filtering their batch-mates use."""
    engine = Engine(_model("llama"))
    plain = SamplingParams(temperature=1.0, seed=5, max_new_tokens=12)
    filtered = SamplingParams(temperature=0.8, top_k=6, top_p=0.9, seed=6, max_new_tokens=12)
    for row, mate in ((plain, filtered), (filtered, plain)):
        (alone,) = engine.generate([[1, 2, 3]], row)
        together = engine.generate([[1, 2, 3], [4, 5, 6, 7]], [row, mate])
        assert together[0].token_ids == alone.token_ids
        assert max(abs(x - y) for x, y in zip(together[0].logprobs, alone.logprobs)) <= 1e-5
