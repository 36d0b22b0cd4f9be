"""Config sections that several stages share, with the same field names and defaults in each.

- :class:`ModelSection` ``[model]`` / ``[student]``: a network to train (a preset, or a model directory
  to start from) — pretrain, SFT, distillation's student.
- :class:`ModelDirSection` ``[model]`` / ``[teacher]``: an existing model to load (a model, run or
  checkpoint directory, plus its tokenizer) — GRPO's policy, eval's model, distillation's teacher.
- :class:`TokenizerSection` ``[tokenizer]``: a tokenizer directory, or the size of one trained on the fly.
- :class:`ValSection` ``[val]``: greedy held-out accuracy with an optional early stop — pretrain, SFT,
  distillation.
- :class:`PromptSection` ``[prompt]``: how a problem becomes the model's prompt (template, system prompt)
  — SFT, GRPO, eval, sample, distillation.
- :data:`DType` and :func:`normalize_dtype`: the one dtype vocabulary ("auto", "float32", "bfloat16",
  "float16"; "fp32", "bf16", "fp16" accepted and normalised). `r1kit.loaders` maps it to torch dtypes;
  ``[train] precision`` speaks it too (:data:`Precision`).
- :class:`LoRASection` ``[lora]``: low-rank adapters instead of full fine-tuning (`r1kit.lora`) — pretrain,
  SFT, GRPO, distillation's student.
- :class:`EngineSection` ``[engine]``: the generation engine's decode settings (compiled step, bf16 head,
  fused weights) — GRPO, eval, sample / distillation, expert iteration, serve.
- :func:`check_task_args`: the one ``task_args`` shape, keyed by task name in every stage
  (``task_args = { addition = { min_digits = 1 } }``).

Nothing heavy is imported here, so `r1kit eval --help` stays instant.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from r1kit.config import ConfigError, check_positive, check_range

__all__ = [
    "DTYPE_ALIASES",
    "DTYPE_NAMES",
    "DType",
    "EngineSection",
    "LORA_TARGETS",
    "LoRASection",
    "ModelDirSection",
    "ModelSection",
    "Precision",
    "PromptSection",
    "TokenizerSection",
    "ValSection",
    "check_task_args",
    "normalize_dtype",
]

# ----------------------------------------------------------------------------------------------
# the dtype vocabulary

DTYPE_NAMES = ("float32", "bfloat16", "float16")
DTYPE_ALIASES = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}
# A config field typed DType is checked when the config loads; normalize_dtype gives the long name.
DType = Literal["auto", "float32", "bfloat16", "float16", "fp32", "bf16", "fp16"]
# [train] precision: the autocast dtype of the matmuls (weights stay float32); float16 would need a loss scaler.
Precision = Literal["auto", "float32", "bfloat16", "fp32", "bf16"]


def normalize_dtype(name: str) -> str:
    """`name` in the one dtype vocabulary: "auto", "float32", "bfloat16" or "float16" (the short aliases
    "fp32", "bf16", "fp16" map to these; case and spaces are ignored). Anything else is a ConfigError
    listing the choices."""
    key = str(name).strip().lower()
    key = DTYPE_ALIASES.get(key, key)
    if key != "auto" and key not in DTYPE_NAMES:
        choices = ", ".join(["auto", *DTYPE_NAMES, *DTYPE_ALIASES])
        raise ConfigError(f"dtype must be one of {choices}; got {name!r}")
    return key


# ----------------------------------------------------------------------------------------------
# the task_args shape


def _inline(value: Any) -> str:
    """``value`` as a TOML inline value, for error messages."""
    from r1kit.config import _toml_value

    return _toml_value(value, "task_args")


def check_task_args(task_args: dict[str, Any], name: str, tasks: list[str] | tuple[str, ...] = ()) -> None:
    """Raise a one-line ConfigError unless ``task_args`` maps task names to tables of keyword arguments
    (``{addition = {min_digits = 1}}``), the one shape every stage reads. A flat table
    (``{min_digits = 1}``) gets the keyed form of the same arguments in the message (keyed by the
    stage's task when it has one, else ``TASK``).
    """
    if any(not isinstance(v, dict) for v in task_args.values()):
        task = tasks[0] if len(tasks) == 1 and tasks[0] else "TASK"
        raise ConfigError(
            f"{name} is keyed by task name: use task_args = {_inline({task: dict(task_args)})} "
            f"(got {_inline(dict(task_args))})"
        )


# ----------------------------------------------------------------------------------------------
# sections


@dataclass
class ModelSection:
    """[model] which network to train.

    preset (str): a ModelConfig preset ("tiny-llama", "tiny-v3"; see r1kit.model.PRESETS) for a random init.
    init (str): start from this model directory (HF layout: config.json + weights) instead; "" = random init.
    overrides (dict): ModelConfig fields replacing the preset's, e.g. {hidden_size = 256, num_hidden_layers = 6};
        vocab_size defaults to the tokenizer's.
    """

    preset: str = "tiny-llama"
    init: str = ""
    overrides: dict[str, Any] = field(default_factory=dict)


@dataclass
class ModelDirSection:
    """[model] / [teacher] an existing model to load.

    path (str): an HF model directory (config.json + safetensors; llama, qwen2, qwen3, deepseek_v3), an
        r1kit run directory (its `model/` or latest checkpoint) or a checkpoint directory.
    tokenizer (str): tokenizer directory; "" = the model's directory or its nearest parent with one.
    """

    path: str = ""
    tokenizer: str = ""


@dataclass
class TokenizerSection:
    """[tokenizer] how text becomes ids.

    path (str): a tokenizer directory (tokenizer.json); "" = the one saved in model.init, else one trained
        on the training texts.
    vocab_size (int): vocabulary of a tokenizer trained on the fly (>= 264: 256 bytes + special tokens).
    """

    path: str = ""
    vocab_size: int = 512


@dataclass
class ValSection:
    """[val] greedy accuracy on held-out problems, logged as val_accuracy, with an optional early stop.

    every (int): validate every N optimiser steps (and at the last step); 0 = never.
    task (str): task of the held-out problems ("" = data.task); its "val" split never overlaps "train".
    task_args (dict): keyword arguments of val.task keyed by its name, e.g. {addition = {digits = 4}}
        (used only with val.task set; with task "" the problems take data.task_args).
    split (str): split the problems come from: "val" (default) or "test".
    problems (int): held-out problems decoded per validation (a fixed set, the same every time).
    max_new_tokens (int): completion cap of the greedy decode.
    target_accuracy (float): stop training (checkpoint + final model) the first time greedy accuracy
        reaches this; 0 = never stop early.
    prompt (str): how a problem is shown: "chat" (the chat template with the generation prompt, as SFT
        trains), "text" (BOS + system + prompt + newline, as pretraining on task text trains) or "auto"
        (chat for SFT, text for pretraining).
    """

    every: int = 0
    task: str = ""
    task_args: dict[str, Any] = field(default_factory=dict)
    split: str = "val"
    problems: int = 64
    max_new_tokens: int = 96
    target_accuracy: float = 0.0
    prompt: str = "auto"

    def __post_init__(self) -> None:
        check_positive(self.every, "val.every", allow_zero=True)
        check_positive(self.problems, "val.problems")
        check_task_args(self.task_args, "val.task_args", [self.task] if self.task else ())
        check_positive(self.max_new_tokens, "val.max_new_tokens")
        check_range(self.target_accuracy, "val.target_accuracy", 0.0, 1.0)
        if self.split not in ("train", "val", "test"):
            raise ConfigError(f"val.split must be 'train', 'val' or 'test', got {self.split!r}")
        if self.prompt not in ("auto", "chat", "text"):
            raise ConfigError(f"val.prompt must be 'auto', 'chat' or 'text', got {self.prompt!r}")


# The templates a user picks (r1kit.tokenizer.PROMPT_TEMPLATES adds "text", pretraining's layout).
PromptTemplate = Literal["chat", "r1", "r1-zero", "raw"]
# SFT trains on conversations, so only the chat-template forms apply to it.
SFT_TEMPLATES = ("chat", "r1")


@dataclass
class PromptSection:
    """[prompt] how a problem is shown to the model (`r1kit.tokenizer.Tokenizer.render_prompt`).

    template (str): "chat" (the model's chat template), "r1" (chat template + R1 system prompt + <think> opened), "r1-zero" (R1-Zero's plain text, base models) or "raw".
        "chat": the chat template with its generation prompt (r1kit's own template opens `<think>`,
        R1's protocol). "r1": the same with a system prompt asking for `<think>...</think>` then the
        answer, and `<think>` opened as text when the template does not (instruct models without think
        tokens). "r1-zero": R1-Zero's plain-text template (arXiv 2501.12948, Table 1), the answer in
        `<answer>` tags (base models; sampling and RL only). "raw": the problem text as is.
    system (str): system prompt; "" = none for "chat", R1's format request for "r1"; for "r1-zero" it replaces the instruction sentence.
    """

    template: PromptTemplate = "chat"
    system: str = ""

    def sft_template(self, stage: str = "sft") -> str:
        """The template SFT conversations are encoded with: "chat" or "r1"; a ConfigError for the
        plain-text templates, which have no conversation to train on."""
        if self.template not in SFT_TEMPLATES:
            raise ConfigError(
                f"{stage} trains on chat conversations: prompt.template must be 'chat' or 'r1', got "
                f"{self.template!r} (use --prompt.template r1 for an instruct model without think tokens)"
            )
        return self.template


# The linear layers of a block LoRA can adapt; our module names are Hugging Face's (the mapping is the
# identity). kv_b_proj is left out: MLA's absorbed decode reads its weight directly.
LORA_TARGETS = (
    "q_proj",
    "k_proj",
    "v_proj",
    "o_proj",
    "gate_proj",
    "up_proj",
    "down_proj",
    "q_a_proj",
    "q_b_proj",
    "kv_a_proj_with_mqa",
)


@dataclass
class LoRASection:
    """[lora] low-rank adapters (LoRA, arXiv 2106.09685) instead of full fine-tuning.

    rank (int): adapter rank r; 0 = off (full fine-tuning), > 0 = base frozen, only adapters train.
        The run's model/ is then the merged model and adapter/ the adapter alone (PEFT's layout).
    alpha (float): the update is scaled by alpha / rank.
    dropout (float): dropout on the adapter's input while training, in [0, 1).
    targets (list[str]): the linear layers adapted in every block, by leaf name (Hugging Face's names).
        Choose from q_proj, k_proj, v_proj, o_proj, gate_proj, up_proj, down_proj (MLA: q_a_proj, q_b_proj,
        kv_a_proj_with_mqa); the MLP names also adapt MoE shared experts, never routed experts.
    """

    rank: int = 0
    alpha: float = 16.0
    dropout: float = 0.0
    targets: list[str] = field(
        default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    )

    def __post_init__(self) -> None:
        check_positive(self.rank, "lora.rank", allow_zero=True)
        if self.rank != int(self.rank):
            raise ConfigError(f"lora.rank must be an integer, got {self.rank!r}")
        check_positive(self.alpha, "lora.alpha")
        check_range(self.dropout, "lora.dropout", 0.0, 0.999)
        unknown = [t for t in self.targets if t not in LORA_TARGETS]
        if unknown:
            raise ConfigError(
                f"lora.targets has {unknown}; choose from {list(LORA_TARGETS)} (the block's linear layers)"
            )
        if self.rank and not self.targets:
            raise ConfigError("lora.targets is empty; name the layers to adapt, e.g. ['q_proj', 'v_proj']")

    def check_stage(self, *, init: str, where: str, strategy: str = "none") -> None:
        """A stage's checks with [lora] on: a pretrained model to adapt (``init``, the key named ``where``)
        and no FSDP2 (ConfigError, one line, saying what to type)."""
        if self.rank == 0:
            return
        if not init:
            raise ConfigError(
                f"lora.rank > 0 adapts a pretrained model: set {where} to a model directory "
                f"(or --lora.rank 0 for full training of a random init)"
            )
        if strategy == "fsdp2":
            raise ConfigError("LoRA trains under train.strategy 'none' or 'ddp'; use --train.strategy ddp")


# r1kit.engine.decode's COMPILE_CHOICES and HEAD_DTYPES (not imported: this module stays torch-free)
ENGINE_COMPILE = ("auto", "on", "off")
ENGINE_HEAD_DTYPES = ("model", "bf16")
ENGINE_FUSE = ("auto", "on", "off")


@dataclass
class EngineSection:
    """[engine] how `r1kit.engine.Engine` decodes (README "Decode step"); the same keys in every stage that
    generates. Greedy tokens are identical for every setting but ``head_dtype = "bf16"``.

    compile (str): the one-token decode step through `torch.compile`: "auto" (where it was measured to
        pay), "on", "off"; "" = the engine's default ($R1KIT_ENGINE_COMPILE, else "auto").
    head_dtype (str): "model" (the output head as loaded) or "bf16" (a bf16 copy of the head for decode:
        faster where bf16 matmul is, e.g. AMX CPUs at a 150k vocabulary; it can change greedy tokens).
    fuse_weights (str): fused q/k/v and gate/up copies for decode: "auto" (on CUDA only; measured within
        1% of separate matmuls on CPUs), "on", "off".
    compact_fraction (float): drop finished rows from the batch once this fraction of it has finished.
    """

    compile: str = ""
    head_dtype: str = "model"
    fuse_weights: str = "auto"
    compact_fraction: float = 0.125

    def __post_init__(self) -> None:
        for key, value, choices in (
            ("compile", self.compile, ("", *ENGINE_COMPILE)),
            ("head_dtype", self.head_dtype, ENGINE_HEAD_DTYPES),
            ("fuse_weights", self.fuse_weights, ENGINE_FUSE),
        ):
            if value not in choices:
                shown = ", ".join(repr(c) for c in choices)
                raise ConfigError(f"engine.{key} must be one of {shown}; got {value!r}")
        check_range(self.compact_fraction, "engine.compact_fraction", 0.0, 1.0)

    def build(self, model: Any, tokenizer: Any = None) -> Any:
        """An `r1kit.engine.Engine` over `model` with these settings."""
        from r1kit.engine import Engine

        fuse = {"auto": None, "on": True, "off": False}[self.fuse_weights]
        return Engine(
            model,
            tokenizer,
            compact_fraction=self.compact_fraction,
            compile=self.compile or None,
            head_dtype=self.head_dtype,
            fuse_weights=fuse,
        )
