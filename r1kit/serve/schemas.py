"""Request bodies of the OpenAI/DeepSeek-compatible API, validated with pydantic.

Only what r1kit acts on is declared; other OpenAI fields (`user`, `metadata`, ...) are accepted
and ignored so that stock clients work. Fields that would change the answer and that r1kit cannot
honour (`logprobs`, `top_logprobs`, penalties, `logit_bias`, `best_of`, tools, structured output)
are accepted only at their "off" value and rejected with a 400 otherwise: ignoring them would be
a silently wrong answer.

Every string is checked to be valid Unicode text (a lone UTF-16 surrogate such as `"\\ud800"`
is valid JSON but not text, and cannot be encoded), every integer and float has a range that
fits the engine's int64 / float32 tensors. Limits that depend on the server (max_tokens cap,
n cap, message count) are checked in `app.py` against `Limits`, so their error names the
configured value.

Responses are plain dicts built in `app.py`: they follow OpenAI's chat.completion,
chat.completion.chunk and text_completion objects plus DeepSeek's `reasoning_content`.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    StrictFloat,
    StrictInt,
    StrictStr,
)

# the largest count a request may name: far above any server limit, far below int64 overflow
MAX_COUNT = 2**31 - 1


def check_text(value: str) -> str:
    """`value` if it is valid Unicode text (encodable as UTF-8); raises ValueError otherwise."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as err:
        raise ValueError(
            f"is not valid Unicode text (a lone surrogate {value[err.start]!r} at index {err.start})"
        ) from None
    return value


# strict: no coercion from numbers or booleans; AfterValidator: no lone surrogates
Text = Annotated[StrictStr, AfterValidator(check_text)]
# strict: a float field accepts ints (temperature=1) but not strings or booleans; nan/inf fail the ranges
Number = StrictFloat
Count = Annotated[StrictInt, Field(ge=0, le=MAX_COUNT)]


class TextPart(BaseModel):
    """One part of a multi-part message content; only text parts are supported."""

    model_config = ConfigDict(extra="ignore")
    type: Literal["text"]
    text: Text


class ChatMessage(BaseModel):
    """A message of the conversation. `reasoning_content` is accepted and dropped before templating."""

    model_config = ConfigDict(extra="ignore")
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: Text | list[TextPart] | None = None
    reasoning_content: Text | None = None
    name: Text | None = None

    def text(self) -> str:
        """The message content as one string (text parts joined)."""
        if self.content is None:
            return ""
        if isinstance(self.content, str):
            return self.content
        return "".join(part.text for part in self.content)


class StreamOptions(BaseModel):
    """`stream_options` of a streaming request."""

    model_config = ConfigDict(extra="ignore")
    include_usage: StrictBool = False


# fields r1kit does not implement: (name, the values that ask for nothing, what to send instead)
_UNSUPPORTED: tuple[tuple[str, tuple, str], ...] = (
    ("logprobs", (None, False), "omit it or send false (log-probabilities are not returned)"),
    ("top_logprobs", (None, 0), "omit it (log-probabilities are not returned)"),
    ("presence_penalty", (None, 0, 0.0), "omit it or send 0"),
    ("frequency_penalty", (None, 0, 0.0), "omit it or send 0"),
    ("repetition_penalty", (None, 1, 1.0), "omit it or send 1"),
    ("logit_bias", (None, {}), "omit it"),
    ("best_of", (None, 1), "omit it or send 1"),
    ("tools", (None, []), "omit it (tool calling is not supported)"),
    ("functions", (None, []), "omit it (function calling is not supported)"),
    ("response_format", (None, {"type": "text"}), 'omit it or send {"type": "text"}'),
    ("suffix", (None, ""), "omit it"),
)


class SamplingFields(BaseModel):
    """Sampling fields shared by chat and text completions."""

    model_config = ConfigDict(extra="ignore")
    model: Text
    temperature: Number | None = Field(default=None, ge=0.0, le=2.0)
    top_p: Number | None = Field(default=None, gt=0.0, le=1.0)
    top_k: StrictInt | None = Field(default=None, ge=-1, le=MAX_COUNT)  # vLLM extra: 0 or -1 = off
    max_tokens: StrictInt | None = Field(default=None, ge=1, le=MAX_COUNT)
    max_completion_tokens: StrictInt | None = Field(default=None, ge=1, le=MAX_COUNT)
    stop: Text | list[Text] | None = None
    n: StrictInt = Field(default=1, ge=1, le=MAX_COUNT)
    seed: StrictInt | None = Field(default=None, ge=0, le=2**63 - 1)
    stream: StrictBool = False
    stream_options: StreamOptions | None = None
    # budget forcing (s1, arXiv 2501.19393), r1kit/vLLM-style extra fields
    thinking_budget: Count | None = None
    max_thinking_tokens: Count | None = None
    min_thinking_tokens: Count | None = None

    # fields r1kit does not implement, kept raw so that `unsupported()` can name them
    logprobs: Any = None
    top_logprobs: Any = None
    presence_penalty: Any = None
    frequency_penalty: Any = None
    repetition_penalty: Any = None
    logit_bias: Any = None
    best_of: Any = None
    tools: Any = None
    functions: Any = None
    response_format: Any = None
    suffix: Any = None

    def unsupported(self) -> tuple[str, str] | None:
        """(field, message) of the first unsupported field set to a value that asks for something."""
        for name, off, instead in _UNSUPPORTED:
            value = getattr(self, name)
            if not any(value == v and type(value) is type(v) for v in off):
                return name, f"unsupported parameter {name}={_short(value)}; {instead}"
        return None

    def stop_list(self) -> list[str]:
        """`stop` as a list of non-empty strings."""
        if self.stop is None:
            return []
        stops = [self.stop] if isinstance(self.stop, str) else list(self.stop)
        return [s for s in stops if s]

    def requested_max_tokens(self) -> int | None:
        """`max_completion_tokens` if given, else `max_tokens`, else None."""
        return self.max_completion_tokens if self.max_completion_tokens is not None else self.max_tokens

    def requested_thinking_budget(self) -> int | None:
        """`thinking_budget` or its alias `max_thinking_tokens`, else None."""
        return self.thinking_budget if self.thinking_budget is not None else self.max_thinking_tokens

    def requested_top_k(self) -> int:
        """`top_k` with "off" (None, 0, -1) as 0, the engine's "off"."""
        return self.top_k if self.top_k is not None and self.top_k > 0 else 0

    def include_usage(self) -> bool:
        """True when a streaming response should end with a usage chunk."""
        return bool(self.stream_options and self.stream_options.include_usage)


def _short(value: Any) -> str:
    """A short ASCII rendering of a client value for an error message."""
    text = ascii(value)
    return text if len(text) <= 40 else text[:37] + "..."


class ChatCompletionRequest(SamplingFields):
    """POST /v1/chat/completions."""

    messages: list[ChatMessage] = Field(min_length=1)


class CompletionRequest(SamplingFields):
    """POST /v1/completions. `prompt` is a string, a list of strings, or token ids."""

    prompt: Text | list[Text] | list[StrictInt] | list[list[StrictInt]]
    echo: StrictBool = False
