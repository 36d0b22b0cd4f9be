"""`OutputParser` (reasoning split, stop strings, max_tokens) and `RequestStream`, without a model."""

from __future__ import annotations

import random

import pytest

from r1kit.serve.batcher import Delta, Finish, GenerationParams, OutputParser, RequestStream
from r1kit.tokenizer import split_reasoning


def parse(pieces: list[str], **params) -> tuple[str, str, Finish]:
    """Feed `pieces` (one token each) and return (reasoning, content, finish)."""
    parser = OutputParser(0, GenerationParams(max_tokens=10_000, **params), think_end_id=None)
    events = []
    for piece in pieces:
        events += parser.feed(piece, [0])
    events += parser.finish("stop")
    reasoning = "".join(e.text for e in events if isinstance(e, Delta) and e.kind == "reasoning")
    content = "".join(e.text for e in events if isinstance(e, Delta) and e.kind in ("content", "text"))
    finishes = [e for e in events if isinstance(e, Finish)]
    assert len(finishes) == 1
    return reasoning, content, finishes[0]


def random_split(text: str, rng: random.Random) -> list[str]:
    cuts = (
        sorted(rng.sample(range(1, len(text)), k=min(len(text) - 1, rng.randint(0, 12))))
        if len(text) > 1
        else []
    )
    return [text[a:b] for a, b in zip([0, *cuts], [*cuts, len(text)])]


TEXTS = [
    "2+2 is 4\n</think>\nThe answer is 4",
    "<think>\nhmm\n</think>\n\nanswer",
    "no end tag, all thinking  \n",
    "</think>answer only",
    "a < b and </thin is not a tag\n</think>\n x </think> y",
    "<thi",
    "",
]


@pytest.mark.parametrize("text", TEXTS)
def test_split_matches_split_reasoning_for_any_chunking(text):
    rng = random.Random(0)
    expected = split_reasoning(text)
    for _ in range(30):
        reasoning, content, _ = parse(random_split(text, rng))
        assert (reasoning, content) == expected


def test_stop_strings_apply_to_the_answer_only():
    text = "think STOP more\n</think>\nanswer STOP tail"
    rng = random.Random(1)
    for _ in range(20):
        reasoning, content, finish = parse(random_split(text, rng), stop=("STOP",))
        assert (reasoning, content, finish.reason) == ("think STOP more", "answer ", "stop")


def test_completion_mode_keeps_text_verbatim():
    reasoning, content, _ = parse(["a\n</think>", "\n b"], split_reasoning=False)
    assert (reasoning, content) == ("", "a\n</think>\n b")


def test_max_tokens_ends_with_length_and_counts_reasoning_tokens():
    parser = OutputParser(0, GenerationParams(max_tokens=3), think_end_id=99)
    events = (
        parser.feed("x", [1]) + parser.feed("</think>", [99]) + parser.feed("y", [2]) + parser.feed("z", [3])
    )
    finish = [e for e in events if isinstance(e, Finish)][0]
    assert (finish.reason, finish.completion_tokens, finish.reasoning_tokens) == ("length", 3, 2)
    assert parser.feed("more", [4]) == []


def test_request_stream_coalesces_when_the_reader_lags():
    stream = RequestStream(n_choices=1, max_pending=4)
    for i in range(100):
        stream.push([Delta(0, "content", str(i % 10))])
    stream.push([Finish(0, "stop", 100, 0)])
    batches = list(stream)
    events = [e for batch in batches for e in batch]
    assert len(events) <= 5
    assert "".join(e.text for e in events if isinstance(e, Delta)) == "0123456789" * 10
    assert stream.closed


def test_cancel_closes_the_stream_at_once():
    stream = RequestStream(2)
    stream.push([Delta(0, "content", "a")])
    stream.cancel()
    stream.push([Delta(1, "content", "dropped")])  # the worker's later pushes are dropped
    assert list(stream) == [[Delta(0, "content", "a")]] and stream.cancelled and stream.closed
    stream.cancel()  # idempotent


def test_stop_ends_running_requests_with_a_failure(tokenizer):
    from serve_stub import ScriptedModel

    from r1kit.engine import Engine
    from r1kit.serve.batcher import Batcher, Failure

    model = ScriptedModel(tokenizer, delay_s=0.01)
    batcher = Batcher(Engine(model, tokenizer), think_end_id=tokenizer.think_end_id).start()
    ids = tokenizer.encode_prompt([{"role": "user", "content": "think forever"}])
    stream = batcher.submit([ids], GenerationParams(max_tokens=1500, temperature=0), n=3)
    first = next(iter(stream))  # decoding has started
    assert first
    worker = batcher._thread
    batcher.stop(timeout=60)
    assert not worker.is_alive()
    rest = [event for events in stream for event in events]
    assert isinstance(rest[-1], Failure) and "shutting down" in rest[-1].message
    assert model.forward_calls < 1000  # it did not run the 1500 steps
