"""`Tokenizer.render_prompt` / `prompt_ids`, the one prompt renderer: token-identical to the three
renderings it replaced (eval's `render_prompts`, GRPO's rollout `render_prompt`, the training
validator's chat/text prompts)."""

from __future__ import annotations

import pytest

from r1kit.evaluate import render_prompts
from r1kit.tasks import get_task
from r1kit.tokenizer import THINK_START, Tokenizer


@pytest.fixture(scope="module")
def tok() -> Tokenizer:
    task = get_task("addition")
    texts = [p.prompt + task.completion(p) for p in task.problems("train", 100, seed=0)]
    return Tokenizer.train(texts + ["You are a careful assistant."] * 10, vocab_size=350)


@pytest.fixture(scope="module")
def problems():
    return get_task("addition", max_digits=3).problems("test", 12, seed=0) + get_task("countdown").problems(
        "test", 4, seed=0
    )


def _old_chat(tok, prompt, system):
    """eval's render_prompts / rollout.render_prompt / the validator's encode_prompt, before the change."""
    messages = [{"role": "system", "content": system}] if system else []
    messages.append({"role": "user", "content": prompt})
    return tok.encode(tok.apply_chat_template(messages, add_generation_prompt=True))


def _old_text(tok, prompt, system):
    """The pretraining validator's "text" prompt before the change."""
    prefix = system + "\n" if system else ""
    return tok.encode(prefix + prompt + "\n", add_bos=True)


@pytest.mark.parametrize("system", ["", "You are a careful assistant."])
def test_prompt_ids_match_the_former_renderings(tok, problems, system):
    for p in problems:
        assert tok.prompt_ids(p.prompt, "chat", system) == _old_chat(tok, p.prompt, system)
        assert tok.prompt_ids(p.prompt, "raw", system) == tok.encode(p.prompt)
        assert tok.prompt_ids(p.prompt, "text", system) == _old_text(tok, p.prompt, system)
    assert render_prompts(tok, problems, "chat", system) == [
        _old_chat(tok, p.prompt, system) for p in problems
    ]
    assert render_prompts(tok, problems, "raw", system) == [tok.encode(p.prompt) for p in problems]


def test_chat_prompt_opens_the_thinking_block(tok):
    text = tok.render_prompt("1+2", system="be brief")
    assert text == f"<|bos|><|system|>be brief<|user|>1+2<|assistant|>{THINK_START}\n"
    assert tok.prompt_ids("1+2")[0] == tok.bos_id
    assert tok.render_prompt("1+2", "text", "be brief") == "be brief\n1+2\n"


def test_unknown_template_names_the_valid_ones(tok):
    with pytest.raises(ValueError, match="chat, r1, r1-zero, raw, text"):
        tok.render_prompt("1+2", "markdown")
