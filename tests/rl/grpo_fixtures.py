"""Tiny policies saved in the Hugging Face layout, for the GRPO tests.

`make_policy_dir(path, kind)` writes a random dense ("llama") or MoE ("moe", DeepSeek-V3 shapes
with MTP) model plus a byte-level BPE tokenizer trained on addition problems, so `r1kit grpo`
loads it like any checkpoint.
"""

from __future__ import annotations

from pathlib import Path

import torch

from r1kit.model import ModelConfig, Transformer
from r1kit.tasks import get_task
from r1kit.tokenizer import Tokenizer


def make_tokenizer() -> Tokenizer:
    """A small BPE tokenizer trained on rendered addition chats."""
    task = get_task("addition", digits=(1, 2))
    tok = Tokenizer.train(["0123456789+=\n"], vocab_size=300)
    texts = [tok.apply_chat_template(task.sft_messages(p)) for p in task.problems("train", n=200, seed=0)]
    return Tokenizer.train(texts, vocab_size=300)


def tiny_config(kind: str, vocab_size: int) -> ModelConfig:
    """A ~100k-parameter dense or MoE config."""
    if kind == "moe":
        return ModelConfig.preset(
            "tiny-v3",
            vocab_size=vocab_size,
            hidden_size=64,
            num_hidden_layers=2,
            intermediate_size=128,
            moe_intermediate_size=32,
            n_routed_experts=4,
            num_experts_per_tok=2,
            n_group=2,
            topk_group=1,
        )
    return ModelConfig.preset(
        "tiny-llama",
        vocab_size=vocab_size,
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        intermediate_size=128,
    )


def make_policy_dir(path: str | Path, kind: str = "dense", seed: int = 0) -> Path:
    """Save a random tiny policy (`kind` "dense" or "moe") and its tokenizer to `path`."""
    path = Path(path)
    tok = make_tokenizer()
    torch.manual_seed(seed)
    model = Transformer(tiny_config(kind, tok.vocab_size))
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return path


def half_constant_reward(completion: str, problem) -> float:
    """A reward whose groups are all-equal (0) on problems with an even answer, varied on odd ones."""
    if int(problem.answer) % 2 == 0:
        return 0.0
    return float(len(completion) % 3)


GRPO_TEST_ARGS = {
    "train.device": "cpu",
    "train.threads": "1",
    "train.steps": "2",
    "run.progress": "false",
    "run.tensorboard": "false",
    "data.task_args": "{addition = {digits = 2}}",
    "data.train_problems": "64",
    "rollout.prompts_per_step": "4",
    "rollout.group_size": "4",
    "rollout.max_new_tokens": "12",
    "reward.names": "accuracy,format",
    "reward.weights": "1.0,0.5",
    "loss.beta": "0",
    "train.lr": "1e-3",
    "eval.every": "0",
}


def grpo_test_config(model_dir, run_dir, *extra: str, **overrides: str):
    """A GRPO config that runs in a second or two per step on a CPU: GRPO_TEST_ARGS with `overrides`
    (keys with "__" for "."), then the `extra` command-line tokens."""
    from r1kit.config import load_config
    from r1kit.rl import grpo

    args = {"run.dir": str(run_dir), "model.path": str(model_dir), **GRPO_TEST_ARGS}
    args.update({k.replace("__", "."): v for k, v in overrides.items()})
    tokens = [t for k, v in args.items() for t in (f"--{k}", v)]
    return load_config(grpo.Config, None, tokens + list(extra))
