"""Check the prompt templates on a real checkpoint's tokenizer, against transformers (by hand, not CI).

    python benchmarks/check_prompts.py --model MODEL_DIR --data GSM8K.jsonl [--generate 160]

MODEL_DIR is a Hugging Face directory (e.g. the one `r1kit convert` writes for SmolLM2-135M-Instruct);
GSM8K.jsonl holds `{"id", "problem", "answer"}` lines. For the first problem it prints what each
template ("chat", "r1", "r1-zero") renders, and checks:

- "chat" == transformers `apply_chat_template(messages, add_generation_prompt=True)`, text and ids;
- "r1" == the same with R1's system prompt, plus `<think>\\n` (the model has no think tokens);
- "r1-zero" == arXiv 2501.12948 Table 1 with the problem, ids == transformers `tokenizer(text)`.

With `--generate N` it also decodes N tokens greedily under each template with r1kit's engine and
prints the completion, its reasoning/answer split, the format rewards and the accuracy.
"""

from __future__ import annotations

import argparse
import json

from r1kit.tokenizer import R1_SYSTEM_PROMPT, Tokenizer


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, help="HF model directory (tokenizer.json + chat template)")
    parser.add_argument("--data", required=True, help='JSONL with {"id", "problem", "answer"} lines')
    parser.add_argument("--index", type=int, default=0, help="which problem of the file")
    parser.add_argument("--generate", type=int, default=0, help="greedy tokens per template (0 = none)")
    parser.add_argument("--templates", default="chat,r1,r1-zero", help="templates to generate with")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()

    import torch
    from transformers import AutoTokenizer

    torch.set_num_threads(args.threads)
    with open(args.data, encoding="utf-8") as f:
        row = [json.loads(line) for _, line in zip(range(args.index + 1), f)][-1]
    ours = Tokenizer.from_pretrained(args.model)
    ref = AutoTokenizer.from_pretrained(args.model)
    problem = row["problem"]
    print(f"problem {row['id']}: {problem!r} (answer {row['answer']})")
    print(f"think tokens in the vocabulary: <think> {ours.think_start_id}, </think> {ours.think_end_id}")

    user = [{"role": "user", "content": problem}]
    r1 = [{"role": "system", "content": R1_SYSTEM_PROMPT}, *user]
    expected = {
        "chat": ref.apply_chat_template(user, tokenize=False, add_generation_prompt=True),
        "r1": ref.apply_chat_template(r1, tokenize=False, add_generation_prompt=True) + "<think>\n",
    }
    checks = []
    for template in ("chat", "r1", "r1-zero"):
        text = ours.render_prompt(problem, template)
        ids = ours.prompt_ids(problem, template)
        print(f"\n===== {template} ({len(ids)} tokens) =====\n{text}")
        if template in expected:
            ref_ids = ref(expected[template], add_special_tokens=False).input_ids
            checks.append((f"{template} text == transformers", text == expected[template]))
            checks.append((f"{template} ids == transformers", ids == ref_ids))
        else:
            checks.append(
                ("r1-zero ends 'User: <problem>. Assistant:'", text.endswith(f"User: {problem}. Assistant:"))
            )
            checks.append(("r1-zero ids == transformers tokenizer(text)", ids == ref(text).input_ids))
    print("\n===== checks =====")
    for name, ok in checks:
        print(f"{'OK  ' if ok else 'FAIL'} {name}")

    if args.generate:
        generate(ours, args.model, row, args.generate, args.templates.split(","))


def generate(tok: Tokenizer, model_dir: str, row: dict, max_new_tokens: int, templates: list[str]) -> None:
    """Greedy completions under each template, with their split, format rewards and accuracy."""
    import time

    from r1kit.engine import Engine, SamplingParams
    from r1kit.loaders import load_model
    from r1kit.rewards import format_reward, tagged_format_reward
    from r1kit.tasks.base import Problem, final_answer
    from r1kit.tokenizer import split_reasoning

    model, _, _ = load_model(model_dir, device="cpu", dtype="fp32")
    engine = Engine(model, tok)
    problem = Problem(row["id"], row["problem"], row["answer"])
    for template in templates:
        t0 = time.perf_counter()
        (out,) = engine.generate(
            [tok.prompt_ids(problem.prompt, template)],
            SamplingParams(temperature=0.0, max_new_tokens=max_new_tokens),
        )
        seconds = time.perf_counter() - t0
        text = out.text
        reasoning, answer = split_reasoning(text)
        print(
            f"\n===== {template}: {len(out.token_ids)} tokens in {seconds:.1f} s, finish {out.finish_reason} ====="
        )
        print(text)
        print(f"-- reasoning {len(reasoning)} chars | answer {answer[:120]!r}")
        print(
            f"-- format {format_reward(text)} tagged_format {tagged_format_reward(text)} "
            f"final_answer {final_answer(text)[:60]!r} (reference {problem.answer})"
        )


if __name__ == "__main__":
    main()
