"""`r1kit chat` (local and against a server) and `r1kit serve --model DIR` end to end in a subprocess."""

from __future__ import annotations

import io
import os
import socket
import subprocess
import sys
import time

import httpx
import openai
import pytest
from rich.console import Console
from serve_stub import ANSWER, REASONING, ScriptedModel

from r1kit.chat import ChatSession, Config, LocalBackend, RemoteBackend


def _session(backend) -> tuple[ChatSession, io.StringIO]:
    buffer = io.StringIO()
    return ChatSession(backend, Config(), Console(file=buffer, width=100, color_system=None)), buffer


def test_chat_against_server(server):
    session, out = _session(RemoteBackend(server.url))
    assert session.backend.name == "tiny-r1"
    assert session.ask("What is 2+2?") == (REASONING, ANSWER)
    assert session.ask("Sure?") == (REASONING, ANSWER)
    text = out.getvalue()
    assert "thinking: 2+2 is 4" in text and "The answer is 4" in text and "thinking)" in text
    # the history holds the answers but not the thinking
    assert [m["role"] for m in session.messages] == ["user", "assistant", "user", "assistant"]
    assert all(REASONING not in m["content"] for m in session.messages)


def test_chat_local_model(tokenizer):
    model = ScriptedModel(tokenizer)
    backend = LocalBackend(model, tokenizer)
    try:
        session, _ = _session(backend)
        session.config.show_thinking = False
        assert session.ask("What is 2+2?") == (REASONING, ANSWER)
        session.ask("Again")
        assert "What is 2+2?" in model.prompts_seen[-1] and REASONING not in model.prompts_seen[-1]
    finally:
        backend.close()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory, tokenizer):
    """A randomly initialised tiny r1kit Transformer saved with the tokenizer, as `r1kit serve` reads it."""
    from r1kit.model import PRESETS, ModelConfig, Transformer

    directory = tmp_path_factory.mktemp("tiny-model")
    cfg = ModelConfig(**{**PRESETS["tiny-llama"], "vocab_size": tokenizer.vocab_size, "num_hidden_layers": 1})
    Transformer(cfg).save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


def test_serve_command_end_to_end(model_dir):
    port = _free_port()
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    cmd = [sys.executable, "-m", "r1kit.cli", "serve", "--model", str(model_dir), "--port", str(port)]
    proc = subprocess.Popen(
        [*cmd, "--log-level", "warning"], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            assert proc.poll() is None, proc.stdout.read().decode()
            try:
                if httpx.get(url + "/health", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, "r1kit serve did not come up"
            time.sleep(0.2)
        client = openai.OpenAI(base_url=url + "/v1", api_key="x", max_retries=0, timeout=60)
        name = model_dir.name
        assert [m.id for m in client.models.list().data] == [name]
        out = client.chat.completions.create(
            model=name, messages=[{"role": "user", "content": "hi"}], max_tokens=8
        )
        assert out.usage.completion_tokens <= 8
        assert isinstance(out.choices[0].message.reasoning_content, str)
        assert out.choices[0].finish_reason in ("stop", "length")

        # `r1kit chat --url` against it, driven through stdin
        chat = subprocess.run(
            [sys.executable, "-m", "r1kit.cli", "chat", "--url", url, "--max-tokens", "6"],
            input=b"hello\n/exit\n",
            capture_output=True,
            timeout=60,
            env=env,
        )
        assert chat.returncode == 0, chat.stderr.decode()
        assert b"tokens (" in chat.stdout
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
