"""Fixtures of the serving tests: a tokenizer and live servers over the scripted model."""

from __future__ import annotations

import pytest
from serve_stub import API_KEY, CORPUS, start_server

from r1kit.tokenizer import Tokenizer


@pytest.fixture(scope="session")
def tokenizer() -> Tokenizer:
    """A small trained r1kit tokenizer with the R1 chat template."""
    return Tokenizer.train(CORPUS, vocab_size=300)


@pytest.fixture(scope="session")
def server(tokenizer):
    """A server without API key (shared by the tests that only read from it)."""
    with start_server(tokenizer) as live:
        yield live


@pytest.fixture(scope="session")
def secured_server(tokenizer):
    """A server that requires `Authorization: Bearer API_KEY`, with small limits for the fuzz tests."""
    from r1kit.serve import Limits

    limits = Limits(max_body_bytes=64_000, max_messages=16, max_tokens=256, max_n=4, max_prompts=4)
    with start_server(tokenizer, api_key=API_KEY, limits=limits) as live:
        yield live
