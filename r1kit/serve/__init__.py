"""`r1kit serve`: an OpenAI/DeepSeek-compatible HTTP server with a web chat.

    r1kit serve --model DIR [--host 0.0.0.0] [--port 8000] [--api-key KEY]

DIR holds an r1kit or Hugging Face model (config.json + safetensors) and its tokenizer
(tokenizer.json + tokenizer_config.json with a chat_template). Endpoints:
POST /v1/chat/completions (with `reasoning_content`), POST /v1/completions, GET /v1/models,
GET /health and the web chat at /.

Layout: `schemas.py` (request validation), `batcher.py` (the worker thread that owns the engine
and batches concurrent requests), `app.py` (the FastAPI app), `static/index.html` (the chat page).
FastAPI and uvicorn are imported only when the server runs, so `import r1kit` stays light.
"""

from __future__ import annotations

import logging
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path

from r1kit.config import ConfigError
from r1kit.train.sections import EngineSection

log = logging.getLogger(__name__)


@dataclass
class Limits:
    """Per-request limits; a request over any of them gets a 4xx OpenAI-style error.

    max_body_bytes: largest request body (413 beyond).
    max_messages: most messages in one chat request.
    max_tokens: largest max_tokens / max_completion_tokens a request may ask for.
    max_n: most choices per request (n, times the number of prompts for /v1/completions).
    max_prompts: most prompts in one /v1/completions request.
    max_prompt_tokens: longest prompt in tokens (the model's context also bounds prompt + max_tokens).
    max_stop: most stop strings per request.
    max_queued_rows: sequences waiting for the worker beyond which new requests get 429.
    """

    max_body_bytes: int = 1_048_576
    max_messages: int = 256
    max_tokens: int = 4096
    max_n: int = 8
    max_prompts: int = 32
    max_prompt_tokens: int = 8192
    max_stop: int = 4
    max_queued_rows: int = 1024


@dataclass
class Config:
    """`r1kit serve` settings.

    model: model directory (config.json, weights, tokenizer.json, tokenizer_config.json).
    host: interface to bind; 127.0.0.1 keeps the server local, 0.0.0.0 exposes it.
    port: TCP port.
    api_key: if set, /v1 requests need `Authorization: Bearer KEY` (default: $R1KIT_API_KEY).
    served_model_name: the model id clients send and /v1/models lists (default: DIR's name).
    device: "auto" (cuda if available), "cpu", "cuda", "cuda:1", ...
    dtype: "auto" (bfloat16 on GPU, float32 on CPU), "float32", "bfloat16", "float16".
    max_batch_size: most sequences decoding together in the continuous batch (a larger single request
        runs alone).
    batch_window_ms: how long an idle worker waits for more requests after the first arrives; while
        decoding, new requests join the running batch at the next step.
    default_max_tokens: max_tokens of requests that give none (thinking included).
    temperature: default temperature (DeepSeek-R1's recommended 0.6).
    top_p: default top_p (DeepSeek-R1's recommended 0.95).
    log_level: uvicorn log level: "critical", "error", "warning", "info", "debug".
    shutdown_timeout_s: on SIGTERM / Ctrl-C, how long requests still being answered may finish
        before they are cancelled (abandoned requests end at once).
    limits: per-request limits (`Limits`, [limits]).
    engine: the decode settings (`r1kit.train.sections.EngineSection`, [engine]).
    """

    model: str = ""
    host: str = "127.0.0.1"
    port: int = 8000
    api_key: str | None = None
    served_model_name: str | None = None
    device: str = "auto"
    dtype: str = "auto"
    max_batch_size: int = 64
    batch_window_ms: float = 5.0
    default_max_tokens: int = 1024
    temperature: float = 0.6
    top_p: float = 0.95
    log_level: str = "info"
    shutdown_timeout_s: float = 5.0
    limits: Limits = field(default_factory=Limits)
    engine: EngineSection = field(default_factory=EngineSection)

    def __post_init__(self) -> None:
        if self.max_batch_size < 1 or self.batch_window_ms < 0 or self.default_max_tokens < 1:
            raise ConfigError("need max_batch_size >= 1, batch_window_ms >= 0 and default_max_tokens >= 1")
        if not self.shutdown_timeout_s >= 0:
            raise ConfigError(f"shutdown_timeout_s must be >= 0, got {self.shutdown_timeout_s}")
        if not 0 <= self.port <= 65535:
            raise ConfigError(f"port must be in [0, 65535], got {self.port}")


def check_chat_template(tokenizer, directory) -> None:
    """Render a sample chat, so that a template that loops, explodes or fails is a load error
    (ConfigError, one line) rather than a failure at the first request."""
    try:
        tokenizer.encode_prompt([{"role": "system", "content": "x"}, {"role": "user", "content": "2+2?"}])
    except Exception as err:
        try:
            tokenizer.encode_prompt([{"role": "user", "content": "2+2?"}])  # templates without a system role
        except Exception:
            raise ConfigError(f"{directory}: the chat template fails on a sample chat: {err}") from None


def _exit_user_error(message: str) -> None:
    """A user error: one line on stderr, exit status 2."""
    print(f"r1kit serve: {message}", file=sys.stderr)
    raise SystemExit(2)


def run(config: Config) -> None:
    """Load the model, start the batching worker and serve HTTP until interrupted."""
    import uvicorn

    from r1kit.loaders import load_model
    from r1kit.serve.app import create_app

    if not config.model:
        _exit_user_error("needs --model DIR (a model directory with a tokenizer)")
    try:
        model, tokenizer, _ = load_model(
            config.model, device=config.device, dtype=config.dtype, require_chat_template=True
        )
        check_chat_template(tokenizer, config.model)
    except (ConfigError, FileNotFoundError, ValueError) as err:  # ValueError: config.json vs the weights
        _exit_user_error(str(err))
    if config.api_key is None and os.environ.get("R1KIT_API_KEY"):
        config.api_key = os.environ["R1KIT_API_KEY"]
    name = config.served_model_name or Path(config.model).resolve().name
    app = create_app(config.engine.build(model, tokenizer), tokenizer, config, model_name=name)
    if config.host not in ("127.0.0.1", "localhost", "::1") and not config.api_key:
        log.warning(
            "serving on %s without --api-key: anyone who can reach the port can use the model", config.host
        )
    print(f"r1kit serve: model {name!r} on http://{config.host}:{config.port}/ (web chat at /, API at /v1)")
    uvicorn.run(
        app,
        host=config.host,
        port=config.port,
        log_level=config.log_level,
        timeout_graceful_shutdown=config.shutdown_timeout_s,
    )
