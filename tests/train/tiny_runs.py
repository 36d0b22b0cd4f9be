"""Tiny stage configs for the training tests (seconds on 2 cores), and a torchrun-free worker."""

from __future__ import annotations

from r1kit.train import pretrain
from r1kit.train.loop import RunConfig, TrainConfig

TINY_LLAMA = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1, "num_attention_heads": 2}
TINY_V3 = {
    "hidden_size": 32,
    "intermediate_size": 64,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
    "q_lora_rank": 16,
    "kv_lora_rank": 16,
    "qk_nope_head_dim": 8,
    "qk_rope_head_dim": 8,
    "v_head_dim": 8,
    "moe_intermediate_size": 16,
}


def pretrain_config(run_dir, steps: int = 6, moe: bool = False, **train) -> pretrain.Config:
    """A pretraining run of a ~20k-parameter model on 300 addition problems, 8 x 32 tokens per step."""
    return pretrain.Config(
        model=pretrain.ModelSection(
            preset="tiny-v3" if moe else "tiny-llama", overrides=dict(TINY_V3 if moe else TINY_LLAMA)
        ),
        tokenizer=pretrain.TokenizerSection(vocab_size=300),
        data=pretrain.PretrainData(
            task="addition", task_args={"addition": {"max_digits": 3}}, num_examples=300, seq_len=32
        ),
        train=TrainConfig(
            **{
                "steps": steps,
                "batch_size": 8,
                "lr": 3e-3,
                "warmup_steps": 2,
                "device": "cpu",
                **train,
            }
        ),
        run=RunConfig(dir=str(run_dir), progress=False),
    )


def losses(run_dir) -> list[float]:
    """The per-step training losses of a run, in step order."""
    from r1kit.train.log import read_metrics

    return [r["loss"] for r in sorted(read_metrics(run_dir), key=lambda r: r["step"])]


DISTRIBUTED_CASES = (("ddp", False), ("fsdp2", False), ("ddp", True))  # (strategy, MoE model)


def torchrun_env(rank: int, world_size: int, port: int) -> None:
    """Set the environment variables torchrun would set for this rank (one host)."""
    import os

    os.environ.update(
        RANK=str(rank),
        LOCAL_RANK=str(rank),
        WORLD_SIZE=str(world_size),
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
    )


def distributed_worker(rank: int, world_size: int, port: int, root: str) -> None:
    """One rank of a gloo job set up as torchrun would (environment variables), then one 4-step
    pretraining run per case of DISTRIBUTED_CASES into ``root/<strategy>-<dense|moe>``."""
    import torch.distributed as dist

    torchrun_env(rank, world_size, port)
    dist.init_process_group("gloo")  # one group for all cases; the stages leave a group they did not start
    try:
        for strategy, moe in DISTRIBUTED_CASES:
            run_dir = f"{root}/{strategy}-{'moe' if moe else 'dense'}"
            pretrain.run(pretrain_config(run_dir, steps=4, moe=moe, strategy=strategy, threads=1))
    finally:
        dist.destroy_process_group()
