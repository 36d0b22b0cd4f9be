"""The server against the official `openai` client, on a model whose output is known.

The scripted model thinks "2+2 is 4", closes `</think>` and answers "The answer is 4" (see
conftest.py), so every field of the responses can be checked exactly.
"""

from __future__ import annotations

import concurrent.futures
import time

import httpx
import openai
import pytest
from serve_stub import ANSWER, API_KEY, REASONING

MODEL = "tiny-r1"
QUESTION = [{"role": "user", "content": "What is 2+2?"}]


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0, timeout=30)


def test_chat_non_streaming_splits_reasoning(client):
    out = client.chat.completions.create(model=MODEL, messages=QUESTION, max_tokens=64)
    choice = out.choices[0]
    assert choice.message.role == "assistant"
    assert choice.message.reasoning_content == REASONING
    assert choice.message.content == ANSWER
    assert choice.finish_reason == "stop"
    assert out.object == "chat.completion" and out.model == MODEL
    usage = out.usage
    assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens
    # reasoning tokens: "2+2 is 4\n" and `</think>`; completion adds the answer and EOS
    assert 0 < usage.completion_tokens_details.reasoning_tokens < usage.completion_tokens


def test_chat_streaming_sends_reasoning_then_content(client):
    stream = client.chat.completions.create(
        model=MODEL, messages=QUESTION, stream=True, stream_options={"include_usage": True}
    )
    order, reasoning, content, finish, usage = [], "", "", None, None
    for chunk in stream:
        if chunk.usage is not None:
            usage = chunk.usage
        for choice in chunk.choices:
            delta = choice.delta
            piece = getattr(delta, "reasoning_content", None)
            if piece:
                reasoning += piece
                order.append("r")
            if delta.content:
                content += delta.content
                order.append("c")
            finish = choice.finish_reason or finish
    assert reasoning == REASONING and content == ANSWER and finish == "stop"
    assert order == sorted(order, reverse=True), "all reasoning chunks come before the content"
    # at least one reasoning and one content chunk (a slow reader may get pieces merged into fewer chunks)
    assert "r" in order and "c" in order
    assert usage is not None and usage.completion_tokens_details.reasoning_tokens > 0


def test_reasoning_content_sent_back_is_not_fed_to_the_model(client, server):
    messages = [
        {"role": "user", "content": "What is 2+2?"},
        {"role": "assistant", "content": "It is 4.", "reasoning_content": "SECRET-THOUGHTS"},
        {"role": "user", "content": "Are you sure?"},
    ]
    before = len(server.model.prompts_seen)
    out = client.chat.completions.create(model=MODEL, messages=messages)
    assert out.choices[0].message.content == ANSWER
    prompts = server.model.prompts_seen[before:]
    assert prompts and all("SECRET-THOUGHTS" not in p for p in prompts)
    assert any("It is 4." in p and "Are you sure?" in p for p in prompts)


def test_n_choices_and_stop_string(client):
    out = client.chat.completions.create(
        model=MODEL, messages=QUESTION, n=3, stop=["is 4"], temperature=0.7, seed=1
    )
    assert [c.index for c in out.choices] == [0, 1, 2]
    for c in out.choices:
        # stop strings apply to the answer only: the reasoning "2+2 is 4" is kept whole
        assert c.message.reasoning_content == REASONING
        assert c.message.content == "The answer "
        assert c.finish_reason == "stop"


def test_max_tokens_truncates_with_length(client):
    out = client.chat.completions.create(model=MODEL, messages=QUESTION, max_completion_tokens=3)
    assert out.choices[0].finish_reason == "length"
    assert out.usage.completion_tokens == 3
    assert out.choices[0].message.content == ""
    assert REASONING.startswith(out.choices[0].message.reasoning_content)


def test_thinking_budget_forces_end_of_thinking(client):
    out = client.chat.completions.create(model=MODEL, messages=QUESTION, extra_body={"thinking_budget": 2})
    msg = out.choices[0].message
    assert len(msg.reasoning_content) < len(REASONING) and REASONING.startswith(msg.reasoning_content)
    assert msg.content == ANSWER
    assert out.usage.completion_tokens_details.reasoning_tokens == 3  # 2 thinking + the forced `</think>`


def test_completions(client):
    out = client.completions.create(
        model=MODEL, prompt=["<|user|>hi<|assistant|><think>\n", "hello"], max_tokens=64
    )
    assert len(out.choices) == 2
    assert out.choices[0].text == f"{REASONING}\n</think>\n{ANSWER}"
    assert out.usage.total_tokens == out.usage.prompt_tokens + out.usage.completion_tokens
    chunks = list(client.completions.create(model=MODEL, prompt="hello", stream=True, max_tokens=64))
    assert "".join(c.choices[0].text for c in chunks if c.choices) == f"{REASONING}\n</think>\n{ANSWER}"


def test_models_and_health(client, server):
    assert [m.id for m in client.models.list().data] == [MODEL]
    assert httpx.get(server.url + "/health").json()["status"] == "ok"
    assert client.models.retrieve(MODEL).id == MODEL


def test_concurrent_requests_share_batches(server, client):
    batches_before = server.batcher.stats["batches"]
    requests_ = 16
    with concurrent.futures.ThreadPoolExecutor(requests_) as pool:
        futures = [
            pool.submit(client.chat.completions.create, model=MODEL, messages=QUESTION)
            for _ in range(requests_)
        ]
        outs = [f.result() for f in futures]
    assert all(o.choices[0].message.content == ANSWER for o in outs)
    assert server.batcher.stats["batches"] - batches_before < requests_
    assert server.batcher.stats["max_rows"] > 1


def test_client_disconnect_cancels_generation(tokenizer):
    from serve_stub import start_server

    with start_server(tokenizer, delay_s=0.01) as live:
        body = {
            "model": MODEL,
            "messages": [{"role": "user", "content": "forever"}],
            "stream": True,
            "max_tokens": 4000,
        }
        with httpx.stream("POST", live.url + "/v1/chat/completions", json=body, timeout=10) as response:
            seen = 0
            for line in response.iter_lines():
                seen += "reasoning_content" in line
                if seen >= 3:
                    break
        # the connection is closed: the worker must stop computing the row within a few steps
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            calls = live.model.forward_calls
            time.sleep(0.2)
            if live.model.forward_calls == calls:
                break
        assert live.model.forward_calls < 500, "generation kept running after the client left"
        calls = live.model.forward_calls
        time.sleep(0.3)
        assert live.model.forward_calls == calls


def test_slow_client_does_not_block_others(tokenizer):
    from serve_stub import start_server

    with start_server(tokenizer, delay_s=0.002) as live:
        slow_body = {
            "model": MODEL,
            "messages": [{"role": "user", "content": "forever"}],
            "stream": True,
            "max_tokens": 400,
        }
        fast = openai.OpenAI(base_url=live.url + "/v1", api_key="x", max_retries=0, timeout=30)
        with httpx.stream("POST", live.url + "/v1/chat/completions", json=slow_body, timeout=30) as response:
            next(response.iter_lines())  # read one line, then stop reading while generation goes on
            start = time.monotonic()
            out = fast.chat.completions.create(model=MODEL, messages=QUESTION)
            assert out.choices[0].message.content == ANSWER
            assert time.monotonic() - start < 10


def test_api_key_required(secured_server):
    ok = openai.OpenAI(base_url=secured_server.url + "/v1", api_key=API_KEY, max_retries=0)
    assert ok.chat.completions.create(model=MODEL, messages=QUESTION).choices[0].message.content == ANSWER
    bad = openai.OpenAI(base_url=secured_server.url + "/v1", api_key="wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError) as info:
        bad.models.list()
    assert info.value.status_code == 401
    assert info.value.body["code"] == "invalid_api_key"
