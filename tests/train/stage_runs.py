"""Tiny GRPO and logit-distillation runs for the loop tests (seconds on 2 cores), and a torchrun-free
worker that runs them on 2 gloo ranks."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "rl"))  # grpo_fixtures
from grpo_fixtures import make_policy_dir, make_tokenizer  # noqa: E402
from tiny_runs import torchrun_env  # noqa: E402

from r1kit import distill  # noqa: E402
from r1kit.config import load_config  # noqa: E402
from r1kit.model import ModelConfig, Transformer  # noqa: E402
from r1kit.rl import grpo  # noqa: E402
from r1kit.tasks import get_task  # noqa: E402
from r1kit.train.loop import RunConfig, TrainConfig  # noqa: E402
from r1kit.train.pretrain import ModelSection  # noqa: E402

TINY = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1, "num_attention_heads": 2}


def make_teacher(root: Path) -> tuple[Path, Path]:
    """A random tiny teacher (HF layout + tokenizer) and a chat JSONL of 24 solved addition problems."""
    tok = make_tokenizer()
    teacher = root / "teacher"
    torch.manual_seed(0)
    cfg = ModelConfig.preset("tiny-llama", vocab_size=tok.vocab_size, eos_token_id=tok.eos_id, **TINY)
    Transformer(cfg).save_pretrained(teacher)
    tok.save_pretrained(teacher)
    task = get_task("addition", digits=(1, 2))
    traces = root / "traces.jsonl"
    rows = [{"messages": task.sft_messages(p)} for p in task.problems("train", n=24, seed=0)]
    traces.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return teacher, traces


def logits_config(teacher: Path, traces: Path, run_dir: Path, steps: int = 4, **run) -> distill.Config:
    """Logit distillation of a smaller student, 4 conversations per step in micro-batches of 1."""
    return distill.Config(
        teacher=distill.TeacherSection(path=str(teacher)),
        student=ModelSection(preset="tiny-llama", overrides={**TINY, "hidden_size": 16}),
        distill=distill.DistillSection(
            method="logits", files=[str(traces)], max_len=48, temperature=2.0, alpha=0.7
        ),
        train=TrainConfig(
            steps=steps, batch_size=4, micro_batch_size=1, lr=3e-3, warmup_steps=1, device="cpu", threads=1
        ),
        run=RunConfig(dir=str(run_dir), progress=False, **run),
    )


def grpo_config(policy: Path, run_dir: Path, *extra: str) -> grpo.Config:
    """GRPO with a KL term, mu = 2 and accumulation over micro-batches of 3 completions."""
    args = {
        "run.dir": str(run_dir),
        "model.path": str(policy),
        "train.device": "cpu",
        "train.threads": "1",
        "train.steps": "3",
        "run.progress": "false",
        "run.tensorboard": "false",
        "run.plot": "false",
        "data.task_args": "{addition = {digits = 2}}",
        "data.train_problems": "64",
        "rollout.prompts_per_step": "4",
        "rollout.group_size": "4",
        "rollout.max_new_tokens": "12",
        "reward.names": "grpo_fixtures:half_constant_reward",
        "reward.weights": "1.0",
        "loss.beta": "0.02",
        "loss.mu": "2",
        "train.micro_batch_size": "3",
        "train.lr": "1e-3",
        "eval.every": "0",
    }
    tokens = [t for k, v in args.items() for t in (f"--{k}", v)]
    return load_config(grpo.Config, None, tokens + list(extra))


def record_rollouts(policy: Path, root: Path, steps: int = 3) -> Path:
    """Sample the rollouts of `steps` GRPO steps once (single process) and save them, so a 1-rank and a
    2-rank run can train on exactly the same data (sampling itself differs by rank by design)."""
    trainer = grpo.GRPOTrainer(grpo_config(policy, root / "sampler"))
    rollouts = [trainer.collect()[0] for _ in range(steps)]
    path = root / "rollouts.pt"
    torch.save(rollouts, path)
    return path


def replay_rollouts(path: Path) -> None:
    """Make every GRPOTrainer of this process train on the recorded rollouts: at step s, rank r takes
    its contiguous share of the groups of rollout s."""
    rollouts = torch.load(path, weights_only=False)

    def collect(self):
        G = self.config.rollout.group_size
        rollout = rollouts[self.step]
        n = len(rollout) // G
        share = n // self.dist.world_size
        mine = torch.arange(n) // share == self.dist.rank
        stats = {"groups/zero_std_frac": 0.0, "groups/sampling_rounds": 1.0, "time/generate": 0.0}
        stats |= {"time/score": 0.0, "sampled_tokens": 0.0}
        return rollout.select_groups(mine, G), stats

    grpo.GRPOTrainer.collect = collect


STAGE_CASES = (("grpo", "ddp"), ("grpo", "fsdp2"), ("logits", "ddp"))  # (stage, strategy)
GRPO_EVAL = ("--eval.every", "2", "--eval.problems", "4", "--eval.samples", "0")


def stage_worker(rank: int, world_size: int, port: int, root: str) -> None:
    """One rank of a gloo job set up as torchrun would, then one run per case of STAGE_CASES into
    ``root/two/<stage>-<strategy>`` (inputs made beforehand under ``root``)."""
    import torch.distributed as dist

    torchrun_env(rank, world_size, port)
    base = Path(root)
    replay_rollouts(base / "rollouts.pt")
    dist.init_process_group("gloo")  # one group for all cases; the stages leave a group they did not start
    try:
        for stage, strategy in STAGE_CASES:
            run_dir = base / "two" / f"{stage}-{strategy}"
            if stage == "grpo":
                grpo.run(grpo_config(base / "policy", run_dir, "--train.strategy", strategy, *GRPO_EVAL))
            else:
                cfg = logits_config(base / "teacher", base / "traces.jsonl", run_dir)
                cfg.train.strategy = strategy
                distill.run(cfg)
    finally:
        dist.destroy_process_group()


__all__ = [
    "GRPO_EVAL",
    "STAGE_CASES",
    "grpo_config",
    "logits_config",
    "make_policy_dir",
    "make_teacher",
    "record_rollouts",
    "replay_rollouts",
    "stage_worker",
]
