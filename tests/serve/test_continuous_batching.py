"""Continuous batching in the server: requests join a running batch; seeds and greedy output do not
depend on batch-mates."""

from __future__ import annotations

import threading
import time

import httpx
import torch

from r1kit.engine import Engine
from r1kit.model import ModelConfig, Transformer
from r1kit.serve.batcher import Batcher, Delta, Failure, Finish, GenerationParams

MODEL = "tiny-r1"


def _collect(stream) -> tuple[str, str]:
    text, reason = "", ""
    for events in stream:
        for e in events:
            assert not isinstance(e, Failure), e.message
            if isinstance(e, Delta):
                text += e.text
            elif isinstance(e, Finish):
                reason = e.reason
    return text, reason


def test_request_joins_a_running_batch(tokenizer):
    from serve_stub import start_server

    with start_server(tokenizer, delay_s=0.01) as live:
        long_body = {
            "model": MODEL,
            "messages": [{"role": "user", "content": "forever"}],
            "stream": True,
            "max_tokens": 300,
        }
        short_body = {"model": MODEL, "messages": [{"role": "user", "content": "What is 2+2?"}]}
        with httpx.stream("POST", live.url + "/v1/chat/completions", json=long_body, timeout=30) as response:
            lines = response.iter_lines()
            while "reasoning_content" not in next(lines):
                pass
            batches = live.batcher.stats["batches"]
            calls = live.model.forward_calls
            out = httpx.post(live.url + "/v1/chat/completions", json=short_body, timeout=30).json()
            # answered while the long request still runs: it joined the batch instead of waiting
            assert out["choices"][0]["message"]["content"] == "The answer is 4"
            assert live.model.forward_calls - calls < 100
            assert live.batcher.stats["batches"] == batches  # same busy period
            assert live.batcher.stats["max_rows"] >= 2
            rest = "".join(lines)
        assert '"finish_reason":"length"' in rest.replace(" ", "")


def test_seeded_and_greedy_requests_do_not_depend_on_batch_mates(tokenizer):
    cfg = ModelConfig.preset(
        "tiny-llama",
        vocab_size=tokenizer.vocab_size,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        initializer_range=0.15,
    )
    torch.manual_seed(0)
    engine = Engine(Transformer(cfg).eval(), tokenizer)
    batcher = Batcher(engine, think_end_id=tokenizer.think_end_id, batch_window_s=0).start()
    try:
        prompt = tokenizer.encode("What is 2+2?")
        seeded = GenerationParams(temperature=1.0, seed=42, max_tokens=16, split_reasoning=False)
        greedy = GenerationParams(temperature=0.0, max_tokens=16, split_reasoning=False)
        alone = {
            name: _collect(batcher.submit([prompt], p))
            for name, p in (("seeded", seeded), ("greedy", greedy))
        }
        # busy batch: long unseeded sampling requests, then the seeded and greedy ones join mid-way
        others = [
            batcher.submit(
                [tokenizer.encode(f"the lazy dog {i}")], GenerationParams(temperature=1.0, max_tokens=40)
            )
            for i in range(3)
        ]
        results: dict[str, tuple[str, str]] = {}
        threads = [threading.Thread(target=lambda s=s: [_collect(s)]) for s in others]
        for t in threads:
            t.start()
        time.sleep(0.05)
        for name, p in (("seeded", seeded), ("greedy", greedy)):
            results[name] = _collect(batcher.submit([prompt], p))
        for t in threads:
            t.join(30)
        assert results == alone
        assert batcher.stats["max_rows"] >= 2
    finally:
        batcher.stop()


def test_a_bad_request_admitted_with_others_fails_alone(tokenizer):
    from serve_stub import ANSWER, ScriptedModel

    engine = Engine(ScriptedModel(tokenizer), tokenizer)
    batcher = Batcher(engine, think_end_id=tokenizer.think_end_id, batch_window_s=0.2).start()
    try:
        params = GenerationParams(temperature=0.0, max_tokens=64)
        good = batcher.submit([tokenizer.encode("What is 2+2?<think>\n")], params)
        bad = batcher.submit([[]], params)  # an empty prompt: the engine refuses it
        events = [e for batch in bad for e in batch]
        assert len(events) == 1 and isinstance(events[0], Failure)
        text, reason = _collect(good)
        assert text.endswith(ANSWER) and reason == "stop"
        assert batcher.stats["admissions"] == 1  # the good one, after the joint prefill failed
    finally:
        batcher.stop()
