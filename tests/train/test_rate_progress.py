"""`RateProgress`: the problems/s bar shared by `r1kit eval` and `r1kit sample`."""

from __future__ import annotations

import io

from rich.console import Console

from r1kit.train.log import RateProgress


def _console() -> tuple[Console, io.StringIO]:
    buf = io.StringIO()
    return Console(file=buf, width=120), buf


def test_counts_are_cumulative_and_the_rate_is_shown():
    console, buf = _console()
    bar = RateProgress(4, "eval addition", True, console)
    bar(2)
    bar(4)  # cumulative: the bar advances by 2, not 4
    bar.close()
    assert bar.bar.step == 4 and bar.done == 4
    lines = buf.getvalue().splitlines()
    assert lines[-1].startswith("eval addition  step 4/4 (100%)  problems/s ")


def test_disabled_prints_nothing_and_unit_names_the_rate():
    console, buf = _console()
    bar = RateProgress(3, "sample", False, console)
    bar(3)
    bar.close()
    assert buf.getvalue() == ""
    console, buf = _console()
    bar = RateProgress(2, "sample", True, console, unit="prompts")
    bar(2)
    bar.close()
    assert "prompts/s " in buf.getvalue()
