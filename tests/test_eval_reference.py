"""`r1kit eval` against independent references, on fixture problems and a tiny random Llama in the HF layout:

- its greedy completions equal transformers `generate` (greedy, same max_new_tokens, same end-of-turn
  ids from generation_config.json) token for token;
- its scores equal `math_verify.verify(parse(gold), parse(answer))` run directly on the completions
  (the model's own, and hand-written ones that are right and wrong in known ways);
- its per-problem records are the same for any batch_problems (per-request sampling streams).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from r1kit import evaluate
from r1kit.engine import Engine
from r1kit.loaders import load_model
from r1kit.tasks import MixtureTask, get_task
from r1kit.tokenizer import Tokenizer

transformers = pytest.importorskip("transformers")
math_verify = pytest.importorskip("math_verify")

FIXTURES = Path(__file__).parent / "data" / "fixtures"
MAX_NEW = 12


def _problems():
    """Five fixture problems (GSM8K- and MATH-style), with R1's instruction, scored by math-verify."""
    tasks = [get_task(f"math:{FIXTURES / name}", hash_split=False) for name in ("gsm8k.jsonl", "math.json")]
    return tasks[0].problems("test") + tasks[1].problems("test")


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    """A random 2-layer Llama saved by transformers, an r1kit tokenizer next to it, and a second
    end-of-turn id in generation_config.json (the 3rd greedy token of the first prompt, so that
    completion stops early, as a real model's `<|im_end|>` does)."""
    path = tmp_path_factory.mktemp("ref_llama")
    texts = [p.prompt + " " + (p.solution or "") + " \\boxed{" + p.answer + "}" for p in _problems()]
    tok = Tokenizer.train(texts * 3, vocab_size=400)
    tok.save_pretrained(path)
    config = transformers.LlamaConfig(
        vocab_size=tok.vocab_size, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512, initializer_range=0.2,
        eos_token_id=tok.eos_id, bos_token_id=tok.bos_id, pad_token_id=tok.pad_id,
    )  # fmt: skip
    torch.manual_seed(0)
    hf = transformers.LlamaForCausalLM(config).eval()
    first = tok.prompt_ids(_problems()[0].prompt, "chat", "")
    with torch.no_grad():
        out = hf.generate(torch.tensor([first]), max_new_tokens=3, do_sample=False, pad_token_id=tok.pad_id)
    stop = int(out[0, -1])
    hf.generation_config.eos_token_id = [tok.eos_id, stop]
    hf.save_pretrained(path)
    return path


def test_greedy_completions_equal_transformers_generate(model_dir):
    model, tok, _ = load_model(str(model_dir), "", "cpu", "float32")
    task = get_task(f"math:{FIXTURES / 'gsm8k.jsonl'}", hash_split=False)
    problems = _problems()
    params = evaluate.EvalParams(k=0, greedy=True, max_new_tokens=MAX_NEW)
    (result,) = evaluate.evaluate_engine(Engine(model, tok), tok, task, problems, params)
    prompts = evaluate.render_prompts(tok, problems)

    hf = transformers.AutoModelForCausalLM.from_pretrained(model_dir).eval()
    eos = json.loads((model_dir / "generation_config.json").read_text())["eos_token_id"]
    assert len(eos) == 2
    reference = []
    with torch.no_grad():
        for ids in prompts:  # one prompt at a time: no padding on the reference side
            out = hf.generate(
                torch.tensor([ids]), max_new_tokens=MAX_NEW, do_sample=False, eos_token_id=eos,
                pad_token_id=tok.pad_id,
            )  # fmt: skip
            reference.append(out[0, len(ids) :].tolist())
    ours = [list(c.token_ids) for c in result.greedy_completions]
    assert ours == reference
    reasons = [c.finish_reason for c in result.greedy_completions]
    assert reasons[0] == "stop" and ours[0][-1] in eos and len(ours[0]) == 3  # stopped on the second id
    assert all(len(o) == MAX_NEW for o, r in zip(ours, reasons) if r == "length")
    # the records' scores are math-verify's on the decoded completions (the end-of-turn token not in the text)
    for record, problem, ids in zip(result.records, problems, reference):
        text = tok.decode(ids[:-1] if ids[-1] in eos else ids)
        assert record["greedy"]["text"] == text
        assert record["greedy"]["score"] == _math_verify_score(text, problem.answer)


def _math_verify_score(completion: str, gold: str) -> float:
    """The reference scorer, straight from math-verify: the answer is the text after `</think>` (R1's
    layout; none without it), gold wrapped in $...$ for its LaTeX extraction."""
    if "</think>" not in completion:
        return 0.0
    answer = completion.split("</think>", 1)[1]
    return 1.0 if math_verify.verify(math_verify.parse(f"${gold}$"), math_verify.parse(answer)) else 0.0


# (problem index in _problems(), completion, hand-computed correctness)
HAND_WRITTEN = [
    (0, "3 boxes of 4.\n</think>\nThe answer is \\boxed{12}.", 1.0),
    (0, "3 boxes of 4.\n</think>\n\\boxed{13}", 0.0),
    (1, "1200 * 2\n</think>\nIt makes \\boxed{2400} dollars.", 1.0),
    (2, "10 - 12\n</think>\n\\boxed{-2}", 1.0),
    (2, "10 - 12\n</think>\n\\boxed{2}", 0.0),
    (3, "halve\n</think>\n\\boxed{0.5}", 1.0),
    (3, "halve\n</think>\n\\boxed{\\dfrac{2}{4}}", 1.0),
    (3, "halve\n</think>\n\\boxed{\\frac{1}{3}}", 0.0),
    (4, "square it\n</think>\n\\boxed{(x+1)^2}", 1.0),
    (4, "square it\n</think>\n\\boxed{x^2+1}", 0.0),
    (4, "no closing tag, \\boxed{x^2+2x+1}", 0.0),
]


def test_scores_equal_math_verify_on_hand_written_completions():
    problems = _problems()
    task = MixtureTask([get_task(f"math:{FIXTURES / 'gsm8k.jsonl'}", hash_split=False)])
    for index, completion, expected in HAND_WRITTEN:
        problem = problems[index]
        assert _math_verify_score(completion, problem.answer) == expected, completion
        assert task.score(completion, problem) == expected, completion


def test_records_do_not_depend_on_the_batch_size(model_dir):
    model, tok, _ = load_model(str(model_dir), "", "cpu", "float32")
    task = get_task(f"math:{FIXTURES / 'gsm8k.jsonl'}", hash_split=False)
    problems = _problems()
    params = evaluate.EvalParams(k=3, temperature=0.6, top_p=0.95, max_new_tokens=10, seed=5)
    runs = [
        evaluate.evaluate_engine(Engine(model, tok), tok, task, problems, params, batch_problems=b)[0]
        for b in (1, 2, 0)
    ]
    assert runs[0].records == runs[1].records == runs[2].records
    assert runs[0].metrics == runs[2].metrics
    assert len({s for r in runs[0].records for s in r["samples"]}) > 5  # real, distinct samples
    assert runs[0].data_hash == runs[2].data_hash == evaluate.data_hash(problems)
    assert evaluate.data_hash(problems[::-1]) != runs[0].data_hash


def test_r1kit_eval_on_a_preset_records_the_data_model_and_protocol(tmp_path, model_dir, capsys):
    """`r1kit eval` with `data.tasks = ["gsm8k"]` read from a local path: results.json carries the data
    hash (equal to the problems' own), the model's sha256 and the protocol; the table prints both hashes;
    `sampling.protocol = "r1"` refuses another temperature before anything runs."""
    from r1kit.cli import main

    args = [
        "eval", "--model.path", str(model_dir), "--data.tasks", '["gsm8k"]',
        "--data.task_args", f'{{gsm8k = {{path = "{FIXTURES / "gsm8k.jsonl"}", limit = 2}}}}',
        "--data.problems", "5", "--sampling.protocol", "r1", "--sampling.k", "2",
        "--sampling.max_new_tokens", "4", "--sampling.best_of", "[]", "--run.dir", str(tmp_path / "eval"),
        "--run.device", "cpu", "--run.plots", "false",
    ]  # fmt: skip
    assert main(args) == 0
    payload = json.loads((tmp_path / "eval" / "results.json").read_text())
    problems = get_task("gsm8k", path=str(FIXTURES / "gsm8k.jsonl"), limit=2).problems("test")
    (result,) = payload["results"]
    assert result["data_hash"] == evaluate.data_hash(problems) and result["metrics"]["problems"] == 2
    assert payload["model_sha256"] == evaluate.model_fingerprint(model_dir)["sha256"]
    assert payload["protocol"]["name"] == "r1" and payload["protocol"]["k"] == 2
    printed = capsys.readouterr().out
    assert result["data_hash"][:12] in printed and payload["model_sha256"][:12] in printed
    assert main([*args, "--sampling.temperature", "1.0"]) == 2
    assert "sampling.protocol = 'r1' samples with temperature = 0.6" in capsys.readouterr().err
