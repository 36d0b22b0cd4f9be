"""Expert iteration (`r1kit.expert_iteration`) on a tiny model with a scripted sampler: the traces kept
are exactly the verified ones, the next round samples from the weights the previous round trained, the
prompts are GRPO's own, and the FLOP total stops at the budget (sampling + training, as GRPO counts)."""

from __future__ import annotations

import json
import re
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from test_distill import FakeCompletion  # the engine's Completion, as rejection sampling reads it

from r1kit import distill, expert_iteration
from r1kit.config import ConfigError
from r1kit.engine import SamplingParams
from r1kit.model.counting import flops_per_token
from r1kit.tokenizer import Tokenizer
from r1kit.train.data import read_conversations

TINY = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1, "num_attention_heads": 2}


def scripted(a: int, b: int) -> list[tuple[str, str]]:
    """Four samples of one prompt: (text, finish); the first and third are the verified ones."""
    return [
        (f"{a}+{b}\n</think>\n{a + b}", "stop"),  # correct
        (f"{a}+{b}\n</think>\n{a + b + 1}", "stop"),  # wrong answer
        (f"add {a} {b}\n</think>\n{a + b}", "stop"),  # correct, another text
        (f"{a}+{b}+{a}", "length"),  # truncated at the cap
    ]


class ScriptedEngine:
    """`Engine.generate`'s signature: each prompt gets the `scripted` samples of its own numbers."""

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer

    def generate(self, prompts, params):
        params = [params] * len(prompts) if isinstance(params, SamplingParams) else list(params)
        out = []
        for ids, sp in zip(prompts, params):
            a, b = map(int, re.findall(r"(\d+)\+(\d+)", self.tokenizer.decode(list(ids)))[-1])
            for j, (text, finish) in enumerate(scripted(a, b)[: sp.n]):
                out.append(FakeCompletion(text, self.tokenizer.encode(text), finish, j))
        return out


def fingerprint(model) -> float:
    return float(sum(p.detach().double().sum() for p in model.parameters()))


@pytest.fixture(scope="module")
def policy_dir(tmp_path_factory):
    from r1kit.model import ModelConfig, Transformer

    texts = [f"{a}+{b}\n</think>\n{a + b} add" for a in range(10, 60, 7) for b in range(20, 90, 9)]
    tok = Tokenizer.train(texts * 3, vocab_size=300)
    path = tmp_path_factory.mktemp("policy")
    cfg = ModelConfig.preset("tiny-llama", vocab_size=tok.vocab_size, eos_token_id=tok.eos_id, **TINY)
    torch.manual_seed(0)
    Transformer(cfg).save_pretrained(path)
    tok.save_pretrained(path)
    return path


@pytest.fixture
def spy(monkeypatch):
    """Replace the policy by the scripted engine inside rejection sampling; record what each round saw."""
    calls = []
    real = distill.rejection_sample

    def fake(model, tokenizer, tasks, problems, **kwargs):
        calls.append({"fingerprint": fingerprint(model), "problems": list(next(iter(problems.values())))})
        return real(ScriptedEngine(tokenizer), tokenizer, tasks, problems, **kwargs)

    monkeypatch.setattr(distill, "rejection_sample", fake)
    return calls


def _config(policy_dir, tmp_path, **ei):
    from r1kit.config import load_config

    overrides = {
        "model.path": str(policy_dir),
        "data.task": "addition",
        "data.task_args": {"addition": {"min_digits": 2, "max_digits": 2}},
        "data.train_problems": 50,
        "ei.prompts_per_round": 3,
        "ei.k": 4,
        "ei.max_new_tokens": 24,
        "ei.max_len": 48,
        "train.batch_size": 2,
        "train.lr": 1e-2,
        "train.device": "cpu",
        "train.seed": 3,
        "run.dir": str(tmp_path / "ei"),
        "run.progress": False,
        "eval.every": 0,
        **{f"ei.{k}": v for k, v in ei.items()},
    }
    return load_config(expert_iteration.Config, None, overrides)


def test_a_round_keeps_the_verified_traces_and_the_next_samples_the_trained_weights(
    policy_dir, tmp_path, spy
):
    from r1kit.model import Transformer

    config = _config(policy_dir, tmp_path, rounds=2, dedupe=False)
    result = expert_iteration.run(config)
    assert result.metrics["rounds"] == 2 and result.metrics["stop_reason"] == "max_rounds"
    assert len(spy) == 2
    # round 0: each of the 3 prompts keeps exactly its two verified samples, in sampling order
    first = result.rounds[0]
    chats = read_conversations([first["traces"]])
    expected = []
    for p in spy[0]["problems"]:
        a, b = map(int, p.prompt.split("+"))
        good = [t for i, (t, _) in enumerate(scripted(a, b)) if i in (0, 2)]
        expected += [[{"role": "user", "content": p.prompt}, distill.trace_messages(p, t)[-1]] for t in good]
    assert chats == expected and first["kept"] == 6 and first["acceptance_rate"] == pytest.approx(0.5)
    # 6 traces at batch 2, one epoch: 3 SFT steps
    assert first["sft_steps"] == 3
    # round 1 sampled from the weights round 0 trained, not from the starting policy
    trained = Transformer.from_pretrained(Path(first["sft_dir"]) / "model")
    start = Transformer.from_pretrained(policy_dir)
    assert spy[1]["fingerprint"] == pytest.approx(fingerprint(trained), rel=0, abs=1e-6)
    assert spy[0]["fingerprint"] == pytest.approx(fingerprint(start), rel=0, abs=1e-6)
    assert spy[1]["fingerprint"] != pytest.approx(spy[0]["fingerprint"], rel=0, abs=1e-6)
    assert result.model_dir == Path(result.rounds[1]["sft_dir"]) / "model"
    # the sampling FLOPs by hand: a forward (1/3 of 6N + attention) over each prompt once and every completion
    tok = Tokenizer.from_pretrained(policy_dir)
    prompt_tokens = sum(len(tok.prompt_ids(p.prompt)) for p in spy[0]["problems"])
    completions = [t for p in spy[0]["problems"] for t, _ in scripted(*map(int, p.prompt.split("+")))]
    gen = sum(len(tok.encode(t)) for t in completions)
    fpt = flops_per_token(start.config, gen // len(completions), include_mtp=False)
    assert first["sampled_tokens"] == prompt_tokens + gen
    assert first["sample_flops"] == pytest.approx(fpt * (prompt_tokens + gen) / 3)
    # the SFT FLOPs were laid out before the run exactly as the loop then metered them
    for r in result.rounds:
        assert r["sft_flops"] == pytest.approx(r["planned_sft_flops"], rel=1e-9)
    total = sum(r["sample_flops"] + r["sft_flops"] for r in result.rounds)
    assert result.cost["flops"] == pytest.approx(total) == result.metrics["flops"]
    rows = [json.loads(line) for line in (tmp_path / "ei" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [0, 1, 2] and rows[1]["flops"] == pytest.approx(
        rows[0]["flops_after"]
    )


def test_the_prompts_are_grpos_prompt_stream(policy_dir, tmp_path, spy):
    from r1kit.rl import grpo

    config = _config(policy_dir, tmp_path, rounds=2)
    expert_iteration.run(config)
    g = grpo.Config(
        model=grpo.ModelSection(path=str(policy_dir)),
        data=config.data,
        rollout=grpo.RolloutSection(prompts_per_step=3, group_size=4, max_new_tokens=8),
        train=grpo.TrainSection(steps=1, device="cpu", seed=config.train.seed),
        run=grpo.RunSection(dir=str(tmp_path / "grpo"), progress=False),
        eval=grpo.EvalSection(every=0),
    )
    trainer = grpo.GRPOTrainer(g)
    grpo_prompts = [p.id for p in trainer.prompts.take(6)]
    assert [p.id for call in spy for p in call["problems"]] == grpo_prompts


def test_the_flop_total_stops_at_the_budget(policy_dir, tmp_path, spy):
    probe = expert_iteration.run(_config(policy_dir, tmp_path / "probe", rounds=1, dedupe=False, epochs=4))
    one_round = probe.metrics["flops"]
    budget = 1.6 * one_round
    result = expert_iteration.run(_config(policy_dir, tmp_path, budget_flops=budget, dedupe=False, epochs=4))
    assert result.metrics["stop_reason"] == "budget"
    assert result.cost["flops"] <= budget
    last = result.rounds[-1]
    # the last round stopped its SFT at the step that would have crossed the budget
    assert last["sft_steps"] < probe.rounds[0]["sft_steps"]
    biggest_step = probe.rounds[0]["sft_flops"] / probe.rounds[0]["sft_steps"] * 2
    assert result.cost["flops"] > budget - biggest_step
    assert len(result.rounds) == 2 and result.history[-1]["flops"] == pytest.approx(result.cost["flops"])


def test_a_run_needs_a_stop():
    with pytest.raises(ConfigError, match="ei.rounds"):
        expert_iteration.Config()


def test_an_sft_arm_at_a_flop_budget_spends_it_as_the_loop_meters(policy_dir, tmp_path):
    from r1kit.model import ModelConfig
    from r1kit.train import sft
    from r1kit.train.sections import ModelSection, ValSection

    tok = Tokenizer.from_pretrained(policy_dir)
    cfg = ModelConfig.from_hf_dict(json.loads((policy_dir / "config.json").read_text()))
    chats = [
        [
            {"role": "user", "content": f"{a}+{b}"},
            {"role": "assistant", "content": f"<think>\nx\n</think>\n{a + b}"},
        ]
        for a, b in ((12, 30), (5, 7), (41, 41), (3, 99), (60, 2))
    ]
    path = distill.write_chat_jsonl(tmp_path / "chats.jsonl", [{"messages": c} for c in chats])
    budget = 1.5e7
    steps = expert_iteration.sft_steps_within(chats, tok, cfg, 48, 2, 7, budget)
    assert steps >= 1
    res = sft.run(
        sft.Config(
            model=ModelSection(init=str(policy_dir)),
            data=sft.SFTData(files=[str(path)], max_len=48),
            val=ValSection(every=0),
            train=sft.TrainConfig(steps=steps, batch_size=2, seed=7, device="cpu", warmup_steps=0),
            run=sft.RunConfig(dir=str(tmp_path / "sft"), progress=False),
        )
    )
    assert res.cost["flops"] <= budget
    # one step more would have crossed it
    more = expert_iteration.sft_steps_within(chats, tok, cfg, 48, 2, 7, budget + 1e9)
    assert more > steps
    fm = flops_per_token(cfg, 0)
    fa = flops_per_token(cfg, 1) - fm
    lengths = [len(tok.encode_chat(c)[0][:49]) - 1 for c in chats]
    next_step = expert_iteration.sft_step_flops(lengths, 2, 7, steps + 1, fm, fa)
    assert sum(next_step[:steps]) == pytest.approx(res.cost["flops"])
    assert sum(next_step) > budget


def test_an_unchanged_policy_is_not_evaluated_again(policy_dir, tmp_path, monkeypatch):
    """Rounds that keep nothing leave the weights as they were: their rows reuse the last evaluation."""
    real = distill.rejection_sample
    calls = []

    def nothing_right(model, tokenizer, tasks, problems, **kwargs):
        class Wrong(ScriptedEngine):
            def generate(self, prompts, params):
                out = super().generate(prompts, params)
                wrong = [c for c in out if c.sample_index == 1]  # each prompt's wrong answer, k times
                return [replace(wrong[i // len(scripted(0, 0))], sample_index=i % 4) for i in range(len(out))]

        return real(Wrong(tokenizer), tokenizer, tasks, problems, **kwargs)

    def fake_eval(model, tokenizer, task, problems, config):
        calls.append(fingerprint(model))
        return {"eval/pass@1": 0.0, "eval/length_mean": 3.0}

    monkeypatch.setattr(distill, "rejection_sample", nothing_right)
    monkeypatch.setattr(expert_iteration, "_evaluate", fake_eval)
    config = _config(policy_dir, tmp_path, rounds=3)
    config.eval.every = 1
    result = expert_iteration.run(config)
    assert [r["kept"] for r in result.rounds] == [0, 0, 0] and result.model_dir == policy_dir
    assert len(calls) == 1 and all("eval/pass@1" in row for row in result.history)
