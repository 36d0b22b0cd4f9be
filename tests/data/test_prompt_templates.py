"""Prompt templates ("chat", "r1", "r1-zero") and the R1 format read on both kinds of tags.

Two tokenizers: r1kit's own (`<think>`/`</think>` single added tokens, R1 chat template) and a ChatML
one without think tokens, as real instruct checkpoints (SmolLM2, Qwen2.5) ship: there `<think>`
is three pieces (`<`, `think`, `>`). Rewards, answer extraction and the server's reasoning split read
decoded text, so every hand-computed case is checked on the text decoded from both tokenizations.
"""

from __future__ import annotations

import random

import pytest
import tokenizers
from tokenizers import decoders, models, pre_tokenizers, trainers

from r1kit.rewards import accuracy_reward, format_reward, get_reward, tagged_format_reward
from r1kit.serve.batcher import Delta, Finish, GenerationParams, OutputParser
from r1kit.tasks.base import Problem, Task, final_answer
from r1kit.tokenizer import (
    R1_SYSTEM_PROMPT,
    R1_ZERO_INSTRUCTION,
    THINK_END,
    THINK_START,
    Tokenizer,
    ends_in_think,
    split_reasoning,
    tagged_answer,
)

CORPUS = [
    "What is 2+3? Let me think. 2+3 is 5. The answer is 5. <think> reasoning </think> <answer> 5 </answer>",
    "A conversation between User and Assistant. The user asks a question, and the Assistant solves it.",
] * 40

# A ChatML template of the usual shape (a default system prompt when none is given).
CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n' }}{% endif %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


@pytest.fixture(scope="module")
def r1tok() -> Tokenizer:
    """r1kit's tokenizer: think tags are single tokens, the chat template opens `<think>`."""
    return Tokenizer.train(CORPUS, vocab_size=300)


@pytest.fixture(scope="module")
def chatml() -> Tokenizer:
    """A byte-level BPE with ChatML control tokens and no think tokens."""
    backend = tokenizers.Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    backend.decoder = decoders.ByteLevel()
    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    trainer = trainers.BpeTrainer(
        vocab_size=400,
        special_tokens=[tokenizers.AddedToken(t, special=True, normalized=False) for t in specials],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    backend.train_from_iterator(CORPUS, trainer=trainer)
    special = {"bos_token": "<|im_start|>", "eos_token": "<|im_end|>", "pad_token": "<|im_end|>"}
    return Tokenizer(backend, CHATML_TEMPLATE, special)


def test_the_chatml_fixture_splits_tags_into_pieces(chatml, r1tok):
    assert chatml.think_start_id is None and chatml.think_end_id is None
    assert len(chatml.encode(THINK_START)) > 1 and len(chatml.encode(THINK_END)) > 1
    assert r1tok.encode(THINK_END) == [r1tok.think_end_id]


# ------------------------------------------------------------------------------------ templates

QUESTION = "What is 2+3?"


def test_r1_zero_is_table_1_of_the_paper_as_plain_text(chatml, r1tok):
    expected = (
        "A conversation between User and Assistant. The user asks a question, and the Assistant solves it. "
        "The assistant first thinks about the reasoning process in the mind and then provides the user "
        "with the answer. The reasoning process and answer are enclosed within <think> </think> and "
        "<answer> </answer> tags, respectively, i.e., <think> reasoning process here </think> <answer> "
        "answer here </answer>. User: What is 2+3?. Assistant:"
    )
    for tok in (chatml, r1tok):
        assert tok.render_prompt(QUESTION, "r1-zero") == expected
        # plain text: no chat markup, the tags as text even where they are added tokens
        ids = tok.prompt_ids(QUESTION, "r1-zero")
        assert tok.decode(ids) == expected
        assert "<|im_start|>" not in tok.decode(ids) and "<|user|>" not in tok.decode(ids)
    assert chatml.prompt_ids(QUESTION, "r1-zero") == chatml.encode(expected)
    assert (
        r1tok.render_prompt(QUESTION, "r1-zero", system="Solve it.")
        == "Solve it. User: What is 2+3?. Assistant:"
    )
    assert R1_ZERO_INSTRUCTION in expected


def test_r1_on_a_tokenizer_without_think_tokens_opens_the_tag_as_text(chatml):
    text = chatml.render_prompt(QUESTION, "r1")
    assert text == (
        f"<|im_start|>system\n{R1_SYSTEM_PROMPT}<|im_end|>\n<|im_start|>user\nWhat is 2+3?<|im_end|>\n"
        "<|im_start|>assistant\n<think>\n"
    )
    assert ends_in_think(text)
    assert chatml.prompt_ids(QUESTION, "r1") == chatml.encode(text)
    # a system prompt of one's own replaces R1's
    assert chatml.render_prompt(QUESTION, "r1", "Be brief.").startswith(
        "<|im_start|>system\nBe brief.<|im_end|>"
    )


def test_r1_on_r1kits_template_does_not_open_think_twice(r1tok):
    text = r1tok.render_prompt(QUESTION, "r1")
    assert text == f"<|bos|><|system|>{R1_SYSTEM_PROMPT}<|user|>What is 2+3?<|assistant|><think>\n"
    assert r1tok.generation_suffix("r1") == ""
    assert r1tok.prompt_ids(QUESTION, "r1")[-2:] == [r1tok.think_start_id, r1tok.encode("\n")[0]]


def test_chat_is_the_models_own_template(chatml, r1tok):
    assert chatml.render_prompt(QUESTION, "chat") == (
        "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\nWhat is 2+3?<|im_end|>\n"
        "<|im_start|>assistant\n"
    )
    assert r1tok.render_prompt(QUESTION, "chat") == "<|bos|><|user|>What is 2+3?<|assistant|><think>\n"
    assert chatml.generation_suffix("chat") == ""


def test_unknown_template_names_the_choices(chatml):
    with pytest.raises(ValueError, match="chat, r1, r1-zero"):
        chatml.render_prompt(QUESTION, "r2")


def test_r1_sft_prompt_ids_match_inference(chatml):
    """Under "r1" the `<think>\\n` the prompt forces is prompt in SFT too: mask 0, the same ids."""
    problem = Problem("p", QUESTION, "5", solution="2+3 is 5.")
    messages = [{"role": "system", "content": R1_SYSTEM_PROMPT}, *Task().sft_messages(problem)]
    suffix = chatml.generation_suffix("r1")
    assert suffix == "<think>\n"
    ((ids, mask),) = chatml.encode_chats([messages], generation_suffix=suffix)
    prompt = chatml.prompt_ids(QUESTION, "r1")
    first = mask.index(1)
    assert ids[:first] == prompt
    assert chatml.decode(ids[first:]) == "2+3 is 5.\n</think>\n5<|im_end|>\n"
    assert mask[first:] == [1] * (len(ids) - first)
    # without the suffix the tag is target text, as in the plain chat layout
    ((ids0, mask0),) = chatml.encode_chats([messages])
    assert chatml.decode(ids0[mask0.index(1) :]).startswith("<think>\n2+3")


# ------------------------------------------------------------------------ the format, on both forms

# (completion, split_reasoning, final answer, format, tagged_format)
CASES = [
    ("2+3 is 5.\n</think>\n5", ("2+3 is 5.", "5"), "5", 1.0, 0.0),
    ("<think>\n2+3 is 5.\n</think>\n5", ("2+3 is 5.", "5"), "5", 1.0, 0.0),
    (" <think> 2+3 is 5 </think> <answer> 5 </answer>", ("2+3 is 5", "<answer> 5 </answer>"), "5", 1.0, 1.0),
    ("2+3 is 5 </think> <answer>5</answer>", ("2+3 is 5", "<answer>5</answer>"), "5", 1.0, 1.0),
    # missing close tag: no answer yet
    ("<think> 2+3 is 5 <answer> 5 </answer>", ("2+3 is 5 <answer> 5 </answer>", ""), "", 0.0, 0.0),
    ("2+3 is 5", ("2+3 is 5", ""), "", 0.0, 0.0),
    # empty answer, or empty answer tags
    ("2+3 is 5 </think>  ", ("2+3 is 5", ""), "", 0.0, 0.0),
    ("2+3 is 5 </think> <answer> </answer>", ("2+3 is 5", "<answer> </answer>"), "", 0.0, 0.0),
    # duplicate / nested tags
    ("a </think> b </think> 5", ("a", "b </think> 5"), "b </think> 5", 0.0, 0.0),
    ("<think> a <think> b </think> 5", ("a <think> b", "5"), "5", 0.0, 0.0),
    ("<think><think> a </think> 5", ("<think> a", "5"), "5", 0.0, 0.0),
    (
        "a </think> <answer>4</answer> <answer>5</answer>",
        ("a", "<answer>4</answer> <answer>5</answer>"),
        "5",
        0.0,
        0.0,
    ),
    (
        "a </think> <answer><answer>5</answer></answer>",
        ("a", "<answer><answer>5</answer></answer>"),
        "5",
        0.0,
        0.0,
    ),
    # answer tags in the wrong place, text around them, or never closed
    ("a <answer>5</answer> </think> 5", ("a <answer>5</answer>", "5"), "5", 0.0, 0.0),
    ("a </think> so <answer>5</answer>", ("a", "so <answer>5</answer>"), "5", 0.0, 0.0),
    ("a </think> <answer> 5", ("a", "<answer> 5"), "5", 0.0, 0.0),
    ("a </think> 5 </answer>", ("a", "5 </answer>"), "5 </answer>", 0.0, 0.0),
]


def _decoded_forms(tokenizers_, text):
    """`text` as each tokenizer's model would emit it: encoded (tags as tokens where it has them), decoded."""
    forms = [text]
    for tok in tokenizers_:
        ids = tok.encode(text)
        forms.append(tok.decode(ids))
    return forms


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_reasoning_answer_and_format_on_both_tag_forms(case, r1tok, chatml):
    completion, split, answer, fmt, tagged = case
    assert r1tok.encode(completion).count(r1tok.think_end_id) == completion.count(THINK_END)
    assert chatml.think_end_id is None
    problem = Problem("p", QUESTION, "5")
    accuracy = accuracy_reward(Task())
    for text in _decoded_forms((r1tok, chatml), completion):
        assert text == completion  # both tokenizations decode to the text, tags included
        assert split_reasoning(text) == split
        assert final_answer(text) == answer
        assert format_reward(text, problem) == fmt
        assert tagged_format_reward(text, problem) == tagged
        assert accuracy(text, problem) == (1.0 if answer == "5" else 0.0)


def test_tagged_answer_takes_the_last_closed_block():
    assert tagged_answer("<answer>4</answer> then <answer>5</answer>") == "5"
    assert tagged_answer("<answer>4</answer> then <answer>5") == "4"
    assert tagged_answer("plain 5") == "plain 5"
    assert get_reward("tagged_format") is tagged_format_reward


def test_ends_in_think():
    assert ends_in_think("<|assistant|><think>\n")
    assert not ends_in_think("... i.e., <think> reasoning </think> <answer> a </answer>. User: q. Assistant:")
    assert not ends_in_think("<|im_start|>assistant\n")


# ------------------------------------------------------------------- the server's reasoning split


def _parse_stream(pieces, token_ids, starts_in_reasoning, think_end_id=None):
    parser = OutputParser(
        0,
        GenerationParams(max_tokens=10_000, starts_in_reasoning=starts_in_reasoning),
        think_end_id=think_end_id,
    )
    events = []
    for piece, ids in zip(pieces, token_ids):
        events += parser.feed(piece, ids)
    events += parser.finish("stop")
    deltas = [e for e in events if isinstance(e, Delta)]
    (finish,) = [e for e in events if isinstance(e, Finish)]
    return deltas, finish


def _token_stream(tok, text):
    """The (text piece, [id]) of each token of `text`, decoded incrementally as the engine streams."""
    ids = tok.encode(text)
    pieces, shown = [], ""
    for n in range(1, len(ids) + 1):
        now = tok.decode(ids[:n])
        pieces.append(now[len(shown) :])
        shown = now
    return pieces, [[i] for i in ids]


STREAMS = [
    # (generated text, prompt opened <think>, reasoning, content)
    ("2+3 is 5.\n</think>\nThe answer is 5", True, "2+3 is 5.", "The answer is 5"),
    ("<think>\n2+3 is 5.\n</think>\n\nThe answer is 5", False, "2+3 is 5.", "The answer is 5"),
    (" <think> 2+3 is 5 </think> <answer> 5 </answer>", False, "2+3 is 5", "<answer> 5 </answer>"),
    ("The answer is 5, no thinking", False, "", "The answer is 5, no thinking"),
    ("<thin", False, "", "<thin"),
    ("a < b, so 5", False, "", "a < b, so 5"),
    ("<think> still thinking", False, "still thinking", ""),
]


@pytest.mark.parametrize("stream", STREAMS, ids=[s[0] for s in STREAMS])
def test_server_split_on_textual_tags_token_by_token(stream, chatml):
    text, opened, reasoning, content = stream
    pieces, ids = _token_stream(chatml, text)
    assert "".join(pieces) == text
    deltas, finish = _parse_stream(pieces, ids, opened)
    got_reasoning = "".join(d.text for d in deltas if d.kind == "reasoning")
    got_content = "".join(d.text for d in deltas if d.kind == "content")
    assert (got_reasoning, got_content) == (reasoning, content)
    # no piece of a think tag ever reaches the content
    assert "think>" not in got_content and "</" not in got_content.replace("</answer>", "")
    assert finish.completion_tokens == len(ids)
    if THINK_END in text:
        # reasoning tokens: up to and including the (three-piece) `</think>`
        through = text.index(THINK_END) + len(THINK_END)
        assert finish.reasoning_tokens == len(chatml.encode(text[:through]))


@pytest.mark.parametrize("stream", STREAMS, ids=[s[0] for s in STREAMS])
def test_server_split_does_not_depend_on_the_chunking(stream):
    """A tag cut anywhere across chunks (`<thi` + `nk>`, `</th` + `ink>`) splits the same."""
    text, opened, reasoning, content = stream
    rng = random.Random(7)
    for _ in range(40):
        cuts = sorted(rng.sample(range(1, len(text)), k=min(len(text) - 1, rng.randint(1, 10))))
        pieces = [text[a:b] for a, b in zip([0, *cuts], [*cuts, len(text)])]
        deltas, _ = _parse_stream(pieces, [[0]] * len(pieces), opened)
        assert "".join(d.text for d in deltas if d.kind == "reasoning") == reasoning
        assert "".join(d.text for d in deltas if d.kind == "content") == content


def test_server_split_with_the_tag_across_two_chunks():
    deltas, _ = _parse_stream(["<thi", "nk>2+3 is 5 </th", "ink> 5"], [[0], [0], [0]], False)
    assert [(d.kind, d.text) for d in deltas] == [("reasoning", "2+3 is 5"), ("content", "5")]


# ------------------------------------------------------------------------- the [prompt] section

PROMPT_STAGES = ["sft", "grpo", "eval", "sample", "distill"]
MOVED = [
    ("grpo", "data.template", "raw", "prompt.template"),
    ("grpo", "data.system", "be brief", "prompt.system"),
    ("eval", "data.template", "raw", "prompt.template"),
    ("eval", "data.system", "be brief", "prompt.system"),
    ("sft", "data.system", "be brief", "prompt.system"),
    ("sample", "sample.template", "raw", "prompt.template"),
    ("distill", "sample.system", "be brief", "prompt.system"),
]


def _stage_config(stage):
    from r1kit import distill, evaluate
    from r1kit.rl import grpo
    from r1kit.train import sft

    return {"sft": sft, "grpo": grpo, "eval": evaluate, "sample": distill, "distill": distill}[stage].Config


@pytest.mark.parametrize("stage", PROMPT_STAGES)
def test_every_prompting_stage_reads_one_prompt_section(stage):
    from r1kit.config import load_config
    from r1kit.train.sections import PromptSection

    cls = _stage_config(stage)
    assert load_config(cls, None, []).prompt == PromptSection()
    config = load_config(cls, None, ["--prompt.template", "r1", "--prompt.system", "Think first."])
    assert (config.prompt.template, config.prompt.system) == ("r1", "Think first.")


@pytest.mark.parametrize(("stage", "old", "value", "new"), MOVED)
def test_the_former_prompt_keys_name_the_new_one(stage, old, value, new, capsys):
    from r1kit.cli import main as cli_main

    assert cli_main([stage, f"--{old}", value]) == 2
    section, _, key = new.partition(".")
    assert (
        capsys.readouterr().err.strip()
        == f"r1kit {stage}: {old} (from --{old}) moved: use [{section}] {key} (--{new})"
    )


def test_plain_text_templates_are_refused_for_sft_and_left_to_the_teacher_in_distillation(capsys):
    from r1kit.cli import main as cli_main
    from r1kit.distill import student_prompt
    from r1kit.train.sections import PromptSection

    assert cli_main(["sft", "--prompt.template", "r1-zero"]) == 2
    err = capsys.readouterr().err.strip()
    assert "prompt.template must be 'chat' or 'r1', got 'r1-zero'" in err and "\n" not in err
    assert cli_main(["grpo", "--prompt.template", "r2"]) == 2  # a Literal: the choices are listed
    assert "r1-zero" in capsys.readouterr().err
    # distillation: the teacher samples with R1-Zero's template, the student learns its chat template
    assert student_prompt(PromptSection("r1-zero", "Solve.")) == PromptSection("chat", "")
    assert student_prompt(PromptSection("r1", "x")) == PromptSection("r1", "x")


def test_sft_under_r1_adds_r1s_system_prompt_and_keeps_think_in_the_prompt(chatml):
    from r1kit.train import sft
    from r1kit.train.data import ChatExamples
    from r1kit.train.loop import IGNORE_INDEX
    from r1kit.train.sections import PromptSection

    data = sft.SFTData(task="addition", task_args={"addition": {"max_digits": 2}}, num_examples=3, seed=1)
    chats = sft.conversations(data, seed=0, prompt=PromptSection("r1"))
    assert all(c[0] == {"role": "system", "content": R1_SYSTEM_PROMPT} for c in chats)
    own = sft.with_system_prompt(
        [[{"role": "system", "content": "mine"}, *chats[0][1:]]], PromptSection("r1")
    )
    assert own[0][0]["content"] == "mine"  # a conversation's own system message stays
    assert sft.conversations(data, seed=0) == [c[1:] for c in chats]  # "chat": no system prompt
    examples = ChatExamples(chats, chatml, 512, chatml.generation_suffix("r1"))
    user = chats[0][1]["content"]
    ids, targets = examples[0]["input_ids"].tolist(), examples[0]["targets"].tolist()
    prompt = chatml.prompt_ids(user, "r1")
    # the prompt of inference, token for token; the first target is the first reasoning token
    assert ids[: len(prompt)] == prompt
    first = next(i for i, t in enumerate(targets) if t != IGNORE_INDEX)
    assert first == len(prompt) - 1


# ------------------------------------------------------------- thinking / answer token counts


@pytest.mark.parametrize(
    "text",
    [
        "2+3 is 5.\n</think>\n5",
        "</think>5",
        "a</think>",
        "x </think> y </think> z",
        "no tag at all",
        "</thin",
    ],
)
def test_thinking_and_answer_tokens_on_both_tag_forms(text, r1tok, chatml):
    from r1kit.evaluate import completion_lengths
    from r1kit.tokenizer import tag_token_span

    # single token: the counts around the one `</think>` id
    ids = r1tok.encode(text) + [r1tok.eos_id]
    single = completion_lengths(ids, r1tok)
    # several pieces: the same split, found in the text
    ids = chatml.encode(text) + [chatml.eos_id]
    span = tag_token_span(ids[:-1], chatml.decode)
    if THINK_END not in text:
        assert span is None and completion_lengths(ids, chatml) == (len(ids) - 1, 0)
        assert single == (len(r1tok.encode(text)), 0)
        return
    start, end = span
    # the tag's pieces, plus at most the whitespace a piece shares with it (" </" is one token)
    assert chatml.decode(ids[start:end]).strip() == THINK_END
    head, _, tail = text.partition(THINK_END)
    assert head.startswith(chatml.decode(ids[:start])) and tail.endswith(chatml.decode(ids[end:-1]))
    assert len(chatml.decode(ids[:start])) >= len(head.rstrip())
    assert completion_lengths(ids, chatml) == (start, len(ids) - 1 - end)
    assert single == (len(r1tok.encode(head)), len(r1tok.encode(tail)))
