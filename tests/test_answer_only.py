"""An instruct model's own chat template that does not open <think>: a tagless completion is all answer."""

from types import SimpleNamespace

import torch

from r1kit.evaluate import score_problems
from r1kit.rl.rollout import score_completions
from r1kit.tasks.base import Problem, answer_only, final_answer, scoring_text
from r1kit.tasks.math import MathTask

CHATML = "<|im_start|>user\nWhat is 2 + 3?<|im_end|>\n<|im_start|>assistant\n"
R1KIT = "<|user|>2+3<|assistant|><think>\n"


def test_answer_only_only_for_chat_prompts_that_do_not_open_think():
    assert answer_only(CHATML, "chat")
    assert not answer_only(R1KIT, "chat")  # r1kit's template opens <think>: reasoning must be closed
    assert not answer_only(CHATML + "<think>\n", "r1")
    assert not answer_only("A conversation ... User: 2+3. Assistant:", "r1-zero")
    assert not answer_only("2+3", "raw")


def test_scoring_text_hand_cases():
    assert final_answer(scoring_text("2 + 3 = 5", True)) == "2 + 3 = 5"
    assert final_answer(scoring_text("2 + 3 = 5", False)) == ""  # R1's rule: no </think>, no answer
    assert final_answer(scoring_text("sum\n</think>\n5", True)) == "5"  # tags written: read as tagged
    assert final_answer(scoring_text("<think> still thinking", True)) == ""  # opened itself, never closed
    assert final_answer(scoring_text("<think>a</think> <answer>5</answer>", True)) == "5"


def test_eval_and_rollout_scores_follow_the_prompt(tmp_path):
    path = tmp_path / "add.jsonl"
    path.write_text('{"id": "a", "problem": "What is 2 + 3?", "answer": "5"}\n')
    task = MathTask(path, hash_split=False, instruction="")
    problem = task.problems("test")[0] if task.problems("test") else Problem("a", "What is 2 + 3?", "5")
    out = SimpleNamespace(
        text="2 + 3 = 5", token_ids=[1, 2, 3], finish_reason="stop", logprobs=None, mask=None
    )
    tokenizer = SimpleNamespace(eos_id=None, think_end_id=None, decode=lambda ids, **k: "")
    plain = score_problems(task, [problem], [[out]], tokenizer)
    whole = score_problems(task, [problem], [[out]], tokenizer, all_answer=[True])
    assert plain[0]["scores"] == [0.0] and whole[0]["scores"] == [1.0]
    assert plain[0]["think_tokens"] == [3] and plain[0]["answer_tokens"] == [0]  # R1's rule: all thinking
    assert whole[0]["think_tokens"] == [0] and whole[0]["answer_tokens"] == [3]  # all answer, as scored
    assert whole[0]["answers"] == ["2 + 3 = 5"]  # maj@k votes on the normalised answer text (no \\boxed here)
    reward = lambda text, p: task.score(text, p)  # noqa: E731
    r_plain, _ = score_completions(reward, [out], [problem])
    r_whole, _ = score_completions(reward, [out], [problem], all_answer=[True])
    assert torch.equal(r_plain, torch.tensor([0.0])) and torch.equal(r_whole, torch.tensor([1.0]))
