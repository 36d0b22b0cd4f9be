"""`reasoning_content` for a model without think tokens: the real server, engine and `openai` client.

The tokenizer is ChatML without `<think>`/`</think>` tokens (as SmolLM2 or Qwen2.5 ship): the tags
are several tokens each (`<`, `think`, `>`), and its chat template does not open a thinking block. A
scripted model emits a fixed completion token by token (how many tokens a streamed chunk carries
depends on how fast the client reads; `test_prompt_templates` feeds the parser one token at a time),
and the split must put the tags in neither field, streaming or not.
"""

from __future__ import annotations

import openai
import pytest
import tokenizers
from serve_stub import LiveServer, ScriptedModel
from tokenizers import decoders, models, pre_tokenizers, trainers

from r1kit.engine import Engine
from r1kit.tokenizer import THINK_END, THINK_START, Tokenizer

CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
CORPUS = ["What is 2+3? <think> 2+3 is 5 </think> The answer is 5. Hello there."] * 40
QUESTION = [{"role": "user", "content": "What is 2+3?"}]


def chatml_tokenizer() -> Tokenizer:
    backend = tokenizers.Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=320,
        special_tokens=[tokenizers.AddedToken(t, special=True) for t in ("<|im_start|>", "<|im_end|>")],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    backend.train_from_iterator(CORPUS, trainer=trainer)
    return Tokenizer(backend, CHATML_TEMPLATE, {"bos_token": "<|im_start|>", "eos_token": "<|im_end|>"})


class FixedOutputModel(ScriptedModel):
    """Emits `text` (then EOS) after any prompt, one token per step."""

    def __init__(self, tokenizer: Tokenizer, text: str):
        super().__init__(tokenizer)
        self.script = [*tokenizer.encode(text), tokenizer.eos_id]

    def next_token(self, generated: list[int], prompt: str) -> int:
        return self.script[min(len(generated), len(self.script) - 1)]


CASES = [
    # (generated text, reasoning_content, content)
    ("<think>\n2+3 is 5\n</think>\nThe answer is 5", "2+3 is 5", "The answer is 5"),
    ("The answer is 5", "", "The answer is 5"),
]


@pytest.fixture(scope="module")
def tok() -> Tokenizer:
    tok = chatml_tokenizer()
    assert tok.think_end_id is None and len(tok.encode(THINK_START)) > 1 and len(tok.encode(THINK_END)) > 1
    return tok


@pytest.mark.parametrize(("text", "reasoning", "content"), CASES)
def test_reasoning_content_with_textual_tags_streaming_and_not(tok, text, reasoning, content):
    from r1kit.serve import Config
    from r1kit.serve.app import create_app

    model = FixedOutputModel(tok, text)
    app = create_app(Engine(model, tok), tok, Config(model="unused"), model_name="m", context_length=2048)
    with LiveServer(app, model) as server:
        client = openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0, timeout=30)
        out = client.chat.completions.create(model="m", messages=QUESTION, max_tokens=64)
        message = out.choices[0].message
        assert (getattr(message, "reasoning_content", None), message.content) == (reasoning, content)
        assert out.choices[0].finish_reason == "stop"
        # reasoning tokens: `<think>`, the reasoning and `</think>`, all of them several tokens
        through = text.index(THINK_END) + len(THINK_END) if reasoning else 0
        assert out.usage.completion_tokens_details.reasoning_tokens == len(tok.encode(text[:through]))

        stream = client.chat.completions.create(
            model="m", messages=QUESTION, max_tokens=64, stream=True, stream_options={"include_usage": True}
        )
        pieces = {"reasoning": [], "content": []}
        for chunk in stream:
            for choice in chunk.choices:
                if getattr(choice.delta, "reasoning_content", None):
                    pieces["reasoning"].append(choice.delta.reasoning_content)
                if choice.delta.content:
                    pieces["content"].append(choice.delta.content)
        assert "".join(pieces["reasoning"]) == (reasoning or "")
        assert "".join(pieces["content"]) == content
        assert not any("<" in p or ">" in p for p in pieces["content"] + pieces["reasoning"])
