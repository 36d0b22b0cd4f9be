"""Load benchmark of `r1kit serve`: streaming chat clients on loopback at several concurrencies.

    python benchmarks/bench_serve.py                         # tiny random model, concurrency 1, 8, 64
    python benchmarks/bench_serve.py --model DIR --device cuda --max-tokens 128

Starts `r1kit serve` in a subprocess (a tiny randomly initialised r1kit model unless --model is
given), then for each concurrency C runs C clients that each send streaming chat requests one
after another, until every client has sent --requests-per-client requests or --seconds passed.
Prints a markdown table: requests/s, completion tokens/s, time to first token and latency, errors.
Every request must succeed: the script exits non-zero on any error.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shlex
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx


def build_tiny_model(directory: Path, layers: int) -> None:
    """A random tiny-llama r1kit model with a freshly trained tokenizer (no downloads)."""
    from r1kit.model import PRESETS, ModelConfig, Transformer
    from r1kit.tokenizer import Tokenizer

    corpus = ["What is 2+2? The answer is 4. Let me think step by step about the numbers."] * 200
    tokenizer = Tokenizer.train(corpus, vocab_size=300)
    cfg = ModelConfig(
        **{**PRESETS["tiny-llama"], "vocab_size": tokenizer.vocab_size, "num_hidden_layers": layers}
    )
    Transformer(cfg).save_pretrained(directory)
    tokenizer.save_pretrained(directory)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def server_batches(url: str) -> dict:
    """The server's batching counters (batches run, sequences in them) from /health."""
    return httpx.get(url + "/health", timeout=10).json()["batches"]


async def one_request(client: httpx.AsyncClient, url: str, model: str, max_tokens: int) -> dict:
    """One streaming chat request; returns its timings and token count."""
    body = {
        "model": model,
        "messages": [{"role": "user", "content": "What is 2+2?"}],
        "stream": True,
        "stream_options": {"include_usage": True},
        "max_tokens": max_tokens,
        "temperature": 1.0,
    }
    start = time.perf_counter()
    first = None
    tokens = 0
    async with client.stream("POST", url + "/v1/chat/completions", json=body) as response:
        if response.status_code != 200:
            raise RuntimeError(f"HTTP {response.status_code}: {(await response.aread())[:200]!r}")
        async for line in response.aiter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            chunk = json.loads(line[6:])
            if "error" in chunk:
                raise RuntimeError(chunk["error"]["message"])
            if first is None and chunk.get("choices") and chunk["choices"][0]["delta"].keys() - {"role"}:
                first = time.perf_counter()
            if chunk.get("usage"):
                tokens = chunk["usage"]["completion_tokens"]
    end = time.perf_counter()
    return {"latency": end - start, "ttft": (first or end) - start, "tokens": tokens}


async def run_level(
    url: str, model: str, concurrency: int, per_client: int, seconds: float, max_tokens: int
) -> dict:
    """`concurrency` closed-loop clients; stops after per_client requests each or `seconds`."""
    results: list[dict] = []
    errors: list[str] = []
    deadline = time.perf_counter() + seconds
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(timeout=120, limits=limits) as client:

        async def worker():
            for _ in range(per_client):
                if time.perf_counter() > deadline:
                    return
                try:
                    results.append(await one_request(client, url, model, max_tokens))
                except Exception as err:  # counted and reported; the benchmark fails on any
                    errors.append(f"{type(err).__name__}: {err}")

        start = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        wall = time.perf_counter() - start
    tokens = sum(r["tokens"] for r in results)
    return {
        "concurrency": concurrency,
        "requests": len(results),
        "errors": errors,
        "wall": wall,
        "req_s": len(results) / wall,
        "tok_s": tokens / wall,
        "ttft": statistics.median(r["ttft"] for r in results) if results else float("nan"),
        "latency": statistics.median(r["latency"] for r in results) if results else float("nan"),
        "tokens_per_request": tokens / max(1, len(results)),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", help="model directory (default: a tiny random model built in a temp dir)")
    parser.add_argument("--layers", type=int, default=2, help="layers of the tiny default model")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--concurrency", default="1,8,64", help="comma-separated client counts")
    parser.add_argument("--requests-per-client", type=int, default=4)
    parser.add_argument("--seconds", type=float, default=60.0, help="time cap per concurrency level")
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--max-batch-size", type=int, default=64)
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory() as tmp:
        model_dir = Path(args.model) if args.model else Path(tmp) / "tiny"
        if not args.model:
            build_tiny_model(model_dir, args.layers)
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        cmd = [sys.executable, "-m", "r1kit.cli", "serve", "--model", str(model_dir), "--port", str(port)]
        cmd += [
            "--device",
            args.device,
            "--max-batch-size",
            str(args.max_batch_size),
            "--log-level",
            "warning",
        ]
        server = subprocess.Popen(cmd, env={**os.environ, "PYTHONUNBUFFERED": "1"})
        try:
            deadline = time.monotonic() + 120
            while True:
                if server.poll() is not None:
                    raise SystemExit("r1kit serve exited during start-up")
                try:
                    model = httpx.get(url + "/v1/models", timeout=1).json()["data"][0]["id"]
                    break
                except (httpx.HTTPError, KeyError, ValueError):
                    if time.monotonic() > deadline:
                        raise SystemExit("r1kit serve did not start within 120 s") from None
                    time.sleep(0.3)
            asyncio.run(run_level(url, model, 1, 1, 30, 4))  # warm-up
            rows = []
            for c in (int(x) for x in args.concurrency.split(",")):
                before = server_batches(url)
                row = asyncio.run(
                    run_level(url, model, c, args.requests_per_client, args.seconds, args.max_tokens)
                )
                after = server_batches(url)
                batches = after["batches"] - before["batches"]
                row["rows_per_batch"] = (after["rows"] - before["rows"]) / max(1, batches)
                if "row_steps" in after:  # continuous batching: mean rows decoding per engine step
                    steps = after["steps"] - before["steps"]
                    row["rows_per_step"] = (after["row_steps"] - before["row_steps"]) / max(1, steps)
                rows.append(row)
                print(
                    f"concurrency {c}: {row['requests']} requests, {row['req_s']:.2f} req/s", file=sys.stderr
                )
        finally:
            server.terminate()
            try:
                server.wait(10)
            except subprocess.TimeoutExpired:
                server.kill()

    command = shlex.join(["python", "benchmarks/bench_serve.py", *(sys.argv[1:] if argv is None else argv)])
    print(f"\n`{command}`")
    print(f"(model: {args.model or f'tiny random r1kit model, {args.layers} layers'}; device {args.device}; "
          f"max_tokens {args.max_tokens}; streaming chat; loopback)\n")  # fmt: skip
    print(
        "| clients | requests | errors | requests/s | tokens/s | median TTFT (s) | median latency (s) "
        "| rows/batch | rows/step |"
    )
    print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(
            f"| {r['concurrency']} | {r['requests']} | {len(r['errors'])} | {r['req_s']:.2f} | {r['tok_s']:.0f} "
            f"| {r['ttft']:.3f} | {r['latency']:.3f} | {r['rows_per_batch']:.1f} "
            f"| {r.get('rows_per_step', float('nan')):.1f} |"
        )
    failures = [e for r in rows for e in r["errors"]]
    for error in failures[:5]:
        print(f"error: {error}", file=sys.stderr)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
