"""The FastAPI app: OpenAI/DeepSeek-compatible endpoints over a `Batcher`, and the web chat.

`create_app(engine, tokenizer, config, model_name)` builds the app; `r1kit.serve.run` serves it
with uvicorn. Every error, from a bad API key to an invalid JSON body to an unexpected failure,
is an OpenAI-style JSON body `{"error": {"message", "type", "param", "code"}}`.

Chat responses carry the DeepSeek fields: `message.reasoning_content` (the thinking, text before
`</think>`) beside `message.content` (the answer); streams send `delta.reasoning_content` chunks,
then `delta.content` chunks. `reasoning_content` sent back in `messages` is dropped.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import secrets
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, StreamingResponse
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from r1kit.serve import Config
from r1kit.serve.batcher import THINK_START, Batcher, Delta, Failure, Finish, GenerationParams, RequestStream
from r1kit.serve.schemas import ChatCompletionRequest, CompletionRequest, SamplingFields
from r1kit.tokenizer import TemplateLimitError

STATIC_DIR = Path(__file__).parent / "static"
log = logging.getLogger(__name__)


class ASCIIJSONResponse(JSONResponse):
    """JSON with every non-ASCII character escaped: any Python string serialises (even one holding a
    lone surrogate, which UTF-8 cannot encode), and no U+2028 reaches a line-splitting client."""

    def render(self, content: Any) -> bytes:
        return json.dumps(content, ensure_ascii=True, allow_nan=False, separators=(",", ":")).encode("ascii")


# ----------------------------------------------------------------------------------------------
# errors


class APIError(Exception):
    """An error answered as `{"error": {...}}` with an HTTP status (OpenAI's shape)."""

    def __init__(
        self,
        status: int,
        message: str,
        type: str = "invalid_request_error",
        param: str | None = None,
        code: str | None = None,
    ):
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = status, message, type, param, code

    def body(self) -> dict:
        """The JSON body of the error."""
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}

    def response(self) -> JSONResponse:
        """The error as a JSON response."""
        headers = {"WWW-Authenticate": "Bearer"} if self.status == 401 else None
        return ASCIIJSONResponse(self.body(), status_code=self.status, headers=headers)


def _param(loc) -> str | None:
    """A pydantic error location as a dotted parameter name, without "body" and union-member tags."""
    parts = [str(p) for p in loc if p != "body"]
    parts = [
        p
        for p in parts
        if not (p in ("str", "int", "float", "bool") or "[" in p or p.startswith("function-"))
    ]
    return ".".join(parts) or None


def _validation_error(err: RequestValidationError) -> APIError:
    """The most specific pydantic error of a request as a 400, naming the offending parameter.

    Of a union's errors (`content` is a string or a list of parts) the deepest wins: a bad part's
    `messages.0.content.1.text` says more than "content should be a string".
    """
    errors = err.errors()
    if not errors:
        return APIError(400, "invalid request body")
    if any(e.get("type") == "json_invalid" for e in errors):
        return APIError(400, "could not parse the JSON body of the request", code="invalid_json")
    first = max(errors, key=lambda e: len((_param(e.get("loc", ())) or "").split(".")))
    param = _param(first.get("loc", ()))
    if first.get("type") == "missing":
        return APIError(
            400, f"missing required parameter: {param}", param=param, code="missing_required_parameter"
        )
    message = str(first.get("msg", "invalid value"))
    return APIError(400, f"invalid value for {param or 'body'}: {message}", param=param, code="invalid_value")


class GuardMiddleware:
    """Pure ASGI middleware: API key check on /v1 and a body size limit, before any parsing.

    The body is read here (up to `max_body_bytes`, 413 beyond) and replayed to the app; later
    `receive` calls go to the server, so disconnects are still seen by the app. An exception that
    escapes the app (a bug) is answered here with a JSON 500 and not re-raised, so the connection
    stays usable (Starlette's outermost error middleware would re-raise it and uvicorn would drop
    the keep-alive connection).
    """

    def __init__(self, app, api_key: str | None, max_body_bytes: int):
        self.app = app
        self.api_key = api_key
        self.max_body_bytes = max_body_bytes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
        if self.api_key and scope["path"].startswith("/v1"):
            scheme, _, token = headers.get("authorization", "").partition(" ")
            if scheme.lower() != "bearer" or not secrets.compare_digest(
                token.strip().encode(), self.api_key.encode()
            ):
                error = APIError(
                    401,
                    "invalid or missing API key (send `Authorization: Bearer KEY`)",
                    code="invalid_api_key",
                )
                return await error.response()(scope, receive, send)
        too_large = APIError(
            413, f"request body is larger than {self.max_body_bytes} bytes", code="request_too_large"
        )
        length = headers.get("content-length")
        if length is not None and (not length.isdigit() or int(length) > self.max_body_bytes):
            return await too_large.response()(scope, receive, send)
        if scope["method"] not in ("POST", "PUT", "PATCH"):
            return await self._call(scope, receive, send)
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_body_bytes:
                return await too_large.response()(scope, receive, send)
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        replayed = False

        async def replay():
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": b"".join(chunks), "more_body": False}
            return await receive()

        return await self._call(scope, replay, send)

    async def _call(self, scope, receive, send):
        started = False

        async def send_tracked(message):
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            return await self.app(scope, receive, send_tracked)
        except Exception:
            log.exception("unexpected error in %s %s", scope["method"], scope["path"])
            if started:
                raise  # the response is under way: only closing the connection can signal it
            error = APIError(500, "internal server error", type="server_error", code="internal_error")
            return await error.response()(scope, receive, send)


# ----------------------------------------------------------------------------------------------
# the app


class ServeState:
    """What the endpoints share: the batcher, the tokenizer and the limits."""

    def __init__(
        self, batcher: Batcher, tokenizer, config: Config, model_name: str, context_length: int | None
    ):
        self.batcher = batcher
        self.tokenizer = tokenizer
        self.config = config
        self.limits = config.limits
        self.model_name = model_name
        self.context_length = context_length
        self.created = int(time.time())

    # -- request checks

    def check_common(self, body: SamplingFields, n_prompts: int = 1) -> None:
        """Model name, n, max_tokens, stop and queue limits shared by both completion endpoints."""
        limits = self.limits
        if body.model != self.model_name:
            raise APIError(
                404, f"the model {body.model!r} does not exist; this server serves {self.model_name!r}",
                param="model", code="model_not_found",
            )  # fmt: skip
        unsupported = body.unsupported()
        if unsupported is not None:
            raise APIError(400, unsupported[1], param=unsupported[0], code="unsupported_parameter")
        if body.n * n_prompts > limits.max_n:
            raise APIError(
                400,
                f"n (times the number of prompts) must be <= {limits.max_n}",
                param="n",
                code="invalid_value",
            )
        max_tokens = body.requested_max_tokens()
        if max_tokens is not None and max_tokens > limits.max_tokens:
            param = "max_completion_tokens" if body.max_completion_tokens is not None else "max_tokens"
            raise APIError(400, f"{param} must be <= {limits.max_tokens}", param=param, code="invalid_value")
        stops = body.stop_list()
        if len(stops) > limits.max_stop or any(len(s) > 256 for s in stops):
            raise APIError(
                400, f"at most {limits.max_stop} stop strings of up to 256 characters", param="stop"
            )
        if self.batcher.pending_rows() >= limits.max_queued_rows:
            raise APIError(
                429, "the server is overloaded; retry later", type="rate_limit_error", code="overloaded"
            )

    def check_prompt(self, ids: list[int], max_tokens: int | None, param: str) -> int:
        """Check a tokenised prompt's length; return the max_tokens to use (default fits the context)."""
        if not ids:
            raise APIError(400, "the prompt is empty", param=param, code="invalid_value")
        if len(ids) > self.limits.max_prompt_tokens:
            raise APIError(
                400, f"the prompt has {len(ids)} tokens; the limit is {self.limits.max_prompt_tokens}",
                param=param, code="context_length_exceeded",
            )  # fmt: skip
        room = None if self.context_length is None else self.context_length - len(ids)
        if max_tokens is None:
            max_tokens = (
                self.config.default_max_tokens if room is None else min(self.config.default_max_tokens, room)
            )
        if room is not None and (room < 1 or max_tokens > room):
            raise APIError(
                400,
                f"this model's context is {self.context_length} tokens; the prompt has {len(ids)} and "
                f"{max_tokens} were requested for the completion",
                param="max_tokens",
                code="context_length_exceeded",
            )
        return max_tokens

    def generation_params(self, body: SamplingFields, max_tokens: int, chat: bool, starts_in_reasoning: bool):
        """`GenerationParams` of a validated request."""
        return GenerationParams(
            temperature=self.config.temperature if body.temperature is None else body.temperature,
            top_p=self.config.top_p if body.top_p is None else body.top_p,
            top_k=body.requested_top_k(),
            max_tokens=max_tokens,
            stop=tuple(body.stop_list()),
            seed=body.seed,
            thinking_budget=body.requested_thinking_budget(),
            min_thinking_tokens=body.min_thinking_tokens,
            split_reasoning=chat,
            starts_in_reasoning=starts_in_reasoning,
        )

    # -- prompts

    def chat_prompt(self, body: ChatCompletionRequest) -> tuple[list[int], bool]:
        """Template and tokenise the messages (reasoning_content dropped). Returns (ids, starts in <think>)."""
        if len(body.messages) > self.limits.max_messages:
            raise APIError(400, f"at most {self.limits.max_messages} messages per request", param="messages")
        messages = []
        for m in body.messages:
            role = "system" if m.role == "developer" else m.role
            # only role and content reach the template: `reasoning_content` is not fed back (DeepSeek API
            # guide, api-docs.deepseek.com/guides/reasoning_model)
            messages.append({"role": role, "content": m.text()})
        try:
            # message text is encoded as text: a typed "<|eos|>" never becomes the control token
            ids = self.tokenizer.encode_prompt(messages)
        except TemplateLimitError as err:  # a template that loops or explodes on these messages
            raise APIError(400, str(err), param="messages", code="chat_template_limit") from None
        except Exception as err:  # a template rejecting a role or an order of messages
            raise APIError(400, f"the chat template rejected the messages: {err}", param="messages") from None
        # a tail of 16 tokens: a `<think>` the template writes as text spans several tokens
        return ids, self.tokenizer.decode(ids[-16:]).rstrip().endswith(THINK_START)

    def completion_prompts(self, body: CompletionRequest) -> list[list[int]]:
        """Tokenise `prompt` (str, list of str, token ids, or list of token-id lists)."""
        prompt = body.prompt
        if isinstance(prompt, str):
            prompts = [self.tokenizer.encode(prompt)]
        elif prompt and all(isinstance(p, str) for p in prompt):
            prompts = [self.tokenizer.encode(p) for p in prompt]
        elif prompt and all(isinstance(p, int) for p in prompt):
            prompts = [list(prompt)]
        else:
            prompts = [list(p) for p in prompt]
        if not prompts:
            raise APIError(400, "prompt must not be empty", param="prompt")
        if len(prompts) > self.limits.max_prompts:
            raise APIError(400, f"at most {self.limits.max_prompts} prompts per request", param="prompt")
        vocab = self.tokenizer.vocab_size
        if any(not 0 <= t < vocab for p in prompts for t in p):
            raise APIError(400, f"token ids must be in [0, {vocab})", param="prompt")
        return prompts


def create_app(
    engine: Any,
    tokenizer: Any,
    config: Config | None = None,
    model_name: str = "r1kit",
    context_length: int | None = None,
) -> FastAPI:
    """Build the app around an `Engine` (its worker thread starts and stops with the app).

    Args:
        engine: an `r1kit.engine.Engine` (anything with its `stream(prompts, params)`).
        tokenizer: an `r1kit.tokenizer.Tokenizer` with a chat template.
        config: server settings (limits, API key, defaults); default `Config()`.
        model_name: the id clients must send as `model`.
        context_length: prompt + completion cap in tokens; default the model's
            `config.max_position_embeddings` when the engine's model has one.
    """
    config = config or Config()
    if context_length is None:
        model_config = getattr(getattr(engine, "model", None), "config", None)
        context_length = getattr(model_config, "max_position_embeddings", None)
    batcher = Batcher(
        engine,
        think_end_id=getattr(tokenizer, "think_end_id", None),
        max_batch_rows=config.max_batch_size,
        batch_window_s=config.batch_window_ms / 1000,
    )
    state = ServeState(batcher, tokenizer, config, model_name, context_length)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        batcher.start()
        try:
            yield
        finally:
            await run_in_threadpool(batcher.stop)

    app = FastAPI(
        title="r1kit",
        version="0.1.0",
        lifespan=lifespan,
        docs_url="/docs",
        redoc_url=None,
        default_response_class=ASCIIJSONResponse,
    )
    app.state.serve = state
    app.add_middleware(GuardMiddleware, api_key=config.api_key, max_body_bytes=config.limits.max_body_bytes)
    _add_error_handlers(app)
    _add_info_routes(app, state)
    _add_generation_routes(app, state)
    return app


def _add_info_routes(app: FastAPI, state: ServeState) -> None:
    """`/` (the chat page), `/health` and `/v1/models`."""
    index_html = (STATIC_DIR / "index.html").read_text(encoding="utf-8")
    batcher = state.batcher

    @app.get("/", include_in_schema=False)
    async def index() -> HTMLResponse:
        headers = {
            "Content-Security-Policy": "default-src 'self'; script-src 'self' 'unsafe-inline'; "
            "style-src 'self' 'unsafe-inline'; img-src 'self' data:",
            "X-Content-Type-Options": "nosniff",
        }
        return HTMLResponse(index_html, headers=headers)

    @app.get("/health")
    async def health() -> dict:
        stats = dict(batcher.stats)
        stats["mean_rows"] = round(stats["rows"] / max(1, stats["batches"]), 2)
        return {
            "status": "ok",
            "model": state.model_name,
            "queued_rows": batcher.pending_rows(),
            "batches": stats,
        }

    @app.get("/v1/models")
    async def list_models() -> dict:
        return {"object": "list", "data": [_model_card(state)]}

    @app.get("/v1/models/{model_id:path}")
    async def get_model(model_id: str) -> dict:
        if model_id != state.model_name:
            raise APIError(
                404, f"the model {model_id!r} does not exist", param="model", code="model_not_found"
            )
        return _model_card(state)


def _add_generation_routes(app: FastAPI, state: ServeState) -> None:
    """`/v1/chat/completions` and `/v1/completions`, streamed (SSE) or collected."""
    batcher = state.batcher

    @app.post("/v1/chat/completions")
    async def chat_completions(body: ChatCompletionRequest, request: Request):
        state.check_common(body)
        prompt_ids, in_think = await run_in_threadpool(state.chat_prompt, body)
        max_tokens = state.check_prompt(prompt_ids, body.requested_max_tokens(), "messages")
        params = state.generation_params(body, max_tokens, chat=True, starts_in_reasoning=in_think)
        stream = batcher.submit([prompt_ids], params, body.n, loop=asyncio.get_running_loop())
        meta = _ResponseMeta("chatcmpl", state.model_name, [len(prompt_ids)], body.n)
        if body.stream:
            return _sse(_stream_chunks(stream, meta, body.include_usage(), chat=True), stream)
        return await _collect_chat(stream, meta, request)

    @app.post("/v1/completions")
    async def completions(body: CompletionRequest, request: Request):
        prompts = await run_in_threadpool(state.completion_prompts, body)
        state.check_common(body, n_prompts=len(prompts))
        if body.echo:
            raise APIError(400, "echo is not supported", param="echo")
        max_tokens = min(state.check_prompt(p, body.requested_max_tokens(), "prompt") for p in prompts)
        params = state.generation_params(body, max_tokens, chat=False, starts_in_reasoning=False)
        stream = batcher.submit(prompts, params, body.n, loop=asyncio.get_running_loop())
        meta = _ResponseMeta("cmpl", state.model_name, [len(p) for p in prompts], body.n)
        if body.stream:
            return _sse(_stream_chunks(stream, meta, body.include_usage(), chat=False), stream)
        return await _collect_completion(stream, meta, request)


def _model_card(state: ServeState) -> dict:
    card = {"id": state.model_name, "object": "model", "created": state.created, "owned_by": "r1kit"}
    if state.context_length is not None:
        card["max_model_len"] = state.context_length
    return card


def _add_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(APIError)
    async def api_error(request: Request, err: APIError):
        return err.response()

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, err: RequestValidationError):
        return _validation_error(err).response()

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, err: StarletteHTTPException):
        kind = {404: "not_found", 405: "method_not_allowed"}.get(err.status_code)
        message = f"{request.method} {request.url.path}: {err.detail}"
        return APIError(err.status_code, message, code=kind).response()

    @app.exception_handler(Exception)
    async def internal_error(request: Request, err: Exception):
        return APIError(500, "internal server error", type="server_error", code="internal_error").response()


# ----------------------------------------------------------------------------------------------
# responses


class _ResponseMeta:
    """Id, model and token counts shared by the chunks / body of one response."""

    def __init__(self, prefix: str, model: str, prompt_lens: list[int], n: int):
        self.id = f"{prefix}-{uuid.uuid4().hex}"
        self.model = model
        self.created = int(time.time())
        self.prompt_tokens = sum(prompt_lens)
        self.n_choices = len(prompt_lens) * n
        self.completion_tokens = 0
        self.reasoning_tokens = 0

    def count(self, finish: Finish) -> None:
        self.completion_tokens += finish.completion_tokens
        self.reasoning_tokens += finish.reasoning_tokens

    def usage(self, reasoning: bool) -> dict:
        usage = {
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "total_tokens": self.prompt_tokens + self.completion_tokens,
        }
        if reasoning:
            usage["completion_tokens_details"] = {"reasoning_tokens": self.reasoning_tokens}
        return usage


async def _watch_disconnect(request: Request, stream: RequestStream) -> None:
    """Cancel the generation when the client of a non-streaming request goes away."""
    while not stream.closed:
        if await request.is_disconnected():
            stream.cancel()
            return
        await asyncio.sleep(0.1)


async def _collect(stream: RequestStream, request: Request) -> AsyncIterator[list]:
    watcher = asyncio.create_task(_watch_disconnect(request, stream))
    try:
        async for events in stream:
            for event in events:
                if isinstance(event, Failure):
                    raise APIError(500, event.message, type="server_error", code="generation_failed")
            yield events
    finally:
        watcher.cancel()
        stream.cancel()


async def _collect_chat(stream: RequestStream, meta: _ResponseMeta, request: Request) -> dict:
    reasoning = [""] * meta.n_choices
    content = [""] * meta.n_choices
    finish = [None] * meta.n_choices
    async for events in _collect(stream, request):
        for event in events:
            if isinstance(event, Delta):
                (reasoning if event.kind == "reasoning" else content)[event.index] += event.text
            elif isinstance(event, Finish):
                finish[event.index] = event.reason
                meta.count(event)
    choices = [
        {
            "index": i,
            "message": {"role": "assistant", "content": content[i], "reasoning_content": reasoning[i]},
            "logprobs": None,
            "finish_reason": finish[i] or "stop",
        }
        for i in range(meta.n_choices)
    ]
    return {**_envelope(meta, "chat.completion", choices), "usage": meta.usage(reasoning=True)}


async def _collect_completion(stream: RequestStream, meta: _ResponseMeta, request: Request) -> dict:
    text = [""] * meta.n_choices
    finish = [None] * meta.n_choices
    async for events in _collect(stream, request):
        for event in events:
            if isinstance(event, Delta):
                text[event.index] += event.text
            elif isinstance(event, Finish):
                finish[event.index] = event.reason
                meta.count(event)
    choices = [
        {"index": i, "text": text[i], "logprobs": None, "finish_reason": finish[i] or "stop"}
        for i in range(meta.n_choices)
    ]
    return {**_envelope(meta, "text_completion", choices), "usage": meta.usage(reasoning=False)}


def _sse(chunks: AsyncIterator[dict], stream: RequestStream) -> StreamingResponse:
    async def body():
        try:
            async for chunk in chunks:
                yield f"data: {json.dumps(chunk)}\n\n"  # ASCII: no U+2028 etc. for line splitters
            yield "data: [DONE]\n\n"
        finally:
            # normal end, client gone (the response task is cancelled) or error: stop the rows
            stream.cancel()

    headers = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
    return StreamingResponse(body(), media_type="text/event-stream", headers=headers)


def _merged(events: list) -> list:
    """Consecutive deltas of the same choice and kind merged into one (fewer, larger chunks)."""
    out: list = []
    for event in events:
        last = out[-1] if out else None
        if (
            isinstance(event, Delta)
            and isinstance(last, Delta)
            and (last.index, last.kind) == (event.index, event.kind)
        ):
            out[-1] = Delta(last.index, last.kind, last.text + event.text)
        else:
            out.append(event)
    return out


def _envelope(meta: _ResponseMeta, obj: str, choices: list) -> dict:
    """The keys every response body and streamed chunk starts with, in OpenAI's order."""
    return {"id": meta.id, "object": obj, "created": meta.created, "model": meta.model, "choices": choices}


async def _stream_chunks(
    stream: RequestStream, meta: _ResponseMeta, include_usage: bool, *, chat: bool
) -> AsyncIterator[dict]:
    """The chunks of a streamed response: `chat.completion.chunk`s (each choice opens with a role
    delta; reasoning goes to `reasoning_content`) or `text_completion`s; then, if asked for, one
    chunk with no choices and the usage. A generation failure ends the stream with an error body."""
    obj = "chat.completion.chunk" if chat else "text_completion"
    field = "delta" if chat else "text"

    def chunk(index: int, value: dict | str, finish_reason: str | None = None) -> dict:
        choice = {"index": index, field: value, "logprobs": None, "finish_reason": finish_reason}
        out = _envelope(meta, obj, [choice])
        if include_usage:  # `"usage": null` on every chunk when the client asked for usage
            out["usage"] = None
        return out

    if chat:
        for i in range(meta.n_choices):
            yield chunk(i, {"role": "assistant", "content": ""})
    async for events in stream:
        for event in _merged(events):
            if isinstance(event, Delta):
                if chat:
                    key = "reasoning_content" if event.kind == "reasoning" else "content"
                    yield chunk(event.index, {key: event.text})
                else:
                    yield chunk(event.index, event.text)
            elif isinstance(event, Finish):
                meta.count(event)
                yield chunk(event.index, {} if chat else "", event.reason)
            elif isinstance(event, Failure):
                yield APIError(500, event.message, type="server_error", code="generation_failed").body()
                return
    if include_usage:
        yield {**_envelope(meta, obj, []), "usage": meta.usage(reasoning=chat)}
