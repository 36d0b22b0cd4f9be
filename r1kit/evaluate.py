"""`r1kit eval`: pass@k, maj@k, best-of-N, greedy accuracy and test-time-scaling curves
(DeepSeek-R1, arXiv 2501.12948; Chen et al. 2021, arXiv 2107.03374; self-consistency, arXiv 2203.11171;
Cobbe et al. 2021, arXiv 2110.14168).

R1's protocol: k samples per problem at temperature 0.6 and top-p 0.95, the prompt rendered with the
chat template and its generation prompt (the response starts inside `<think>`), pass@1 = mean
correctness over the k samples. On top of that this module reports

- unbiased pass@k for several k (`r1kit.metrics.pass_at_k_many`);
- maj@k (cons@k): majority vote over the final answers (the text after `</think>`), averaged over the
  n // k disjoint blocks of k samples (lower variance than the first k alone). The samples the verifier
  scores correct cast one vote (they all equal the reference, so they are one answer: "86" and
  "3 + 83 = 86" under math-verify), the others vote by their normalised text (`CORRECT_VOTE`);
- best-of-N under a scorer: "logprob" (the sample's mean token log-prob: the model's own
  confidence), "accuracy" (the task's verifier: an oracle), "format", or any `r1kit.rewards` name;
- greedy accuracy, mean thinking and answer lengths in tokens, the share of truncated samples;
- budget forcing (s1): accuracy against a thinking cap (`max_thinking_tokens`) and against the
  number of "Wait" extensions (`min_thinking_tokens` + `num_wait`).

Every evaluation in r1kit goes through one core, `evaluate_engine`: problems and one or more
`EvalParams` (k samples, temperature, top-p, max tokens, optional budget forcing) in, per-problem records
and metrics out. `r1kit eval` (`run` / `evaluate`), the budget curve, the SFT and pretraining validators,
GRPO's held-out evaluation, rejection sampling and the demo all call it. Generation is batched through
`r1kit.engine.Engine`: a chunk of problems (`batch_problems`) goes out in one `generate` call with greedy
and sampled requests side by side (per-prompt SamplingParams), so an evaluation is a handful of large
calls. Everything is written to the output directory:
`results.json` (metrics, curves, timing), `records_<task>_<split>.jsonl` (one line per problem:
prompt, reference, samples, scores, extracted answers), `scaling_<task>_<split>.png` (accuracy vs k)
and `budget_<task>_<split>.png` (accuracy vs thinking budget), and a rich table is printed.

    r1kit eval configs/eval_tiny.toml --model.path runs/sft_tiny --sampling.k 16
"""

from __future__ import annotations

import hashlib
import inspect
import json
import math
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

from r1kit.metrics import best_of_n, maj_at_k, normalize_answer, pass_at_k_many
from r1kit.report import plot_budget, plot_scaling
from r1kit.seeding import stable_seed
from r1kit.train.log import RateProgress
from r1kit.train.result import RunResult
from r1kit.train.sections import (
    DType,
    EngineSection,
    ModelDirSection,
    PromptSection,
    check_task_args,
    normalize_dtype,
)

# ----------------------------------------------------------------------------------------------
# configuration


ModelSection = ModelDirSection  # [model] the model to evaluate (shared with GRPO and distillation)


@dataclass
class DataSection:
    """[data] what to evaluate on.

    tasks (list[str]): task names for `r1kit.tasks.get_task` ("addition", "countdown", "gym:NAME", the maths
        presets "gsm8k", "math500", "aime24", "amc", "math:<file or folder>", "hf:<hub dataset>", ...).
    task_args (dict): keyword arguments per task name, e.g. {addition = {min_digits = 1, max_digits = 4}},
        {gsm8k = {path = "data/gsm8k", limit = 500}} (see `r1kit.tasks.datasets.DatasetTask`).
    splits (list[str]): held-out splits to evaluate ("test", "val"; "train" to measure memorisation).
    problems (int): problems per (task, split).
    seed (int): seed of the problem draw.
    """

    tasks: list[str] = field(default_factory=lambda: ["addition"])
    task_args: dict[str, Any] = field(default_factory=dict)
    splits: list[str] = field(default_factory=lambda: ["test"])
    problems: int = 100
    seed: int = 0

    def __post_init__(self) -> None:
        check_task_args(self.task_args, "data.task_args", self.tasks)


@dataclass
class SamplingSection:
    """[sampling] the k samples per problem (DeepSeek-R1 protocol, arXiv 2501.12948) and the metrics computed
    from them.

    protocol (str): "custom" (the fields below as given) or "r1": DeepSeek-R1's protocol, checked
        before anything runs: temperature 0.6, top-p 0.95, no top-k, k >= 1 samples, pass@1 = mean
        correctness over the k (R1 uses k = 4..64 by test-set size, max_new_tokens 32768). The name is
        written to results.json.
    k (int): samples per problem (n of pass@k); 0 = greedy only.
    temperature (float): sampling temperature (R1: 0.6).
    top_p (float): nucleus mass (R1: 0.95).
    top_k (int): top-k filter (0 = off).
    max_new_tokens (int): completion cap in tokens.
    seed (int): seed of the sampling streams: each problem samples from `problem_seed(seed, id)`, its
        j-th sample from stream j of that seed, so the samples do not depend on batch_problems or on
        the other problems evaluated with it.
    greedy (bool): also decode greedily (temperature 0) and report greedy accuracy.
    ks (list[int]): k values of pass@k, maj@k and best-of-k; empty = 1, 2, 4, ... up to k.
    best_of (list[str]): scorers for best-of-N: "logprob" (mean token log-prob), "accuracy" (the task
        verifier, an oracle), "format", "language" or "module:function".
    batch_problems (int): problems per generate call (each brings 1 greedy + k sampled rows); 0 = all
        in one call (fastest; lower it when the KV cache of all rows does not fit).
    """

    protocol: Literal["custom", "r1"] = "custom"
    k: int = 8
    temperature: float = 0.6
    top_p: float = 0.95
    top_k: int = 0
    max_new_tokens: int = 256
    seed: int = 0
    greedy: bool = True
    ks: list[int] = field(default_factory=list)
    best_of: list[str] = field(default_factory=lambda: ["logprob", "format"])
    batch_problems: int = 256


# DeepSeek-R1's evaluation setting (arXiv 2501.12948, section 3.1): sampling temperature and top-p
R1_PROTOCOL = {"temperature": 0.6, "top_p": 0.95, "top_k": 0}


def check_r1_protocol(sampling: SamplingSection) -> None:
    """Raise a one-line ConfigError unless `sampling` follows R1's protocol (`R1_PROTOCOL`, k >= 1)."""
    from r1kit.config import ConfigError

    for key, want in R1_PROTOCOL.items():
        if getattr(sampling, key) != want:
            raise ConfigError(
                f"sampling.protocol = 'r1' samples with {key} = {want}, got sampling.{key} = "
                f"{getattr(sampling, key)!r}: drop that override, or set sampling.protocol = 'custom'"
            )
    if sampling.k < 1:
        raise ConfigError("sampling.protocol = 'r1' needs k >= 1 samples per problem (R1: 4 to 64)")


@dataclass
class BudgetSection:
    """[budget] budget forcing curves (s1, arXiv 2501.19393); off when both lists are empty.

    caps (list[int]): thinking budgets: `</think>` is forced once the thinking block has this many tokens.
    waits (list[int]): numbers of "Wait" extensions: a `</think>` sampled before `min_thinking_tokens`
        is replaced by the wait string, at most this many times (0 = plain decoding).
    min_thinking_tokens (int): the floor of the extensions; 0 = max_new_tokens (s1: ignore the end of
        thinking exactly N times).
    wait_string (str): text appended in place of a suppressed `</think>`.
    samples (int): samples per problem at each point; 1 with temperature 0 = greedy (as s1).
    temperature (float): sampling temperature of the curve.
    top_p (float): nucleus mass of the curve.
    max_new_tokens (int): completion cap; 0 = sampling.max_new_tokens.
    problems (int): problems of each (task, split) used for the curve; 0 = all of them.
    """

    caps: list[int] = field(default_factory=list)
    waits: list[int] = field(default_factory=list)
    min_thinking_tokens: int = 0
    wait_string: str = "Wait"
    samples: int = 1
    temperature: float = 0.0
    top_p: float = 1.0
    max_new_tokens: int = 0
    problems: int = 0


@dataclass
class RunSection:
    """[run] where results go and how the run behaves.

    dir (str): output directory: results.json, records_*.jsonl, scaling_*.png, budget_*.png.
    device (str): "auto" (CUDA when available), "cpu", "cuda", "cuda:1".
    dtype (str): weights' dtype for inference: "auto" (bfloat16 on CUDA, float32 on CPU), "float32",
        "bfloat16" or "float16" ("fp32", "bf16", "fp16" are read as these).
    threads (int): torch CPU threads; 0 = torch's default.
    progress (bool): progress bar (problems/s) and the results table.
    plots (bool): write the PNG curves.
    records (bool): write the per-problem JSONL records.
    dollars_per_hour (float): price of one device-hour in the cost summary; 0 = the cost module's default.
    """

    dir: str = "runs/eval"
    device: str = "auto"
    dtype: DType = "auto"
    threads: int = 0
    progress: bool = True
    plots: bool = True
    records: bool = True
    dollars_per_hour: float = 0.0

    def __post_init__(self) -> None:
        self.dtype = normalize_dtype(self.dtype)


@dataclass
class Config:
    """`r1kit eval`: pass@k, maj@k, best-of-N, greedy accuracy and budget-forcing curves (sections below)."""

    model: ModelSection = field(default_factory=ModelSection)
    data: DataSection = field(default_factory=DataSection)
    prompt: PromptSection = field(default_factory=PromptSection)
    sampling: SamplingSection = field(default_factory=SamplingSection)
    budget: BudgetSection = field(default_factory=BudgetSection)
    run: RunSection = field(default_factory=RunSection)
    engine: EngineSection = field(default_factory=EngineSection)

    def __post_init__(self) -> None:
        from r1kit.config import ConfigError, check_positive, check_range

        s = self.sampling
        check_positive(s.k, "sampling.k", allow_zero=True)
        check_positive(s.temperature, "sampling.temperature", allow_zero=True)
        check_range(s.top_p, "sampling.top_p", 1e-9, 1.0)
        check_positive(s.max_new_tokens, "sampling.max_new_tokens")
        check_positive(s.batch_problems, "sampling.batch_problems", allow_zero=True)
        check_positive(self.data.problems, "data.problems")
        if s.k == 0 and not s.greedy:
            raise ConfigError("sampling.k is 0 and sampling.greedy is false: nothing to evaluate")
        if s.protocol == "r1":
            check_r1_protocol(s)
        for k in s.ks:
            if not 1 <= k <= s.k:
                raise ConfigError(f"sampling.ks: every k must be in 1..sampling.k = {s.k}, got {k}")
        if any(b < 1 for b in self.budget.caps) or any(w < 0 for w in self.budget.waits):
            raise ConfigError("budget.caps must be >= 1 and budget.waits >= 0")
        if not self.data.tasks or not self.data.splits:
            raise ConfigError("data.tasks and data.splits must name at least one task and one split")


# ----------------------------------------------------------------------------------------------
# results


@dataclass
class EvalResult:
    """The evaluation of one model on one (task, split).

    Attributes:
        task: task label; split: the split evaluated.
        metrics: "problems", "samples" (k), "pass@1", "pass@{k}", "maj@{k}", "best_of_{k}/{scorer}",
            "greedy_acc", "mean_score", "think_tokens", "answer_tokens", "completion_tokens",
            "truncated" (share of samples cut by max_new_tokens), "answered" (share with an answer
            after `</think>`); the greedy decode adds "greedy_think_tokens" / "greedy_answer_tokens".
        curves: {"k": [...], "pass@k": [...], "maj@k": [...], "best_of/{scorer}": [...]}, aligned with "k".
        records: one dict per problem (see `score_problems`).
        budget: budget-forcing points (see `budget_curve`), empty when not run.
        timing: "seconds", "problems_per_s", "tokens_per_s", "generated_tokens".
        data_hash: `data_hash` of the problems evaluated (sha256 of their ids, prompts and answers in
            order): two results with the same hash were computed on the same problems.
        completions: (P, k) the sampled completion objects (text, token_ids, finish_reason, logprobs),
            in sampling order; greedy_completions: (P,) the greedy ones (empty without greedy). Not
            written to results.json (`summary` leaves them and the records out).
    """

    task: str
    split: str
    metrics: dict[str, float]
    curves: dict[str, list[float]] = field(default_factory=dict)
    records: list[dict[str, Any]] = field(default_factory=list)
    budget: list[dict[str, Any]] = field(default_factory=list)
    timing: dict[str, float] = field(default_factory=dict)
    data_hash: str = ""
    completions: list[list[Any]] = field(default_factory=list, repr=False)
    greedy_completions: list[Any] = field(default_factory=list, repr=False)

    def summary(self) -> dict[str, Any]:
        """JSON-ready dict without the per-problem records."""
        return {
            "task": self.task,
            "split": self.split,
            "data_hash": self.data_hash,
            "metrics": self.metrics,
            "curves": self.curves,
            "budget": self.budget,
            "timing": self.timing,
        }

    def __getitem__(self, name: str) -> float:
        """`result["pass@1"]`: a metric by name (KeyError lists the available ones)."""
        try:
            return self.metrics[name]
        except KeyError:
            raise KeyError(f"no metric {name!r}; available: {', '.join(self.metrics)}") from None

    def __contains__(self, name: object) -> bool:
        return name in self.metrics

    def get(self, name: str, default: Any = None) -> Any:
        """A metric by name, or `default`."""
        return self.metrics.get(name, default)

    def keys(self):
        """The metric names (so `dict(result)` is the metrics dict)."""
        return self.metrics.keys()


# ----------------------------------------------------------------------------------------------
# what was evaluated: data and model fingerprints


def data_hash(problems: Sequence[Any]) -> str:
    """sha256 (hex) of the problems' (id, prompt, answer) in order, one JSON array per line: the same
    hash means the same problems, the same rendered prompts (instructions included) and the same
    references in the same order."""
    h = hashlib.sha256()
    for p in problems:
        h.update(json.dumps([str(p.id), p.prompt, p.answer], ensure_ascii=False).encode("utf-8"))
        h.update(b"\n")
    return h.hexdigest()


def model_fingerprint(model_dir: str | Path) -> dict[str, str]:
    """{"name": the directory's name, "path", "sha256"}: the sha256 of every file directly in the model
    directory (weights, config, tokenizer, chat template), by sorted name, content included, so two runs
    with the same hash evaluated the same weights. Reads the whole checkpoint once (~1 s per GB)."""
    path = Path(model_dir)
    h = hashlib.sha256()
    for f in sorted(p for p in path.iterdir() if p.is_file()) if path.is_dir() else []:
        h.update(f"{f.name}\0{f.stat().st_size}\0".encode())
        with f.open("rb") as fh:
            for block in iter(lambda fh=fh: fh.read(1 << 22), b""):
                h.update(block)
    name = path.name if path.name != "model" else f"{path.parent.name}/model"
    return {"name": name, "path": str(path), "sha256": h.hexdigest()}


# ----------------------------------------------------------------------------------------------
# prompts, lengths, scoring


def render_prompts(
    tokenizer: Any, problems: Sequence[Any], template: str = "chat", system: str = ""
) -> list[list[int]]:
    """Token ids of each problem's prompt (`Tokenizer.prompt_ids`): the chat template with the generation
    prompt (R1 protocol: the response starts inside `<think>`), or the raw prompt text with template "raw"."""
    return [list(tokenizer.prompt_ids(p.prompt, template, system)) for p in problems]


def completion_lengths(token_ids: Sequence[int], tokenizer: Any) -> tuple[int, int]:
    """(thinking tokens, answer tokens) of a completion's token ids.

    Thinking is everything before the first `</think>`, the whole completion when there is none;
    the answer is what follows it. The delimiter itself and a final EOS count in neither. Without a
    `</think>` token (a model whose tokenizer spells the tag in several pieces) the delimiter is found
    in the decoded text (`r1kit.tokenizer.tag_token_span`).
    """
    ids = list(token_ids)
    eos = getattr(tokenizer, "eos_id", None)
    if ids and eos is not None and ids[-1] == eos:
        ids = ids[:-1]
    end = getattr(tokenizer, "think_end_id", None)
    if end is None and ids and hasattr(tokenizer, "decode"):
        from r1kit.tokenizer import tag_token_span

        span = tag_token_span(ids, tokenizer.decode)
        return (len(ids), 0) if span is None else (span[0], len(ids) - span[1])
    if end is None or end not in ids:
        return len(ids), 0
    cut = ids.index(end)
    return cut, len(ids) - cut - 1


def _lengths(completion: Any, read: str, tokenizer: Any) -> tuple[int, int]:
    """`completion_lengths`, except that a completion the scorers read as all answer (`read`, its
    `scoring_text`, differs from its text: no think tags under an instruct model's own template) has no
    thinking tokens: all of it is answer."""
    think, answer = completion_lengths(completion.token_ids, tokenizer)
    return (0, think + answer) if read != completion.text else (think, answer)


def extract_answer(completion: str) -> str:
    """The normalised final answer of a completion: the text after `</think>` (vLLM's `deepseek_r1` reasoning
    parser, docs.vllm.ai/en/latest/features/reasoning_outputs/), through
    `normalize_answer` (last \\boxed{}, thousands separators, integer form). "" when there is none."""
    from r1kit.tasks.base import final_answer

    return normalize_answer(final_answer(completion))


def mean_logprob(completion: Any) -> float:
    """Mean log-prob of a completion's sampled tokens (forced tokens, mask 0, excluded); -inf if none."""
    logprobs = list(getattr(completion, "logprobs", None) or [])
    mask = list(getattr(completion, "mask", None) or [1] * len(logprobs))
    kept = [lp for lp, m in zip(logprobs, mask) if m]
    return sum(kept) / len(kept) if kept else -math.inf


def make_scorers(names: Sequence[str], task: Any) -> dict[str, Callable[[Any, Any], float]]:
    """Best-of-N scorers by name: each maps (completion object, problem) to a float, higher is better.

    "logprob": the completion's mean token log-prob; "accuracy": the task's verifier; anything else
    goes through `r1kit.rewards.get_reward` ("format", "language", "module:function").
    """
    scorers: dict[str, Callable[[Any, Any], float]] = {}
    for name in names:
        if name == "logprob":
            scorers[name] = lambda c, p: mean_logprob(c)
        elif name == "accuracy":
            scorers[name] = lambda c, p: task.score(c.text, p)
        else:
            from r1kit.rewards import get_reward

            try:
                reward = get_reward(name, task)
            except (ValueError, ImportError, AttributeError) as err:
                raise ValueError(
                    f"unknown best-of scorer {name!r}: valid are logprob, accuracy, format, language or "
                    f"'module:function' ({err})"
                ) from err
            scorers[name] = lambda c, p, reward=reward: float(reward(c.text, p))
    return scorers


def is_correct(score: float) -> bool:
    """Whether a task score counts as a correct sample (full marks)."""
    return score >= 1.0 - 1e-9


def score_problems(
    task: Any,
    problems: Sequence[Any],
    samples: Sequence[Sequence[Any]],
    tokenizer: Any,
    *,
    greedy: Sequence[Any] | None = None,
    prompts: Sequence[str] | None = None,
    scorers: dict[str, Callable[[Any, Any], float]] | None = None,
    all_answer: Sequence[bool] | None = None,
) -> list[dict[str, Any]]:
    """Score every sample and build the per-problem records.

    Args:
        task: scores a completion text against a problem (`task.score`).
        problems: (P,) problems.
        samples: (P, n) completions (objects with text, token_ids, finish_reason, logprobs, mask).
        tokenizer: for the thinking/answer token counts (`completion_lengths`).
        greedy: (P,) greedy completions, or None.
        prompts: (P,) prompt texts to store (default: the problems' prompts).
        scorers: best-of-N scorers from `make_scorers`.
        all_answer: (P,) whether a problem's completions without think tags are all answer
            (`r1kit.tasks.base.answer_only`); default False (R1's rule: no `</think>`, no answer).

    Returns:
        (P,) dicts: id, prompt, reference, samples (texts), scores, correct, answers (normalised), votes
        (what each sample votes for in maj@k: `CORRECT_VOTE` when correct, else its answer),
        think_tokens, answer_tokens, finish_reasons, best_of ({scorer: [score per sample]}),
        majority (the most voted answer) and, with greedy, greedy {text, score, answer, think_tokens,
        answer_tokens}.
    """
    from r1kit.metrics import majority_vote
    from r1kit.tasks.base import scoring_text

    scorers = scorers or {}
    records = []
    for i, (problem, outs) in enumerate(zip(problems, samples)):
        whole = bool(all_answer[i]) if all_answer is not None else False
        read = [scoring_text(c.text, whole) for c in outs]
        scores = [float(task.score(text, problem)) for text in read]
        lengths = [_lengths(c, text, tokenizer) for c, text in zip(outs, read)]
        answers = [extract_answer(text) for text in read]
        correct = [is_correct(s) for s in scores]
        votes = [CORRECT_VOTE if ok else answer for answer, ok in zip(answers, correct)]
        winner = majority_vote(votes, normalize=None)[0] if outs else None
        record: dict[str, Any] = {
            "id": problem.id,
            "prompt": prompts[i] if prompts is not None else problem.prompt,
            "reference": problem.answer,
            "samples": [c.text for c in outs],
            "scores": scores,
            "correct": correct,
            "answers": answers,
            "votes": votes,
            "think_tokens": [t for t, _ in lengths],
            "answer_tokens": [a for _, a in lengths],
            "finish_reasons": [c.finish_reason for c in outs],
            "best_of": {name: [fn(c, problem) for c in outs] for name, fn in scorers.items()},
            "majority": next((a for a, v in zip(answers, votes) if v == winner), None),
        }
        if greedy is not None:
            g = greedy[i]
            think, answer = _lengths(g, scoring_text(g.text, whole), tokenizer)
            record["greedy"] = {
                "text": g.text,
                "score": float(task.score(scoring_text(g.text, whole), problem)),
                "answer": extract_answer(scoring_text(g.text, whole)),
                "think_tokens": think,
                "answer_tokens": answer,
            }
        records.append(record)
    return records


def default_ks(n: int) -> list[int]:
    """1, 2, 4, ... up to n, and n itself."""
    ks, k = [], 1
    while k < n:
        ks.append(k)
        k *= 2
    return [*ks, n] if n >= 1 else []


def _block_mean(n: int, k: int, fn: Callable[[int, int], float]) -> float:
    """Mean of fn(start, stop) over the n // k disjoint blocks of k consecutive samples."""
    blocks = n // k
    return sum(fn(b * k, (b + 1) * k) for b in range(blocks)) / blocks


# The vote of every sample the verifier scores correct (`score_problems`' "votes"): a string no
# normalised answer text can be (the NUL character), so a wrong answer never joins it.
CORRECT_VOTE = "\x00correct"


def aggregate(
    records: Sequence[dict[str, Any]], ks: Sequence[int] | None = None
) -> tuple[dict[str, float], dict[str, list[float]]]:
    """The metrics and the accuracy-vs-k curves of scored records (from `score_problems`).

    Every record must hold the same number n of samples. pass@k is the unbiased estimator from the n
    samples (its mean over problems); maj@k and best-of-k are averaged over the n // k disjoint blocks of
    k consecutive samples of each problem, then over problems (maj@n and best-of-n use all n).
    Majority voting counts the records' "votes" (`CORRECT_VOTE` for the verified samples, the normalised
    answer otherwise); the winner is correct when its first sample is (a missing answer does not vote;
    no vote at all counts as wrong). Best-of-k picks the sample with
    the highest score (first on ties) and takes its correctness.

    Returns:
        (metrics, curves) as described in `EvalResult`.
    """
    P = len(records)
    if P == 0:
        raise ValueError("aggregate: no records")
    metrics: dict[str, float] = {"problems": float(P)}
    curves: dict[str, list[float]] = {}
    n = len(records[0]["samples"])
    if any(len(r["samples"]) != n for r in records):
        raise ValueError("aggregate: every problem must have the same number of samples")
    if n:
        ks = sorted(set(ks if ks else default_ks(n)))
        if ks[0] < 1 or ks[-1] > n:
            raise ValueError(f"aggregate: ks must lie in 1..{n}, got {ks}")
        correct_P = [sum(r["correct"]) for r in records]
        metrics["samples"] = float(n)
        curves["k"] = [float(k) for k in ks]
        for k in ks:
            metrics[f"pass@{k}"] = float(pass_at_k_many(n, correct_P, k).mean())
        metrics["pass@1"] = float(pass_at_k_many(n, correct_P, 1).mean())
        curves["pass@k"] = [metrics[f"pass@{k}"] for k in ks]
        for k in ks:
            metrics[f"maj@{k}"] = (
                sum(
                    _block_mean(
                        n,
                        k,
                        lambda a, b, r=r: maj_at_k(
                            r.get("votes", r["answers"])[a:b], r["correct"][a:b], b - a, None
                        ),
                    )
                    for r in records
                )
                / P
            )
        curves["maj@k"] = [metrics[f"maj@{k}"] for k in ks]
        for name in records[0].get("best_of", {}):
            for k in ks:

                def pick(a: int, b: int, r: dict[str, Any], name: str = name) -> float:
                    window = r["best_of"][name][a:b]
                    return float(r["correct"][a + best_of_n(window, window)])

                metrics[f"best_of_{k}/{name}"] = (
                    sum(_block_mean(n, k, lambda a, b, r=r: pick(a, b, r)) for r in records) / P
                )
            curves[f"best_of/{name}"] = [metrics[f"best_of_{k}/{name}"] for k in ks]
        total = P * n
        metrics["mean_score"] = sum(sum(r["scores"]) for r in records) / total
        metrics["think_tokens"] = sum(sum(r["think_tokens"]) for r in records) / total
        metrics["answer_tokens"] = sum(sum(r["answer_tokens"]) for r in records) / total
        metrics["completion_tokens"] = metrics["think_tokens"] + metrics["answer_tokens"]
        metrics["truncated"] = sum(r["finish_reasons"].count("length") for r in records) / total
        metrics["answered"] = sum(sum(bool(a) for a in r["answers"]) for r in records) / total
    if all("greedy" in r for r in records):
        metrics["greedy_acc"] = sum(is_correct(r["greedy"]["score"]) for r in records) / P
        metrics["greedy_think_tokens"] = sum(r["greedy"]["think_tokens"] for r in records) / P
        metrics["greedy_answer_tokens"] = sum(r["greedy"]["answer_tokens"] for r in records) / P
    return metrics, curves


# ----------------------------------------------------------------------------------------------
# generation


def problem_seed(seed: int, problem_id: Any) -> int:
    """The sampling seed of one problem: a stable 31-bit hash of (seed, problem id), so each problem has
    its own random streams whatever else is evaluated with it."""
    return stable_seed(seed, problem_id)


def as_engine(model_or_engine: Any, tokenizer: Any, engine: EngineSection | None = None) -> Any:
    """An object with `generate(prompts, params)`: the argument itself when it has one, else an
    `r1kit.engine.Engine` over the model, built with the [engine] settings `engine` (default ones)."""
    if hasattr(model_or_engine, "generate") and not hasattr(model_or_engine, "new_cache"):
        return model_or_engine
    return (engine or EngineSection()).build(model_or_engine, tokenizer)


def _takes_request_keys(engine: Any) -> bool:
    """Whether `engine.generate` accepts `keys_per_request` (r1kit's Engine; not every stand-in does)."""
    try:
        params = inspect.signature(engine.generate).parameters
    except (TypeError, ValueError):
        return False
    return "keys_per_request" in params or any(p.kind is p.VAR_KEYWORD for p in params.values())


def generate_chunked(
    engine: Any,
    prompts: Sequence[Sequence[int]],
    params: Any,
    *,
    batch: int,
    progress: Any = None,
    keys_per_request: bool = False,
) -> list[Any]:
    """`engine.generate` over `prompts` in chunks of `batch` prompts (one call per chunk); returns the
    completions in the engine's order (prompt-major). `params` is one SamplingParams for every prompt or
    a list with one per prompt. `progress(prompts_done)` is called after each chunk. keys_per_request:
    each request's samples draw from its own seed's streams (`Engine.generate`), so with a seed per request
    the completions do not depend on `batch`."""
    outs: list[Any] = []
    per_prompt = isinstance(params, (list, tuple))
    kwargs = {"keys_per_request": True} if keys_per_request and _takes_request_keys(engine) else {}
    for start in range(0, len(prompts), batch):
        chunk = list(prompts[start : start + batch])
        chunk_params = list(params[start : start + batch]) if per_prompt else params
        outs.extend(engine.generate(chunk, chunk_params, **kwargs))
        if progress is not None:
            progress(start + len(chunk))
    return outs


@dataclass(frozen=True)
class EvalParams:
    """How an evaluation decodes each problem: one greedy completion and/or k samples, optionally with
    budget forcing (s1, arXiv 2501.19393). `evaluate_engine` takes one or several of these ("arms").

    k (int): sampled completions per problem (0 = none).
    temperature, top_p, top_k (float, float, int): their sampling (R1: 0.6, 0.95, 0).
    max_new_tokens (int): completion cap in tokens (forced tokens included).
    greedy (bool): also one greedy (temperature 0) completion per problem.
    seed (int | None): seed of the random streams; None = drawn from torch's global RNG by the engine.
    seed_per_problem (bool): seed each problem's samples with `problem_seed(seed, problem.id)` (`r1kit
        eval`, rejection sampling); False = the one `seed` for the whole generate call (GRPO's held-out
        evaluation). Either way the engine also keys each row by its position in the call: the same
        problems, arms and batch size give the same samples.
    max_thinking_tokens, min_thinking_tokens, num_wait, wait_string: budget forcing of every completion
        (see `r1kit.engine.SamplingParams`); the defaults leave decoding alone.
    """

    k: int = 8
    temperature: float = 0.6
    top_p: float = 0.95
    top_k: int = 0
    max_new_tokens: int = 256
    greedy: bool = True
    seed: int | None = 0
    seed_per_problem: bool = True
    max_thinking_tokens: int | None = None
    min_thinking_tokens: int = 0
    num_wait: int | None = None
    wait_string: str = "Wait"

    def _budget(self) -> dict[str, Any]:
        return {
            "max_thinking_tokens": self.max_thinking_tokens,
            "min_thinking_tokens": self.min_thinking_tokens,
            "num_wait": self.num_wait,
            "wait_string": self.wait_string,
        }

    def greedy_params(self) -> Any:
        """The `SamplingParams` of the greedy completion (one object, shared by every problem)."""
        from r1kit.engine import SamplingParams

        return SamplingParams(
            n=1, temperature=0.0, max_new_tokens=self.max_new_tokens, seed=self.seed, **self._budget()
        )

    def sample_params(self, seed: int | None = None) -> Any:
        """The `SamplingParams` of the k samples, with `seed` (default `self.seed`)."""
        from r1kit.engine import SamplingParams

        return SamplingParams(
            n=self.k,
            temperature=self.temperature,
            top_p=self.top_p,
            top_k=self.top_k,
            max_new_tokens=self.max_new_tokens,
            seed=self.seed if seed is None else seed,
            **self._budget(),
        )


def _requests(problems: Sequence[Any], arms: Sequence[EvalParams]) -> list[tuple[int, int, bool, Any]]:
    """(problem index, arm index, is greedy, SamplingParams) of every request, problem-major: for each
    problem, each arm's greedy request then its k-sample request."""
    greedy = [arm.greedy_params() if arm.greedy else None for arm in arms]
    shared = [arm.sample_params() if arm.k and not arm.seed_per_problem else None for arm in arms]
    requests = []
    for i, problem in enumerate(problems):
        for a, arm in enumerate(arms):
            if arm.greedy:
                requests.append((i, a, True, greedy[a]))
            if arm.k:
                seed = None if arm.seed is None else problem_seed(arm.seed, problem.id)
                params = shared[a] or arm.sample_params(seed)
                requests.append((i, a, False, params))
    return requests


def _split_outputs(
    outs: Sequence[Any], requests: Sequence[tuple[int, int, bool, Any]], num_problems: int, num_arms: int
) -> tuple[list[list[Any]], list[list[list[Any]]]]:
    """The engine's prompt-major output cut back into each arm's greedy completions (A, P) and samples
    (A, P, k), the samples in sampling order."""
    greedy: list[list[Any]] = [[] for _ in range(num_arms)]
    samples: list[list[list[Any]]] = [[[] for _ in range(num_problems)] for _ in range(num_arms)]
    pos = 0
    for i, a, is_greedy, sp in requests:
        chunk = outs[pos : pos + sp.n]
        pos += sp.n
        if is_greedy:
            greedy[a].append(chunk[0])
        else:
            samples[a][i] = sorted(chunk, key=lambda c: getattr(c, "sample_index", 0))
    if pos != len(outs):
        raise RuntimeError(f"engine returned {len(outs)} completions, expected {pos}")
    return greedy, samples


def evaluate_engine(
    engine: Any,
    tokenizer: Any,
    task: Any,
    problems: Sequence[Any],
    params: EvalParams | Sequence[EvalParams],
    *,
    prompt_ids: Sequence[Sequence[int]] | None = None,
    template: str = "chat",
    system: str = "",
    batch_problems: int = 0,
    best_of: Sequence[str] = (),
    ks: Sequence[int] | None = None,
    label: str | None = None,
    split: str = "test",
    progress: bool = False,
    description: str = "",
    console: Any = None,
) -> list[EvalResult]:
    """The evaluation core: decode `problems` with each arm of `params`, score and aggregate.

    Every stage evaluates through here: `evaluate` (`r1kit eval`), `budget_curve`, the SFT and pretraining
    validators, GRPO's held-out evaluation, rejection sampling (`r1kit sample`) and the demo.

    All requests of a chunk of `batch_problems` problems (0 = all) go out in one `engine.generate` call,
    problem-major: for each problem, each arm's greedy request, then its k-sample request. When every
    sampling arm seeds each problem (`seed_per_problem`, the default), sample j of a problem draws from
    stream j of `problem_seed(seed, id)` whatever the chunking, so any batch_problems gives the same
    completions (up to float round-off of batched matmuls); an arm with one seed for the call (GRPO's
    held-out evaluation) keys rows by their position in the call instead.

    Args:
        engine: an object with `Engine.generate(prompts, params)`'s signature (an `r1kit.engine.Engine`).
        tokenizer: renders the prompts and counts thinking/answer tokens.
        task: scores completions (`task.score(text, problem)`).
        problems: (P,) problems.
        params: one `EvalParams`, or several evaluated in the same calls.
        prompt_ids: (P,) prompt token ids; default `render_prompts(tokenizer, problems, template, system)`.
        batch_problems: problems per generate call (0 = all in one call).
        best_of: best-of-N scorers (`make_scorers`); ks: k values of the curves (default 1, 2, 4, ... k).
        label, split: recorded in the results (label defaults to the task's name).
        progress, description, console: a problems/s progress bar (description default "eval {label}").

    Returns:
        One `EvalResult` per arm, in the order of `params`: metrics and curves (`aggregate`), per-problem
        records (`score_problems`), the completion objects (`completions`, `greedy_completions`), timing
        ("seconds" of the whole call, "generated_tokens" of the arm) and the problems' `data_hash`.
    """
    arms = [params] if isinstance(params, EvalParams) else list(params)
    if not problems:
        raise ValueError("evaluate: no problems")
    if not arms or not all(arm.k or arm.greedy for arm in arms):
        raise ValueError("evaluate: every EvalParams needs k > 0 or greedy")
    sampled = any(arm.k for arm in arms)
    scorers = make_scorers(best_of, task) if sampled else None  # a bad name fails before generating
    if prompt_ids is None:
        prompt_ids = render_prompts(tokenizer, problems, template, system)
    requests = _requests(problems, arms)
    per_problem = len(requests) // len(problems)
    keyed = all(arm.seed_per_problem for arm in arms if arm.k)
    label = label or task.name
    bar = RateProgress(len(problems), description or f"eval {label}", progress, console)
    t0 = time.perf_counter()
    try:
        outs = generate_chunked(
            engine,
            [prompt_ids[i] for i, _, _, _ in requests],
            [sp for _, _, _, sp in requests],
            batch=(batch_problems or len(problems)) * per_problem,
            progress=lambda done: bar(done // per_problem),
            keys_per_request=keyed,
        )
    finally:
        bar.close()
    seconds = time.perf_counter() - t0
    greedy_outs, sample_outs = _split_outputs(outs, requests, len(problems), len(arms))
    texts = [tokenizer.decode(ids) for ids in prompt_ids] if template != "raw" else None
    from r1kit.tasks.base import answer_only

    whole = [answer_only(t, template) for t in texts] if texts is not None else None
    results = [
        _arm_result(task, problems, tokenizer, greedy_outs[a] if arm.greedy else None, sample_outs[a],
                    texts, scorers, ks, label, split, seconds, whole)
        for a, arm in enumerate(arms)
    ]  # fmt: skip
    digest = data_hash(problems)
    for r in results:
        r.data_hash = digest
    return results


def _arm_result(
    task: Any,
    problems: Sequence[Any],
    tokenizer: Any,
    greedy: list[Any] | None,
    samples: list[list[Any]],
    texts: list[str] | None,
    scorers: dict[str, Callable[[Any, Any], float]] | None,
    ks: Sequence[int] | None,
    label: str,
    split: str,
    seconds: float,
    all_answer: Sequence[bool] | None = None,
) -> EvalResult:
    """The `EvalResult` of one arm of `evaluate_engine` from its completions."""
    records = score_problems(
        task,
        problems,
        samples,
        tokenizer,
        greedy=greedy,
        prompts=texts,
        scorers=scorers,
        all_answer=all_answer,
    )
    metrics, curves = aggregate(records, ks)
    tokens = sum(len(c.token_ids) for group in samples for c in group)
    tokens += sum(len(c.token_ids) for c in greedy or [])
    timing = {
        "seconds": seconds,
        "problems_per_s": len(problems) / seconds if seconds > 0 else 0.0,
        "generated_tokens": float(tokens),
        "tokens_per_s": tokens / seconds if seconds > 0 else 0.0,
    }
    return EvalResult(
        label,
        split,
        metrics,
        curves,
        records,
        timing=timing,
        completions=samples,
        greedy_completions=greedy or [],
    )


def sampling_params(sampling: SamplingSection) -> EvalParams:
    """The `EvalParams` of a [sampling] section (R1's protocol by default)."""
    return EvalParams(
        k=sampling.k,
        temperature=sampling.temperature,
        top_p=sampling.top_p,
        top_k=sampling.top_k,
        max_new_tokens=sampling.max_new_tokens,
        greedy=sampling.greedy,
        seed=sampling.seed,
    )


def evaluate(
    model: Any,
    tokenizer: Any = None,
    task: Any = "addition",
    problems: Sequence[Any] | int = 100,
    sampling: SamplingSection | None = None,
    budget: BudgetSection | None = None,
    *,
    template: str = "chat",
    system: str = "",
    task_args: dict[str, Any] | None = None,
    split: str = "test",
    data_seed: int = 0,
    device: str = "auto",
    dtype: str = "auto",
    label: str | None = None,
    progress: bool = False,
    console: Any = None,
) -> EvalResult:
    """Evaluate a model on `problems` with R1's protocol; see the module docstring for the metrics.

    All problems x (1 greedy + k sampled) rows go through the engine in ceil(P / batch_problems)
    `generate` calls (`evaluate_engine`).

    Args:
        model: a `Transformer` (wrapped in an `Engine`), a model or run directory (str/Path, loaded with
            `r1kit.loaders.load_model` on `device`/`dtype`), or any object with the
            `Engine.generate(prompts, params)` signature (a stub in tests, an existing engine).
        tokenizer: renders the prompts (chat template) and counts thinking/answer tokens; None (or a
            directory) with a model directory = the tokenizer found next to the model.
        task: a `Task` (scores completions with `task.score(text, problem)`) or a task name for
            `r1kit.tasks.get_task` with `task_args`.
        problems: the (P,) problems, or a count drawn from `split` with `data_seed` (as [data] seed).
        sampling: the [sampling] section (k, temperature, top_p, top_k, max_new_tokens, seed, greedy, ks,
            best_of, batch_problems); default `SamplingSection()` (R1: k 8, T 0.6, top-p 0.95).
        budget: the [budget] section: its curve (`budget_curve`, with the sampling seed and batch size) is
            stored in `result.budget`; default none.
        template, system: prompt rendering (`render_prompts`).
        split: the split drawn from (with a count) and recorded; label: the task label recorded
            (default the task's name).
        progress: show a problems/s progress bar.

    Returns:
        `EvalResult` with metrics (also `result["pass@1"]`), curves, per-problem records, budget points
        and timing.
    """
    s = sampling or SamplingSection()
    model, tokenizer = _resolve_model(model, tokenizer, device, dtype)
    if isinstance(task, str):
        from r1kit.tasks import get_task

        task = get_task(task, **(task_args or {}))
    if isinstance(problems, int):
        problems = task.problems(split=split, n=problems, seed=data_seed)
    import torch

    with torch.no_grad():
        (result,) = evaluate_engine(
            as_engine(model, tokenizer),
            tokenizer,
            task,
            problems,
            sampling_params(s),
            template=template,
            system=system,
            batch_problems=s.batch_problems,
            best_of=s.best_of,
            ks=s.ks or None,
            label=label,
            split=split,
            progress=progress,
            console=console,
        )
        if budget is not None and (budget.caps or budget.waits):
            _add_budget_curve(result, model, tokenizer, task, problems, budget, s, template, system)
    return result


def _resolve_model(model: Any, tokenizer: Any, device: str, dtype: str) -> tuple[Any, Any]:
    """`evaluate`'s (model, tokenizer): a model directory is loaded (with the tokenizer next to it
    unless one is given); a model object needs a tokenizer."""
    if isinstance(model, (str, Path)):
        from r1kit.loaders import load_model

        tok_dir = str(tokenizer) if isinstance(tokenizer, (str, Path)) else ""
        model, loaded, _ = load_model(str(model), tok_dir, device, dtype)
        if tokenizer is None or isinstance(tokenizer, (str, Path)):
            tokenizer = loaded
    elif tokenizer is None:
        raise ValueError("evaluate: give a tokenizer with a model object, or pass a model directory")
    return model, tokenizer


def _add_budget_curve(
    result: EvalResult,
    model: Any,
    tokenizer: Any,
    task: Any,
    problems: Sequence[Any],
    budget: BudgetSection,
    s: SamplingSection,
    template: str,
    system: str,
) -> None:
    """Run `evaluate`'s budget curve (on `budget.problems` of the problems, if set) into `result.budget`,
    with its seconds and generated tokens in `result.timing`."""
    t0 = time.perf_counter()
    subset = problems[: budget.problems] if budget.problems else problems
    result.budget = budget_curve(
        model,
        tokenizer,
        task,
        subset,
        budget,
        max_new_tokens=s.max_new_tokens,
        seed=s.seed,
        template=template,
        system=system,
        batch_problems=s.batch_problems,
    )
    result.timing["budget_seconds"] = time.perf_counter() - t0
    result.timing["budget_generated_tokens"] = float(sum(p["generated_tokens"] for p in result.budget))


def budget_arms(
    budget: BudgetSection, max_new_tokens: int = 256, seed: int = 0
) -> list[tuple[str, int, EvalParams]]:
    """(mode, value, EvalParams) of each point of a budget curve, caps first then waits.

    A cap forces `</think>` after that many thinking tokens; a wait count replaces up to that many sampled
    `</think>` by `budget.wait_string` while the block is shorter than `budget.min_thinking_tokens`
    (0 = the completion cap: every early end is suppressed, s1's "ignore the end of thinking N times").
    `budget.max_new_tokens` 0 = `max_new_tokens`.
    """
    cap = budget.max_new_tokens or max_new_tokens
    base = EvalParams(
        k=budget.samples,
        temperature=budget.temperature,
        top_p=budget.top_p,
        max_new_tokens=cap,
        greedy=False,
        seed=seed,
    )
    floor = budget.min_thinking_tokens or cap
    points = [("cap", c, replace(base, max_thinking_tokens=c)) for c in budget.caps]
    points += [
        ("wait", w, replace(base, min_thinking_tokens=floor, num_wait=w, wait_string=budget.wait_string))
        for w in budget.waits
    ]
    return points


def budget_curve(
    model: Any,
    tokenizer: Any,
    task: Any,
    problems: Sequence[Any],
    budget: BudgetSection,
    *,
    max_new_tokens: int = 256,
    seed: int = 0,
    template: str = "chat",
    system: str = "",
    batch_problems: int = 256,
) -> list[dict[str, Any]]:
    """Accuracy against the thinking budget with budget forcing (s1, arXiv 2501.19393).

    Every point (`budget_arms`) decodes all problems with `budget.samples` samples at `budget.temperature`
    (default greedy, as s1); all points of a chunk of problems go out in one generate call
    (`evaluate_engine`, one arm per point).

    Returns:
        One dict per point, caps first then waits: {"mode": "cap" | "wait", "value": cap or wait count,
        "accuracy" (mean correctness over problems and samples), "think_tokens", "answer_tokens"
        (means), "answered" (share with a non-empty answer), "generated_tokens" (total, for costing)}.
    """
    points = budget_arms(budget, max_new_tokens, seed)
    if not points or not problems:
        return []
    results = evaluate_engine(
        as_engine(model, tokenizer),
        tokenizer,
        task,
        problems,
        [arm for _, _, arm in points],
        template=template,
        system=system,
        batch_problems=batch_problems,
    )
    total = len(problems) * budget.samples
    out = []
    for (mode, value, _), result in zip(points, results):
        records = result.records
        out.append(
            {
                "mode": mode,
                "value": value,
                "accuracy": sum(sum(r["correct"]) for r in records) / total,
                "think_tokens": sum(sum(r["think_tokens"]) for r in records) / total,
                "answer_tokens": sum(sum(r["answer_tokens"]) for r in records) / total,
                "answered": sum(sum(bool(a) for a in r["answers"]) for r in records) / total,
                "generated_tokens": int(result.timing["generated_tokens"]),
            }
        )
    return out


# ----------------------------------------------------------------------------------------------
# plots, tables, files


def write_records(path: str | Path, records: Sequence[dict[str, Any]]) -> Path:
    """Write per-problem records as JSONL (one problem per line)."""
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    with out.open("w", encoding="utf-8") as fh:
        for r in records:
            fh.write(json.dumps(r, ensure_ascii=False) + "\n")
    return out


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text).strip("_") or "task"


def format_table(results: Sequence[EvalResult], model: dict[str, str] | None = None) -> Any:
    """A rich Table with one column per (task, split) and one row per headline metric (accuracies in %,
    lengths in tokens), narrow enough for an 80-column log. The title names the model (`model_fingerprint`:
    name and the first 12 hex digits of its sha256) and a "data sha256" row each column's `data_hash`,
    so two tables can be compared at a glance."""
    from rich.table import Table

    names: list[str] = []
    for r in results:
        for name in r.metrics:
            if name not in names and name not in ("problems", "samples", "mean_score"):
                names.append(name)
    # maj@1 and best-of-1 equal pass@1: kept in results.json, left out of the table
    names = [n for n in names if not (n == "maj@1" or n.startswith("best_of_1/"))]
    order = ["greedy_acc", "pass@", "maj@", "best_of_", "think_tokens", "answer_tokens", "completion_tokens"]
    order += ["greedy_think_tokens", "greedy_answer_tokens", "answered", "truncated"]
    names.sort(key=lambda n: next((i for i, prefix in enumerate(order) if n.startswith(prefix)), len(order)))
    title = "r1kit eval"
    if model:
        title += f" · {model.get('name', '')} (sha256 {model.get('sha256', '')[:12]})"
    table = Table(title=title)
    table.add_column("metric")
    for r in results:
        table.add_column(f"{r.task} ({r.split})", justify="right")
    for name in names:
        cells = []
        for r in results:
            value = r.metrics.get(name)
            if value is None:
                cells.append("–")
            elif "tokens" in name:
                cells.append(f"{value:.1f}")
            else:
                cells.append(f"{100 * value:.1f}%")
        table.add_row(name, *cells)
    table.add_row("problems", *(str(int(r.metrics["problems"])) for r in results))
    table.add_row("data sha256", *(r.data_hash[:12] or "–" for r in results))
    table.add_row("problems/s", *(f"{r.timing.get('problems_per_s', 0.0):.1f}" for r in results))
    return table


# ----------------------------------------------------------------------------------------------
# loading and the stage


def protocol_record(sampling: SamplingSection, template: str = "chat", system: str = "") -> dict[str, Any]:
    """The decoding protocol of an evaluation as written to results.json (everything that changes the
    numbers besides the model and the data)."""
    s = sampling
    return {
        "name": s.protocol,
        "k": s.k,
        "temperature": s.temperature,
        "top_p": s.top_p,
        "top_k": s.top_k,
        "max_new_tokens": s.max_new_tokens,
        "seed": s.seed,
        "greedy": s.greedy,
        "template": template,
        "system": system,
    }


@dataclass
class EvalRunResult(RunResult):
    """What `run` (`r1kit eval`) returns: a `RunResult` (metrics "{task}/{split}/{metric}", cost of the
    generation) plus `results`, the `EvalResult` of each (task, split) in order (records, curves, budget)."""

    results: list[EvalResult] = field(default_factory=list)


def _write_outputs(result: EvalResult, out_dir: Path, run: RunSection) -> None:
    """The records JSONL and the PNG curves of one (task, split), as `run` asks."""
    stem = f"{_slug(result.task)}_{_slug(result.split)}"
    title = f"{result.task} ({result.split})"
    if run.records:
        write_records(out_dir / f"records_{stem}.jsonl", result.records)
    if run.plots:
        if result.curves.get("k"):
            plot_scaling(result.curves, out_dir / f"scaling_{stem}.png", title)
        if result.budget:
            plot_budget(result.budget, out_dir / f"budget_{stem}.png", title)


def _print_results(
    results: Sequence[EvalResult], out_dir: Path, console: Any, model: dict[str, str] | None = None
) -> None:
    console.print(format_table(results, model))
    for r in results:
        for p in r.budget:
            console.print(
                f"  budget {r.task}/{r.split} {p['mode']}={p['value']}: accuracy {100 * p['accuracy']:.1f}%"
                f", thinking {p['think_tokens']:.1f} tokens",
                highlight=False,
            )
    console.print(f"results in {out_dir}/ (results.json, records_*.jsonl, *.png)", highlight=False)


def run(config: Config, console: Any = None) -> EvalRunResult:
    """Evaluate `model.path` on every (task, split) (`evaluate`); writes results.json, records and plots to
    `run.dir`, prints the table. Returns an `EvalRunResult` (metrics "{task}/{split}/{metric}")."""
    import torch
    from rich.console import Console

    from r1kit.config import save_config
    from r1kit.loaders import load_model, set_threads
    from r1kit.model.counting import flops_per_token
    from r1kit.tasks import get_task, task_kwargs
    from r1kit.train.cost import CostMeter

    console = console or Console()
    set_threads(config.run.threads)
    model, tokenizer, model_dir = load_model(
        config.model.path, config.model.tokenizer, config.run.device, config.run.dtype
    )
    meter = CostMeter(
        next(model.parameters()).device,
        dtype="bf16" if next(model.parameters()).dtype == torch.bfloat16 else "fp32",
        dollars_per_device_hour=config.run.dollars_per_hour or None,
    )
    # a generated token costs a forward: a third of the training FLOPs, without the MTP head (unused)
    forward_flops = flops_per_token(model.config, 0, include_mtp=False) / 3
    out_dir = Path(config.run.dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    s, d, p = config.sampling, config.data, config.prompt
    engine = config.engine.build(model, tokenizer)
    results: list[EvalResult] = []
    meter.start()
    for name in d.tasks:
        task = get_task(name, **task_kwargs(d.task_args, name))
        for split in d.splits:
            problems = task.problems(split=split, n=d.problems, seed=d.seed)
            result = evaluate(
                engine, tokenizer, task, problems, s, config.budget, template=p.template, system=p.system,
                label=name, split=split, progress=config.run.progress, console=console,
            )  # fmt: skip
            generated = result.timing["generated_tokens"] + result.timing.get("budget_generated_tokens", 0.0)
            meter.add(tokens=int(generated), flops=generated * forward_flops)
            _write_outputs(result, out_dir, config.run)
            results.append(result)
    meter.stop()
    cost = meter.summary()
    fingerprint = model_fingerprint(model_dir)
    payload = {
        "model": str(model_dir),
        "model_name": fingerprint["name"],
        "model_sha256": fingerprint["sha256"],
        "protocol": protocol_record(s, p.template, p.system),
        "results": [r.summary() for r in results],
        "cost": cost,
    }
    (out_dir / "results.json").write_text(json.dumps(payload, indent=2) + "\n", encoding="utf-8")
    save_config(config, out_dir / "config.toml", header="r1kit eval: resolved config")
    if config.run.progress:
        _print_results(results, out_dir, console, fingerprint)
    metrics = {f"{r.task}/{r.split}/{k}": v for r in results for k, v in r.metrics.items()}
    return EvalRunResult(run_dir=out_dir, metrics=metrics, cost=cost, results=results)


__all__ = [
    "BudgetSection",
    "Config",
    "DataSection",
    "EvalParams",
    "EvalResult",
    "EvalRunResult",
    "ModelSection",
    "RunSection",
    "SamplingSection",
    "aggregate",
    "budget_arms",
    "budget_curve",
    "check_r1_protocol",
    "completion_lengths",
    "data_hash",
    "evaluate",
    "evaluate_engine",
    "extract_answer",
    "format_table",
    "make_scorers",
    "model_fingerprint",
    "plot_budget",
    "plot_scaling",
    "problem_seed",
    "protocol_record",
    "render_prompts",
    "run",
    "sampling_params",
    "score_problems",
    "write_records",
]
