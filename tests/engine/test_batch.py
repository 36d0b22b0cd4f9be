"""The pieces continuous batching merges: `RowSampling.concat`, `BudgetForcing.concat`, and a session
(requests admitted mid-decode) against independent calls, delta for delta."""

from __future__ import annotations

import torch

from r1kit.engine import Engine, SamplingParams
from r1kit.engine.budget import NO_LIMIT, BudgetForcing
from r1kit.engine.sequence import SequenceState
from r1kit.model import ModelConfig, Transformer
from r1kit.sampling import RowSampling, row_uniforms


def test_row_sampling_concat_recomputes_the_fast_path_flags():
    greedy = RowSampling(torch.tensor([0.0]), torch.tensor([0]), torch.tensor([1.0]))
    filtered = RowSampling(torch.tensor([0.5, 1.25]), torch.tensor([5, 0]), torch.tensor([0.75, 1.0]))
    assert greedy.all_greedy and greedy.top_k is None and greedy.top_p is None
    both = greedy.concat(filtered)
    assert not both.all_greedy and both.any_greedy
    assert both.temperature.tolist() == [0.0, 0.5, 1.25]
    assert both.top_k.tolist() == [0, 5, 0] and both.top_p.tolist() == [1.0, 0.75, 1.0]
    # each row samples as it did in its own batch
    logits = torch.randn(3, 40, generator=torch.Generator().manual_seed(0))
    u = row_uniforms(torch.tensor([11, 12, 13]), torch.tensor([0, 0, 0]))
    tokens, logp = both.sample(logits, u)
    t0, lp0 = greedy.sample(logits[:1], None)
    t1, lp1 = filtered.sample(logits[1:], u[1:])
    assert tokens.tolist() == t0.tolist() + t1.tolist()
    assert torch.equal(logp, torch.cat([lp0, lp1]))


def test_budget_forcing_concat_pads_queues_and_keeps_rows_apart(char_tok):
    end = char_tok.think_end_id
    waiting = [SequenceState(0, 0, 0, SamplingParams(min_thinking_tokens=5), 3)]
    plain = [SequenceState(0, 0, 0, SamplingParams(max_new_tokens=9), 2)]
    a = BudgetForcing.for_rows(waiting, [True], char_tok, "cpu")
    merged = a.concat(a.neutral(plain, char_tok, "cpu"))
    wait = char_tok.encode("Wait")
    assert merged.wait_queue.tolist() == [wait, [end] * 4]
    assert merged.queue.shape == (2, 4) and merged.wait_len.tolist() == [4, 1]
    assert merged.in_think.tolist() == [True, False]
    assert merged.max_think.tolist() == [NO_LIMIT, NO_LIMIT] and merged.min_think.tolist() == [5, 0]
    # both rows sample `</think>`: the thinking row gets "Wait" forced, the other keeps its token
    tokens, logp, forced = merged.apply(torch.tensor([end, end]), torch.tensor([-1.0, -2.0]))
    assert tokens.tolist() == [wait[0], end] and logp.tolist() == [0.0, -2.0]
    assert forced.tolist() == [True, False]
    for expected in wait[1:]:
        tokens, _, forced = merged.apply(torch.tensor([end, 7]), torch.zeros(2))
        assert tokens.tolist() == [expected, 7] and forced.tolist() == [True, False]


def _char_model(tok) -> Transformer:
    cfg = ModelConfig.preset(
        "tiny-llama",
        vocab_size=tok.vocab_size,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        initializer_range=0.15,
    )
    torch.manual_seed(0)
    return Transformer(cfg).eval()


def _by_sequence(deltas) -> dict[int, list[tuple]]:
    out: dict[int, list[tuple]] = {}
    for d in deltas:
        out.setdefault(d.seq_index, []).append((d.text, d.token_ids, d.finished, d.finish_reason))
    return out


def test_session_admitting_mid_decode_streams_like_independent_calls(char_tok):
    """Sampled, stop-string, budget-forced and greedy requests joining a running batch at different
    steps give what each gives alone (`Engine.stream`): the same tokens, masks, text, finish reason
    and the same delta at every step; a cancelled one ends with a finishing delta."""
    engine = Engine(_char_model(char_tok), char_tok)
    schedule = [  # (prompt, params, decode steps before it is admitted)
        ("ab", SamplingParams(n=2, temperature=1.0, max_new_tokens=25, seed=1, stop=["a", "bc"]), 0),
        (
            "q<think>\n",
            SamplingParams(temperature=0.9, top_k=8, max_new_tokens=30, seed=2, max_thinking_tokens=6),
            2,
        ),
        ("hello there", SamplingParams(n=2, temperature=1.2, top_p=0.9, max_new_tokens=30, seed=3), 3),
        ("c", SamplingParams(temperature=0, max_new_tokens=18, stop=["e"]), 1),
        ("d<think>\n", SamplingParams(temperature=0.8, max_new_tokens=40, seed=4), 4),  # cancelled
    ]
    session = engine.session()
    ids, deltas = [], []
    for prompt, params, wait in schedule:
        for _ in range(wait):
            deltas += session.step()
        ids.append(session.add(prompt, params))
    assert session.stats["max_rows"] >= 5  # most of them decode together
    deltas += session.step()
    session.cancel(ids[-1][0])
    while session.has_work():
        deltas += session.step()
    streamed = _by_sequence(deltas)
    forced = 0
    for (prompt, params, _), seq_ids in zip(schedule[:-1], ids):
        stream = engine.stream([prompt], params)
        alone_deltas = _by_sequence(d for step in stream for d in step)
        for sample, (seq, alone) in enumerate(zip(seq_ids, stream.completions())):
            joined = session.pop_completion(seq)
            assert (joined.token_ids, joined.mask, joined.text, joined.finish_reason) == (
                alone.token_ids,
                alone.mask,
                alone.text,
                alone.finish_reason,
            )
            assert max(abs(x - y) for x, y in zip(joined.logprobs, alone.logprobs)) <= 1e-4
            assert streamed[seq] == alone_deltas[sample]
            forced += len(joined.mask) - sum(joined.mask)
    assert forced > 0  # the thinking cap really forced `</think>`
    (cancelled,) = ids[-1]
    last = streamed[cancelled][-1]
    assert last[2:] == (True, "cancelled") and sum(d[2] for d in streamed[cancelled]) == 1
    assert session.pop_completion(cancelled).finish_reason == "cancelled"
    (full,) = engine.generate([schedule[-1][0]], schedule[-1][1])
    tokens = [t for d in streamed[cancelled] for t in d[1]]
    assert tokens == full.token_ids[: len(tokens)] and len(tokens) < len(full.token_ids)
