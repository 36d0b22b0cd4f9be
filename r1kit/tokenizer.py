"""Byte-level BPE tokenizer, chat templates and the R1 reasoning format.

`Tokenizer` wraps a `tokenizers.Tokenizer` plus the few things a chat model needs beside it: the
special tokens, a Jinja chat template rendered exactly as transformers' `apply_chat_template`
renders it, and `encode_chat`, which turns an SFT conversation into token ids and a loss mask.
It reads and writes the Hugging Face layout (tokenizer.json + tokenizer_config.json), so a
directory saved here loads in `transformers.AutoTokenizer` and a model directory from the Hub
(Llama, Qwen, DeepSeek) loads here.

r1kit's own chat format is R1-style (arXiv 2501.12948): the assistant turn is
`<think>\\n{reasoning}\\n</think>\\n{answer}<eos>` and the generation prompt ends with
`<think>\\n`, so a completion reads `reasoning\\n</think>\\nanswer`. For checkpoints without think
tokens, `render_prompt` also has the "r1" template (the model's chat template, R1's system prompt,
`<think>\\n` opened as text) and "r1-zero" (R1-Zero's plain-text template, answer in `<answer>` tags);
`split_reasoning` and `tagged_answer` read the tags in the text, whatever their tokenisation.
"""

from __future__ import annotations

import json
import math
import os
import re
import secrets
import threading
import time
from collections.abc import Iterable, Sequence
from datetime import datetime
from functools import lru_cache
from pathlib import Path
from typing import Any

import tokenizers
from tokenizers import decoders, models, pre_tokenizers, trainers

BOS, EOS, PAD = "<|bos|>", "<|eos|>", "<|pad|>"
SYSTEM, USER, ASSISTANT = "<|system|>", "<|user|>", "<|assistant|>"
THINK_START, THINK_END = "<think>", "</think>"
# Order fixes the ids of a trained vocabulary: 0..5; the think tags take the last two ids.
SPECIAL_TOKENS = (BOS, EOS, PAD, SYSTEM, USER, ASSISTANT)
THINK_TOKENS = (THINK_START, THINK_END)
# R1-Zero's final-answer tags (arXiv 2501.12948, Table 1); always plain text, never added tokens.
ANSWER_START, ANSWER_END = "<answer>", "</answer>"
# How a problem's prompt becomes model input (Tokenizer.render_prompt); `[prompt] template` takes the
# first three, "raw" and "text" are the plain-text layouts of `r1kit.evaluate` and pretraining.
PROMPT_TEMPLATES = ("chat", "r1", "r1-zero", "raw", "text")

# DeepSeek-R1-Zero's training template (arXiv 2501.12948, Table 1), word for word: plain text for a base
# model, no chat template; `{instruction}` is R1_ZERO_INSTRUCTION unless a system prompt replaces it.
R1_ZERO_INSTRUCTION = (
    "A conversation between User and Assistant. The user asks a question, and the Assistant solves it. "
    "The assistant first thinks about the reasoning process in the mind and then provides the user with "
    "the answer. The reasoning process and answer are enclosed within <think> </think> and <answer> "
    "</answer> tags, respectively, i.e., <think> reasoning process here </think> <answer> answer here "
    "</answer>."
)
R1_ZERO_TEMPLATE = "{instruction} User: {prompt}. Assistant:"
# System prompt of the "r1" template: the R1 layout asked for in words, for an instruct model whose chat
# template knows nothing of thinking (the generation prompt then opens `<think>` as text). No worked
# example with placeholders: SmolLM2-135M copied "reasoning process here </think> final answer here".
R1_SYSTEM_PROMPT = (
    "You are a helpful assistant. First think through the problem step by step inside <think> </think> "
    "tags, then write the final answer after </think>."
)

# R1-style template (arXiv 2501.12948; DeepSeek API guide, api-docs.deepseek.com/guides/reasoning_model). The
# assistant content may hold "<think>...</think>answer" (an SFT
# target) or just the answer; `reasoning_content` is ignored, as the DeepSeek API drops it when sent back.
R1_CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "{% if message['role'] == 'system' %}<|system|>{{ message['content'] }}"
    "{% elif message['role'] == 'user' %}<|user|>{{ message['content'] }}"
    "{% elif message['role'] == 'assistant' %}"
    "{% set content = message['content'] | default('', true) %}"
    "{% set reasoning = '' %}"
    "{% if '</think>' in content %}"
    "{% set reasoning = content.split('</think>')[0].strip() %}"
    "{% if reasoning.startswith('<think>') %}{% set reasoning = reasoning[7:].strip() %}{% endif %}"
    "{% set content = content.split('</think>', 1)[1] %}"
    "{% endif %}"
    "<|assistant|><think>\n{{ reasoning }}\n</think>\n{{ content.strip() }}{{ eos_token }}"
    "{% else %}{{ raise_exception('Unknown role: ' + message['role']) }}"
    "{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|><think>\n{% endif %}"
)

# transformers passes these tokenizer attributes to every chat template (when set).
_TEMPLATE_SPECIAL_ATTRS = (
    "bos_token",
    "eos_token",
    "unk_token",
    "sep_token",
    "pad_token",
    "cls_token",
    "mask_token",
)
_REASONING_FIELDS = ("reasoning_content", "thinking", "reasoning")
# roles whose content is someone's text (never template markup): encoded without control tokens
_TEXT_ROLES = ("system", "developer", "user", "tool")
# bounds on one chat-template render (a template is code from the model directory)
TEMPLATE_TIME_LIMIT_S = 2.0
TEMPLATE_MAX_CHARS = 16 * 2**20
_TEMPLATE_MAX_INT_ARG = 10**7  # largest integer a template may pass to a call or repeat a sequence by


class TemplateLimitError(ValueError):
    """A chat template ran past its time or output bound (`TEMPLATE_TIME_LIMIT_S`, `TEMPLATE_MAX_CHARS`)."""


def split_reasoning(text: str) -> tuple[str, str]:
    """Split a completion into (reasoning, answer), both stripped.

    Follows the vLLM/SGLang convention (docs.vllm.ai/en/latest/features/reasoning_outputs/): text before the
    first `</think>` is reasoning, even
    without an opening `<think>` (the generation prompt already holds it); a leading `<think>` is
    removed. Without `</think>` the whole text is reasoning and the answer is "" (no answer yet).
    """
    if not isinstance(text, str):
        return "", ""
    head, sep, tail = text.partition(THINK_END)
    head = head.strip()
    if head.startswith(THINK_START):
        head = head[len(THINK_START) :].strip()
    return head, tail.strip() if sep else ""


def tagged_answer(answer: str) -> str:
    """The final answer inside R1-Zero's `<answer>...</answer>` tags, when `answer` has them, else `answer`.

    `answer` is the text after `</think>` (`split_reasoning`). The last closed block counts (a model
    that corrects itself ends with its final answer); with no closed block, the text after the last
    `<answer>` (a completion cut at its length limit). Stripped.
    """
    start = answer.rfind(ANSWER_START)
    if start < 0:
        return answer.strip()
    end = answer.find(ANSWER_END, start)
    if end < 0:  # the last block is open: fall back to the last closed one, else the open text
        closed = answer.rfind(ANSWER_END, 0, start)
        if closed >= 0:
            start = answer.rfind(ANSWER_START, 0, closed)
            if start >= 0:
                return answer[start + len(ANSWER_START) : closed].strip()
        return answer[answer.rfind(ANSWER_START) + len(ANSWER_START) :].strip()
    return answer[start + len(ANSWER_START) : end].strip()


def ends_in_think(text: str) -> bool:
    """Whether `text` (a rendered prompt) leaves a `<think>` block open: its generation starts in reasoning.

    Works on the text, so the tags may be single added tokens or plain text over several tokens.
    """
    return text.rfind(THINK_START) > text.rfind(THINK_END)


def tag_token_span(ids: Sequence[int], decode, tag: str = THINK_END) -> tuple[int, int] | None:
    """(start, end): the tokens `ids[start:end]` that spell the first `tag` in `decode(ids)`, or None.

    For a tag that is one token this is (i, i + 1); for a tag the tokenizer writes in several pieces
    (`</`, `think`, `>`) it covers all of them: `start` is the most tokens whose text ends before the
    tag begins, `end` the fewest whose text holds the whole tag. Found by bisection over decoded
    prefixes (O(log L) decodes), so it also holds when a piece straddles the tag's boundary.
    """
    ids = list(ids)
    text = decode(ids)
    pos = text.find(tag)
    if pos < 0:
        return None

    def first(ok) -> int:  # smallest n in [0, len(ids)] with ok(n), ok monotone
        lo, hi = 0, len(ids)
        while lo < hi:
            mid = (lo + hi) // 2
            lo, hi = (lo, mid) if ok(mid) else (mid + 1, hi)
        return lo

    end = first(lambda n: tag in decode(ids[:n]))
    start = first(lambda n: len(decode(ids[: n + 1])) > pos) if pos > 0 else 0
    return min(start, end - 1), end


def system_prompt(template: str = "chat", system: str = "") -> str:
    """The system message a conversation gets under a prompt template: `system`, else R1_SYSTEM_PROMPT for
    "r1" and none for "chat"."""
    return system or (R1_SYSTEM_PROMPT if template == "r1" else "")


def prompt_messages(prompt: str, template: str = "chat", system: str = "") -> list[dict[str, str]]:
    """The [system,] user messages of a "chat" or "r1" prompt (`system_prompt` picks the system message)."""
    system = system_prompt(template, system)
    messages = [{"role": "system", "content": system}] if system else []
    return [*messages, {"role": "user", "content": prompt}]


def format_assistant(reasoning: str, answer: str) -> str:
    """Assistant content in the R1 layout: `<think>\\n{reasoning}\\n</think>\\n{answer}`."""
    return f"{THINK_START}\n{reasoning.strip()}\n{THINK_END}\n{answer.strip()}"


def _token_content(value: Any) -> str | None:
    """A special token from tokenizer_config.json: a string or a serialised AddedToken dict."""
    if isinstance(value, dict):
        return value.get("content")
    return value if isinstance(value, str) else None


def _check_integer_args(values) -> None:
    for value in values:
        if isinstance(value, int) and abs(value) > _TEMPLATE_MAX_INT_ARG:
            raise TemplateLimitError(
                f"the chat template passes the integer {value} to a call (limit {_TEMPLATE_MAX_INT_ARG})"
            )


def _guard_integer_args(function):
    """`function` refusing huge integer arguments (`'x'|center(10**9)` allocates a gigabyte)."""
    import functools

    @functools.wraps(function)  # keeps jinja's pass_context / pass_environment marker
    def guarded(*args, **kwargs):
        _check_integer_args((*args, *kwargs.values()))
        return function(*args, **kwargs)

    return guarded


@lru_cache(maxsize=32)
def _compile_template(template: str):
    """Compile a chat template in the same sandboxed Jinja environment transformers uses, bounded."""
    env = _template_environment()
    ast = env.parse(template)
    _bound_template_ast(ast)
    return env.template_class.from_code(env, env.compile(ast), env.make_globals(None), None)


def _template_environment():
    """A fresh bounded sandbox with transformers' template filters and globals."""
    import jinja2.ext

    template_dict, namespace, generation = _template_helper_classes()

    def raise_exception(message):
        raise jinja2.exceptions.TemplateError(message)

    def tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
        return json.dumps(
            x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys
        )

    def strftime_now(fmt):
        return datetime.now().strftime(fmt)

    env = _bounded_sandbox_class()(
        trim_blocks=True, lstrip_blocks=True, extensions=[generation, jinja2.ext.loopcontrols]
    )
    env.filters["tojson"] = tojson
    for name, function in list(env.filters.items()):  # filters are not calls: guard their arguments too
        env.filters[name] = _guard_integer_args(function)
    env.globals["raise_exception"] = raise_exception
    env.globals["strftime_now"] = strftime_now
    env.globals["dict"] = template_dict()
    env.globals["namespace"] = namespace
    env.globals["r1kit_bounded_iter"] = _bounded_iter
    # every `{% for %}` iterates through `_bounded_iter`, so even a loop with an empty body (which
    # runs as plain Python bytecode, calling nothing) checks the render's deadline
    env.globals["r1kit_bounded_concat"] = _bounded_concat
    return env


def _bound_template_ast(ast) -> None:
    """Rewrite a parsed template in place: loops iterate through `_bounded_iter`, `~` goes through
    `_bounded_concat`."""
    import jinja2.nodes

    for loop in ast.find_all(jinja2.nodes.For):
        loop.iter = jinja2.nodes.Call(
            jinja2.nodes.Name("r1kit_bounded_iter", "load"), [loop.iter], [], None, None, lineno=loop.lineno
        )
    # `a ~ b` concatenates in C: a doubling `{% set s = s ~ s %}` would reach gigabytes in 30 steps
    for concat in ast.find_all(jinja2.nodes.Concat):
        concat.nodes = [
            jinja2.nodes.Call(
                jinja2.nodes.Name("r1kit_bounded_concat", "load"), list(concat.nodes), [], None, None
            )
        ]


@lru_cache(maxsize=1)
def _template_helper_classes():
    """(dict, namespace, generation extension) classes for the template environment, defined once
    jinja2 is imported."""
    import jinja2
    import jinja2.ext

    class _TemplateDict:
        """`dict(...)` inside templates, without the type's attributes."""

        def __call__(self, *args, **kwargs):
            return dict(*args, **kwargs)

        def fromkeys(self, *args, **kwargs):
            return dict.fromkeys(*args, **kwargs)

    class _Namespace(jinja2.utils.Namespace):
        """`namespace(...)` that refuses underscore names (as transformers does)."""

        def __init__(*args, **kwargs):
            self, args = args[0], args[1:]
            attrs = dict(*args, **kwargs)
            for name in attrs:
                _Namespace._check(name)
            jinja2.utils.Namespace.__init__(self, attrs)

        def __setitem__(self, name, value):
            _Namespace._check(name)
            jinja2.utils.Namespace.__setitem__(self, name, value)

        @staticmethod
        def _check(name):
            if isinstance(name, str) and name.startswith("_"):
                raise jinja2.exceptions.SecurityError(f"namespace attribute {name!r} is not allowed")

    class _Generation(jinja2.ext.Extension):
        """Accept `{% generation %}...{% endgeneration %}` blocks (transformers' assistant-mask marker)."""

        tags = {"generation"}

        def parse(self, parser):
            lineno = next(parser.stream).lineno
            body = parser.parse_statements(["name:endgeneration"], drop_needle=True)
            return jinja2.nodes.CallBlock(self.call_method("_render"), [], [], body).set_lineno(lineno)

        def _render(self, caller):
            return caller()

    return _TemplateDict, _Namespace, _Generation


@lru_cache(maxsize=1)
def _bounded_sandbox_class():
    """transformers' ImmutableSandboxedEnvironment, bounded; defined once jinja2 is imported."""
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    class _BoundedSandbox(ImmutableSandboxedEnvironment):
        """The sandbox, plus no huge repeats (`'x' * 10**9`), powers or integer arguments (`ljust(10**9)`):
        one C call that allocates gigabytes cannot be interrupted by the render's deadline."""

        intercepted_binops = frozenset({"*", "**", "+"})

        def call_binop(self, context, operator, left, right):
            if operator == "+" and isinstance(left, (str, list, tuple)) and isinstance(right, type(left)):
                _check_size(len(left) + len(right))
            if operator == "*":
                for seq, count in ((left, right), (right, left)):
                    if isinstance(seq, (str, list, tuple)) and isinstance(count, int):
                        _check_size(len(seq) * max(count, 0))
            if operator == "**" and isinstance(left, int) and isinstance(right, int) and abs(left) > 1:
                if right * math.log2(abs(left)) > 4096:
                    raise TemplateLimitError("the chat template computes a power beyond 4096 bits")
            return super().call_binop(context, operator, left, right)

        def call(__self, __context, __obj, *args, **kwargs):  # noqa: N805 (jinja's signature)
            _check_deadline()
            _check_integer_args((*args, *kwargs.values()))
            return ImmutableSandboxedEnvironment.call(__self, __context, __obj, *args, **kwargs)

    return _BoundedSandbox


# .deadline: time.thread_time() (this thread's CPU seconds) by which the current render must end. CPU time,
# not wall time: a render on a loaded machine waits for a core without using its budget.
_RENDER = threading.local()


def _check_deadline() -> None:
    """Raise TemplateLimitError if this thread's template render is past its deadline."""
    deadline = getattr(_RENDER, "deadline", None)
    if deadline is not None and time.thread_time() > deadline:
        raise TemplateLimitError(f"the chat template did not render within {_RENDER.limit:g} CPU seconds")


def _check_size(n: int) -> None:
    if n > TEMPLATE_MAX_CHARS:
        raise TemplateLimitError(f"the chat template builds a value of more than {TEMPLATE_MAX_CHARS} items")


def _bounded_concat(*values):
    """`a ~ b ~ ...` of a template (its Concat node), refusing results beyond `TEMPLATE_MAX_CHARS`."""
    parts = [str(v) for v in values]
    _check_size(sum(map(len, parts)))
    return "".join(parts)


def _bounded_iter(iterable):
    """What every `{% for %}` of a template iterates: the items, checking the render's deadline."""
    for item in iterable:
        _check_deadline()
        yield item


def _render_bounded(template, variables: dict, time_limit_s: float, max_chars: int) -> str:
    """Render a compiled template, raising TemplateLimitError past `time_limit_s` or `max_chars`.

    The deadline is checked at every loop iteration and every call of the template (see
    `_compile_template`), so no template code runs long without a check; one C call that runs long
    (a huge repeat, power or padding) is refused by the sandbox's argument checks instead.
    """
    out: list[str] = []
    size = 0
    outer = getattr(_RENDER, "deadline", None), getattr(_RENDER, "limit", None)
    _RENDER.deadline, _RENDER.limit = time.thread_time() + time_limit_s, time_limit_s
    try:
        for chunk in template.generate(**variables):
            size += len(chunk)
            if size > max_chars:
                raise TemplateLimitError(f"the chat template rendered more than {max_chars} characters")
            out.append(chunk)
    finally:
        _RENDER.deadline, _RENDER.limit = outer
    return "".join(out)


def _template_messages(messages: Sequence[dict]) -> list[dict]:
    """Messages as transformers hands them to a template: None values dropped, reasoning fields aliased."""
    out = []
    for message in messages:
        if not isinstance(message, dict):
            raise TypeError(f"chat messages must be dicts, got {message!r}")
        message = {k: v for k, v in message.items() if v is not None}
        reasoning = next((message[k] for k in _REASONING_FIELDS if message.get(k) is not None), None)
        if reasoning is not None:
            message = {"thinking": reasoning, **message, "reasoning_content": reasoning}
        out.append(message)
    return out


class Tokenizer:
    """A `tokenizers.Tokenizer` with special tokens and a chat template.

    Build one with `Tokenizer.train` (r1kit's byte-level BPE) or `Tokenizer.from_pretrained(dir)`
    (any Hugging Face tokenizer.json directory). Token ids are plain Python ints.
    """

    def __init__(
        self,
        backend: tokenizers.Tokenizer,
        chat_template: str | None = R1_CHAT_TEMPLATE,
        special_tokens: dict[str, str] | None = None,
        model_max_length: int | None = None,
    ):
        """Wrap `backend`.

        special_tokens maps transformers attribute names ("bos_token", "eos_token", "pad_token", ...)
        to token strings; missing ones are None. chat_template is a Jinja string or None.
        """
        self.backend = backend
        self.chat_template = chat_template
        self.special_tokens = {k: v for k, v in (special_tokens or {}).items() if v is not None}
        self.model_max_length = model_max_length
        self.template_time_limit_s = TEMPLATE_TIME_LIMIT_S
        self.template_max_chars = TEMPLATE_MAX_CHARS

    # ----------------------------------------------------------------- training
    @classmethod
    def train(cls, texts: Iterable[str], vocab_size: int = 512, min_frequency: int = 2) -> Tokenizer:
        """Train r1kit's byte-level BPE on an iterable of strings.

        Digits are always single tokens; BOS/EOS/PAD and the chat roles are special tokens with ids
        0..5, `<think>`/`</think>` single tokens with the last two ids. Every byte is in the
        vocabulary, so any text encodes. A small corpus can end below vocab_size (no merges left).
        vocab_size must be at least 264 (256 bytes + 8 special tokens).
        """
        minimum = 256 + len(SPECIAL_TOKENS) + len(THINK_TOKENS)
        if vocab_size < minimum:
            raise ValueError(
                f"vocab_size={vocab_size} is below the minimum {minimum} (256 bytes + special tokens)"
            )
        backend = tokenizers.Tokenizer(models.BPE())
        backend.pre_tokenizer = pre_tokenizers.Sequence(
            [
                pre_tokenizers.Digits(individual_digits=True),
                pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
            ]
        )
        backend.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(
            vocab_size=vocab_size,
            min_frequency=min_frequency,
            special_tokens=[tokenizers.AddedToken(t, special=True, normalized=False) for t in SPECIAL_TOKENS],
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
            show_progress=False,
        )
        backend.train_from_iterator((t for t in texts if isinstance(t, str)), trainer=trainer)
        # The think tags stay visible when decoding with skip_special_tokens (as in DeepSeek-R1's vocabulary).
        backend.add_tokens([tokenizers.AddedToken(t, special=False, normalized=False) for t in THINK_TOKENS])
        return cls(backend, R1_CHAT_TEMPLATE, {"bos_token": BOS, "eos_token": EOS, "pad_token": PAD})

    @classmethod
    def train_from_files(
        cls, paths: Iterable[str | os.PathLike], vocab_size: int = 512, **kwargs
    ) -> Tokenizer:
        """Train on text files, one training text per line."""

        def lines():
            for path in paths:
                with open(path, encoding="utf-8") as f:
                    yield from f

        return cls.train(lines(), vocab_size=vocab_size, **kwargs)

    # ------------------------------------------------------------- save / load
    def save_pretrained(self, directory: str | os.PathLike) -> None:
        """Write tokenizer.json and tokenizer_config.json (with chat_template) into `directory`."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        self.backend.save(str(directory / "tokenizer.json"))
        config: dict[str, Any] = {
            "tokenizer_class": "PreTrainedTokenizerFast",
            "clean_up_tokenization_spaces": False,
            **self.special_tokens,
        }
        if self.model_max_length is not None:
            config["model_max_length"] = self.model_max_length
        if self.chat_template is not None:
            config["chat_template"] = self.chat_template
        with open(directory / "tokenizer_config.json", "w", encoding="utf-8") as f:
            json.dump(config, f, indent=2, ensure_ascii=False)
            f.write("\n")

    @classmethod
    def from_pretrained(cls, directory: str | os.PathLike) -> Tokenizer:
        """Load a Hugging Face tokenizer directory (tokenizer.json + tokenizer_config.json).

        The chat template is read from tokenizer_config.json or chat_template.jinja; special tokens
        from tokenizer_config.json, then special_tokens_map.json.
        """
        directory = Path(directory)
        path = directory / "tokenizer.json"
        if not path.is_file():
            raise FileNotFoundError(f"{path} not found (only tokenizer.json-based tokenizers are supported)")
        backend = tokenizers.Tokenizer.from_file(str(path))
        config: dict[str, Any] = {}
        if (directory / "tokenizer_config.json").is_file():
            with open(directory / "tokenizer_config.json", encoding="utf-8") as f:
                config = json.load(f)
        special_map: dict[str, Any] = {}
        if (directory / "special_tokens_map.json").is_file():
            with open(directory / "special_tokens_map.json", encoding="utf-8") as f:
                special_map = json.load(f)
        special = {}
        for attr in _TEMPLATE_SPECIAL_ATTRS:
            value = _token_content(config.get(attr)) or _token_content(special_map.get(attr))
            if value is not None:
                special[attr] = value
        template = config.get("chat_template")
        if isinstance(template, list):  # [{"name": "default", "template": ...}, ...]
            named = {t.get("name"): t.get("template") for t in template if isinstance(t, dict)}
            template = named.get("default") or next(iter(named.values()), None)
        if template is None and (directory / "chat_template.jinja").is_file():
            template = (directory / "chat_template.jinja").read_text(encoding="utf-8")
        max_len = config.get("model_max_length")
        max_len = int(max_len) if isinstance(max_len, (int, float)) and max_len < 1e12 else None
        return cls(backend, template, special, max_len)

    # ------------------------------------------------------------------ tokens
    @property
    def vocab_size(self) -> int:
        """Number of ids, added tokens included (the embedding table needs at least this many rows)."""
        return self.backend.get_vocab_size(with_added_tokens=True)

    def token_to_id(self, token: str) -> int | None:
        """Id of a token string, or None if it is not in the vocabulary."""
        return self.backend.token_to_id(token)

    def id_to_token(self, token_id: int) -> str | None:
        """Token string of an id, or None."""
        return self.backend.id_to_token(token_id)

    def _special_id(self, attr: str) -> int | None:
        token = self.special_tokens.get(attr)
        return None if token is None else self.token_to_id(token)

    @property
    def bos_id(self) -> int | None:
        """Id of the beginning-of-sequence token (None if the tokenizer has none)."""
        return self._special_id("bos_token")

    @property
    def eos_id(self) -> int | None:
        """Id of the end-of-sequence token that ends an assistant turn."""
        return self._special_id("eos_token")

    @property
    def pad_id(self) -> int | None:
        """Id of the padding token; the EOS id when the tokenizer defines no padding token."""
        pad = self._special_id("pad_token")
        return self.eos_id if pad is None else pad

    @property
    def think_start_id(self) -> int | None:
        """Id of `<think>` when it is a single token, else None."""
        return self.token_to_id(THINK_START)

    @property
    def think_end_id(self) -> int | None:
        """Id of `</think>` when it is a single token, else None."""
        return self.token_to_id(THINK_END)

    def encode(self, text: str, add_bos: bool = False, add_eos: bool = False) -> list[int]:
        """Token ids of `text` (no special tokens added unless asked; the chat template adds BOS)."""
        ids = self.backend.encode(text, add_special_tokens=False).ids
        if add_bos and self.bos_id is not None:
            ids = [self.bos_id, *ids]
        if add_eos and self.eos_id is not None:
            ids = [*ids, self.eos_id]
        return ids

    def added_token_strings(self) -> list[str]:
        """Contents of the added tokens (specials, roles, think tags) of two or more characters."""
        size = self.backend.get_vocab_size(with_added_tokens=True)  # changes when tokens are added
        if getattr(self, "_added_cache", (None,))[0] != size:
            decoder = self.backend.get_added_tokens_decoder()
            self._added_cache = (size, sorted({t.content for t in decoder.values() if len(t.content) > 1}))
        return self._added_cache[1]

    def _text_pieces(self, text: str) -> list[str]:
        """`text` cut one character into every occurrence of an added token's string ([text] if none)."""
        cuts = set()
        for token in self.added_token_strings():
            start = text.find(token)
            while start >= 0:
                cuts.add(start + 1)
                start = text.find(token, start + 1)
        bounds = [0, *sorted(cuts), len(text)]
        return [text[a:b] for a, b in zip(bounds, bounds[1:]) if b > a]

    def encode_text(self, text: str) -> list[int]:
        """Token ids of `text` read as plain text: a typed "<|eos|>" or "<think>" is encoded as its
        characters, never as the added token (so user text cannot forge a turn or end one).

        Text without such a string encodes exactly as `encode`; otherwise each occurrence is cut
        after its first character and the pieces are encoded apart (the decoded text is the same).
        """
        pieces = self._text_pieces(text)
        if len(pieces) <= 1:
            return self.encode(text)
        return [i for ids in self.encode_batch(pieces) for i in ids]

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        """`encode` over a list of texts (parallel in the Rust backend)."""
        return [e.ids for e in self.backend.encode_batch(list(texts), add_special_tokens=False)]

    def decode(self, ids: Sequence[int], skip_special_tokens: bool = False) -> str:
        """Text of token ids; `skip_special_tokens` drops BOS/EOS/PAD/roles but keeps think tags."""
        return self.backend.decode([int(i) for i in ids], skip_special_tokens=skip_special_tokens)

    # -------------------------------------------------------------------- chat
    def apply_chat_template(
        self,
        messages: Sequence[dict],
        add_generation_prompt: bool = False,
        tools: list[dict] | None = None,
        chat_template: str | None = None,
        **kwargs: Any,
    ) -> str:
        """Render `messages` ([{"role", "content"}, ...]) to text, as transformers' apply_chat_template.

        The template sees the same variables: messages, tools, documents, add_generation_prompt,
        the special tokens (bos_token, eos_token, ...), extra kwargs; and the same globals
        (raise_exception, strftime_now, namespace, dict) and the tojson filter.

        Rendering is bounded: past `template_time_limit_s` seconds or `template_max_chars`
        characters it raises TemplateLimitError (a template is code shipped with a model).
        """
        template = chat_template or self.chat_template
        if template is None:
            raise ValueError("this tokenizer has no chat_template; pass chat_template=...")
        variables = {**self.special_tokens, **kwargs}
        variables.setdefault("documents", None)
        variables.update(
            messages=_template_messages(messages), tools=tools, add_generation_prompt=add_generation_prompt
        )
        return _render_bounded(
            _compile_template(template), variables, self.template_time_limit_s, self.template_max_chars
        )

    def render_prompt(self, prompt: str, template: str = "chat", system: str = "") -> str:
        """The text a model continues for a problem's `prompt` (a user message), by `template`:

        - "chat": the model's chat template over [the system message,] the user message, with the
          generation prompt (for r1kit's template the response starts inside `<think>`);
        - "r1": the same with `system` defaulting to R1_SYSTEM_PROMPT, and `<think>\\n` appended
          as text when the generation prompt does not open a thinking block itself (R1's forced start;
          a model without think tokens then writes the tags as text);
        - "r1-zero": R1-Zero's plain-text template (arXiv 2501.12948, Table 1), no chat template;
          `system` replaces its instruction sentence. For base models;
        - "raw": the prompt text itself (`system` is not used);
        - "text": the layout of pretraining documents (`r1kit.train.data.problem_text`): the system
          text and a newline when given, the prompt, a newline. :meth:`prompt_ids` puts BOS before it.
        """
        if template in ("chat", "r1"):
            text = self.apply_chat_template(
                prompt_messages(prompt, template, system), add_generation_prompt=True
            )
            if template == "r1" and not ends_in_think(text):
                text += THINK_START + "\n"  # what `generation_suffix("r1")` gives
            return text
        if template == "r1-zero":
            return R1_ZERO_TEMPLATE.format(instruction=system or R1_ZERO_INSTRUCTION, prompt=prompt)
        if template == "raw":
            return prompt
        if template == "text":
            return (system + "\n" if system else "") + prompt + "\n"
        raise ValueError(f"prompt template must be one of {', '.join(PROMPT_TEMPLATES)}; got {template!r}")

    def generation_suffix(self, template: str = "chat") -> str:
        """Text the "r1" template appends to the chat template's generation prompt: `<think>\\n` when that
        prompt does not already open a thinking block (r1kit's and DeepSeek-R1's do), else "" (and
        always "" for other templates). SFT puts the same text in the prompt part (`encode_chats`), so
        training and inference see the same ids there."""
        if template != "r1":
            return ""
        probe = self.apply_chat_template([{"role": "user", "content": "1+1"}], add_generation_prompt=True)
        return "" if ends_in_think(probe) else THINK_START + "\n"

    def prompt_ids(self, prompt: str, template: str = "chat", system: str = "") -> list[int]:
        """Token ids of :meth:`render_prompt`: BOS first for "text"; for "r1-zero" whatever the tokenizer's
        own post-processor adds to plain text (as `transformers` `tokenizer(text)`: Llama's BOS, nothing for
        SmolLM2 or r1kit's tokenizer); the chat template writes its own."""
        text = self.render_prompt(prompt, template, system)
        if template == "text":
            return self.encode(text, add_bos=True)
        if template == "r1-zero":
            return self.backend.encode(text, add_special_tokens=True).ids
        return self.encode(text)

    def encode_prompt(self, messages: Sequence[dict], add_generation_prompt: bool = True) -> list[int]:
        """Token ids of the rendered chat (with the generation prompt): what the engine feeds the model.

        The template's own markers are control tokens; the content of system, developer, user and
        tool messages is encoded as text (`encode_text`), so a message typing "<|assistant|>" or
        "<|im_end|>" cannot forge a turn. A chat whose text holds no added token's string encodes
        exactly as `encode(apply_chat_template(...))`. Raises ValueError when a message holds such a
        string and the template transforms message content beyond stripping it (its text cannot be
        located in the render), rather than encode it unsafely.
        """
        messages = list(messages)
        text = self.apply_chat_template(messages, add_generation_prompt=add_generation_prompt)
        spans = self._text_spans(messages, text, add_generation_prompt)
        if not spans:
            return self.encode(text)
        return [i for ids in self.encode_batch(_cut_at_spans(text, 0, spans, self._text_pieces)) for i in ids]

    def _text_spans(
        self, messages: list[dict], text: str, add_generation_prompt: bool
    ) -> list[tuple[int, int]]:
        """(start, end) in `text` of each system/user/tool content holding an added token's string."""
        specials = self.added_token_strings()
        risky = [
            i
            for i, m in enumerate(messages)
            if isinstance(m, dict)
            and m.get("role") in _TEXT_ROLES
            and isinstance(m.get("content"), str)
            and any(t in m["content"] for t in specials)
        ]
        if not risky:
            return []
        spans, pos = [], 0
        for piece, is_text in self._locate_contents(messages, risky, text, add_generation_prompt):
            if is_text:
                spans.append((pos, pos + len(piece)))
            pos += len(piece)
        return spans

    def _locate_contents(
        self, messages: list[dict], which: list[int], text: str, add_generation_prompt: bool
    ) -> list[tuple[str, bool]]:
        """`text` (the render of `messages`) cut into [(piece, is message content), ...] for messages `which`.

        The chat is rendered again with each of those contents replaced by an unguessable marker; the
        template text between markers must match `text` around each content (as is, or stripped).
        """
        nonce = secrets.token_hex(8)
        marked = [dict(m) for m in messages]
        for i in which:
            marked[i]["content"] = f"\ue000{nonce}:{i}\ue001"
        render = self.apply_chat_template(marked, add_generation_prompt=add_generation_prompt)
        parts = re.split(f"\ue000{nonce}:(\\d+)\ue001", render)
        templates, indices = parts[0::2], [int(i) for i in parts[1::2]]
        if not indices or not text.startswith(templates[0]):
            raise ValueError(self._unsafe_message(messages, which))
        out, pos = [(templates[0], False)], len(templates[0])
        for k, i in enumerate(indices):
            content, after = messages[i]["content"], templates[k + 1]
            for candidate in (content, content.strip(), content.lstrip(), content.rstrip()):
                if text.startswith(candidate + after, pos):
                    out += [(candidate, True), (after, False)]
                    pos += len(candidate) + len(after)
                    break
            else:
                raise ValueError(self._unsafe_message(messages, which))
        if pos != len(text):
            raise ValueError(self._unsafe_message(messages, which))
        return [(piece, is_text) for piece, is_text in out if piece]

    def _unsafe_message(self, messages: list[dict], which: list[int]) -> str:
        i = which[0]
        token = next(t for t in self.added_token_strings() if t in messages[i]["content"])
        return (
            f"message {i} contains the control-token text {token!r} and this chat template transforms "
            "message content, so it cannot be encoded as plain text; remove that text"
        )

    def encode_chat(self, messages: Sequence[dict]) -> tuple[list[int], list[int]]:
        """Tokenise an SFT conversation: (ids, assistant_mask), two lists of equal length.

        The mask is 1 on the tokens the model generates in each assistant turn: everything after the
        generation prompt (for r1kit's template, after `<|assistant|><think>\\n`) up to and including
        the EOS. Each piece is encoded separately, so the ids at a turn boundary are exactly those of
        `encode_prompt` at inference time. Raises ValueError if the template does not render a chat as
        an extension of its prefixes (e.g. templates that drop earlier turns' reasoning).
        """
        return self.encode_chats([messages])[0]

    def _chat_pieces(self, messages: Sequence[dict], generation_suffix: str = "") -> list[tuple[str, int]]:
        """The text of a chat cut at its assistant spans: [(piece, is_assistant), ...] (see encode_chat);
        `generation_suffix` (the "r1" template's `<think>\\n`) joins each generation prompt when the
        assistant turn starts with it."""
        full = self.apply_chat_template(messages)
        pieces: list[tuple[str, int]] = []
        pos = 0
        for i, message in enumerate(messages):
            if message.get("role") != "assistant":
                continue
            prefix = self.apply_chat_template(messages[:i], add_generation_prompt=True)
            if generation_suffix and full.startswith(prefix + generation_suffix):
                prefix += generation_suffix
            # the last message's render is the full chat: no need to render it twice
            upto = full if i == len(messages) - 1 else self.apply_chat_template(messages[: i + 1])
            if not (upto.startswith(prefix) and full.startswith(upto)):
                raise ValueError(f"chat template is not incremental at message {i}; cannot build a loss mask")
            pieces += [(full[pos : len(prefix)], 0), (full[len(prefix) : len(upto)], 1)]
            pos = len(upto)
        pieces.append((full[pos:], 0))
        return [(text, flag) for text, flag in pieces if text]

    def encode_chats(
        self, conversations: Sequence[Sequence[dict]], generation_suffix: str = ""
    ) -> list[tuple[list[int], list[int]]]:
        """`encode_chat` over many conversations, the pieces encoded in one batch (parallel in Rust).

        generation_suffix: text that inference appends to the generation prompt (`generation_suffix("r1")`);
        where an assistant turn starts with it, it is prompt (mask 0), encoded with the generation
        prompt, so the ids match `prompt_ids(..., "r1")` token for token.
        """
        # each piece becomes one or more texts to encode: system/user text holding an added token's
        # string is cut as in `encode_prompt`, so the prompt ids match inference exactly
        cut: list[list[tuple[list[str], int]]] = []
        for messages in conversations:
            pieces = self._chat_pieces(list(messages), generation_suffix)
            full = "".join(text for text, _ in pieces)
            spans = self._text_spans(list(messages), full, False)
            parts, pos = [], 0
            for text, flag in pieces:
                parts.append((_cut_at_spans(text, pos, spans, self._text_pieces) if spans else [text], flag))
                pos += len(text)
            cut.append(parts)
        encoded = iter(self.encode_batch([t for parts in cut for texts, _ in parts for t in texts]))
        out = []
        for parts in cut:
            ids: list[int] = []
            mask: list[int] = []
            for texts, flag in parts:
                for _ in texts:
                    piece_ids = next(encoded)
                    ids += piece_ids
                    mask += [flag] * len(piece_ids)
            out.append((ids, mask))
        return out


def _cut_at_spans(text: str, offset: int, spans: list[tuple[int, int]], cut_text) -> list[str]:
    """`text` (at `offset` of a larger string) split at the `spans`; the parts inside a span are
    further split by `cut_text` (encoded apart, they cannot form an added token)."""
    out, pos, end = [], offset, offset + len(text)
    for start, stop in spans:
        start, stop = max(start, pos), min(stop, end)
        if start >= stop:
            continue
        out.append(text[pos - offset : start - offset])
        out += cut_text(text[start - offset : stop - offset])
        pos = stop
    out.append(text[pos - offset :])
    return [part for part in out if part]
