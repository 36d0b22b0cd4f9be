"""SFT: loss only on assistant tokens, padded batches, greedy validation and early stop."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from tiny_runs import TINY_LLAMA

from r1kit.model import ModelConfig, Transformer
from r1kit.tokenizer import Tokenizer
from r1kit.train import loop, pretrain, sft
from r1kit.train.data import ChatExamples, chat_example, collate
from r1kit.train.log import read_metrics
from r1kit.train.loop import IGNORE_INDEX, RunConfig, TrainConfig
from r1kit.train.pretrain import ModelSection, TokenizerSection
from r1kit.train.sections import PromptSection

#            <bos> user  user  user  <asst> a1    a2   <eos>
IDS = [0, 10, 11, 12, 5, 20, 21, 1]
MASK = [0, 0, 0, 0, 0, 1, 1, 1]


def test_targets_outside_assistant_turns_are_ignored():
    example = chat_example(IDS, MASK, max_len=16)
    assert example["input_ids"].tolist() == IDS[:-1]
    # target t is token t+1, kept only where token t+1 is an assistant token (a1, a2 and the EOS)
    assert example["targets"].tolist() == [IGNORE_INDEX] * 4 + [20, 21, 1]


def test_user_token_targets_have_zero_loss_weight():
    torch.manual_seed(0)
    model = Transformer(ModelConfig.preset("tiny-llama", **TINY_LLAMA))
    batch = collate([chat_example(IDS, MASK, max_len=16)])
    other_user = [0, 90, 91, 92, 5, 20, 21, 1]  # the same conversation with different user tokens as targets
    batch_other = {**batch, "targets": collate([chat_example(other_user, MASK, max_len=16)])["targets"]}
    loss, _ = loop.lm_loss(model, batch, token_norm=3)
    loss_other, _ = loop.lm_loss(model, batch_other, token_norm=3)
    assert loss.item() == loss_other.item()
    # and the gradient with respect to the logits vanishes at every non-assistant position
    logits = model(batch["input_ids"]).detach().requires_grad_(True)
    F.cross_entropy(logits[0], batch["targets"][0], ignore_index=IGNORE_INDEX, reduction="sum").backward()
    assert logits.grad[0, :4].abs().sum() == 0 and logits.grad[0, 4:].abs().sum() > 0


def test_collate_right_pads_with_masked_padding():
    short, long = chat_example(IDS[:5] + [20, 1], MASK[:5] + [1, 1], 16), chat_example(IDS, MASK, 16)
    batch = collate([short, long], pad_id=2)
    assert batch["input_ids"][0].tolist() == IDS[:5] + [20, 2]
    assert batch["targets"][0, -1] == IGNORE_INDEX
    assert batch["attention_mask"].tolist() == [[1] * 6 + [0], [1] * 7]


def test_chat_examples_train_on_exactly_the_assistant_text():
    chat = [
        {"role": "user", "content": "12+34"},
        {"role": "assistant", "content": "<think>\nok\n</think>\n46"},
    ]
    tok = Tokenizer.train(["12+34 ok 46 think"] * 5, vocab_size=300)
    (example,) = ChatExamples([chat], tok, max_len=64).examples
    kept = example["targets"][example["targets"] != IGNORE_INDEX].tolist()
    prompt = tok.encode_prompt(chat[:1])
    full, _ = tok.encode_chat(chat)
    assert kept == full[len(prompt) :]  # everything the model generates after <think>\n, EOS included
    assert tok.decode(kept).endswith("46" + tok.decode([tok.eos_id]))


def _config(run_dir: Path, steps: int, every: int, target: float = 0.0, **data) -> sft.Config:
    return sft.Config(
        model=ModelSection(preset="tiny-llama", overrides=dict(TINY_LLAMA)),
        tokenizer=TokenizerSection(vocab_size=300),
        data=sft.SFTData(
            **{
                "task": "addition",
                "task_args": {"addition": {"max_digits": 2}},
                "num_examples": 200,
                "max_len": 48,
                **data,
            }
        ),
        val=sft.ValSection(every=every, problems=8, max_new_tokens=24, target_accuracy=target),
        train=TrainConfig(steps=steps, batch_size=8, lr=3e-3, warmup_steps=1, device="cpu"),
        run=RunConfig(dir=str(run_dir), progress=False),
    )


def _manual_greedy(model: Transformer, prompt_ids: list[int], eos_id: int, max_new: int) -> list[int]:
    """Greedy decoding without cache or engine: re-run the whole sequence for every token."""
    ids = list(prompt_ids)
    out: list[int] = []
    with torch.no_grad():
        for _ in range(max_new):
            token = int(model(torch.tensor([ids]))[0, -1].argmax())
            out.append(token)
            ids.append(token)
            if token == eos_id:
                break
    return out


def _check_validation(model_dir: Path, val: sft.ValSection, row: dict, prompt_of) -> None:
    """val_accuracy / val_length of a metrics row equal a by-hand greedy decode of the same problems."""
    from r1kit.tasks import get_task

    model = Transformer.from_pretrained(model_dir).eval()
    tok = Tokenizer.from_pretrained(model_dir)
    task = get_task("addition", max_digits=2)
    problems = task.problems(split=val.split, n=val.problems, seed=0)
    outs = [_manual_greedy(model, prompt_of(tok, p), tok.eos_id, val.max_new_tokens) for p in problems]
    texts = [tok.decode([t for t in out if t != tok.eos_id]) for out in outs]
    assert row["val_length"] == pytest.approx(sum(map(len, outs)) / len(outs))
    assert row["val_accuracy"] == pytest.approx(
        sum(task.score(t, p) for t, p in zip(texts, problems)) / len(texts)
    )


def test_sft_validates_with_greedy_decoding(tmp_path: Path):
    cfg = _config(tmp_path, steps=2, every=2)
    result = sft.run(cfg)
    assert 0.0 <= result.metrics["val_accuracy"] <= 1.0 and result.metrics["val_length"] > 0
    row = read_metrics(tmp_path)[-1]
    assert row["val_accuracy"] == result.metrics["val_accuracy"]
    assert result.model_dir == tmp_path / "model" and result.steps == 2 and not result.stopped_early
    assert result.tokens == result.cost["tokens"] > 0 and result.metrics_path == tmp_path / "metrics.jsonl"
    # the chat prompt (template + generation prompt), decoded greedily by the engine
    _check_validation(
        result.model_dir,
        cfg.val,
        row,
        lambda tok, p: tok.encode_prompt([{"role": "user", "content": p.prompt}]),
    )


def test_pretrain_validates_on_text_prompts_and_stops_on_accuracy(tmp_path: Path, monkeypatch):
    from dataclasses import replace

    from tiny_runs import pretrain_config

    cfg = pretrain_config(tmp_path / "pt", steps=4)
    cfg = replace(cfg, val=sft.ValSection(every=2, problems=6, max_new_tokens=16))
    result = pretrain.run(cfg)
    rows = read_metrics(tmp_path / "pt")
    assert [r["step"] for r in rows if "val_accuracy" in r] == [2, 4]
    _check_validation(
        result.model_dir, cfg.val, rows[-1], lambda tok, p: tok.encode(p.prompt + "\n", add_bos=True)
    )

    def fake_validator(val, task_name, task_args, tokenizer, **kwargs):
        assert kwargs["prompt"] == "text" and task_name == "addition"
        return lambda model, step: {"val_accuracy": [0.0, 0.5, 0.2][step // 2 - 1]}  # 0.5 at step 4

    monkeypatch.setattr(pretrain, "greedy_validator", fake_validator)
    cfg = replace(cfg, val=replace(cfg.val, target_accuracy=0.5), train=replace(cfg.train, steps=10))
    result = pretrain.run(replace(cfg, run=replace(cfg.run, dir=str(tmp_path / "stop"))))
    assert (
        result.stopped_early
        and result.steps == 4
        and "val_accuracy 0.500 >= target 0.5" in result.metrics["stop_reason"]
    )
    assert Transformer.from_pretrained(result.model_dir) is not None  # the model at the stopping point


def test_sft_stops_early_on_the_validation_target(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    def fake_validator(val, task_name, task_args, tokenizer, **kwargs):
        assert kwargs["prompt"] == "chat"
        return lambda model, step: {"val_accuracy": step / 10}  # reaches 0.4 at step 4

    monkeypatch.setattr(pretrain, "greedy_validator", fake_validator)
    result = sft.run(_config(tmp_path, steps=20, every=2, target=0.4))
    assert result.metrics["stopped_early"] and result.metrics["steps"] == 4
    assert "val_accuracy 0.400 >= target 0.4" in result.metrics["stop_reason"]
    assert (tmp_path / "checkpoints" / "step_00000004").is_dir()  # the stopping point is saved
    assert [r["val_accuracy"] for r in read_metrics(tmp_path) if "val_accuracy" in r] == [0.2, 0.4]


def test_sft_data_from_a_task_or_a_chat_jsonl(tmp_path: Path):
    import json

    from r1kit.tasks import get_task

    data = sft.SFTData(task="addition", task_args={"addition": {"max_digits": 2}}, num_examples=5, seed=7)
    chats = sft.conversations(data, seed=0, prompt=PromptSection(system="be brief"))
    task = get_task("addition", max_digits=2)
    expected = [task.sft_messages(p) for p in task.problems(split="train", n=5, seed=7)]
    assert chats == [[{"role": "system", "content": "be brief"}, *chat] for chat in expected]
    assert sft.conversations(sft.SFTData(task="addition", num_examples=5), seed=7) == sft.conversations(
        sft.SFTData(task="addition", num_examples=5, seed=7), seed=0
    )  # seed -1 = train.seed
    # the chat JSONL that rejection sampling writes (extra fields are ignored)
    path = tmp_path / "chats.jsonl"
    path.write_text(
        "".join(json.dumps({"messages": c, "task": "addition", "reward": 1.0}) + "\n" for c in expected)
    )
    assert sft.conversations(sft.SFTData(files=[str(path)]), seed=0) == expected
    result = sft.run(_config(tmp_path / "run", steps=2, every=0, files=[str(path)]))
    assert result.steps == 2 and result.tokens > 0
