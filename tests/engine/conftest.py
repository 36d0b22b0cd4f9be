"""Fixtures of the engine tests (the stand-ins themselves live in engine_stubs.py)."""

import pytest
from engine_stubs import CharTokenizer


@pytest.fixture
def char_tok():
    return CharTokenizer()
