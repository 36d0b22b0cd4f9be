"""Stable seeds from text: the same value on every machine, run and Python process.

Python's `hash` of a string changes with PYTHONHASHSEED, so r1kit derives every seed that must be
reproducible (a problem's split, a task's draw, a row's sampling stream, a GRPO round) from an
8-byte blake2b digest of text instead. All of them go through :func:`stable_hash`.
"""

from __future__ import annotations

import hashlib

__all__ = ["stable_fraction", "stable_hash", "stable_seed"]


def stable_hash(text: str) -> int:
    """The 64-bit unsigned integer of blake2b (digest_size=8) of `text` in UTF-8, read big-endian.

    Lone surrogates (which UTF-8 cannot encode) become "?" rather than raising.
    """
    digest = hashlib.blake2b(text.encode("utf-8", "replace"), digest_size=8).digest()
    return int.from_bytes(digest, "big")


def stable_seed(*parts: object) -> int:
    """A 31-bit seed (0 <= seed < 2**31, valid for every RNG r1kit uses) from `parts` joined by "/"."""
    return stable_hash("/".join(map(str, parts))) % (2**31)


def stable_fraction(text: str) -> float:
    """A number in [0, 1) spread uniformly over texts: `stable_hash(text) / 2**64`."""
    return stable_hash(text) / 2**64
