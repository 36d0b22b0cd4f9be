"""Shared test set-up: deterministic, small, and kind to a 2-core machine."""

import os

import pytest
import torch

# train.precision "auto" measures the machine (r1kit.precision: bf16 on GPUs and AMX CPUs); the suite
# pins it to fp32 so its numeric comparisons do not depend on the machine it runs on.
os.environ.setdefault("R1KIT_AUTO_PRECISION", "float32")


@pytest.fixture(autouse=True)
def _seed_everything():
    """Every test starts from the same RNG state so failures reproduce."""
    torch.manual_seed(0)
    yield
