"""Fuzzing the API with bad requests: every one gets a 4xx OpenAI-style JSON error, never a 500.

Runs against a server with an API key and small limits (conftest.py `secured_server`); after
each batch of bad requests the server must still answer a good one.
"""

from __future__ import annotations

import json

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from serve_stub import ANSWER, API_KEY

MODEL = "tiny-r1"
AUTH = {"Authorization": f"Bearer {API_KEY}"}
GOOD_CHAT = {"model": MODEL, "messages": [{"role": "user", "content": "What is 2+2?"}]}


def chat(**changes) -> dict:
    """GOOD_CHAT with fields replaced (a value of ... removes the field)."""
    body = {**GOOD_CHAT, **changes}
    return {k: v for k, v in body.items() if v is not ...}


# (name, path, body or raw bytes, headers, expected status)
BAD_REQUESTS = [
    ("no body", "/v1/chat/completions", b"", AUTH, 400),
    ("invalid json", "/v1/chat/completions", b'{"model": "tiny-r1", "messages": [', AUTH, 400),
    ("json array", "/v1/chat/completions", b"[1, 2, 3]", AUTH, 400),
    ("json string", "/v1/chat/completions", b'"hello"', AUTH, 400),
    ("not utf-8", "/v1/chat/completions", b"\xff\xfe\x00garbage", AUTH, 400),
    ("missing model", "/v1/chat/completions", chat(model=...), AUTH, 400),
    ("missing messages", "/v1/chat/completions", chat(messages=...), AUTH, 400),
    ("empty messages", "/v1/chat/completions", chat(messages=[]), AUTH, 400),
    ("messages not a list", "/v1/chat/completions", chat(messages="hi"), AUTH, 400),
    ("message not an object", "/v1/chat/completions", chat(messages=["hi"]), AUTH, 400),
    ("unknown role", "/v1/chat/completions", chat(messages=[{"role": "wizard", "content": "x"}]), AUTH, 400),
    (
        "content wrong type",
        "/v1/chat/completions",
        chat(messages=[{"role": "user", "content": 5}]),
        AUTH,
        400,
    ),
    (
        "image part",
        "/v1/chat/completions",
        chat(messages=[{"role": "user", "content": [{"type": "image_url"}]}]),
        AUTH,
        400,
    ),
    (
        "tool role rejected by template",
        "/v1/chat/completions",
        chat(messages=[{"role": "tool", "content": "x"}]),
        AUTH,
        400,
    ),
    ("unknown model", "/v1/chat/completions", chat(model="gpt-9"), AUTH, 404),
    ("model wrong type", "/v1/chat/completions", chat(model=["tiny-r1"]), AUTH, 400),
    ("temperature string", "/v1/chat/completions", chat(temperature="hot"), AUTH, 400),
    ("temperature numeric string", "/v1/chat/completions", chat(temperature="0.5"), AUTH, 400),
    ("temperature negative", "/v1/chat/completions", chat(temperature=-1), AUTH, 400),
    ("temperature huge", "/v1/chat/completions", chat(temperature=1e308), AUTH, 400),
    ("top_p zero", "/v1/chat/completions", chat(top_p=0), AUTH, 400),
    ("top_p above one", "/v1/chat/completions", chat(top_p=1.5), AUTH, 400),
    ("max_tokens zero", "/v1/chat/completions", chat(max_tokens=0), AUTH, 400),
    ("max_tokens negative", "/v1/chat/completions", chat(max_tokens=-5), AUTH, 400),
    ("max_tokens float", "/v1/chat/completions", chat(max_tokens=1.5), AUTH, 400),
    ("max_tokens bool", "/v1/chat/completions", chat(max_tokens=True), AUTH, 400),
    ("max_tokens over limit", "/v1/chat/completions", chat(max_tokens=10**6), AUTH, 400),
    ("max_tokens astronomically large", "/v1/chat/completions", chat(max_tokens=10**40), AUTH, 400),
    ("max_completion_tokens over limit", "/v1/chat/completions", chat(max_completion_tokens=257), AUTH, 400),
    ("n zero", "/v1/chat/completions", chat(n=0), AUTH, 400),
    ("n too large", "/v1/chat/completions", chat(n=1000), AUTH, 400),
    ("seed negative", "/v1/chat/completions", chat(seed=-1), AUTH, 400),
    ("seed huge", "/v1/chat/completions", chat(seed=2**70), AUTH, 400),
    ("stop wrong type", "/v1/chat/completions", chat(stop=5), AUTH, 400),
    ("too many stops", "/v1/chat/completions", chat(stop=["a", "b", "c", "d", "e"]), AUTH, 400),
    ("stream not bool", "/v1/chat/completions", chat(stream="yes"), AUTH, 400),
    ("thinking budget negative", "/v1/chat/completions", chat(thinking_budget=-1), AUTH, 400),
    ("min thinking wrong type", "/v1/chat/completions", chat(min_thinking_tokens="x"), AUTH, 400),
    (
        "too many messages",
        "/v1/chat/completions",
        chat(messages=[{"role": "user", "content": "x"}] * 17),
        AUTH,
        400,
    ),
    (
        "prompt too long",
        "/v1/chat/completions",
        chat(messages=[{"role": "user", "content": "la " * 20000}]),
        AUTH,
        400,
    ),
    ("oversized body", "/v1/chat/completions", b"{" + b" " * 70_000 + b"}", AUTH, 413),
    ("no api key", "/v1/chat/completions", GOOD_CHAT, {}, 401),
    ("wrong api key", "/v1/chat/completions", GOOD_CHAT, {"Authorization": "Bearer nope"}, 401),
    ("basic auth", "/v1/chat/completions", GOOD_CHAT, {"Authorization": "Basic dXNlcjpwYXNz"}, 401),
    ("models without key", "/v1/models", None, {}, 401),
    ("completions missing prompt", "/v1/completions", {"model": MODEL}, AUTH, 400),
    ("completions empty prompt", "/v1/completions", {"model": MODEL, "prompt": ""}, AUTH, 400),
    ("completions empty list", "/v1/completions", {"model": MODEL, "prompt": []}, AUTH, 400),
    ("completions prompt wrong type", "/v1/completions", {"model": MODEL, "prompt": {"a": 1}}, AUTH, 400),
    ("completions bad token id", "/v1/completions", {"model": MODEL, "prompt": [10**9]}, AUTH, 400),
    ("completions too many prompts", "/v1/completions", {"model": MODEL, "prompt": ["a"] * 5}, AUTH, 400),
    ("completions echo", "/v1/completions", {"model": MODEL, "prompt": "a", "echo": True}, AUTH, 400),
    ("unknown route", "/v1/nothing", {}, AUTH, 404),
    ("unknown model card", "/v1/models/gpt-9", None, AUTH, 404),
]


def _send(url: str, path: str, body, headers: dict) -> httpx.Response:
    if body is None:
        return httpx.get(url + path, headers=headers, timeout=30)
    if isinstance(body, bytes):
        headers = {"Content-Type": "application/json", **headers}
        return httpx.post(url + path, content=body, headers=headers, timeout=30)
    return httpx.post(url + path, json=body, headers=headers, timeout=30)


def assert_openai_error(response: httpx.Response, status: int | None = None) -> dict:
    """The response is a 4xx with an OpenAI-style error body; returns the error object."""
    assert 400 <= response.status_code < 500, (response.status_code, response.text[:300])
    if status is not None:
        assert response.status_code == status, response.text[:300]
    assert response.headers["content-type"].startswith("application/json")
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert isinstance(error["message"], str) and error["message"]
    return error


def assert_still_serving(url: str) -> None:
    response = httpx.post(url + "/v1/chat/completions", json=GOOD_CHAT, headers=AUTH, timeout=30)
    assert response.status_code == 200, response.text
    assert response.json()["choices"][0]["message"]["content"] == ANSWER


@pytest.mark.parametrize("name,path,body,headers,status", BAD_REQUESTS, ids=[c[0] for c in BAD_REQUESTS])
def test_bad_request_gets_openai_error(secured_server, name, path, body, headers, status):
    assert_openai_error(_send(secured_server.url, path, body, headers), status)


def test_errors_name_the_parameter(secured_server):
    url = secured_server.url + "/v1/chat/completions"
    error = assert_openai_error(httpx.post(url, json=chat(temperature=-1), headers=AUTH))
    assert error["param"] == "temperature" and error["type"] == "invalid_request_error"
    error = assert_openai_error(httpx.post(url, json=chat(model="gpt-9"), headers=AUTH))
    assert error["code"] == "model_not_found"
    error = assert_openai_error(httpx.post(url, json=chat(messages=...), headers=AUTH))
    assert error["param"] == "messages"


def test_chunked_oversized_body_is_rejected(secured_server):
    def chunks():
        for _ in range(100):
            yield b" " * 1000

    response = httpx.post(
        secured_server.url + "/v1/chat/completions",
        content=chunks(),
        headers={**AUTH, "Content-Type": "application/json"},
        timeout=30,
    )
    assert_openai_error(response, 413)
    assert_still_serving(secured_server.url)


def test_health_needs_no_key_and_server_survives(secured_server):
    for _, path, body, headers, _ in BAD_REQUESTS:
        _send(secured_server.url, path, body, headers)
    assert httpx.get(secured_server.url + "/health").status_code == 200
    assert_still_serving(secured_server.url)


json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=10), children, max_size=3)
    ),
    max_leaves=8,
)
fields = st.sampled_from(
    ["model", "messages", "temperature", "top_p", "max_tokens", "n", "stop", "seed", "stream",
     "stream_options", "thinking_budget", "min_thinking_tokens", "max_completion_tokens", "prompt"]
)  # fmt: skip


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(changes=st.dictionaries(fields, json_values, max_size=3), chat_endpoint=st.booleans())
def test_random_bodies_never_crash(secured_server, changes, chat_endpoint):
    base = GOOD_CHAT if chat_endpoint else {"model": MODEL, "prompt": "hi"}
    path = "/v1/chat/completions" if chat_endpoint else "/v1/completions"
    body = {**base, **changes}
    response = httpx.post(secured_server.url + path, json=body, headers=AUTH, timeout=30)
    assert response.status_code < 500, response.text[:300]
    if response.status_code >= 400:
        assert_openai_error(response)
    elif body.get("stream") is True:
        assert response.text.rstrip().endswith("data: [DONE]")
    else:
        assert response.json()["choices"]


def test_server_answers_after_fuzzing(secured_server):
    assert_still_serving(secured_server.url)
    assert json.loads(httpx.get(secured_server.url + "/health").text)["status"] == "ok"
