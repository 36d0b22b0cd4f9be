"""The shared training loop: schedule, accumulation, NaN guard, MoE bias updates and the MTP loss."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
import torch
from tiny_runs import TINY_LLAMA, pretrain_config

from r1kit.model import ModelConfig, Transformer
from r1kit.train import loop, pretrain
from r1kit.train.checkpoint import latest_checkpoint, list_checkpoints
from r1kit.train.data import BatchStream, PackedWindows
from r1kit.train.log import read_metrics


def test_warmup_cosine_schedule_and_its_state_round_trip():
    schedule = loop.WarmupSchedule(warmup_steps=4, total_steps=20, kind="cosine", min_ratio=0.1)
    assert [schedule(s) for s in range(4)] == [0.25, 0.5, 0.75, 1.0]
    assert schedule(4) == pytest.approx(1.0) and schedule(20) == pytest.approx(0.1)
    assert loop.WarmupSchedule(2, 20, "constant")(15) == 1.0
    model = torch.nn.Linear(2, 2)
    opt = loop.build_optimizer(model, lr=1.0)
    sched = loop.build_scheduler(opt, 4, 20)
    for _ in range(7):
        opt.step()
        sched.step()
    resumed = loop.build_scheduler(loop.build_optimizer(model, lr=1.0), 4, 20)
    resumed.load_state_dict(sched.state_dict())
    assert resumed.get_last_lr() == sched.get_last_lr()


def test_no_weight_decay_on_vectors():
    model = Transformer(ModelConfig.preset("tiny-llama", **TINY_LLAMA))
    decay, no_decay = loop.build_optimizer(model, lr=1e-3).param_groups
    assert all(p.ndim >= 2 for p in decay["params"]) and all(p.ndim == 1 for p in no_decay["params"])
    assert no_decay["weight_decay"] == 0.0


def _step_with(micro_batch_size: int) -> tuple[float, list[torch.Tensor]]:
    torch.manual_seed(0)
    model = Transformer(ModelConfig.preset("tiny-llama", **TINY_LLAMA))
    windows = PackedWindows(torch.randint(0, 128, (8 * 16 + 1,)), 16)
    micro = BatchStream(windows, batch_size=8, micro_batch_size=micro_batch_size).next_micro_batches()
    n_tok = sum(loop.count_targets(b["targets"])[0] for b in micro)
    opt = torch.optim.SGD(model.parameters(), lr=1.0)  # the update is the (clipped) gradient itself
    stats = loop.train_step(model, opt, micro, lambda m, b: loop.lm_loss(m, b, n_tok), grad_clip=1.0)
    return stats.loss, [p.detach().clone() for p in model.parameters()]


def test_gradient_accumulation_equals_the_full_batch():
    loss_full, params_full = _step_with(micro_batch_size=8)
    loss_acc, params_acc = _step_with(micro_batch_size=2)
    assert loss_acc == pytest.approx(loss_full, rel=1e-6)
    for a, b in zip(params_acc, params_full):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_nan_loss_stops_the_run_and_keeps_the_last_good_checkpoint(tmp_path: Path, monkeypatch):
    real_loss, calls = loop.lm_loss, []

    def poisoned(*args, **kwargs):
        loss, metrics = real_loss(*args, **kwargs)
        calls.append(1)
        return (loss * float("nan") if len(calls) == 3 else loss), metrics  # one micro-batch per step

    monkeypatch.setattr(loop, "lm_loss", poisoned)
    cfg = pretrain_config(tmp_path, steps=6)
    with pytest.raises(loop.NonFiniteLossError, match=r"step 3: the loss is nan.*step_00000002") as err:
        pretrain.run(replace(cfg, run=replace(cfg.run, save_every=2)))
    assert err.value.step == 3
    assert [p.name for p in list_checkpoints(tmp_path)] == ["step_00000002"]  # the bad state was never saved
    good = Transformer.from_pretrained(latest_checkpoint(tmp_path))
    assert all(torch.isfinite(p).all() for p in good.parameters())
    assert max(r["step"] for r in read_metrics(tmp_path)) == 2


def test_moe_bias_moves_every_step_and_mtp_loss_is_added(tmp_path: Path, monkeypatch):
    updates = []
    real_update = Transformer.update_moe_bias

    def spy(self, gamma=1e-3, load=None):
        updates.append(gamma)
        return real_update(self, gamma, load)

    monkeypatch.setattr(Transformer, "update_moe_bias", spy)
    result = pretrain.run(pretrain_config(tmp_path, steps=3, moe=True, moe_bias_gamma=0.01))
    assert updates == [0.01] * 3
    model = Transformer.from_pretrained(result.metrics["model_dir"])
    biases = [m.gate.e_score_correction_bias for m in model.moe_layers()]
    assert biases and all(b.abs().max() > 0 for b in biases)  # moved by +-gamma from zero
    rows = read_metrics(tmp_path)
    for row in rows:
        assert row["moe_load_max"] >= 1.0 >= row["moe_load_min"]
        assert row["mtp_weight"] == 0.3
        assert row["loss"] == pytest.approx(row["lm_loss"] + 0.3 * row["mtp_loss"], rel=1e-5)


def test_mtp_weight_drops_after_the_switch():
    train = loop.TrainConfig(steps=100, mtp_weight=0.3, mtp_weight_final=0.1, mtp_switch=0.7)
    assert loop.mtp_weight_at(69, 100, train) == 0.3 and loop.mtp_weight_at(70, 100, train) == 0.1


def test_run_dir_records_config_metrics_plot_and_cost(tmp_path: Path):
    from r1kit.model.counting import flops_per_token

    cfg = pretrain_config(tmp_path, steps=2)
    result = pretrain.run(replace(cfg, run=replace(cfg.run, dollars_per_hour=3.0)))
    for name in ("config.toml", "metrics.jsonl", "loss.png", "model/config.json", "model/tokenizer.json"):
        assert (tmp_path / name).is_file(), name
    model_cfg = Transformer.from_pretrained(result.model_dir).config
    tokens = 2 * 8 * 32  # steps x sequences x tokens, every position a real token
    # packed windows of T = 32: FLOPs = tokens x flops_per_token(cfg, T) (6N + attention at length T)
    assert result.cost["tokens"] == tokens and result.tokens == tokens
    assert result.cost["flops"] == pytest.approx(tokens * flops_per_token(model_cfg, 32))
    assert result.cost["mfu"] > 0 and result.cost["dollars"] == pytest.approx(
        3.0 * result.cost["device_hours"]
    )
    rows = read_metrics(tmp_path)
    assert [r["tokens"] for r in rows] == [tokens // 2, tokens]  # running totals, per step
    assert rows[-1]["flops"] == pytest.approx(result.cost["flops"])
    for row in rows:
        assert {"tokens_per_s", "mfu", "lr", "grad_norm", "device_hours", "dollars"} <= set(row)
        assert row["dollars"] == pytest.approx(3.0 * row["device_hours"])
    assert 0 < rows[0]["device_hours"] <= rows[1]["device_hours"] <= result.cost["device_hours"]
