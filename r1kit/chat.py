"""`r1kit chat`: a terminal chat that streams the answer and shows the thinking dimmed.

    r1kit chat --model DIR                      # load the model here
    r1kit chat --url http://127.0.0.1:8000      # talk to a running `r1kit serve`

Commands: /reset starts a new conversation, /exit (or Ctrl-D) quits, Ctrl-C stops an answer.
As with the DeepSeek API, the thinking is shown but not sent back in the next turn.
"""

from __future__ import annotations

import json
import os
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass

from r1kit.config import ConfigError


@dataclass
class Config:
    """`r1kit chat` settings.

    model: local model directory (config.json, weights, tokenizer); or use url.
    url: base URL of a running `r1kit serve` (or any OpenAI-compatible server), e.g. http://127.0.0.1:8000.
    api_key: bearer key for url (default: $R1KIT_API_KEY).
    served_model: model id to ask the server for (default: the first of /v1/models).
    system: system prompt ("" = none, as DeepSeek-R1 recommends).
    temperature: sampling temperature (R1's recommended 0.6).
    top_p: nucleus mass (R1's recommended 0.95).
    max_tokens: most tokens per answer, thinking included.
    thinking_budget: budget forcing: end the thinking after this many tokens (None = no cap).
    show_thinking: print the thinking (dimmed) before the answer.
    device: for a local model: "auto", "cpu", "cuda", ...
    dtype: for a local model: "auto", "float32", "bfloat16", "float16".
    """

    model: str = ""
    url: str = ""
    api_key: str | None = None
    served_model: str | None = None
    system: str = ""
    temperature: float = 0.6
    top_p: float = 0.95
    max_tokens: int = 1024
    thinking_budget: int | None = None
    show_thinking: bool = True
    device: str = "auto"
    dtype: str = "auto"


@dataclass
class Usage:
    """Token counts of one answer."""

    completion_tokens: int = 0
    reasoning_tokens: int = 0


class LocalBackend:
    """Generates with a model loaded in this process (through the server's `Batcher`)."""

    def __init__(self, model, tokenizer):
        from r1kit.engine import Engine
        from r1kit.serve.batcher import Batcher

        self.tokenizer = tokenizer
        self.batcher = Batcher(
            Engine(model, tokenizer), think_end_id=tokenizer.think_end_id, batch_window_s=0
        ).start()
        self.name = "local"

    def stream(self, messages: list[dict], config: Config, usage: Usage) -> Iterator[tuple[str, str]]:
        """Yield ("reasoning" | "content", text) pieces of the answer to `messages`; fills `usage`."""
        from r1kit.serve.batcher import THINK_START, Delta, Failure, Finish, GenerationParams

        ids = self.tokenizer.encode_prompt(messages)  # typed "<|eos|>" etc. stay text
        params = GenerationParams(
            temperature=config.temperature,
            top_p=config.top_p,
            max_tokens=config.max_tokens,
            thinking_budget=config.thinking_budget,
            starts_in_reasoning=self.tokenizer.decode(ids[-4:]).rstrip().endswith(THINK_START),
        )
        stream = self.batcher.submit([ids], params)
        try:
            for events in stream:
                for event in events:
                    if isinstance(event, Delta):
                        yield event.kind, event.text
                    elif isinstance(event, Finish):
                        usage.completion_tokens, usage.reasoning_tokens = (
                            event.completion_tokens,
                            event.reasoning_tokens,
                        )
                    elif isinstance(event, Failure):
                        raise RuntimeError(event.message)
        finally:
            stream.cancel()

    def close(self) -> None:
        self.batcher.stop()


class RemoteBackend:
    """Streams from an OpenAI-compatible /v1/chat/completions endpoint (stdlib HTTP, no extra deps)."""

    def __init__(self, url: str, api_key: str | None = None, model: str | None = None, timeout: float = 600):
        self.url = url.rstrip("/").removesuffix("/v1")
        self.api_key = api_key
        self.timeout = timeout
        self.name = model or self._first_model()

    def _request(self, path: str, body: dict | None = None):
        headers = {"Content-Type": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(self.url + path, data=data, headers=headers)
        try:
            return urllib.request.urlopen(request, timeout=self.timeout)
        except urllib.error.HTTPError as err:
            try:
                message = json.loads(err.read())["error"]["message"]
            except (ValueError, KeyError, TypeError):
                message = str(err)
            raise RuntimeError(f"{err.code}: {message}") from None

    def _first_model(self) -> str:
        with self._request("/v1/models") as response:
            return json.loads(response.read())["data"][0]["id"]

    def stream(self, messages: list[dict], config: Config, usage: Usage) -> Iterator[tuple[str, str]]:
        """Yield ("reasoning" | "content", text) pieces of the answer to `messages`; fills `usage`."""
        body = {
            "model": self.name,
            "messages": messages,
            "stream": True,
            "stream_options": {"include_usage": True},
            "temperature": config.temperature,
            "top_p": config.top_p,
            "max_tokens": config.max_tokens,
        }
        if config.thinking_budget is not None:
            body["thinking_budget"] = config.thinking_budget
        with self._request("/v1/chat/completions", body) as response:
            for raw in response:
                line = raw.decode("utf-8").strip()
                if not line.startswith("data:"):
                    continue
                data = line[5:].strip()
                if data == "[DONE]":
                    return
                chunk = json.loads(data)
                if "error" in chunk:
                    raise RuntimeError(chunk["error"].get("message", "generation failed"))
                if chunk.get("usage"):
                    usage.completion_tokens = chunk["usage"].get("completion_tokens", 0)
                    details = chunk["usage"].get("completion_tokens_details") or {}
                    usage.reasoning_tokens = details.get("reasoning_tokens", 0)
                for choice in chunk.get("choices", []):
                    delta = choice.get("delta") or {}
                    if delta.get("reasoning_content"):
                        yield "reasoning", delta["reasoning_content"]
                    if delta.get("content"):
                        yield "content", delta["content"]

    def close(self) -> None:
        pass


class ChatSession:
    """One conversation: sends the history, prints the streamed thinking (dimmed) and answer."""

    def __init__(self, backend, config: Config, console=None):
        from rich.console import Console

        self.backend = backend
        self.config = config
        self.console = console or Console(highlight=False)
        self.messages: list[dict] = []

    def reset(self) -> None:
        """Forget the conversation."""
        self.messages = []

    def ask(self, text: str) -> tuple[str, str]:
        """Send a user message, print the reply as it streams; returns (reasoning, answer)."""
        system = [{"role": "system", "content": self.config.system}] if self.config.system else []
        self.messages.append({"role": "user", "content": text})
        reasoning, answer, usage = "", "", Usage()
        out = self.console
        started = time.perf_counter()
        kind_open = None
        try:
            for kind, piece in self.backend.stream(system + self.messages, self.config, usage):
                if kind == "reasoning":
                    reasoning += piece
                    if self.config.show_thinking:
                        if kind_open is None:
                            out.print("thinking: ", style="dim italic", end="")
                        out.print(piece, style="dim", end="", markup=False)
                else:
                    answer += piece
                    if kind_open == "reasoning" and self.config.show_thinking:
                        out.print("\n")
                    out.print(piece, end="", markup=False)
                kind_open = kind
        except KeyboardInterrupt:
            out.print("\n[stopped]", style="yellow", markup=False)
        elapsed = time.perf_counter() - started
        out.print()
        if usage.completion_tokens:
            out.print(
                f"{usage.completion_tokens} tokens ({usage.reasoning_tokens} thinking), {elapsed:.1f} s",
                style="dim",
                markup=False,
            )
        if answer:
            self.messages.append({"role": "assistant", "content": answer})
        else:
            self.messages.pop()
        return reasoning, answer


def make_backend(config: Config):
    """A LocalBackend (--model) or a RemoteBackend (--url) from the config."""
    if bool(config.model) == bool(config.url):
        raise ConfigError("r1kit chat needs exactly one of --model DIR or --url URL")
    if config.url:
        api_key = config.api_key or os.environ.get("R1KIT_API_KEY")
        return RemoteBackend(config.url, api_key, config.served_model)
    from r1kit.loaders import load_model

    model, tokenizer, _ = load_model(
        config.model, device=config.device, dtype=config.dtype, require_chat_template=True
    )
    return LocalBackend(model, tokenizer)


def run(config: Config) -> None:
    """Interactive loop: read a message, stream the reply, until /exit or end of input."""
    from rich.console import Console

    console = Console(highlight=False)
    try:
        backend = make_backend(config)
    except (ConfigError, FileNotFoundError, RuntimeError, OSError) as err:
        raise SystemExit(f"r1kit chat: {err}") from None
    session = ChatSession(backend, config, console)
    console.print(
        f"r1kit chat with {backend.name}. /reset for a new conversation, /exit to quit.", style="bold"
    )
    try:
        while True:
            try:
                text = console.input("[bold cyan]you>[/] ").strip()
            except (EOFError, KeyboardInterrupt):
                console.print()
                break
            if text in ("/exit", "/quit"):
                break
            if text == "/reset":
                session.reset()
                console.print("(new conversation)", style="dim")
                continue
            if text:
                try:
                    session.ask(text)
                except RuntimeError as err:
                    console.print(f"error: {err}", style="red", markup=False)
    finally:
        backend.close()
