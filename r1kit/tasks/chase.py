"""Pointer chase: which start reaches the target in `hops` steps of a random map? A search that cannot be aimed.

Prompt "05,12,27,33,49,50,68,74,81,96;to 3 in 3": the map sends each of `size` digits to another (a random
permutation; "05" is 0 -> 5), and the answer is the start digit whose `hops`-step chain ends at the target
(4 -> 9 -> 6 -> 8, written "4968", misses; 3 -> 3 -> 3 -> 3 hits: the answer is 3). Each written digit is followed by its
image, so the lookup is the previous-token induction head a 2-layer transformer learns (find the pair whose
first digit is this one, copy the digit after it); digits are single tokens everywhere (r1kit's tokenizer
splits them), so the map, the chains and the answer spell a symbol the same way. (Letters written "a>f"
were never learned by the 2-layer model: the lookup then needs the token before the ">", docs/LOG.md
2026-12-07.) Finding the start without searching means inverting `hops` lookups before writing the first
digit, which a model with fewer layers than hops cannot do in one token. So the only way to solve more
problems is to try more starts: each attempt is one line "4968 no" (or "... ok" when it ends at the
target), every attempt after the first starts with "Wait,", and the starts are tried in increasing order
from a random first one, wrapping around (no repeats; after `size` attempts every start was tried). With a
permutation exactly one start is right, so k attempts solve k / size of the problems: accuracy is linear
in the search length, the task where thinking longer pays (DeepSeek-R1-Zero's curve, arXiv 2501.12948).

The cold-start traces are *short* searches: after each failed attempt the trace goes on with probability
`continue_p` (else it gives up and answers its last start, scoring 0), so most traces show one or two
attempts and a few show longer ones (every depth has a non-zero share, which is what lets RL find that
longer searches pay). With `recheck` > 0 that share of the hits replays the hit on one more line
"Wait,check:4968 ok", so budget forcing's forced "Wait," after a hit (s1, arXiv 2501.19393) stays in
distribution (and after a give-up it is the trace's own word for the next attempt).

Nothing is executed: the checker looks the answer's chain up in the problem's map.
"""

from __future__ import annotations

import random
import re
import string

from r1kit.tasks.base import Problem, SearchTraceTask

# The word that starts a re-check line (the hit's chain replayed).
CHECK = "check:"
# The verified-search reward reads at most this many characters of the thinking.
MAX_TRACE_CHARS = 8192
_LINE = re.compile(r"(\d{2,17}) (ok|no)")
_PAIRS_LINE = re.compile(r"([a-j](?:,[a-j]){1,16}) (ok|no)")
SYMBOLS = ("digits", "pairs")


def parse_map(prompt: str) -> dict[str, str]:
    """The map of a prompt "05,12,...;to 3 in 3" (or "af,bc,...;to:d,in:3") as {"0": "5", "1": "2", ...}."""
    pairs = prompt.split(";", 1)[0].split(",")
    return {p[0]: p[1] for p in pairs}


def chain(mapping: dict[str, str], start: str, hops: int) -> list[str]:
    """[start, map(start), map(map(start)), ...]: `hops` + 1 digits."""
    out = [start]
    for _ in range(hops):
        out.append(mapping[out[-1]])
    return out


def chain_ok(line: str, mapping: dict[str, str], target: str, hops: int) -> bool:
    """Whether "4968" is the true `hops`-step chain of its first digit and ends at `target` (the "pairs"
    symbols' "b,j,d,c" may be given with or without its commas)."""
    digits = list(line.replace(",", ""))
    if len(digits) != hops + 1 or digits[0] not in mapping:
        return False
    return digits == chain(mapping, digits[0], hops) and digits[-1] == target


class ChaseTask(SearchTraceTask):
    """Find the start digit whose `hops`-step chain through a random map of `size` digits ends at the target.

    size: digits in the map (2..10; one attempt solves 1 / size); hops: steps of the chain (more hops than
    the model has layers keeps the start from being computed in one token); continue_p: the cold-start
    trace's chance of another attempt after each failed one (short searches: mean attempts about
    1 / (1 - continue_p)); max_attempts: the trace's cap on attempts (default `size`: an exhaustive
    search); wait: the word that starts every attempt after the first, followed by a comma ("" = none);
    recheck: the share of hits replayed on one more "Wait,check:... ok" line; symbols: "digits" (the map
    "05,12,...", chains "4968") or "pairs" (letters: the map "af,bc,...;to:d,in:3", each entry one BPE token
    once the tokenizer has merged it, chains "b,j,d,c": a lookup is then one attention step, with no
    previous-token head to bind a source to its image first).
    """

    name = "chase"

    def __init__(
        self,
        size: int = 10,
        hops: int = 3,
        continue_p: float = 0.4,
        max_attempts: int | None = None,
        wait: str = "Wait",
        recheck: float = 0.0,
        symbols: str = "digits",
    ):
        """See the class docstring."""
        if symbols not in SYMBOLS:
            raise ValueError(f"symbols must be one of {', '.join(SYMBOLS)}; got {symbols!r}")
        if not 2 <= size <= 10:
            raise ValueError(f"size must be in 2..10 digits, got {size}")
        if not 1 <= hops <= 16:
            raise ValueError(f"hops must be in 1..16, got {hops}")
        if not 0.0 <= continue_p < 1.0:
            raise ValueError(f"continue_p must be in [0, 1), got {continue_p}")
        max_attempts = size if max_attempts is None else int(max_attempts)
        if not 1 <= max_attempts <= size:
            raise ValueError(f"max_attempts must be in 1..size ({size}), got {max_attempts}")
        if not 0.0 <= recheck <= 1.0:
            raise ValueError(f"recheck must be a share in 0..1, got {recheck}")
        if "\n" in wait or "," in wait or any(c.isdigit() for c in wait):
            raise ValueError("wait must be one word without a comma, digit or newline")
        self.size, self.hops, self.continue_p = int(size), int(hops), float(continue_p)
        self.max_attempts, self.wait, self.recheck = max_attempts, wait, float(recheck)
        self.symbols = symbols

    def config(self) -> dict:
        """The knobs that define the problem distribution."""
        return {
            "size": self.size,
            "hops": self.hops,
            "continue_p": self.continue_p,
            "max_attempts": self.max_attempts,
            "wait": self.wait,
            "recheck": self.recheck,
            "symbols": self.symbols,
        }

    def sample(self, rng: random.Random) -> Problem:
        """A random permutation map, a random target, and a short search from a random first start."""
        pairs = self.symbols == "pairs"
        digits = list((string.ascii_lowercase if pairs else string.digits)[: self.size])
        sep = "," if pairs else ""  # pairs: "b,j,d,c" (each letter one token; a map entry "bj" is one token)
        images = digits[:]
        rng.shuffle(images)
        mapping = dict(zip(digits, images))
        target = rng.choice(digits)
        answer = next(s for s in digits if chain(mapping, s, self.hops)[-1] == target)
        first = rng.randrange(self.size)
        prefix = f"{self.wait}," if self.wait else ""
        lines, solved = [], False
        for k in range(self.max_attempts):
            start = digits[(first + k) % self.size]
            hit = start == answer
            lines.append(
                (prefix if k else "") + sep.join(chain(mapping, start, self.hops)) + (" ok" if hit else " no")
            )
            if hit:
                solved = True
                break
            if rng.random() >= self.continue_p:
                break
        attempts = len(lines)
        if solved and self.recheck > 0.0 and rng.random() < self.recheck:
            lines.append(prefix + CHECK + sep.join(chain(mapping, answer, self.hops)) + " ok")
        tail = f";to:{target},in:{self.hops}" if pairs else f";to {target} in {self.hops}"
        prompt = ",".join(f"{a}{b}" for a, b in mapping.items()) + tail
        meta = {
            "map": mapping,
            "target": target,
            "attempts": attempts,
            "solved": solved,
            "trace_answer": answer if solved else start,
        }
        return Problem(id=prompt, prompt=prompt, answer=answer, solution="\n".join(lines), meta=meta)

    def check(self, answer: str, problem: Problem) -> float:
        """1.0 when the answer (the start digit, or its whole chain) reaches the target."""
        mapping, target = problem.meta["map"], problem.meta["target"]
        first = answer.strip().splitlines()[0].strip().removesuffix(" ok") if answer.strip() else ""
        first = first.replace(",", "") if self.symbols == "pairs" else first
        if not first or any(c not in mapping for c in first):
            return 0.0
        if len(first) > 1 and not chain_ok(first, mapping, target, self.hops):
            return 0.0
        return 1.0 if chain(mapping, first[0], self.hops)[-1] == target else 0.0


def search_lines(completion: str, wait: str = "Wait") -> list[tuple[str, str, bool]]:
    """(chain, "ok"/"no", is a re-check) of each attempt line of a completion's thinking; a chain is its
    symbols without separators ("4968", or "bjdc" for the "pairs" line "b,j,d,c ok")."""
    think = completion.split("</think>", 1)[0] if isinstance(completion, str) else ""
    out = []
    for line in think[:MAX_TRACE_CHARS].split("\n"):
        line = line.strip().removeprefix(f"{wait},").strip()
        recheck = line.startswith(CHECK)
        body = line.removeprefix(CHECK)
        m = _LINE.fullmatch(body) or _PAIRS_LINE.fullmatch(body)
        if m:
            out.append((m[1].replace(",", ""), m[2], recheck))
    return out


def verified_chase_reward(completion: str, problem: Problem) -> float:
    """-1.0 when the thinking claims a hit it did not make (a line "... ok" whose chain is not the map's or
    does not end at the target), else 0.0: a false "ok" then costs more than an honest "no". Never raises.
    Use as ``reward.names = ["accuracy", "format", "r1kit.tasks.chase:verified_chase_reward"]``."""
    try:
        mapping, target = problem.meta["map"], problem.meta["target"]
        hops = _hops(problem)
        for line, verdict, _ in search_lines(completion):
            if verdict == "ok" and not chain_ok(line, mapping, target, hops):
                return -1.0
        return 0.0
    except Exception:  # odd input: no claim to judge
        return 0.0


def honest_chase_reward(completion: str, problem: Problem) -> float:
    """-1.0 when any attempt line's verdict is false, either way: an "ok" on a chain that is not the map's or
    misses the target, or a "no" on the map's chain that hits it; else 0.0. Never raises.

    `verified_chase_reward` fines false "ok"s only, and GRPO learned to dodge it by never saying "ok": it
    wrote its hits as "... no" and answered them anyway (docs/LOG.md 2026-12-07, third session); this
    fine is symmetric, so the cheapest way to avoid it is to say what the chain does. Use as
    ``reward.names = ["accuracy", "format", "r1kit.tasks.chase:honest_chase_reward"]``."""
    try:
        mapping, target = problem.meta["map"], problem.meta["target"]
        hops = _hops(problem)
        for line, verdict, _ in search_lines(completion):
            if (verdict == "ok") != chain_ok(line, mapping, target, hops):
                return -1.0
        return 0.0
    except Exception:  # odd input: no claim to judge
        return 0.0


def _hops(problem: Problem) -> int:
    """The chain length of a problem, read from its prompt ("...;to 3 in 3" or "...;to:d,in:3")."""
    return int(re.split(r"in[ :]", problem.prompt)[-1])
