"""LoRA (`r1kit.lora`): the adapted layer by hand, exact base behaviour with B = 0 and with the adapter off,
the merged directory in transformers and the adapter in peft, and SFT / GRPO / distillation runs that
train only the adapter and resume bit for bit."""

from __future__ import annotations

import json
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

sys.path.insert(0, str(Path(__file__).resolve().parent / "rl"))  # grpo_fixtures
from grpo_fixtures import make_policy_dir  # noqa: E402

from r1kit import lora  # noqa: E402
from r1kit.config import ConfigError, UserError, load_config  # noqa: E402
from r1kit.model import ModelConfig, Transformer  # noqa: E402
from r1kit.train.sections import LoRASection  # noqa: E402

FAMILIES = {
    "llama": dict(num_attention_heads=4, num_key_value_heads=2, attention_bias=True, mlp_bias=True),
    "qwen2": dict(num_attention_heads=4, num_key_value_heads=2, qkv_bias=True, tie_word_embeddings=True),
    "qwen3": dict(num_attention_heads=4, num_key_value_heads=2, head_dim=24, qk_norm=True),
    "deepseek_v3": dict(
        num_attention_heads=4,
        q_lora_rank=16,
        kv_lora_rank=16,
        qk_nope_head_dim=8,
        qk_rope_head_dim=8,
        v_head_dim=8,
        n_routed_experts=4,
        n_shared_experts=1,
        num_experts_per_tok=2,
        moe_intermediate_size=16,
        first_k_dense_replace=1,
        n_group=1,
        topk_group=1,
        num_mtp_layers=0,
    ),
}
ALL_LINEAR = {
    "deepseek_v3": [
        "q_a_proj",
        "q_b_proj",
        "kv_a_proj_with_mqa",
        "o_proj",
        "gate_proj",
        "up_proj",
        "down_proj",
    ],
}


def _model(family: str = "llama", seed: int = 0) -> Transformer:
    torch.manual_seed(seed)
    cfg = ModelConfig(
        family=family,
        vocab_size=96,
        hidden_size=32,
        intermediate_size=48,
        num_hidden_layers=2,
        initializer_range=0.1,
        **FAMILIES[family],
    )
    return Transformer(cfg).eval()


def _section(family: str = "llama", rank: int = 4, alpha: float = 8.0) -> LoRASection:
    return LoRASection(rank=rank, alpha=alpha, targets=ALL_LINEAR.get(family, LoRASection().targets))


@torch.no_grad()
def _randomise_adapters(model: Transformer, seed: int = 1) -> None:
    """Nonzero B (a fresh adapter has B = 0 and changes nothing, so it tests nothing)."""
    gen = torch.Generator().manual_seed(seed)
    for layer in lora.lora_layers(model).values():
        layer.lora_B.copy_(0.2 * torch.randn(layer.lora_B.shape, generator=gen))


def _ids(batch: int = 2, length: int = 7) -> torch.Tensor:
    return torch.randint(0, 96, (batch, length), generator=torch.Generator().manual_seed(3))


def test_adapted_layer_by_hand():
    base = torch.nn.Linear(3, 2)
    layer = lora.LoRALinear(base, rank=2, alpha=6.0)
    with torch.no_grad():
        base.weight.copy_(torch.tensor([[1.0, 0.0, 2.0], [0.0, -1.0, 1.0]]))
        base.bias.copy_(torch.tensor([0.5, -0.5]))
        layer.lora_A.copy_(torch.tensor([[1.0, 1.0, 0.0], [0.0, 0.0, 1.0]]))
        layer.lora_B.copy_(torch.tensor([[1.0, 0.0], [0.0, 2.0]]))
    x = torch.tensor([[1.0, 2.0, 3.0]])
    # base: [1 + 6 + 0.5, -2 + 3 - 0.5] = [7.5, 0.5]; A x = [3, 3]; B A x = [3, 6]; scale 6 / 2 = 3
    expected = torch.tensor([[7.5 + 9.0, 0.5 + 18.0]])
    assert torch.equal(layer(x), expected)
    assert torch.equal(layer.merged_linear()(x), expected)
    assert layer.weight is base.weight  # the base's own tensor, not a copy
    with lora.adapters_disabled(layer):
        assert torch.equal(layer(x), torch.tensor([[7.5, 0.5]]))
    assert layer.enabled


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_fresh_adapter_and_adapter_off_give_the_base_logits_exactly(family):
    base = _model(family)
    adapted = _model(family)
    names = lora.apply_lora(adapted, _section(family))
    assert names and all(n.startswith("model.layers.") for n in names)
    ids = _ids()
    with torch.no_grad():
        want = base(ids)
        assert torch.equal(adapted(ids), want)  # B = 0: x W^T + 0 exactly
        _randomise_adapters(adapted)
        assert (adapted(ids) - want).abs().max() > 1e-3
        with lora.adapters_disabled(adapted):  # GRPO's reference: the base weights, no second copy
            assert torch.equal(adapted(ids), want)
        assert (adapted(ids) - want).abs().max() > 1e-3  # and back on after the block


def test_only_adapters_train_and_kv_b_proj_routed_experts_stay_plain():
    model = _model("deepseek_v3")
    lora.apply_lora(model, _section("deepseek_v3"))
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(n.endswith((".lora_A", ".lora_B")) for n in trainable)
    assert type(model.model.layers[0].self_attn.kv_b_proj) is torch.nn.Linear
    assert "model.layers.1.mlp.shared_experts.gate_proj.lora_A" in trainable
    assert not any(".experts." in n for n in trainable)


def test_adapters_are_drawn_in_module_order():
    """A is drawn layer by layer in module order (never in a set's order, which changes with the hash
    seed), so 2 DDP ranks, a rerun and the single-process run of a comparison draw the same adapters."""
    import math

    model = _model()
    torch.manual_seed(123)
    state = torch.get_rng_state()
    names = lora.apply_lora(model, _section(), seed=7)
    assert torch.equal(torch.get_rng_state(), state)  # its own generator: the global RNG is untouched
    layers = lora.lora_layers(model)
    assert names == list(layers) and len(names) == 14  # 2 blocks x 7 targets, in module order
    generator = torch.Generator().manual_seed(7)
    for name, layer in layers.items():
        expected = torch.empty_like(layer.lora_A)
        torch.nn.init.kaiming_uniform_(expected, a=math.sqrt(5), generator=generator)
        assert torch.equal(layer.lora_A, expected), name


def test_engine_decodes_with_the_adapted_weights():
    """The engine runs the wrapped layers (KV cache, no merge): greedy tokens equal the merged model's."""
    from r1kit.engine import Engine, SamplingParams

    model = _model()
    lora.apply_lora(model, _section())
    _randomise_adapters(model)
    merged = lora.merged_copy(model)
    params = SamplingParams(temperature=0.0, max_new_tokens=12, ignore_eos=True)
    prompts = [[1, 5, 9, 2], [7, 3]]
    got = [c.token_ids for c in Engine(model).generate(prompts, params)]
    want = [c.token_ids for c in Engine(merged).generate(prompts, params)]
    with lora.adapters_disabled(model):
        base = [c.token_ids for c in Engine(model).generate(prompts, params)]
    assert got == want and got != base


def test_bad_targets_are_one_line_user_errors():
    with pytest.raises(ConfigError, match="choose from"):
        LoRASection(rank=4, targets=["kv_b_proj"])
    with pytest.raises(UserError, match=r"match no layer of this llama model; its linear layers are"):
        lora.apply_lora(_model(), LoRASection(rank=4, targets=["q_proj", "q_a_proj"]))
    assert lora.apply_lora(_model(), LoRASection(rank=0)) == []  # off: nothing wrapped, nothing frozen


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_merged_directory_loads_in_transformers_with_the_adapted_logits(family, tmp_path):
    transformers = pytest.importorskip("transformers")
    model = _model(family)
    lora.apply_lora(model, _section(family))
    _randomise_adapters(model)
    lora.merged_copy(model).save_pretrained(tmp_path / "merged")
    assert not (tmp_path / "merged" / lora.ADAPTER_CONFIG).exists()
    hf = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "merged", dtype=torch.float32).eval()
    ids = _ids()
    with torch.no_grad():
        ours = model(ids)
        theirs = hf(input_ids=ids).logits
    torch.testing.assert_close(theirs, ours, rtol=0, atol=1e-5)


@pytest.mark.parametrize("family", ["llama", "qwen2"])
def test_peft_loads_our_adapter_and_we_load_peft_s(family, tmp_path):
    transformers = pytest.importorskip("transformers")
    peft = pytest.importorskip("peft")
    model = _model(family)
    model.save_pretrained(tmp_path / "base")
    lora.apply_lora(model, _section(family, alpha=12.0))
    _randomise_adapters(model)
    lora.save_adapter(model, tmp_path / "adapter", base_model=str(tmp_path / "base"))
    config = json.loads((tmp_path / "adapter" / lora.ADAPTER_CONFIG).read_text())
    assert config["r"] == 4 and config["lora_alpha"] == 12.0 and "q_proj" in config["target_modules"]
    ids = _ids()
    hf = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "base", dtype=torch.float32)
    with torch.no_grad():
        peft_model = peft.PeftModel.from_pretrained(hf, tmp_path / "adapter").eval()
        torch.testing.assert_close(peft_model(input_ids=ids).logits, model(ids), rtol=0, atol=1e-5)
        # the other way: an adapter PEFT writes loads onto our model of the same checkpoint
        peft_model.save_pretrained(tmp_path / "from_peft")
        ours = Transformer.from_pretrained(tmp_path / "base").eval()
        lora.load_adapter(ours, tmp_path / "from_peft")
        assert torch.equal(ours(ids), model(ids))


def test_save_pretrained_keeps_base_and_adapter_apart_and_loads_both(tmp_path):
    model = _model()
    base_state = {k: v.clone() for k, v in model.state_dict().items()}
    lora.apply_lora(model, _section())
    _randomise_adapters(model)
    model.save_pretrained(tmp_path / "ckpt")
    on_disk = load_file(str(tmp_path / "ckpt" / "model.safetensors"))
    assert not any("lora" in k for k in on_disk)
    assert all(torch.equal(on_disk[k], base_state[k]) for k in on_disk)
    loaded = Transformer.from_pretrained(tmp_path / "ckpt").eval()
    assert lora.has_lora(loaded) and torch.equal(loaded(_ids()), model(_ids()))
    lora.merged_copy(model).save_pretrained(tmp_path / "ckpt")  # a plain model over it: no stale adapter
    assert not lora.has_lora(Transformer.from_pretrained(tmp_path / "ckpt"))


# ----------------------------------------------------------------------------------------------
# stages


def _base_dir(root: Path) -> Path:
    """A random tiny llama + tokenizer in HF layout: the model every stage test adapts."""
    return make_policy_dir(root / "base")


def _sft_config(base: Path, run_dir: Path, steps: int = 4, **run):
    from r1kit.train import sft
    from r1kit.train.loop import RunConfig, TrainConfig

    return sft.Config(
        model=sft.ModelSection(init=str(base)),
        data=sft.SFTData(task="addition", task_args={"addition": {"digits": 2}}, num_examples=32, max_len=48),
        train=TrainConfig(
            steps=steps, batch_size=4, micro_batch_size=2, lr=1e-2, warmup_steps=1, device="cpu", threads=1
        ),
        run=RunConfig(dir=str(run_dir), progress=False, plot=False, save_every=2, **run),
        lora=LoRASection(rank=4, alpha=8.0, dropout=0.1),
    )


def _losses(run_dir: Path) -> list[float]:
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [r["loss"] for r in sorted(rows, key=lambda r: r["step"]) if "loss" in r]


def test_sft_with_lora_trains_only_the_adapter_and_exports_merged_and_adapter(tmp_path):
    from r1kit.train import sft
    from r1kit.train.checkpoint import latest_checkpoint

    base = _base_dir(tmp_path)
    base_state = Transformer.from_pretrained(base).state_dict()
    result = sft.run(_sft_config(base, tmp_path / "run"))
    ckpt = latest_checkpoint(tmp_path / "run")
    trained = Transformer.from_pretrained(ckpt).eval()  # base weights + the adapter beside them
    layers = lora.lora_layers(trained)
    assert layers and all(layer.lora_B.abs().max() > 0 for layer in layers.values())
    for name, value in base_state.items():  # every base weight bit-identical after 4 steps
        assert torch.equal(trained.state_dict()[name], value), name
    state = torch.load(ckpt / "trainer_state.pt", weights_only=True)
    params = [p for g in state["optimizer"]["param_groups"] for p in g["params"]]
    assert params and all(str(p).endswith((".lora_A", ".lora_B")) for p in params)
    # run_dir/model: merged, plain, with the adapted logits; run_dir/adapter: the adapter alone
    merged = Transformer.from_pretrained(result.metrics["model_dir"]).eval()
    assert not lora.has_lora(merged)
    ids = _ids()
    with torch.no_grad():
        torch.testing.assert_close(merged(ids), trained(ids), rtol=0, atol=1e-5)
    again = Transformer.from_pretrained(base).eval()
    lora.load_adapter(again, tmp_path / "run" / "adapter")
    assert torch.equal(again(ids), trained(ids))
    config = json.loads((tmp_path / "run" / "adapter" / lora.ADAPTER_CONFIG).read_text())
    assert config["base_model_name_or_path"] == str(base) and config["lora_dropout"] == 0.1


def test_sft_with_lora_resumes_exactly(tmp_path):
    from r1kit.train import sft

    base = _base_dir(tmp_path)
    sft.run(_sft_config(base, tmp_path / "straight"))
    sft.run(_sft_config(base, tmp_path / "split", stop_after=2))
    cfg = _sft_config(base, tmp_path / "split")
    sft.run(replace(cfg, run=replace(cfg.run, resume=True)))
    assert len(_losses(tmp_path / "split")) == 4
    assert _losses(tmp_path / "split") == _losses(tmp_path / "straight")  # dropout RNG included
    a = load_file(str(tmp_path / "split" / "adapter" / lora.ADAPTER_WEIGHTS))
    b = load_file(str(tmp_path / "straight" / "adapter" / lora.ADAPTER_WEIGHTS))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_a_lora_checkpoint_loads_trainable_and_a_stage_starts_from_it_merged(tmp_path):
    model = _model()
    lora.apply_lora(model, _section())
    _randomise_adapters(model)
    model.save_pretrained(tmp_path / "ckpt")  # base + adapter, as in a LoRA run's checkpoints
    loaded = Transformer.from_pretrained(tmp_path / "ckpt").eval()
    assert all(p.requires_grad for p in loaded.parameters())  # loading attaches; stages decide freezing
    with torch.no_grad():
        want = loaded(_ids())
        assert lora.prepare(loaded, LoRASection(rank=0)) == [] and not lora.has_lora(loaded)
        torch.testing.assert_close(loaded(_ids()), want, rtol=0, atol=1e-5)  # full training from the merge
        assert lora.prepare(loaded, _section()) and torch.equal(loaded(_ids()), loaded(_ids()))


def test_pretraining_from_a_model_with_lora_keeps_the_base(tmp_path):
    from r1kit.train import pretrain
    from r1kit.train.loop import RunConfig, TrainConfig

    base = _base_dir(tmp_path)
    cfg = pretrain.Config(
        model=pretrain.ModelSection(init=str(base)),
        data=pretrain.PretrainData(task="addition", num_examples=32, seq_len=32),
        train=TrainConfig(steps=2, batch_size=4, lr=1e-2, warmup_steps=1, device="cpu", threads=1),
        run=RunConfig(dir=str(tmp_path / "pt"), progress=False, plot=False),
        lora=LoRASection(rank=2, targets=["gate_proj", "up_proj", "down_proj"]),
    )
    pretrain.run(cfg)
    ckpt = sorted((tmp_path / "pt" / "checkpoints").glob("step_*"))[-1]
    trained, start = (
        Transformer.from_pretrained(ckpt).state_dict(),
        Transformer.from_pretrained(base).state_dict(),
    )
    assert all(torch.equal(trained[k], v) for k, v in start.items())
    assert any(k.endswith("mlp.down_proj.lora_B") and v.abs().max() > 0 for k, v in trained.items())
    merged = Transformer.from_pretrained(tmp_path / "pt" / "model").state_dict()
    assert not torch.equal(
        merged["model.layers.0.mlp.down_proj.weight"], start["model.layers.0.mlp.down_proj.weight"]
    )
    assert torch.equal(
        merged["model.layers.0.self_attn.q_proj.weight"], start["model.layers.0.self_attn.q_proj.weight"]
    )


def _ddp_worker(rank: int, port: int, root: str) -> None:
    """One of 2 gloo ranks (set up as torchrun would) running the LoRA SFT of `_sft_config` under DDP."""
    import os

    import torch.distributed as dist

    from r1kit.train import sft

    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE="2", MASTER_ADDR="127.0.0.1")
    os.environ["MASTER_PORT"] = str(port)
    torch.set_num_threads(1)
    cfg = _sft_config(Path(root) / "base", Path(root) / "ddp", steps=2)
    dist.init_process_group("gloo")
    try:
        sft.run(replace(cfg, train=replace(cfg.train, strategy="ddp"), lora=replace(cfg.lora, dropout=0.0)))
    finally:
        dist.destroy_process_group()


def test_two_ranks_of_lora_sft_follow_one_rank(tmp_path):
    """DDP with a frozen base: only adapter gradients are all-reduced, and the trajectory is the
    single-process one (same adapters drawn on every rank, losses over the global token count)."""
    import socket

    import torch.multiprocessing as mp

    from r1kit.train import sft

    base = _base_dir(tmp_path)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(_ddp_worker, args=(port, str(tmp_path)), nprocs=2, join=True)
    cfg = _sft_config(base, tmp_path / "one", steps=2)
    sft.run(replace(cfg, lora=replace(cfg.lora, dropout=0.0)))
    one, two = _losses(tmp_path / "one"), _losses(tmp_path / "ddp")
    assert len(one) == 2 and two == pytest.approx(one, rel=1e-5)
    a = load_file(str(tmp_path / "one" / "adapter" / lora.ADAPTER_WEIGHTS))
    b = load_file(str(tmp_path / "ddp" / "adapter" / lora.ADAPTER_WEIGHTS))
    for key in a:
        torch.testing.assert_close(b[key], a[key], rtol=1e-4, atol=1e-5)


def test_lora_config_errors_say_what_to_type():
    from r1kit.rl import grpo
    from r1kit.train import sft

    with pytest.raises(ConfigError, match="set model.init"):
        sft.Config(lora=LoRASection(rank=4))
    with pytest.raises(ConfigError, match="--train.strategy ddp"):
        sft.Config(
            model=sft.ModelSection(init="x"),
            lora=LoRASection(rank=4),
            train=sft.TrainConfig(strategy="fsdp2"),
        )
    with pytest.raises(ConfigError, match="ref_reset_every 0"):
        load_config(grpo.Config, None, ["--lora.rank", "4", "--loss.ref_reset_every", "5"])
    with pytest.raises(ConfigError, match="--train.strategy ddp"):
        load_config(grpo.Config, None, ["--lora.rank", "4", "--model.path", "x", "--train.strategy", "fsdp2"])


def _grpo_config(policy: Path, run_dir: Path, *extra: str):
    from r1kit.rl import grpo

    args = {
        "run.dir": str(run_dir),
        "model.path": str(policy),
        "train.device": "cpu",
        "train.threads": "1",
        "train.steps": "3",
        "train.lr": "1e-2",
        "run.progress": "false",
        "run.plot": "false",
        "data.task_args": "{addition = {digits = 2}}",
        "data.train_problems": "64",
        "rollout.prompts_per_step": "4",
        "rollout.group_size": "4",
        "rollout.max_new_tokens": "12",
        "reward.names": "grpo_fixtures:half_constant_reward",
        "reward.weights": "1.0",
        "loss.beta": "0.05",
        "loss.mu": "2",
        "train.micro_batch_size": "8",
        "eval.every": "0",
        "lora.rank": "4",
        "lora.alpha": "16",
    }
    return load_config(grpo.Config, None, [t for k, v in args.items() for t in (f"--{k}", v)] + list(extra))


def test_grpo_with_lora_keeps_the_base_as_reference_and_resumes_exactly(tmp_path):
    from r1kit.rl import grpo

    base = _base_dir(tmp_path)
    base_state = Transformer.from_pretrained(base).state_dict()
    trainer = grpo.GRPOTrainer(_grpo_config(base, tmp_path / "probe"))
    assert trainer.ref_model is None and trainer.base_reference  # no second copy of the model
    grpo.run(_grpo_config(base, tmp_path / "straight"))
    grpo.run(_grpo_config(base, tmp_path / "split", "--train.steps", "2"))
    grpo.run(_grpo_config(base, tmp_path / "split", "--run.resume", "true"))
    rows = {}
    for line in (tmp_path / "straight" / "metrics.jsonl").read_text().splitlines():
        row = json.loads(line)
        rows.setdefault(row["step"], {}).update(row)
    # step 1's first update: B = 0, the policy is the base, so the KL to the base is exactly 0; after
    # updates the policy moves and the KL to the (adapter-off) reference is positive
    assert rows[1]["kl"] == 0.0 and rows[3]["kl"] > 0 and rows[3]["grad_norm"] > 0
    keys = ("loss", "grad_norm", "kl", "reward/mean")
    split = {}
    for line in (tmp_path / "split" / "metrics.jsonl").read_text().splitlines():
        row = json.loads(line)
        split.setdefault(row["step"], {}).update(row)
    assert {s: {k: r[k] for k in keys} for s, r in split.items() if "loss" in r} == {
        s: {k: r[k] for k in keys} for s, r in rows.items() if "loss" in r
    }
    ckpt = sorted((tmp_path / "straight" / "checkpoints").glob("step_*"))[-1]
    trained = Transformer.from_pretrained(ckpt)
    for name, value in base_state.items():
        assert torch.equal(trained.state_dict()[name], value), name
    assert not lora.has_lora(Transformer.from_pretrained(tmp_path / "straight" / "model"))
    assert (tmp_path / "straight" / "adapter" / lora.ADAPTER_WEIGHTS).is_file()


def test_logit_distillation_with_a_lora_student(tmp_path):
    from r1kit import distill
    from r1kit.tasks import get_task
    from r1kit.train.loop import RunConfig, TrainConfig

    base = _base_dir(tmp_path)  # teacher and the student's starting point at once
    task = get_task("addition", digits=(1, 2))
    traces = tmp_path / "traces.jsonl"
    traces.write_text(
        "".join(
            json.dumps({"messages": task.sft_messages(p)}) + "\n" for p in task.problems("train", n=8, seed=0)
        )
    )
    cfg = distill.Config(
        teacher=distill.TeacherSection(path=str(base)),
        student=distill.ModelSection(init=str(base)),
        distill=distill.DistillSection(
            method="logits", files=[str(traces)], max_len=48, temperature=2.0, alpha=0.5
        ),
        train=TrainConfig(steps=2, batch_size=4, lr=1e-2, warmup_steps=1, device="cpu", threads=1),
        run=RunConfig(dir=str(tmp_path / "kd"), progress=False, plot=False),
        lora=LoRASection(rank=2, targets=["q_proj", "v_proj"]),
    )
    result = distill.run(cfg)
    rows = [json.loads(line) for line in (tmp_path / "kd" / "metrics.jsonl").read_text().splitlines()]
    # the student starts as the teacher: KL 0 at step 1 (B = 0), then the adapter moves it
    assert rows[0]["kl"] == pytest.approx(0.0, abs=1e-7) and rows[-1]["kl"] > 1e-9
    assert (tmp_path / "kd" / "adapter" / lora.ADAPTER_WEIGHTS).is_file()
    merged = Transformer.from_pretrained(result.model_dir)
    assert not lora.has_lora(merged)
