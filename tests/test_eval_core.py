"""The evaluation core (`r1kit.evaluate.evaluate_engine`) gives exactly what each old evaluation path gave.

Before the core, `r1kit eval`, the budget curve, the SFT/pretraining validators, GRPO's held-out
evaluation and rejection sampling each built their own generate calls. The values pinned here were
computed with that old code (commit f84c157) on a scripted model with real entropy, through the real
engine: the same per-row seeds, the same batching, the same samples, the same RNG draws. The model's
logits are small integers, so the draws are the same on any CPU.

Since sampling streams became per request (sample j of a problem draws from stream j of
`problem_seed(seed, id)`, whatever the chunking: `Engine.generate(keys_per_request=True)`), the sampled
values of the paths that seed each problem (`r1kit eval`, the sampled budget curve, rejection sampling)
are re-pinned from the new code: the old ones depended on each row's position in the call. Greedy
decoding, the validators and GRPO's held-out evaluation (one seed per call) keep the old values.
"""

from __future__ import annotations

import hashlib
import json
import re

import pytest
import torch
from history_cache import HistoryCache
from torch import nn

from r1kit import distill, evaluate
from r1kit.engine import Engine
from r1kit.rl import grpo
from r1kit.tasks import get_task
from r1kit.tokenizer import Tokenizer
from r1kit.train import pretrain, sft

SPECIALS = ["<pad>", "<eos>", "<think>", "</think>", "<bos>"]


class CharTokenizer:
    """One token per character, the specials as single tokens, a one-line chat template."""

    def __init__(self):
        self.vocab = SPECIALS + list("abcdefghijklmnopqrstuvwxyz0123456789 +=?\nWxyq")
        self.index = {t: i for i, t in enumerate(self.vocab)}
        self.pad_id, self.eos_id, self.think_start_id, self.think_end_id, self.bos_id = 0, 1, 2, 3, 4

    @property
    def vocab_size(self) -> int:
        return len(self.vocab)

    def encode(self, text: str, add_bos: bool = False) -> list[int]:
        ids, i = [], 0
        while i < len(text):
            special = next((s for s in SPECIALS if text.startswith(s, i)), None)
            ids.append(self.index[special or text[i]])
            i += len(special or text[i])
        return [self.bos_id, *ids] if add_bos else ids

    def decode(self, ids, skip_special_tokens: bool = False) -> str:
        return "".join(self.vocab[i] for i in ids)

    def apply_chat_template(self, messages, add_generation_prompt: bool = False) -> str:
        text = "".join(m["content"] for m in messages if m["role"] in ("user", "system"))
        return "q" + text + ("<think>" if add_generation_prompt else "")

    def encode_prompt(self, messages) -> list[int]:
        return self.encode(self.apply_chat_template(messages, add_generation_prompt=True))

    render_prompt = Tokenizer.render_prompt  # the real renderer over this stub's template and encode
    prompt_ids = Tokenizer.prompt_ids


class NoisyModel(nn.Module):
    """Scripted logits with entropy: thinks "x"/"y" (`</think>` likelier as the block grows), then writes
    the sum of the prompt's "a+b" digit by digit (the right digit at logit 2, the nine others at 0), then
    EOS (logit 1.5 against one more digit)."""

    def __init__(self, tok: CharTokenizer):
        super().__init__()
        self.tok = tok
        self.dummy = nn.Parameter(torch.zeros(1), requires_grad=False)

    def new_cache(self, batch, max_len, device=None, dtype=None):
        return HistoryCache(batch)

    def logits(self, history: list[int]) -> torch.Tensor:
        t = self.tok
        out = torch.full((t.vocab_size,), -30.0)
        starts = [i for i, x in enumerate(history) if x == t.think_start_id]
        start = starts[-1] if starts else len(history) - 1
        match = re.search(r"(\d+)\+(\d+)", "".join(t.vocab[i] for i in history[:start]))
        solution = str(int(match.group(1)) + int(match.group(2))) if match else "0"
        after = history[start + 1 :]
        if t.think_end_id not in after:
            out[t.index["x"]] = 1.0 + (len(after) % 2)
            out[t.index["y"]] = 1.0
            out[t.think_end_id] = 0.5 * min(len(after), 6) - 1.0
            return out
        j = len(after) - after.index(t.think_end_id) - 1  # answer tokens so far
        if j < len(solution):
            for d in range(10):
                out[t.index[str(d)]] = 2.0 if str(d) == solution[j] else 0.0
            return out
        out[t.eos_id] = 1.5
        out[t.index[str(j % 10)]] = 0.0
        return out

    def forward(self, input_ids, attention_mask=None, positions=None, cache=None, return_hidden=False):
        B, T = input_ids.shape
        logits = torch.zeros(B, T, self.tok.vocab_size)
        for b in range(B):
            cache.rows[b].extend(input_ids[b].tolist())
            logits[b, -1] = self.logits([i for i in cache.rows[b] if i != self.tok.pad_id])
        cache.length += T
        return logits


@pytest.fixture(scope="module")
def setup():
    tok = CharTokenizer()
    task = get_task("addition", min_digits=1, max_digits=2)
    return NoisyModel(tok), tok, task, task.problems("test", 5, 3)


def _digest(value) -> str:
    """sha256 of the canonical JSON of `value` (as the old outputs were dumped)."""
    canonical = json.loads(json.dumps(value, default=str))
    return hashlib.sha256(json.dumps(canonical, sort_keys=True).encode()).hexdigest()


def test_r1kit_eval_records_match_the_old_path(setup):
    model, tok, task, problems = setup
    S = evaluate.SamplingSection
    sampling = S(k=3, max_new_tokens=12, seed=7, batch_problems=2, best_of=["logprob", "format"])
    r = evaluate.evaluate(model, tok, task, problems, sampling)
    assert [rec["samples"] for rec in r.records] == [
        ["yxxx</think>1", "xxxxxxxy</think>4", "xxxy</think>4"],
        ["yxyy</think>87", "xyxxx</think>54", "xxyx</think>82"],
        ["xxxxxx</think>83", "xxxxyy</think>83", "xxx</think>83"],
        ["yxyx</think>181", "yxxxy</think>101", "xxxxy</think>507"],
        ["yxxxxx</think>95", "yxxx</think>95", "yxyxyxx</think>25"],
    ]
    assert [rec["greedy"]["text"] for rec in r.records] == [
        "xxxx</think>4",
        "xxxx</think>84",
        "xxxx</think>83",
        "xxxx</think>101",
        "xxxx</think>95",
    ]
    assert (
        r["pass@1"] == pytest.approx(8 / 15) and r["pass@2"] == pytest.approx(11 / 15) and r["maj@3"] == 0.6
    )
    assert r["greedy_acc"] == 1.0 and r["think_tokens"] == 5.0 and r["truncated"] == 0.0
    # everything else, bit for bit: metrics, curves and every field of every record
    # (records gained "votes" later, the maj@k vote of each sample: every other field is the old one)
    records = [{key: value for key, value in rec.items() if key != "votes"} for rec in r.records]
    old = {"metrics": r.metrics, "curves": r.curves, "records": records}
    assert _digest(old) == "1e20e2b6a685852a1460f16eb1640cf71671a7fec4ab79d939ed402995f64b8c"
    assert all(
        rec["votes"] == [evaluate.CORRECT_VOTE if ok else a for a, ok in zip(rec["answers"], rec["correct"])]
        for rec in r.records
    )
    raw = S(
        k=2, greedy=False, temperature=1.0, top_p=0.9, top_k=5, max_new_tokens=10, seed=3, batch_problems=0
    )
    r = evaluate.evaluate(model, tok, task, problems, raw, template="raw")
    assert r.records[0]["samples"] == ["yxyxyxxyxy", "xyyyxxyxxx"]
    records = [{key: value for key, value in rec.items() if key != "votes"} for rec in r.records]
    assert _digest({"metrics": r.metrics, "records": records}) == (
        "648d72be130c3bf06fb0f1320828000b965b1e7c68b16ff1dbdff35af9bcc3e6"
    )


def test_budget_curves_match_the_old_path(setup):
    model, tok, task, problems = setup
    greedy = evaluate.BudgetSection(caps=[1, 3], waits=[1, 2])
    points = evaluate.budget_curve(
        model, tok, task, problems[:4], greedy, max_new_tokens=14, seed=5, batch_problems=3
    )
    assert [
        (p["mode"], p["value"], p["accuracy"], p["think_tokens"], p["generated_tokens"]) for p in points
    ] == [
        ("cap", 1, 1.0, 1.0, 20),
        ("cap", 3, 1.0, 3.0, 28),
        ("wait", 1, 1.0, 8.0, 48),
        ("wait", 2, 0.25, 12.0, 56),
    ]
    sampled = evaluate.BudgetSection(caps=[2], waits=[1], samples=2, temperature=1.0, top_p=0.95)
    points = evaluate.budget_curve(model, tok, task, problems[:3], sampled, max_new_tokens=14, seed=9)
    assert points == [
        {
            "mode": "cap",
            "value": 2,
            "accuracy": 1 / 6,
            "think_tokens": 1.5,
            "answer_tokens": 13 / 6,
            "answered": 1.0,
            "generated_tokens": 34,
        },
        {
            "mode": "wait",
            "value": 1,
            "accuracy": 0.0,
            "think_tokens": 9.0,
            "answer_tokens": 11 / 6,
            "answered": 5 / 6,
            "generated_tokens": 74,
        },
    ]


def test_grpo_held_out_eval_matches_the_old_path(setup):
    model, tok, task, problems = setup
    torch.manual_seed(11)
    out = grpo.evaluate_policy(
        Engine(model, tok), tok, task, problems, samples=3, temperature=1.0, top_p=0.95, max_new_tokens=12,
        template="chat", system="", seed=1234,
    )  # fmt: skip
    after = float(torch.rand(()))
    assert out == {"eval/greedy_acc": 1.0, "eval/length_mean": 8.0, "eval/pass@1": pytest.approx(0.4)}
    assert out["eval/pass@1"] == 0.3999999999999999  # the old sum of pass_at_k(3, c, 1), to the last bit
    # the greedy call still draws its (unused) seed from torch's global RNG: training after it sees the
    # same RNG state as before (the old code's value; with no draw it would be 0.1490...)
    assert after == 0.2693377733230591


def test_validators_match_the_old_path(setup):
    model, tok, _, _ = setup
    for prompt, expected in (("chat", (1.0, 22 / 3)), ("text", (0.0, 10.0))):
        val = pretrain.ValSection(
            every=1,
            task="addition",
            task_args={"addition": {"digits": 1}},
            problems=6,
            max_new_tokens=10,
            prompt=prompt,
        )
        validate = pretrain.greedy_validator(val, "addition", {}, tok, prompt=prompt, system="s", seed=4)
        torch.manual_seed(5)
        assert validate(model, 0) == {"val_accuracy": expected[0], "val_length": pytest.approx(expected[1])}
        assert float(torch.rand(())) == 0.07241219282150269  # the old code's RNG state after a validation
    val = sft.ValSection(every=1, problems=4, max_new_tokens=8)
    data = sft.SFTData(task="addition", task_args={"addition": {"digits": 1}})
    validate = sft.greedy_validator(val, data, tok, seed=2)
    assert validate(model, 0) == {"val_accuracy": 1.0, "val_length": 7.25}


def test_rejection_sampling_matches_the_old_path(setup):
    model, tok, task, problems = setup
    kw = dict(temperature=1.0, max_new_tokens=12, seed=2)
    res = distill.rejection_sample(
        model, tok, {"addition": task}, {"addition": problems}, k=4, batch_prompts=2, **kw
    )
    assert [(r["id"], r["messages"][-1]["content"]) for r in res.rows] == [
        ("3+1", "<think>\nyxx\n</think>\n4"),
        ("6+78", "<think>\nxyxyxy\n</think>\n84"),
    ]
    total = {k: v for k, v in res.stats["total"].items() if k != "seconds"}
    assert total == {
        "acceptance_rate": 0.1,
        "correct": 2,
        "duplicates": 0,
        "generated_tokens": 159,
        "kept": 2,
        "kept_per_prompt": 0.4,
        "mean_think_tokens": 4.5,
        "mean_tokens": 8.0,
        "prompts": 5,
        "samples": 20,
        "solved_rate": 0.4,
        "well_formed_rate": 1.0,
    }
    unverified = distill.rejection_sample(
        model, tok, {"addition": task}, {"addition": problems}, k=3, verify=False, require_format=False,
        keep="random", max_per_prompt=2, **kw,
    )  # fmt: skip
    stats = {k: {kk: vv for kk, vv in v.items() if kk != "seconds"} for k, v in res.stats.items()}
    old = {"rows": res.rows, "stats": stats, "rows_random": unverified.rows}
    assert _digest(old) == "16f2b0a0e583bb9efcf66a110f63ff6245de3ae49c4695aaac699ab50b4f61df"


def test_arms_share_one_call_and_keep_their_own_seeds(setup):
    """Several EvalParams in one call: requests problem-major (each arm's greedy, then its samples), each
    problem's samples seeded by problem_seed(seed, id); the same call again gives the same samples."""
    model, tok, task, problems = setup
    calls = []

    class Recording(Engine):
        def generate(self, prompts, params, **kwargs):
            calls.append([(sp.n, sp.temperature, sp.seed) for sp in params])
            return super().generate(prompts, params, **kwargs)

    engine = Recording(model, tok)
    arms = [
        evaluate.EvalParams(k=2, max_new_tokens=10, seed=1),
        evaluate.EvalParams(k=1, greedy=False, seed=None),
    ]
    both = evaluate.evaluate_engine(engine, tok, task, problems, arms, batch_problems=2)
    assert [len(c) for c in calls] == [6, 6, 3]  # 2 + 2 + 1 problems, 3 requests each
    seed0 = evaluate.problem_seed(1, problems[0].id)
    assert calls[0][:3] == [(1, 0.0, 1), (2, 0.6, seed0), (1, 0.6, None)]
    again = evaluate.evaluate_engine(Engine(model, tok), tok, task, problems, arms, batch_problems=2)
    assert [r["samples"] for r in again[0].records] == [r["samples"] for r in both[0].records]
    assert both[0].completions[0][1].sample_index == 1 and len(both[1].greedy_completions) == 0
    with pytest.raises(ValueError, match="k > 0 or greedy"):
        evaluate.evaluate_engine(engine, tok, task, problems, evaluate.EvalParams(k=0, greedy=False))
