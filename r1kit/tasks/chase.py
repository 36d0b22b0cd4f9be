"""Pointer chase: which start reaches the target in `hops` steps of a random map? A search that cannot be aimed.

Prompt "a>f,b>c,c>h,d>a,e>j,f>b,g>e,h>d,i>g,j>i;reach:d in 3": the map sends each of `size` letters to
another (a random permutation), and the answer is the start letter whose `hops`-step chain ends at the
target ("c": c>h>d>... , written "c>h>d>a" for 3 hops). Following the map forward is one lookup per
written letter (a 2-layer transformer's induction head does it); finding the start without searching
means inverting `hops` lookups before writing the first letter, which a model with fewer layers than hops
cannot do in one token. So the only way to solve more problems is to try more starts: each attempt is
one line "c>h>d>a no" (or "... ok" when it ends at the target), every attempt after the first starts
with "Wait," (no space: every letter is then the same bare token in the map, the chains and the answer,
which is what lets a small model learn the lookup; with "a>f b>c" and "Wait, b>..." the sources were
space-prefixed tokens and a 2-layer model never learned it, docs/LOG.md 2026-12-07), and the starts are tried in alphabetical order from a random first one, wrapping around
(no repeats; after `size` attempts every start was tried). With a permutation exactly one start is
right, so k attempts solve k / size of the problems: accuracy is linear in the search length, the task
where thinking longer pays (DeepSeek-R1-Zero's curve, arXiv 2501.12948).

The cold-start traces are *short* searches: after each failed attempt the trace goes on with probability
`continue_p` (else it gives up and answers its last start, scoring 0), so most traces show one or two
attempts and a few show longer ones (every depth has a non-zero share, which is what lets RL find that
longer searches pay). With `recheck` > 0 that share of the hits replays the hit on one more line
"Wait,check:c>h>d>a ok", so budget forcing's forced "Wait," after a hit (s1, arXiv 2501.19393) stays
in distribution (and after a give-up it is the trace's own word for the next attempt).

Nothing is executed: the checker looks the answer's chain up in the problem's map.
"""

from __future__ import annotations

import random
import re
import string

from r1kit.tasks.base import Problem, ProceduralTask

# The word that starts a re-check line (the hit's chain replayed).
CHECK = "check:"
# The verified-search reward reads at most this many characters of the thinking.
MAX_TRACE_CHARS = 8192
_LINE = re.compile(r"([a-z](?:>[a-z])+) (ok|no)")


def parse_map(prompt: str) -> dict[str, str]:
    """The map of a prompt "a>f,b>c,...;reach:d in 3" as {"a": "f", "b": "c", ...}."""
    pairs = prompt.split(";", 1)[0].split(",")
    return dict(p.split(">", 1) for p in pairs)


def chain(mapping: dict[str, str], start: str, hops: int) -> list[str]:
    """[start, map(start), map(map(start)), ...]: `hops` + 1 letters."""
    out = [start]
    for _ in range(hops):
        out.append(mapping[out[-1]])
    return out


def chain_ok(line: str, mapping: dict[str, str], target: str, hops: int) -> bool:
    """Whether "c>h>d>a" is the true `hops`-step chain of its first letter and ends at `target`."""
    letters = line.split(">")
    if len(letters) != hops + 1 or letters[0] not in mapping:
        return False
    return letters == chain(mapping, letters[0], hops) and letters[-1] == target


class ChaseTask(ProceduralTask):
    """Find the start letter whose `hops`-step chain through a random map of `size` letters ends at the target.

    size: letters in the map (2..26; one attempt solves 1 / size); hops: steps of the chain (more hops than
    the model has layers keeps the start from being computed in one token); continue_p: the cold-start
    trace's chance of another attempt after each failed one (short searches: mean attempts about
    1 / (1 - continue_p)); max_attempts: the trace's cap on attempts (default `size`: an exhaustive
    search); wait: the word that starts every attempt after the first, followed by a comma ("" = none);
    recheck: the share of hits replayed on one more "Wait,check:... ok" line.
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
    ):
        """See the class docstring."""
        if not 2 <= size <= 26:
            raise ValueError(f"size must be in 2..26 letters, got {size}")
        if not 1 <= hops <= 16:
            raise ValueError(f"hops must be in 1..16, got {hops}")
        if not 0.0 <= continue_p < 1.0:
            raise ValueError(f"continue_p must be in [0, 1), got {continue_p}")
        max_attempts = size if max_attempts is None else int(max_attempts)
        if not 1 <= max_attempts <= size:
            raise ValueError(f"max_attempts must be in 1..size ({size}), got {max_attempts}")
        if not 0.0 <= recheck <= 1.0:
            raise ValueError(f"recheck must be a share in 0..1, got {recheck}")
        if "\n" in wait or "," in wait or ">" in wait:
            raise ValueError("wait must be one word without a comma, '>' or newline")
        self.size, self.hops, self.continue_p = int(size), int(hops), float(continue_p)
        self.max_attempts, self.wait, self.recheck = max_attempts, wait, float(recheck)

    def config(self) -> dict:
        """The knobs that define the problem distribution."""
        return {
            "size": self.size,
            "hops": self.hops,
            "continue_p": self.continue_p,
            "max_attempts": self.max_attempts,
            "wait": self.wait,
            "recheck": self.recheck,
        }

    def sample(self, rng: random.Random) -> Problem:
        """A random permutation map, a random target, and a short search from a random first start."""
        letters = list(string.ascii_lowercase[: self.size])
        images = letters[:]
        rng.shuffle(images)
        mapping = dict(zip(letters, images))
        target = rng.choice(letters)
        answer = next(s for s in letters if chain(mapping, s, self.hops)[-1] == target)
        first = rng.randrange(self.size)
        lines, solved = [], False
        for k in range(self.max_attempts):
            start = letters[(first + k) % self.size]
            hit = start == answer
            prefix = f"{self.wait}," if self.wait and k else ""
            lines.append(prefix + ">".join(chain(mapping, start, self.hops)) + (" ok" if hit else " no"))
            if hit:
                solved = True
                break
            if rng.random() >= self.continue_p:
                break
        if solved and self.recheck > 0.0 and rng.random() < self.recheck:
            lines.append(
                (f"{self.wait}," if self.wait else "")
                + CHECK
                + ">".join(chain(mapping, answer, self.hops))
                + " ok"
            )
        prompt = ",".join(f"{a}>{b}" for a, b in mapping.items()) + f";reach:{target} in {self.hops}"
        meta = {
            "map": mapping,
            "target": target,
            "attempts": sum(1 for x in lines if not x.removeprefix(f"{self.wait},").startswith(CHECK)),
            "solved": solved,
            "trace_answer": answer if solved else start,
        }
        return Problem(id=prompt, prompt=prompt, answer=answer, solution="\n".join(lines), meta=meta)

    def completion(self, problem: Problem) -> str:
        """The cold-start completion: the search trace and the start it ended on (wrong on a give-up)."""
        answer = problem.meta.get("trace_answer", problem.answer)
        return f"{(problem.solution or '').strip()}\n</think>\n{answer}"

    def sft_messages(self, problem: Problem, system: str | None = None) -> list[dict[str, str]]:
        """The cold-start chat: the search trace and the start the search ended on."""
        answer = problem.meta.get("trace_answer", problem.answer)
        shown = Problem(problem.id, problem.prompt, answer, problem.solution, problem.meta)
        return super().sft_messages(shown, system)

    def check(self, answer: str, problem: Problem) -> float:
        """1.0 when the answer's first letter (a bare start, or its whole chain) reaches the target."""
        mapping, target = problem.meta["map"], problem.meta["target"]
        first = answer.strip().splitlines()[0].strip() if answer.strip() else ""
        start = first.split(">", 1)[0].strip()
        if start not in mapping:
            return 0.0
        if ">" in first and not chain_ok(first.removesuffix(" ok"), mapping, target, self.hops):
            return 0.0
        return 1.0 if chain(mapping, start, self.hops)[-1] == target else 0.0


def search_lines(completion: str, wait: str = "Wait") -> list[tuple[str, str, bool]]:
    """(chain, "ok"/"no", is a re-check) of each attempt line of a completion's thinking."""
    think = completion.split("</think>", 1)[0] if isinstance(completion, str) else ""
    out = []
    for line in think[:MAX_TRACE_CHARS].split("\n"):
        line = line.strip().removeprefix(f"{wait},").strip()
        recheck = line.startswith(CHECK)
        m = _LINE.fullmatch(line.removeprefix(CHECK))
        if m:
            out.append((m[1], m[2], recheck))
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


def _hops(problem: Problem) -> int:
    """The chain length of a problem, read from its prompt ("...;reach:d in 3")."""
    return int(problem.prompt.rsplit(" in ", 1)[1])
