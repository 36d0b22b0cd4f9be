"""Request bodies of the OpenAI/DeepSeek-compatible API, validated with pydantic.

Only what r1kit acts on is declared; other OpenAI fields (`presence_penalty`, `user`, ...)
are accepted and ignored so that stock clients work. Ranges are checked here; limits that
depend on the server (max_tokens cap, n cap, message count) are checked in `app.py` against
`Limits`, so their error names the configured value.

Responses are plain dicts built in `app.py`: they follow OpenAI's chat.completion,
chat.completion.chunk and text_completion objects plus DeepSeek's `reasoning_content`.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictFloat, StrictInt, StrictStr

# strict: a float field accepts ints (temperature=1) but not strings or booleans
Number = StrictFloat


class TextPart(BaseModel):
    """One part of a multi-part message content; only text parts are supported."""

    model_config = ConfigDict(extra="ignore")
    type: Literal["text"]
    text: StrictStr


class ChatMessage(BaseModel):
    """A message of the conversation. `reasoning_content` is accepted and dropped before templating."""

    model_config = ConfigDict(extra="ignore")
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: StrictStr | list[TextPart] | None = None
    reasoning_content: StrictStr | None = None
    name: StrictStr | None = None

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


class SamplingFields(BaseModel):
    """Sampling fields shared by chat and text completions."""

    model_config = ConfigDict(extra="ignore")
    model: StrictStr
    temperature: Number | None = Field(default=None, ge=0.0, le=2.0)
    top_p: Number | None = Field(default=None, gt=0.0, le=1.0)
    max_tokens: StrictInt | None = Field(default=None, ge=1)
    max_completion_tokens: StrictInt | None = Field(default=None, ge=1)
    stop: StrictStr | list[StrictStr] | None = None
    n: StrictInt = Field(default=1, ge=1)
    seed: StrictInt | None = Field(default=None, ge=0, le=2**63 - 1)
    stream: StrictBool = False
    stream_options: StreamOptions | None = None
    # budget forcing (SPEC section 4), r1kit/vLLM-style extra fields
    thinking_budget: StrictInt | None = Field(default=None, ge=0)
    max_thinking_tokens: StrictInt | None = Field(default=None, ge=0)
    min_thinking_tokens: StrictInt | None = Field(default=None, ge=0)

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

    def include_usage(self) -> bool:
        """True when a streaming response should end with a usage chunk."""
        return bool(self.stream_options and self.stream_options.include_usage)


class ChatCompletionRequest(SamplingFields):
    """POST /v1/chat/completions."""

    messages: list[ChatMessage] = Field(min_length=1)


class CompletionRequest(SamplingFields):
    """POST /v1/completions. `prompt` is a string, a list of strings, or token ids."""

    prompt: StrictStr | list[StrictStr] | list[StrictInt] | list[list[StrictInt]]
    echo: StrictBool = False
