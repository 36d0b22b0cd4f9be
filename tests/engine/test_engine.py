"""Engine behaviour on stand-ins: stops, budget forcing, streaming, cancellation, seeds, fan-out, compaction."""

from __future__ import annotations

import pytest
import torch
from engine_stubs import BigramModel, bigram_table

from r1kit.engine import Engine, SamplingParams
from r1kit.model import ModelConfig, Transformer


def _engine(tok, chain, default="a", **kw):
    return Engine(BigramModel(bigram_table(tok, chain, default)), tok, **kw)


def _tiny_model():
    cfg = ModelConfig.preset(
        "tiny-llama", vocab_size=64, hidden_size=32, num_hidden_layers=2, intermediate_size=64
    )
    return Transformer(cfg).eval()


def test_eos_is_kept_in_tokens_but_not_in_text(char_tok):
    engine = _engine(char_tok, {"a": "b", "b": "c", "c": "<eos>"})
    (out,) = engine.generate(["xa"], SamplingParams(temperature=0, max_new_tokens=10))
    assert out.text == "bc" and out.finish_reason == "stop"
    assert out.token_ids == char_tok.encode("bc") + [char_tok.eos_id]
    assert len(out.logprobs) == len(out.mask) == 3
    (out,) = engine.generate(["xa"], SamplingParams(temperature=0, max_new_tokens=10, ignore_eos=True))
    assert out.finish_reason == "length" and len(out.token_ids) == 10


def test_stop_string_cuts_text_and_trims_tokens(char_tok):
    engine = _engine(char_tok, {"a": "b", "b": "c", "c": "d", "d": "a"})
    (out,) = engine.generate(["a"], SamplingParams(temperature=0, max_new_tokens=20, stop=["da", "zz"]))
    # generated: b c d a ...; "da" completes at the 4th token, the text stops before it
    assert out.text == "bc" and out.finish_reason == "stop"
    assert out.token_ids == char_tok.encode("bcda")
    streamed = "".join(
        d.text for step in engine.stream(["a"], SamplingParams(temperature=0, stop=["da"])) for d in step
    )
    assert streamed == "bc"


def test_per_prompt_params_in_one_batch(char_tok):
    engine = _engine(char_tok, {"a": "b", "b": "c", "c": "d", "d": "a"})
    params = [
        SamplingParams(temperature=0, max_new_tokens=3),
        SamplingParams(temperature=0, max_new_tokens=8, stop=["ab"]),
        SamplingParams(n=2, temperature=0, max_new_tokens=5),
    ]
    outs = engine.generate(["a", "a", "c"], params)
    assert [o.text for o in outs] == ["bcd", "bcd", "dabcd", "dabcd"]
    assert [o.finish_reason for o in outs] == ["length", "stop", "length", "length"]


def test_budget_forcing_caps_thinking(char_tok):
    # the model never closes its thinking block on its own
    engine = _engine(char_tok, {"a": "b", "b": "a", "</think>": "z", "z": "<eos>"})
    prompt = "q<think>\n"
    (out,) = engine.generate(
        [prompt], SamplingParams(temperature=0, max_new_tokens=20, max_thinking_tokens=5)
    )
    think_end = out.token_ids.index(char_tok.think_end_id)
    assert think_end == 5  # exactly max_thinking_tokens tokens before the forced delimiter
    assert out.mask[think_end] == 0 and out.logprobs[think_end] == 0.0
    assert sum(out.mask) == len(out.mask) - 1
    assert out.text == "ababa</think>z" and out.finish_reason == "stop"
    # outside a thinking block nothing is forced
    (plain,) = engine.generate(["q"], SamplingParams(temperature=0, max_new_tokens=8, max_thinking_tokens=2))
    assert char_tok.think_end_id not in plain.token_ids


def test_budget_forcing_suppresses_early_end_with_wait(char_tok):
    # the model wants to close the block right away; "Wait" (W a i t) continues with "a"
    engine = _engine(char_tok, {"\n": "a", "a": "</think>", "t": "a", "</think>": "z", "z": "<eos>"})
    params = SamplingParams(temperature=0, max_new_tokens=40, min_thinking_tokens=20, num_wait=2)
    (out,) = engine.generate(["q<think>\n"], params)
    assert out.text == "aWaitaWaita</think>z"
    forced = [i for i, m in enumerate(out.mask) if m == 0]
    assert len(forced) == 8  # two "Wait"s of 4 tokens
    assert all(out.logprobs[i] == 0.0 for i in forced)
    # unlimited waits stop once the block reaches min_thinking_tokens
    params = SamplingParams(temperature=0, max_new_tokens=40, min_thinking_tokens=7, wait_string="Wait")
    (out,) = engine.generate(["q<think>\n"], params)
    assert out.text == "aWaitaWaita</think>z"  # 1 + 5 = 6 < 7 suppresses again, 12 >= 7 lets it end
    # a cap wins over a pending "Wait"
    params = SamplingParams(temperature=0, max_new_tokens=40, min_thinking_tokens=30, max_thinking_tokens=3)
    (out,) = engine.generate(["q<think>\n"], params)
    assert out.text == "aWa</think>z"


def test_stream_matches_generate_and_never_splits_characters():
    class ByteTokenizer:
        eos_id = 0

        def encode(self, text):
            return list(text.encode())

        def decode(self, ids):
            return bytes(ids).decode("utf-8", errors="replace")

    tok = ByteTokenizer()
    e_acute = list("é".encode())  # two bytes
    table = torch.zeros(256, 256)
    table[ord("x"), e_acute[0]] = table[e_acute[0], e_acute[1]] = table[e_acute[1], ord("y")] = 10
    table[ord("y"), ord("x")] = 10
    engine = Engine(BigramModel(table), tok)
    params = SamplingParams(temperature=0, max_new_tokens=12)
    (final,) = engine.generate(["x"], params)
    steps = list(engine.stream(["x"], params))
    texts = [d.text for step in steps for d in step]
    assert "".join(texts) == final.text == "éyxéyxéyxé"[: len(final.text)]
    assert all("\ufffd" not in t for t in texts)
    assert sum(len(d.token_ids) for step in steps for d in step) == 12
    assert steps[-1][0].finished and steps[-1][0].finish_reason == "length"


def test_stream_without_tokenizer_reports_token_ids():
    engine = Engine(_tiny_model())
    prompts, params = [[1, 2, 3], [4, 5]], SamplingParams(n=2, seed=3, max_new_tokens=6, stop_token_ids=[7])
    outs = engine.generate(prompts, params)
    tokens: dict[int, list[int]] = {}
    ends: dict[int, list[str]] = {}
    for step in engine.stream(prompts, params):
        for d in step:
            assert d.text == ""
            tokens.setdefault(d.seq_index, []).extend(d.token_ids)
            if d.finished:
                ends.setdefault(d.seq_index, []).append(d.finish_reason)
    assert [tokens[i] for i in range(4)] == [o.token_ids for o in outs]
    assert [ends[i] for i in range(4)] == [[o.finish_reason] for o in outs]


def test_cancel_mid_stream(char_tok):
    engine = _engine(char_tok, {"a": "b", "b": "a"})
    stream = engine.stream(["a", "b"], SamplingParams(n=2, temperature=0, max_new_tokens=10))
    first = next(stream)
    assert [d.seq_index for d in first] == [0, 1, 2, 3]
    stream.cancel(1)
    rest = list(stream)
    assert any(d.seq_index == 1 and d.finish_reason == "cancelled" for d in rest[0])
    assert all(d.seq_index != 1 for step in rest[1:] for d in step)
    outs = stream.completions()
    assert [o.finish_reason for o in outs] == ["length", "cancelled", "length", "length"]
    assert len(outs[1].token_ids) == 2 and len(outs[0].token_ids) == 10


def test_seed_reproducibility_and_fan_out_equals_repeated_prompts():
    engine = Engine(_tiny_model())
    prompts = [[1, 2, 3], [4, 5]]
    params = SamplingParams(n=3, temperature=1.0, top_p=0.95, max_new_tokens=12, seed=11)
    a = engine.generate(prompts, params)
    assert [o.token_ids for o in a] == [o.token_ids for o in engine.generate(prompts, params)]
    other = engine.generate(
        prompts, SamplingParams(n=3, temperature=1.0, top_p=0.95, max_new_tokens=12, seed=12)
    )
    assert [o.token_ids for o in other] != [o.token_ids for o in a]
    # the 3 samples of a prompt differ from each other (distinct random streams)
    assert len({tuple(o.token_ids) for o in a[:3]}) > 1
    repeated = engine.generate(
        [p for p in prompts for _ in range(3)], SamplingParams(**{**params.__dict__, "n": 1})
    )
    assert [o.token_ids for o in repeated] == [o.token_ids for o in a]
    for x, y in zip(repeated, a):
        assert torch.allclose(torch.tensor(x.logprobs), torch.tensor(y.logprobs), atol=1e-5)


def test_compaction_does_not_change_outputs():
    model = _tiny_model()
    prompts = [[1, 2, 3], [4, 5], [6]]
    # rows end at different steps (per-prompt limits and a frequent stop token) so compaction kicks in
    params = [
        SamplingParams(n=2, temperature=1.0, max_new_tokens=m, stop_token_ids=[7, 9], seed=2)
        for m in (4, 16, 9)
    ]
    never = Engine(model, compact_fraction=2.0).generate(prompts, params)
    always = Engine(model, compact_fraction=0.0).generate(prompts, params)
    assert [o.token_ids for o in always] == [o.token_ids for o in never]
    assert [o.finish_reason for o in always] == [o.finish_reason for o in never]
    assert len({len(o.token_ids) for o in never}) > 2  # the rows really did finish at different steps


def test_compaction_shrinks_the_batch(char_tok):
    model = BigramModel(bigram_table(char_tok, {"a": "b", "b": "a"}))
    engine = Engine(model, char_tok, compact_fraction=0.25)
    engine.generate(["a"] * 4, [SamplingParams(temperature=0, max_new_tokens=m) for m in (2, 3, 8, 8)])
    batch_sizes = [shape[0] for shape in model.calls]
    assert batch_sizes[0] == 4 and batch_sizes[-1] == 2


def test_greedy_row_in_a_sampled_batch_is_greedy():
    engine = Engine(_tiny_model())
    greedy = engine.generate([[1, 2, 3]], SamplingParams(temperature=0, max_new_tokens=10))[0]
    mixed = engine.generate(
        [[1, 2, 3], [1, 2, 3]],
        [
            SamplingParams(temperature=0, max_new_tokens=10),
            SamplingParams(temperature=1.5, top_k=5, max_new_tokens=10),
        ],
    )
    assert mixed[0].token_ids == greedy.token_ids


def test_errors():
    engine = Engine(_tiny_model())
    with pytest.raises(ValueError, match="tokenizer"):
        engine.generate(["text"], SamplingParams())
    with pytest.raises(ValueError, match="MTP"):
        engine.generate([[1]], SamplingParams(speculative=True))
    with pytest.raises(ValueError):
        SamplingParams(top_p=0)
