"""The `r1kit` command line: argument parsing only.

`r1kit STAGE [CONFIG.toml] [--section.key value ...]` loads the stage's config dataclass
from the TOML file plus overrides, checks it against the machine and the filesystem
(`r1kit.preflight`) and calls the stage's `run(config)`. A user error (`r1kit.config.UserError`:
a bad key or value, a missing file, a device that is not there, a diverged run) prints one line and
exits with status 2; a traceback means a bug. Stages live in their
own modules and are imported only when called, so `r1kit --help` stays instant.
"""

from __future__ import annotations

import importlib
import sys

# stage name -> (module, one-line help). Each module defines `Config` (a dataclass) and `run(config)`.
STAGES: dict[str, tuple[str, str]] = {
    "demo": ("r1kit.demo", "the whole R1 recipe at toy scale, with a report card"),
    "pretrain": ("r1kit.train.pretrain", "pretrain a model on packed token streams"),
    "sft": ("r1kit.train.sft", "supervised fine-tuning on chat data (loss on assistant tokens)"),
    "grpo": ("r1kit.rl.grpo", "RL with verifiable rewards: GRPO, Dr.GRPO, DAPO, GSPO"),
    "eval": ("r1kit.evaluate", "pass@k, maj@k, best-of-N and budget-forcing curves"),
    "sample": ("r1kit.distill", "rejection sampling: keep only verified-correct traces"),
    "distill": ("r1kit.distill", "distil a teacher's traces or logits into a student"),
    "expert-iteration": ("r1kit.expert_iteration", "the RL control: sample, keep the verified, SFT, repeat"),
    "study": ("r1kit.study", "GRPO against equal-information controls over seeds, one report"),
    "serve": ("r1kit.serve", "OpenAI/DeepSeek-compatible API server with a web chat"),
    "chat": ("r1kit.chat", "terminal chat with a model"),
    "info": ("r1kit.model.info", "parameters, active parameters and FLOPs of a model"),
    "convert": ("r1kit.convert", "a GGUF file or HF directory -> a clean HF directory r1kit loads"),
}

# stages whose module serves several commands name the function to call
RUN_FUNCTIONS = {"sample": "run_sample"}


def usage() -> str:
    """Return the top-level help text."""
    width = max(len(name) for name in STAGES)
    lines = [
        "usage: r1kit STAGE [CONFIG.toml] [--section.key value ...]",
        "",
        "stages:",
        *(f"  {name:<{width}}  {help_}" for name, (_, help_) in STAGES.items()),
        "",
        "`r1kit STAGE --help` lists a stage's config keys and defaults.",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `r1kit` console script. Returns the process exit code."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(usage())
        return 0
    if argv[0] in ("-V", "--version"):
        from r1kit import __version__

        print(f"r1kit {__version__}")
        return 0
    stage, rest = argv[0], argv[1:]
    if stage not in STAGES:
        print(f"r1kit: unknown stage {stage!r}; valid stages: {', '.join(STAGES)}", file=sys.stderr)
        return 2
    module = importlib.import_module(STAGES[stage][0])
    from r1kit.config import UserError, describe_config, load_config

    if "-h" in rest or "--help" in rest:
        print(f"usage: r1kit {stage} [CONFIG.toml] [--section.key value ...]\n")
        print(describe_config(module.Config))
        return 0
    path = None
    if rest and not rest[0].startswith("--"):
        path, rest = rest[0], rest[1:]
    try:
        config = load_config(module.Config, path, rest)
        from r1kit.preflight import preflight

        preflight(stage, config)  # paths, devices, tasks, run directory: before anything is written
        getattr(module, RUN_FUNCTIONS.get(stage, "run"))(config)
    except UserError as err:  # a mistake of the user's: one line, no traceback (those are for bugs)
        print(f"r1kit {stage}: {one_line(err)}", file=sys.stderr)
        return 2
    return 0


def one_line(err: BaseException) -> str:
    """The message of ``err`` on one line (newlines and runs of spaces collapsed)."""
    return " ".join(str(err).split()) or type(err).__name__


if __name__ == "__main__":
    sys.exit(main())
