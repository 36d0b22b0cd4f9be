"""Serving test helpers: a scripted model whose output is known and a live server in a thread.

`ScriptedModel` honours the Transformer forward + KV-cache contract (docs/INTERFACES.md) but
ignores attention: at every position it puts all the probability on the next token of a script,
so the real `Engine` (greedy or sampled) produces the script exactly:

    reasoning  "2+2 is 4"  then `</think>`, then the answer "The answer is 4", then EOS.

If `</think>` appears early (budget forcing), it jumps to the answer; a prompt containing
"forever" gets an endless thinking of " la" tokens (for cancellation tests). The model records
every prompt it was fed (`prompts_seen`) and counts forward calls.
"""

from __future__ import annotations

import socket
import threading
import time

import torch
from torch import nn

from r1kit.engine import Engine
from r1kit.tokenizer import Tokenizer

REASONING = "2+2 is 4"
ANSWER = "The answer is 4"
API_KEY = "sk-test-r1kit"

CORPUS = [
    "2+2 is 4. The answer is 4. What is 2+2? Hello there, how are you?",
    "the quick brown fox jumps over the lazy dog; la la la. Wait, let me think.",
] * 50


class ScriptCache:
    """The cache contract (length, reorder, truncate, concat_aligned); holds each row's token history,
    prompt text and prompt width (the history before its first generated token)."""

    def __init__(self, batch_size: int, max_len: int):
        self.length = 0
        self.max_len = max_len
        self.rows: list[dict] = [{"history": [], "prompt": "", "width": 0} for _ in range(batch_size)]

    def reorder(self, index: torch.Tensor) -> None:
        self.rows = [dict(self.rows[i], history=list(self.rows[i]["history"])) for i in index.tolist()]

    def truncate(self, length: int) -> None:
        for row in self.rows:
            row["history"] = row["history"][:length]
        self.length = length

    @classmethod
    def concat_aligned(cls, parts, length: int, max_len: int) -> ScriptCache:
        """Continuous batching's merge: the rows of every part, histories kept (positions do not matter)."""
        merged = cls(0, max_len)
        merged.rows = []
        for cache, _, *rows in parts:
            index = rows[0].tolist() if rows and rows[0] is not None else range(len(cache.rows))
            merged.rows += [dict(cache.rows[i], history=list(cache.rows[i]["history"])) for i in index]
        merged.length = length
        return merged


class ScriptedModel(nn.Module):
    """A stand-in for `Transformer` that deterministically emits a script (see module docstring)."""

    def __init__(self, tokenizer: Tokenizer, delay_s: float = 0.0):
        super().__init__()
        self.tok = tokenizer
        self.weight = nn.Parameter(torch.zeros(1))  # the engine reads device and dtype from parameters
        self.vocab = tokenizer.vocab_size
        self.reasoning_ids = tokenizer.encode(REASONING + "\n")
        self.answer_ids = tokenizer.encode("\n" + ANSWER)
        self.forever_ids = tokenizer.encode(" la")
        self.think_end = tokenizer.think_end_id
        self.eos = tokenizer.eos_id
        self.delay_s = delay_s
        self.prompts_seen: list[str] = []
        self.forward_calls = 0

    def new_cache(self, batch_size: int, max_len: int, device=None, dtype=None) -> ScriptCache:
        return ScriptCache(batch_size, max_len)

    def next_token(self, generated: list[int], prompt: str) -> int:
        """The scripted token after `generated` (the completion so far) for a prompt text."""
        if "forever" in prompt and self.think_end not in generated:
            return self.forever_ids[len(generated) % len(self.forever_ids)]
        if self.think_end in generated:
            k = len(generated) - generated.index(self.think_end) - 1
            return self.answer_ids[k] if k < len(self.answer_ids) else self.eos
        k = len(generated)
        return self.reasoning_ids[k] if k < len(self.reasoning_ids) else self.think_end

    def forward(self, input_ids, attention_mask=None, positions=None, cache=None, return_hidden=False):
        self.forward_calls += 1
        if self.delay_s:
            time.sleep(self.delay_s)
        assert cache is not None, "the engine always decodes with a cache"
        b, t = input_ids.shape
        ids = input_ids.tolist()
        if cache.length == 0:  # prefill: remember each row's real (unpadded) prompt
            for r in range(b):
                cache.rows[r]["width"] = t
                keep = [1] * t if attention_mask is None else attention_mask[r, :t].tolist()
                text = self.tok.decode([x for x, m in zip(ids[r], keep) if m])
                cache.rows[r]["prompt"] = text
                self.prompts_seen.append(text)
        # only the last position's logits are read by the engine
        logits = torch.full((b, t, self.vocab), -30.0)
        for r in range(b):
            row = cache.rows[r]
            row["history"].extend(ids[r])
            logits[r, -1, self.next_token(row["history"][row["width"] :], row["prompt"])] = 30.0
        cache.length += t
        if return_hidden:
            return logits, torch.zeros(b, t, 1)
        return logits


class LiveServer:
    """A uvicorn server on a free 127.0.0.1 port, in a background thread."""

    def __init__(self, app, model: ScriptedModel):
        import uvicorn

        self.app, self.model = app, model
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        shutdown_s = app.state.serve.config.shutdown_timeout_s
        self.server = uvicorn.Server(
            uvicorn.Config(app, log_level="warning", lifespan="on", timeout_graceful_shutdown=shutdown_s)
        )
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True)

    def __enter__(self) -> LiveServer:
        self.thread.start()
        deadline = time.monotonic() + 10
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("the test server did not start")
            time.sleep(0.01)
        return self

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self.thread.join(10)
        self.sock.close()

    @property
    def batcher(self):
        return self.app.state.serve.batcher


def start_server(
    tokenizer: Tokenizer, model_name: str = "tiny-r1", delay_s: float = 0.0, **config
) -> LiveServer:
    """A LiveServer over `ScriptedModel` + the real Engine; `config` overrides `r1kit.serve.Config` fields."""
    from r1kit.serve import Config, Limits
    from r1kit.serve.app import create_app

    limits = config.pop("limits", Limits())
    model = ScriptedModel(tokenizer, delay_s=delay_s)
    cfg = Config(model="unused", limits=limits, **config)
    app = create_app(Engine(model, tokenizer), tokenizer, cfg, model_name=model_name, context_length=2048)
    return LiveServer(app, model)
