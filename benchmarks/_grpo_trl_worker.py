"""TRL side of `bench_grpo_trl.py`: times TRL's GRPOTrainer on the benchmark's model and prompts.

Runs inside the benchmark's own environment (`benchmarks/.venv-trl`, torch + trl from PyPI), never
imports r1kit, and prints one JSON line `{"step_seconds": [...], ...}` on stdout as its last line.

    python benchmarks/_grpo_trl_worker.py --model DIR --prompts prompts.json --steps 8 ...
"""

from __future__ import annotations

import argparse
import json
import os
import time

from _gemm import gemm_profile  # stdlib only; the worker runs with benchmarks/ on its path


def main() -> None:
    """Parse the arguments, train `--steps` GRPO steps with TRL and print the timings as JSON."""
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--model", required=True, help="saved tiny Qwen2 + tokenizer directory")
    ap.add_argument("--prompts", required=True, help="JSON list of prompt strings")
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--prompts-per-step", type=int, default=8)
    ap.add_argument("--group-size", type=int, default=8)
    ap.add_argument("--new-tokens", type=int, default=64)
    ap.add_argument("--lr", type=float, default=1e-5)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    ap.add_argument("--device", default="cpu", help="cpu or cuda")
    ap.add_argument("--precision", default="fp32", help="fp32 or bf16 (TRL's bf16 autocast)")
    ap.add_argument("--out", default="runs/bench_grpo_trl/trl")
    ap.add_argument(
        "--profile-step", type=int, default=0, help="profile this step (1-based; 0: none): its GEMM share"
    )
    args = ap.parse_args()

    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    import torch

    # The reward shared with the r1kit side, imported from the sibling benchmark script (stdlib only).
    from bench_grpo_trl import bench_reward
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, PreTrainedTokenizerFast, TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    if args.threads:
        torch.set_num_threads(args.threads)
    # Not AutoTokenizer: for model_type qwen2 it swaps in Qwen2Tokenizer's byte-level pre-tokenizer.
    tokenizer = PreTrainedTokenizerFast.from_pretrained(args.model)
    model = AutoModelForCausalLM.from_pretrained(args.model, dtype=torch.float32)
    with open(args.prompts) as f:
        prompts = json.load(f)
    dataset = Dataset.from_dict({"prompt": prompts})

    def reward_fn(completions, **kwargs):
        return [bench_reward(c) for c in completions]

    n_completions = args.prompts_per_step * args.group_size
    config = GRPOConfig(
        output_dir=args.out,
        per_device_train_batch_size=n_completions,  # TRL counts completions, not prompts
        num_generations=args.group_size,
        max_completion_length=args.new_tokens,
        generation_kwargs={"min_new_tokens": args.new_tokens},  # exactly new_tokens: EOS suppressed
        temperature=1.0,
        beta=0.0,
        num_iterations=1,
        learning_rate=args.lr,
        lr_scheduler_type="constant",
        max_grad_norm=1.0,
        max_steps=args.steps,
        bf16=args.precision == "bf16",  # TRL's bf16 autocast is ~7x slower on an AVX-512 CPU
        use_cpu=not args.device.startswith("cuda"),
        logging_steps=1,
        save_strategy="no",
        report_to="none",
        seed=0,
        disable_tqdm=True,
        dataloader_num_workers=0,
    )

    step_ends: list[float] = []
    cpu_ends: list[float] = []
    lengths: list[float] = []
    profiled: dict[str, float] = {}
    profiler: list = []

    class StepTimer(TrainerCallback):
        # TRL generates inside the training step (at its first micro-batch), so begin..end spans the
        # whole GRPO step: generation, rewards, log-probs, backward and the optimiser step.
        def on_step_begin(self, args_, state, control, **kwargs):
            if not step_ends:
                step_ends.append(time.perf_counter())
                cpu_ends.append(time.process_time())
            if args.profile_step and state.global_step + 1 == args.profile_step:
                from torch.profiler import ProfilerActivity, profile

                profiler.append(profile(activities=[ProfilerActivity.CPU]))
                profiler[0].__enter__()

        def on_step_end(self, args_, state, control, **kwargs):
            step_ends.append(time.perf_counter())
            cpu_ends.append(time.process_time())
            if profiler and not profiled:
                profiler[0].__exit__(None, None, None)
                profiled.update(gemm_profile(profiler[0]))

        def on_log(self, args_, state, control, logs=None, **kwargs):
            # the completion lengths TRL saw, to check the forced length
            if logs and "completions/mean_length" in logs:
                lengths.append(float(logs["completions/mean_length"]))

    trainer = GRPOTrainer(
        model=model,
        reward_funcs=reward_fn,
        args=config,
        train_dataset=dataset,
        processing_class=tokenizer,
        callbacks=[StepTimer()],
    )
    t0 = time.perf_counter()
    trainer.train()
    total = time.perf_counter() - t0
    step_seconds = [b - a for a, b in zip(step_ends, step_ends[1:])]
    print(
        json.dumps(
            {
                "step_seconds": step_seconds,
                "step_cpu_seconds": [b - a for a, b in zip(cpu_ends, cpu_ends[1:])],
                "total_seconds": total,
                "mean_completion_length": lengths,
                "torch_threads": torch.get_num_threads(),
                "profile": profiled,
                "trl_version": __import__("trl").__version__,
                "torch_version": torch.__version__,
            }
        )
    )


if __name__ == "__main__":
    main()
