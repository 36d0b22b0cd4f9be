"""The one training loop: every stage that trains (pretraining, SFT, trace and logit distillation,
the GRPO update) runs through :class:`Trainer`; a stage supplies only its batches and its loss.

- :class:`Stage`: ``batches(step) -> StepWork`` (this rank's micro-batches and the step's tokens and
  FLOPs) and ``loss(model, micro_batch) -> (loss, metrics)``, plus optional hooks (``before_update``,
  ``after_step``, ``validate``, ``should_stop``, ``state_dict``/``load_state_dict``, ``plot``).
- :class:`Trainer`: wrap, optimiser, schedule, updates, MoE bias, checkpoint/resume, metrics,
  TensorBoard, progress bar, cost, validation and stop rules; :class:`LMStage` and :func:`fit` are
  the next-token stage and its entry point.

The pieces it is made of (usable on their own):

- :func:`setup_distributed` / :func:`cleanup_distributed`: torchrun environment → process group
  (nccl on CUDA, gloo on CPU), or a no-op :class:`DistInfo` for a single process.
- :func:`autocast_for`: bf16 autocast where bf16 measures much faster (`r1kit.precision`) (:func:`r1kit.loaders.resolve_device`, which
  maps "auto" to the local CUDA device when there is one, is re-exported here).
- :func:`wrap_model`: ``"none"`` | ``"ddp"`` | ``"fsdp2"`` (``fully_shard`` per block, then the root),
  then optional ``torch.compile``; :func:`unwrap_model` gets the plain Transformer back.
- :func:`build_optimizer` (AdamW, fused/foreach, no decay on 1-D parameters) and
  :func:`build_scheduler` (linear warm-up then cosine or constant, a ``LambdaLR`` so it checkpoints).
- :func:`train_step`: gradient accumulation over micro-batches, DDP/FSDP2 gradient sync only on the
  last one, clipping, the NaN/inf guard (raises :class:`NonFiniteLossError` before the optimiser
  touches the weights), optimiser and scheduler step.
- :func:`lm_loss`, :func:`mtp_weight_at`: next-token cross-entropy normalised by the *global* count of
  target tokens (so 2 ranks x batch b == 1 rank x batch 2b), plus the MTP term
  (DeepSeek-V3, arXiv 2412.19437).
- :func:`moe_balance_step`: the auxiliary-loss-free bias update after each optimiser step, with the
  expert load summed over ranks, returning load-balance metrics.
- :func:`save_training_state` / :func:`restore_training_state`: checkpoints through
  ``r1kit.train.checkpoint`` (model in HF layout, optimizer, scheduler, RNG, data position).
"""

from __future__ import annotations

import contextlib
import functools
import math
import os
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
import torch.distributed as tdist
import torch.nn.functional as F

from r1kit.config import UserError
from r1kit.loaders import resolve_device  # noqa: F401  (re-exported: stages took it from here)
from r1kit.train.checkpoint import unwrap_model  # DDP / torch.compile wrappers -> the plain model
from r1kit.train.sections import Precision, normalize_dtype

IGNORE_INDEX = -100  # target id that carries no loss (padding, prompt and user tokens)


# ----------------------------------------------------------------------------------------------
# configuration sections shared by the supervised stages


@dataclass
class TrainConfig:
    """[train] optimisation, precision and parallelism.

    steps (int): optimiser steps in the whole run (a resumed run continues up to this number).
    batch_size (int): global batch in sequences per optimiser step, summed over ranks and
        accumulation; must be a multiple of world_size x micro_batch_size.
    micro_batch_size (int): sequences per forward/backward on one rank; 0 = batch_size / world_size
        (no accumulation). Accumulation steps = batch_size / (world_size x micro_batch_size).
    lr (float): peak learning rate of AdamW.
    min_lr_ratio (float): final learning rate of the cosine schedule as a fraction of lr.
    warmup_steps (int): linear warm-up steps from 0 to lr.
    schedule (str): "cosine" (warm-up then cosine decay to min_lr_ratio x lr) or "constant".
    weight_decay (float): AdamW decoupled weight decay on matrices (never on norms and biases).
    beta1 (float): AdamW beta1.
    beta2 (float): AdamW beta2.
    eps (float): AdamW epsilon.
    grad_clip (float): clip the global gradient norm to this; 0 = no clipping (the norm is logged).
    device (str): "auto" (the local CUDA device if any, else CPU), "cpu", "cuda", "cuda:1", "mps".
    precision (str): autocast dtype of the matmuls, in the dtype vocabulary of `r1kit.train.sections`:
        "auto" (bfloat16 where a one-time probe finds bf16 matmuls much faster than fp32 — GPUs,
        AMX CPUs — else float32; `r1kit.precision`), "bfloat16" or "float32" ("bf16", "fp32" accepted).
    max_seconds (float): wall-clock budget of the whole run in seconds (resumed segments included; GRPO:
        evaluation included); 0 = none. Whichever of steps and max_seconds comes first ends the run.
    compile (bool): torch.compile the model (worth it for long runs; the first steps are slow).
    activation_checkpointing (bool): recompute each block's activations in backward instead of
        keeping them (:func:`enable_activation_checkpointing`): less memory, ~1/3 more backbone compute.
    strategy (str): "none", "ddp" or "fsdp2"; under torchrun "none" becomes "ddp".
    seed (int): seed of the model initialisation, data order and dropout.
    threads (int): torch CPU threads; 0 = leave torch's default.
    mtp_weight (float): weight lambda of the multi-token-prediction loss at the start
        (DeepSeek-V3, arXiv 2412.19437: 0.3).
    mtp_weight_final (float): lambda after mtp_switch (DeepSeek-V3, arXiv 2412.19437: 0.1).
    mtp_switch (float): fraction of the steps after which lambda drops to mtp_weight_final
        (DeepSeek-V3: the first 10T of 14.8T tokens, about 0.7).
    moe_bias_gamma (float): bias update speed of auxiliary-loss-free balancing
        (DeepSeek-V3, arXiv 2412.19437: 0.001); 0 disables it.
    """

    steps: int = 200
    batch_size: int = 32
    micro_batch_size: int = 0
    lr: float = 1e-3
    min_lr_ratio: float = 0.1
    warmup_steps: int = 20
    schedule: Literal["cosine", "constant"] = "cosine"
    weight_decay: float = 0.1
    beta1: float = 0.9
    beta2: float = 0.95
    eps: float = 1e-8
    grad_clip: float = 1.0
    device: str = "auto"
    precision: Precision = "auto"
    max_seconds: float = 0.0
    compile: bool = False
    activation_checkpointing: bool = False
    strategy: Literal["none", "ddp", "fsdp2"] = "none"
    seed: int = 0
    threads: int = 0
    mtp_weight: float = 0.3
    mtp_weight_final: float = 0.1
    mtp_switch: float = 0.7
    moe_bias_gamma: float = 0.001

    def __post_init__(self) -> None:
        from r1kit.config import ConfigError, check_beta, check_positive, check_range

        check_positive(self.steps, "train.steps")
        check_positive(self.batch_size, "train.batch_size")
        check_positive(self.micro_batch_size, "train.micro_batch_size", allow_zero=True)
        check_positive(self.lr, "train.lr", allow_zero=True)
        check_range(self.min_lr_ratio, "train.min_lr_ratio", 0.0, 1.0)
        check_positive(self.warmup_steps, "train.warmup_steps", allow_zero=True)
        check_positive(self.grad_clip, "train.grad_clip", allow_zero=True)
        check_range(self.mtp_switch, "train.mtp_switch", 0.0, 1.0)
        check_positive(self.moe_bias_gamma, "train.moe_bias_gamma", allow_zero=True)
        check_positive(self.weight_decay, "train.weight_decay", allow_zero=True)
        check_beta(self.beta1, "train.beta1")
        check_beta(self.beta2, "train.beta2")
        check_positive(self.eps, "train.eps")
        check_positive(self.threads, "train.threads", allow_zero=True)
        check_range(self.mtp_weight, "train.mtp_weight", 0.0, None)
        check_range(self.mtp_weight_final, "train.mtp_weight_final", 0.0, None)
        check_positive(self.max_seconds, "train.max_seconds", allow_zero=True)
        self.precision = normalize_dtype(self.precision)
        if self.precision == "float16":
            raise ConfigError(
                "train.precision must be 'auto', 'bfloat16' or 'float32' (float16 needs a loss scaler)"
            )


@dataclass
class RunConfig:
    """[run] where the run lives and how it is recorded.

    dir (str): run directory: config.toml, metrics.jsonl, checkpoints/, loss.png, the final model.
    resume (bool): continue from the latest checkpoint in dir (model, optimizer, scheduler, RNG and
        data position; the loss trajectory equals an uninterrupted run). Without it a run dir that
        already holds checkpoints is refused rather than overwritten.
    save_every (int): save a checkpoint every N optimiser steps (0 = only at the end).
    keep_last (int): checkpoints kept on disk (older ones are deleted after a successful save).
    log_every (int): write a metrics.jsonl row every N steps (and at the end and at an early stop).
    progress (bool): show the rich progress bar (rank 0 only).
    tensorboard (bool): also write TensorBoard events when tensorboard is installed.
    plot (bool): draw the stage's plot at the end (loss.png; GRPO: aha.png).
    dollars_per_hour (float): price of one device-hour for the cost summary; 0 = the cost module's
        default for the device (DeepSeek-V3, arXiv 2412.19437, uses $2 per H800 GPU-hour).
    stop_after (int): end this invocation after optimiser step N with a checkpoint (0 = run to train.steps);
        the schedule still spans train.steps, so a later --run.resume true continues the same run
        (time-sliced or preemptible jobs).
    """

    dir: str = "runs/train"
    resume: bool = False
    save_every: int = 0
    keep_last: int = 2
    log_every: int = 1
    progress: bool = True
    tensorboard: bool = False
    plot: bool = True
    dollars_per_hour: float = 0.0
    stop_after: int = 0

    def __post_init__(self) -> None:
        from r1kit.config import check_positive

        check_positive(self.stop_after, "run.stop_after", allow_zero=True)
        check_positive(self.save_every, "run.save_every", allow_zero=True)
        check_positive(self.keep_last, "run.keep_last")
        check_positive(self.log_every, "run.log_every")
        check_positive(self.dollars_per_hour, "run.dollars_per_hour", allow_zero=True)


# ----------------------------------------------------------------------------------------------
# devices, precision, torch.distributed


@dataclass(frozen=True)
class DistInfo:
    """This process's place in a (possibly single-process) job.

    rank / world_size / local_rank: from torchrun's RANK / WORLD_SIZE / LOCAL_RANK (0 / 1 / 0 alone).
    backend: "nccl" or "gloo" when a process group is up, else None.
    owns_group: True when :func:`setup_distributed` started the group (so the stage should end it).
    """

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    backend: str | None = None
    owns_group: bool = False

    @property
    def is_main(self) -> bool:
        """True on rank 0, which alone writes logs, plots and checkpoints."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        """True when a process group with more than one rank is up."""
        return self.backend is not None and self.world_size > 1


def setup_distributed(device: str = "auto") -> DistInfo:
    """Start the process group when launched by torchrun (``WORLD_SIZE`` > 1), else do nothing.

    The backend is nccl when the job trains on CUDA (``device`` "auto" with CUDA available, or a
    "cuda" device) and gloo otherwise. On CUDA each rank is bound to ``cuda:LOCAL_RANK``.
    Calling it again in a process whose group is already up returns the same information.
    """
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return DistInfo()
    rank = int(os.environ["RANK"])
    local_rank = int(os.environ.get("LOCAL_RANK", rank))
    on_cuda = device.startswith("cuda") or (device == "auto" and torch.cuda.is_available())
    backend = "nccl" if on_cuda else "gloo"
    if on_cuda:
        torch.cuda.set_device(local_rank)
    owns = not tdist.is_initialized()
    if owns:
        tdist.init_process_group(backend=backend)
    return DistInfo(rank, world_size, local_rank, tdist.get_backend(), owns_group=owns)


def cleanup_distributed(dist: DistInfo | None = None) -> None:
    """Destroy the process group if ``dist`` started it (or, with no argument, if one is up)."""
    if dist is not None and not dist.owns_group:
        return
    if tdist.is_available() and tdist.is_initialized():
        tdist.destroy_process_group()


def autocast_for(
    device: torch.device, precision: str = "auto", width: int | None = None
) -> Callable[[], contextlib.AbstractContextManager]:
    """A factory of autocast contexts for ``precision`` on ``device``: bf16 autocast when it resolves to
    bfloat16 ("auto": where bf16 matmuls measure much faster than fp32 at the model's ``width``,
    `r1kit.precision`), else a no-op.

    Weights and optimiser state stay fp32; only the matmuls run in bf16 (attention stays fp32 on CPU).
    """
    from r1kit.precision import autocast_factory

    return autocast_factory(device, precision, width)


def all_reduce_sum(
    values: Sequence[float] | torch.Tensor, dist: DistInfo, device: torch.device
) -> list[float]:
    """Sum a few numbers over ranks (one collective); returns them as Python floats."""
    vec = torch.as_tensor(values, dtype=torch.float64 if device.type == "cpu" else torch.float32)
    vec = vec.to(device)
    if dist.distributed:
        tdist.all_reduce(vec)
    return vec.tolist()


# ----------------------------------------------------------------------------------------------
# wrapping models


def _blocks(model: torch.nn.Module) -> list[torch.nn.Module]:
    """The transformer blocks of a model, MTP block included (the units of FSDP2 sharding)."""
    inner = getattr(model, "model", model)
    blocks = list(getattr(inner, "layers", []))
    return blocks + list(getattr(model, "mtp", []))


def enable_activation_checkpointing(model: torch.nn.Module) -> int:
    """Recompute each transformer block's activations in backward instead of storing them.

    Every block of the (unwrapped) model (MTP block included) becomes an instance of a subclass whose
    forward runs ``torch.utils.checkpoint`` (non-reentrant) while gradients are enabled: only the
    block inputs are kept, and the block runs twice (~1/3 more compute for the backbone). Parameter
    names, state dicts and copies are unchanged; no-grad calls (generation, evaluation) are untouched.
    MoE load counters are restored after the recomputation, so balancing sees each token once.
    Returns the number of blocks changed (idempotent).
    """
    changed = 0
    for block in _blocks(unwrap_model(model)):
        if not getattr(type(block), "_r1kit_checkpointed", False):
            block.__class__ = _checkpointed_class(type(block))
            changed += 1
    return changed


@functools.cache
def _checkpointed_class(cls: type) -> type:
    """``cls`` with a forward under ``torch.utils.checkpoint`` (see :func:`enable_activation_checkpointing`)."""
    from torch.utils.checkpoint import checkpoint

    def forward(self, *args, **kwargs):
        if not torch.is_grad_enabled():
            return cls.forward(self, *args, **kwargs)
        return checkpoint(
            cls.forward,
            self,
            *args,
            use_reentrant=False,
            context_fn=lambda: _recompute_contexts(self),
            **kwargs,
        )

    return type(
        cls.__name__,
        (cls,),
        {
            "forward": forward,
            "_r1kit_checkpointed": True,
            "__doc__": cls.__doc__,
            "__module__": cls.__module__,
        },
    )


def _recompute_contexts(block: torch.nn.Module) -> tuple[Any, Any]:
    """Checkpoint contexts (forward, recompute): the recompute puts MoE load counters back as they were."""
    counters = [m.tokens_per_expert for m in block.modules() if hasattr(m, "tokens_per_expert")]

    @contextlib.contextmanager
    def keep_counters():
        saved = [c.clone() for c in counters]
        try:
            yield
        finally:
            for c, v in zip(counters, saved):
                c.copy_(v)

    return contextlib.nullcontext(), keep_counters()


def wrap_model(
    model: torch.nn.Module,
    strategy: str = "none",
    dist: DistInfo | None = None,
    compile: bool = False,
) -> torch.nn.Module:
    """Prepare a model (already on its device) for data-parallel training.

    Args:
        model: the plain model.
        strategy: "none" (single process), "ddp" (DistributedDataParallel) or "fsdp2"
            (``torch.distributed.fsdp.fully_shard`` on every block, then on the root; the model is
            modified in place and keeps its class). With one process any strategy is a no-op.
        dist: from :func:`setup_distributed`.
        compile: apply ``torch.compile`` after wrapping.

    Returns:
        The module to call in the training step; :func:`unwrap_model` gives the plain model back.
    """
    dist = dist or DistInfo()
    if strategy not in ("none", "ddp", "fsdp2"):
        raise ValueError(f"strategy must be 'none', 'ddp' or 'fsdp2', got {strategy!r}")
    if dist.distributed and strategy == "none":
        strategy = "ddp"
    if dist.distributed and strategy == "ddp":
        from torch.nn.parallel import DistributedDataParallel

        device_ids = [dist.local_rank] if next(model.parameters()).is_cuda else None
        # Buffers (the MoE routing bias and load counters) are kept in sync by moe_balance_step,
        # so DDP must not overwrite the counters of ranks > 0 with rank 0's at every forward.
        model = DistributedDataParallel(model, device_ids=device_ids, broadcast_buffers=False)
    elif dist.distributed and strategy == "fsdp2":
        from torch.distributed.fsdp import fully_shard

        for block in _blocks(model):
            fully_shard(block)
        fully_shard(model)
    if compile:
        model = torch.compile(model)
    return model


@contextlib.contextmanager
def _gradient_sync(model: torch.nn.Module, enabled: bool) -> Iterator[None]:
    """Skip the DDP all-reduce / FSDP2 reduce-scatter on accumulation micro-batches but the last."""
    inner = model._orig_mod if hasattr(model, "_orig_mod") else model
    if enabled:
        if hasattr(inner, "set_requires_gradient_sync"):
            inner.set_requires_gradient_sync(True)
        yield
    elif isinstance(inner, torch.nn.parallel.DistributedDataParallel):
        with inner.no_sync():
            yield
    elif hasattr(inner, "set_requires_gradient_sync"):
        inner.set_requires_gradient_sync(False)
        yield
    else:
        yield


# ----------------------------------------------------------------------------------------------
# optimiser and schedule


def build_optimizer(
    model: torch.nn.Module,
    lr: float,
    weight_decay: float = 0.1,
    betas: tuple[float, float] = (0.9, 0.95),
    eps: float = 1e-8,
    fused: bool | None = None,
) -> torch.optim.AdamW:
    """AdamW with weight decay on matrices only (embeddings and linear weights), not on 1-D
    parameters (norm gains, biases).

    ``fused`` None picks the fused kernel on CPU and CUDA for plain tensors (it is the fastest
    there), and the multi-tensor ``foreach`` path for FSDP2's DTensor parameters.
    """
    params = [p for p in model.parameters() if p.requires_grad]
    decay = [p for p in params if p.ndim >= 2]
    no_decay = [p for p in params if p.ndim < 2]
    groups = [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    if fused is None:
        is_dtensor = any(type(p).__name__ == "DTensor" for p in params)
        fused = not is_dtensor and all(p.device.type in ("cpu", "cuda") for p in params)
    kwargs: dict[str, Any] = {"fused": True} if fused else {"foreach": True}
    return torch.optim.AdamW(groups, lr=lr, betas=betas, eps=eps, **kwargs)


class WarmupSchedule:
    """Learning-rate multiplier: linear warm-up to 1, then cosine to ``min_ratio`` or constant.

    A callable object (not a lambda) so ``LambdaLR.state_dict()`` records it and a resumed
    scheduler continues exactly.
    """

    def __init__(self, warmup_steps: int, total_steps: int, kind: str = "cosine", min_ratio: float = 0.1):
        if kind not in ("cosine", "constant"):
            raise ValueError(f"schedule must be 'cosine' or 'constant', got {kind!r}")
        self.warmup_steps = warmup_steps
        self.total_steps = total_steps
        self.kind = kind
        self.min_ratio = min_ratio

    def __call__(self, step: int) -> float:
        if step < self.warmup_steps:
            return (step + 1) / self.warmup_steps
        if self.kind == "constant":
            return 1.0
        span = max(1, self.total_steps - self.warmup_steps)
        progress = min(1.0, (step - self.warmup_steps) / span)
        return self.min_ratio + (1.0 - self.min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


def build_scheduler(
    optimizer: torch.optim.Optimizer,
    warmup_steps: int,
    total_steps: int,
    kind: str = "cosine",
    min_ratio: float = 0.1,
) -> torch.optim.lr_scheduler.LambdaLR:
    """Warm-up + cosine (or constant) as a ``LambdaLR``; call ``.step()`` once per optimiser step."""
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, WarmupSchedule(warmup_steps, total_steps, kind, min_ratio)
    )


# ----------------------------------------------------------------------------------------------
# one optimiser step


class NonFiniteLossError(UserError, RuntimeError):
    """The loss (or the gradient norm) of a step was NaN or infinite; the step was not applied.

    A :class:`r1kit.config.UserError`: ``r1kit`` prints its one line (what to resume from, with what)
    and exits with status 2.

    Attributes: step (the 1-based step that failed), value (the offending number), what ("loss" or
    "gradient norm"), checkpoint (the last good checkpoint, or None).
    """

    def __init__(self, step: int, value: float, what: str = "loss", checkpoint: Path | str | None = None):
        self.step, self.value, self.what, self.checkpoint = step, value, what, checkpoint
        where = (
            f"the last good checkpoint is {checkpoint}; resume with --run.resume true (maybe with a lower "
            f"--train.lr)"
            if checkpoint
            else "no checkpoint had been saved yet; start again with a lower learning rate"
        )
        super().__init__(
            f"training stopped at step {step}: the {what} is {value} (not finite). The update was not applied "
            f"and nothing was saved; {where}."
        )


@dataclass
class StepStats:
    """What one optimiser step reports.

    loss: the global batch loss (summed contributions over micro-batches and ranks).
    grad_norm: the global gradient norm before clipping.
    lr: the learning rate this step used.
    metrics: other summed contributions returned by the loss function (e.g. ``mtp_loss``).
    """

    loss: float
    grad_norm: float
    lr: float
    metrics: dict[str, float] = field(default_factory=dict)


LossFn = Callable[[torch.nn.Module, Any], tuple[torch.Tensor, dict[str, torch.Tensor]]]


def train_step(
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    micro_batches: Sequence[Any],
    loss_fn: LossFn,
    *,
    scheduler: torch.optim.lr_scheduler.LRScheduler | None = None,
    grad_clip: float = 1.0,
    dist: DistInfo | None = None,
    autocast: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext,
    step: int = 0,
) -> StepStats:
    """Accumulate gradients over this rank's micro-batches, clip, and take one optimiser step.

    Args:
        model: the (possibly wrapped) model; gradients sync only on the last micro-batch.
        optimizer / scheduler: stepped once (the scheduler after the optimiser).
        micro_batches: this rank's share of the global batch, split for accumulation.
        loss_fn: ``loss_fn(model, micro_batch) -> (loss, metrics)`` where ``loss`` is this
            micro-batch's *contribution to the global batch loss* (its summed terms divided by a
            global normaliser, e.g. the target-token count over all ranks and micro-batches), so
            that the contributions of all micro-batches and ranks add up to the batch loss. Metrics
            are contributions of the same kind (summed, detached). DDP/FSDP average gradients over
            ranks, so the backward pass scales the loss by the world size.
        grad_clip: max global gradient norm; 0 disables clipping.
        dist: from :func:`setup_distributed` (None = single process).
        autocast: a factory of the autocast context (:func:`autocast_for`).
        step: the 1-based number of this step, for error messages.

    Returns:
        :class:`StepStats`. Raises :class:`NonFiniteLossError` — on every rank, before the optimiser
        changes anything — when the loss or the gradient norm is NaN/inf.
    """
    dist = dist or DistInfo()
    device = next(model.parameters()).device
    loss_sum = torch.zeros((), device=device, dtype=torch.float32)
    metric_sums: dict[str, torch.Tensor] = {}
    for i, micro_batch in enumerate(micro_batches):
        last = i == len(micro_batches) - 1
        with _gradient_sync(model, enabled=last):
            with autocast():
                loss, metrics = loss_fn(model, micro_batch)
            (loss * dist.world_size).backward()
        loss_sum += loss.detach().float()
        for name, value in metrics.items():
            metric_sums[name] = metric_sums.get(name, 0.0) + value.detach().float()
    names = list(metric_sums)
    totals = torch.stack([loss_sum, *(metric_sums[n].reshape(()) for n in names)])
    if dist.distributed:
        tdist.all_reduce(totals)
    totals = totals.tolist()
    loss_value = totals[0]
    if not math.isfinite(loss_value):
        optimizer.zero_grad(set_to_none=True)
        raise NonFiniteLossError(step, loss_value, "loss")
    max_norm = grad_clip if grad_clip > 0 else float("inf")
    grad_norm = torch.nn.utils.clip_grad_norm_(
        [p for p in model.parameters() if p.grad is not None], max_norm
    )
    if hasattr(grad_norm, "full_tensor"):  # FSDP2: a DTensor
        grad_norm = grad_norm.full_tensor()
    grad_norm = float(grad_norm)
    if not math.isfinite(grad_norm):
        optimizer.zero_grad(set_to_none=True)
        raise NonFiniteLossError(step, grad_norm, "gradient norm")
    lr = optimizer.param_groups[0]["lr"]
    optimizer.step()
    if scheduler is not None:
        scheduler.step()
    optimizer.zero_grad(set_to_none=True)
    return StepStats(loss=loss_value, grad_norm=grad_norm, lr=lr, metrics=dict(zip(names, totals[1:])))


# ----------------------------------------------------------------------------------------------
# language-model loss, MTP, MoE balancing


def head_weight(model: torch.nn.Module) -> torch.Tensor | None:
    """The (V, D) head matrix of a plain or wrapped model for the chunked head losses
    (`r1kit.rl.losses.head_logprobs`), or None when they cannot use it (no ``lm_head``, or a head
    sharded by FSDP2, whose weight is only whole inside the model's own forward)."""
    plain = unwrap_model(model)
    head = getattr(plain, "lm_head", None)
    if head is None or not hasattr(plain, "hidden_states"):
        return None
    weight = head.weight
    if type(weight).__name__ == "DTensor" or type(weight.data).__name__ == "DTensor":
        return None
    return weight


def final_hidden(
    model: torch.nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None
) -> torch.Tensor:
    """(B, T, D) hidden states after the final norm, without the (B, T, V) head.

    A plain model runs ``hidden_states``; a wrapped one (DDP, ``torch.compile``) runs its own forward
    so the wrapper's hooks and graph apply, keeping the head to one position per row (``logits_to_keep``).
    """
    plain = unwrap_model(model)
    if plain is model:
        return plain.hidden_states(input_ids, attention_mask=attention_mask)
    _, hidden = model(input_ids, attention_mask=attention_mask, return_hidden=True, logits_to_keep=1)
    return hidden


def mtp_weight_at(step: int, total_steps: int, train: TrainConfig) -> float:
    """The MTP loss weight lambda at 0-based ``step``: mtp_weight, then mtp_weight_final after
    ``mtp_switch`` x total_steps (DeepSeek-V3, arXiv 2412.19437: 0.3 then 0.1)."""
    return train.mtp_weight if step < train.mtp_switch * total_steps else train.mtp_weight_final


def has_mtp(model: torch.nn.Module) -> bool:
    """Whether the (unwrapped) model has a multi-token-prediction block."""
    cfg = getattr(unwrap_model(model), "config", None)
    return int(getattr(cfg, "num_mtp_layers", 0) or 0) > 0


def count_targets(targets: torch.Tensor) -> tuple[int, int]:
    """(next-token targets, MTP targets) that carry loss in a (B, T) target tensor.

    MTP at position t predicts token t+2, i.e. ``targets[:, t+1]``, so its targets are
    ``targets[:, 1:]``.
    """
    valid = targets != IGNORE_INDEX
    return int(valid.sum()), int(valid[:, 1:].sum())


def lm_loss(
    model: torch.nn.Module,
    batch: dict[str, torch.Tensor],
    token_norm: float,
    mtp_norm: float = 1.0,
    mtp_weight: float = 0.0,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Next-token cross-entropy (+ lambda x MTP cross-entropy) as a contribution to a global mean.

    Args:
        model: called as ``model(input_ids, attention_mask=..., return_mtp=...)``.
        batch: ``input_ids`` (B, T) long, ``targets`` (B, T) long with :data:`IGNORE_INDEX` where no
            loss is taken (the token after position t, or ignored), optional ``attention_mask`` (B, T).
        token_norm: the number of loss-carrying targets in the *global* batch (all micro-batches and
            ranks); the returned loss is this micro-batch's summed loss divided by it.
        mtp_norm: the same count for the MTP targets ``targets[:, 1:]``.
        mtp_weight: lambda; 0 skips the MTP head even when the model has one.

    Returns:
        (loss, metrics) with metrics ``lm_loss`` (and ``mtp_loss``) as contributions to their
        global means, for :func:`train_step`.
    """
    input_ids_BT, targets_BT = batch["input_ids"], batch["targets"]
    mask = batch.get("attention_mask")
    weight = head_weight(model) if mtp_weight <= 0 else None
    if weight is not None:
        # the head in chunks over the labelled positions only: no (B, T, V) logits (r1kit.rl.losses)
        from r1kit.rl.losses import head_cross_entropy

        hidden_BTD = final_hidden(model, input_ids_BT, attention_mask=mask)
        lm_sum, mtp_logits_BTV = (
            head_cross_entropy(hidden_BTD, weight, targets_BT, ignore_index=IGNORE_INDEX),
            None,
        )
    else:
        if mtp_weight > 0:
            logits_BTV, mtp_logits_BTV = model(input_ids_BT, attention_mask=mask, return_mtp=True)
        else:
            logits_BTV, mtp_logits_BTV = model(input_ids_BT, attention_mask=mask), None
        vocab = logits_BTV.shape[-1]
        lm_sum = F.cross_entropy(
            logits_BTV.reshape(-1, vocab), targets_BT.reshape(-1), ignore_index=IGNORE_INDEX, reduction="sum"
        )
    lm = lm_sum / token_norm
    metrics = {"lm_loss": lm.detach()}
    loss = lm
    if mtp_logits_BTV is not None:
        mtp_sum = F.cross_entropy(
            mtp_logits_BTV.reshape(-1, mtp_logits_BTV.shape[-1]),
            targets_BT[:, 1:].reshape(-1),
            ignore_index=IGNORE_INDEX,
            reduction="sum",
        )
        mtp = mtp_sum / max(mtp_norm, 1.0)
        metrics["mtp_loss"] = mtp.detach()
        loss = loss + mtp_weight * mtp
    return loss, metrics


def moe_balance_step(model: torch.nn.Module, gamma: float, dist: DistInfo | None = None) -> dict[str, float]:
    """Auxiliary-loss-free balancing after an optimiser step (DeepSeek-V3, arXiv 2412.19437), with load
    metrics.

    Sums each expert's token count over ranks (so every rank applies the same bias update), then
    calls ``model.update_moe_bias(gamma, load)``, which moves each expert's bias by gamma against
    the sign of its load error and resets the counters. A model without MoE layers returns ``{}``.

    Returns:
        ``moe_load_max`` / ``moe_load_min``: the largest / smallest expert load divided by the mean
        load, averaged over MoE layers (1.0 = perfectly balanced; what the bias drives towards).
    """
    core = unwrap_model(model)
    if not hasattr(core, "expert_load") or not hasattr(core, "update_moe_bias"):
        return {}
    load_LE = core.expert_load()
    if load_LE.numel() == 0:
        return {}
    if dist is not None and dist.distributed:
        tdist.all_reduce(load_LE)
    load_f = load_LE.float()
    mean_L1 = load_f.mean(dim=1, keepdim=True).clamp_min(1e-9)
    metrics = {
        "moe_load_max": float((load_f.max(dim=1, keepdim=True).values / mean_L1).mean()),
        "moe_load_min": float((load_f.min(dim=1, keepdim=True).values / mean_L1).mean()),
    }
    core.update_moe_bias(gamma, load_LE)  # gamma 0 only resets the counters
    return metrics


# ----------------------------------------------------------------------------------------------
# checkpoints of the whole training state


class _ExportedModel:
    """What a checkpoint stores as its model: the plain model's HF files plus the tokenizer's.

    For FSDP2 the sharded parameters are gathered into a CPU copy first (rank 0 writes it).
    """

    def __init__(self, model: torch.nn.Module, tokenizer: Any = None):
        self.model, self.tokenizer = model, tokenizer

    def save_pretrained(self, directory: str | Path) -> None:
        self.model.save_pretrained(directory)
        if self.tokenizer is not None:
            self.tokenizer.save_pretrained(directory)


class _FullOptimizerState:
    """Optimizer state with parameters named by their model path (works for plain, DDP and FSDP2)."""

    def __init__(self, model: torch.nn.Module, optimizer: torch.optim.Optimizer):
        self.model, self.optimizer = model, optimizer

    def state_dict(self) -> dict[str, Any]:
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict

        options = StateDictOptions(full_state_dict=True, cpu_offload=True)
        return get_optimizer_state_dict(self.model, self.optimizer, options=options)

    def load_state_dict(self, state: dict[str, Any]) -> None:
        from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

        groups = state.get("param_groups") or [{}]
        if not _is_sharded(self.model) and isinstance((groups[0].get("params") or ["?"])[0], int):
            # parameters by index: a plain optimizer.state_dict() (GRPO checkpoints before the one loop)
            self.optimizer.load_state_dict(state)
            return
        set_optimizer_state_dict(
            self.model, self.optimizer, state, options=StateDictOptions(full_state_dict=True)
        )


def _is_sharded(model: torch.nn.Module) -> bool:
    return any(type(p).__name__ == "DTensor" for p in model.parameters())


def _plain_copy(model: torch.nn.Module) -> torch.nn.Module:
    """The model itself, or for FSDP2 a CPU copy with the full (gathered) weights; a collective."""
    if not _is_sharded(model):
        return model
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    full = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    if not full:  # ranks > 0 get an empty dict and never write
        return model
    copy = type(model)(model.config)
    copy.load_state_dict(full)
    return copy


def _load_model_weights(model: torch.nn.Module, directory: Path) -> None:
    """Load HF-layout weights from ``directory`` into a plain, DDP-wrapped or FSDP2-sharded model."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict

    loaded = type(model).from_pretrained(directory)
    set_model_state_dict(model, loaded.state_dict(), options=StateDictOptions(full_state_dict=True))


def save_training_state(
    run_dir: Path,
    step: int,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    extra: dict[str, Any],
    dist: DistInfo,
    tokenizer: Any = None,
    keep_last: int = 2,
) -> Path | None:
    """Checkpoint model (HF layout, + tokenizer), optimizer, scheduler, RNG and ``extra`` at ``step``.

    Every rank must call it (FSDP2 gathers shards); rank 0 writes atomically through
    ``r1kit.train.checkpoint.save_checkpoint`` and the others wait. Returns the directory on rank 0.
    """
    core = unwrap_model(model)
    exported = _ExportedModel(_plain_copy(core), tokenizer)
    optim_state = _FullOptimizerState(core, optimizer)
    path = None
    if dist.is_main:
        from r1kit.train.checkpoint import save_checkpoint

        path = save_checkpoint(
            run_dir,
            step,
            model=exported,
            optimizer=optim_state,
            scheduler=scheduler,
            extra=extra,
            keep_last=keep_last,
        )
    elif _is_sharded(core):
        optim_state.state_dict()  # the gather is a collective: take part in it
    if dist.distributed:
        tdist.barrier()
    return path


def restore_training_state(
    checkpoint: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer, scheduler: Any
) -> dict[str, Any]:
    """Load a checkpoint written by :func:`save_training_state` into the live objects (every rank reads
    the files) and restore the RNG; returns its ``extra`` dict (with ``step``)."""
    from r1kit.train.checkpoint import load_checkpoint

    core = unwrap_model(model)
    return load_checkpoint(
        checkpoint,
        model=core,
        optimizer=_FullOptimizerState(core, optimizer),
        scheduler=scheduler,
        load_model_fn=_load_model_weights,
    )


def prepare_run_dir(run: RunConfig) -> Path | None:
    """The checkpoint to resume from (None for a fresh run).

    Raises ``FileExistsError`` when the run directory already has checkpoints and ``run.resume`` is
    false, so a finished or crashed run is never silently overwritten.
    """
    from r1kit.train.checkpoint import latest_checkpoint

    found = latest_checkpoint(run.dir)
    if found is not None and not run.resume:
        raise FileExistsError(
            f"{run.dir} already holds checkpoints (latest {found.name}); pass --run.resume true to continue "
            f"that run, or choose a new --run.dir"
        )
    return found if run.resume else None


# the loop: a stage supplies batches and a loss, the Trainer does the rest


@dataclass
class StepWork:
    """What a stage hands the loop for one step.

    micro_batches: this rank's share of the step's batch, split for accumulation (passed one by one to
        ``Stage.loss``).
    tokens / flops: the step's tokens and training FLOPs summed over ranks, for the cost meter.
    metrics: more entries of the step's metrics row (e.g. reward statistics of a rollout).
    """

    micro_batches: Sequence[Any]
    tokens: float = 0.0
    flops: float = 0.0
    metrics: dict[str, float] = field(default_factory=dict)


class Stage:
    """A training stage as :class:`Trainer` sees it: its batches and its loss, plus optional hooks.

    Override :meth:`batches` and :meth:`loss`; the other members have defaults that do nothing.

    name: used in logs, the progress bar and the config header ("pretrain", "sft", "distill", "grpo").
    updates_per_step: optimiser steps taken on each step's batch (GRPO's mu; 1 elsewhere). The
        scheduler spans ``train.steps x updates_per_step``; the row reports the first update.
    validate: ``validate(model, step) -> metrics`` or None; run in eval mode without gradients.
    """

    name: str = "train"
    updates_per_step: int = 1
    validate: Callable[[torch.nn.Module, int], dict[str, float]] | None = None

    def batches(self, step: int) -> StepWork:
        """The micro-batches of 1-based ``step`` (and its cost), on this rank's device."""
        raise NotImplementedError

    def loss(self, model: torch.nn.Module, micro_batch: Any) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """``(loss, metrics)`` of one micro-batch as contributions to the global batch loss (see
        :func:`train_step`)."""
        raise NotImplementedError

    def before_update(self, index: int) -> None:
        """Called before the ``index``-th (0-based) optimiser step on the current batch."""

    def after_step(self, step: int, row: dict[str, Any]) -> dict[str, Any]:
        """Called after the updates of ``step`` with its metrics row; returns entries to add to it."""
        return {}

    def should_stop(self, val_metrics: dict[str, float]) -> str | None:
        """A reason to end training after a validation (early stop), or None."""
        return None

    def progress_fields(self, row: dict[str, Any], val_metrics: dict[str, float]) -> dict[str, Any]:
        """The live fields of the progress bar after a step."""
        return {"loss": row["loss"], "tokens_per_s": row["tokens_per_s"], "mfu": row["mfu"]}

    def state_dict(self) -> dict[str, Any]:
        """Stage state saved in every checkpoint (data position, rollout streams...); every rank calls
        it (it may be a collective) and rank 0's is written. Merged into the checkpoint's ``extra``."""
        return {}

    def load_state_dict(self, extra: dict[str, Any]) -> None:
        """Restore :meth:`state_dict`'s entries from a checkpoint's ``extra``."""

    def plot(self, run_dir: Path) -> None:
        """Draw the run's plot at the end (rank 0): by default the loss curve to ``loss.png``."""
        from r1kit.train.log import plot_metrics

        with contextlib.suppress(ValueError):  # nothing logged (e.g. resumed at the last step)
            plot_metrics(run_dir, run_dir / "loss.png", keys=["loss"], title=f"{self.name} loss")


@dataclass
class LoopResult:
    """What :meth:`Trainer.run` returns.

    step: the last optimiser-batch step done; stats: its :class:`StepStats` (None if no step ran);
    stop_reason: "max_steps" (the run's length), "max_seconds", "run.stop_after = N" or the stage's early
    stop reason; val_metrics: the last validation; cost: the CostMeter summary; model_dir: the export.
    """

    step: int
    stats: StepStats | None
    stop_reason: str
    val_metrics: dict[str, float]
    cost: dict[str, Any]
    model_dir: Path


class Trainer:
    """The step machinery, once: wrap (DDP/FSDP2, compile), AdamW, schedule, accumulation, autocast,
    clipping, NaN guard, MoE bias update, checkpoint/resume, metrics and TensorBoard, progress bar, cost,
    validation and the stop rules (step count, ``run.stop_after``, a wall-clock budget, early stop).

    Args:
        model: the plain model on ``device``; trained in place (FSDP2 shards it in place).
        stage: the :class:`Stage` that supplies batches and the loss.
        train, run: the [train] and [run] sections (``train.steps`` sets the schedule's length).
        dist, device: from :func:`setup_distributed` and :func:`resolve_device`.
        tokenizer: saved next to the model in checkpoints and in ``run_dir/model``.
        config: the stage's config, written to ``run_dir/config.toml``.
        steps: steps of the whole run; None = ``train.steps``, 0 = no limit (then ``max_seconds``).
        max_seconds: wall-clock budget of the run (segments of a resumed run included); None =
            ``train.max_seconds``, 0 = none.
        validate_every: run ``stage.validate`` every N steps and at the last step; 0 = never.
        validate_at_start: also validate before the first step of a fresh run (logged at step 0).
        validate_on_stop: also validate at the step where any stop rule ends the run.
        console: a rich Console for the progress bar and the cost line.
    """

    def __init__(
        self,
        model: torch.nn.Module,
        stage: Stage,
        train: TrainConfig,
        run: RunConfig,
        *,
        dist: DistInfo,
        device: torch.device,
        tokenizer: Any = None,
        config: Any = None,
        steps: int | None = None,
        max_seconds: float | None = None,
        validate_every: int = 0,
        validate_at_start: bool = False,
        validate_on_stop: bool = False,
        console: Any = None,
    ):
        from r1kit.train.cost import CostMeter

        self.core, self.stage, self.train, self.run_config = model, stage, train, run
        self.dist, self.device, self.tokenizer, self.config, self.console = (
            dist,
            device,
            tokenizer,
            config,
            console,
        )
        self.steps = train.steps if steps is None else steps
        self.max_seconds = train.max_seconds if max_seconds is None else max_seconds
        self.validate_every, self.validate_at_start = validate_every, validate_at_start
        self.validate_on_stop = validate_on_stop
        self.run_dir = Path(run.dir)
        width = getattr(getattr(unwrap_model(model), "config", None), "hidden_size", None)
        self.autocast = autocast_for(device, train.precision, width if isinstance(width, int) else None)
        if train.activation_checkpointing:
            enable_activation_checkpointing(model)
        self.wrapped = wrap_model(model, train.strategy, dist, compile=train.compile)
        self.optimizer = build_optimizer(
            model, train.lr, train.weight_decay, (train.beta1, train.beta2), train.eps
        )
        self.scheduler = build_scheduler(
            self.optimizer,
            train.warmup_steps,
            train.steps * stage.updates_per_step,
            train.schedule,
            train.min_lr_ratio,
        )
        bf16 = self.autocast is not contextlib.nullcontext
        self.meter = CostMeter(
            device,
            dtype="bf16" if bf16 else "fp32",
            world_size=dist.world_size,
            dollars_per_device_hour=run.dollars_per_hour or None,
        )
        self.step = 0
        self.resumed = False
        self.val_metrics: dict[str, float] = {}
        self.last_stats: StepStats | None = None
        self.last_saved: Path | None = None
        self.last_saved_step = -1
        self.elapsed_before = 0.0  # wall seconds of the earlier segments of a resumed run
        self._t_start = time.perf_counter()

    # ------------------------------------------------------------------ state
    def elapsed(self) -> float:
        """Wall seconds of the run so far, earlier segments of a resumed run included."""
        return self.elapsed_before + (time.perf_counter() - self._t_start)

    def restore(self, checkpoint: Path) -> None:
        """Resume from a checkpoint of :meth:`save`: model, optimiser, scheduler, RNG, cost, validation,
        elapsed time and the stage's own state."""
        extra = restore_training_state(checkpoint, self.core, self.optimizer, self.scheduler)
        self.step = int(extra["step"])
        if "cost" in extra:
            self.meter.load_state_dict(extra["cost"])
        self.val_metrics = dict(extra.get("validation") or {})
        self.elapsed_before = float(extra.get("elapsed", 0.0))
        self.stage.load_state_dict(extra)
        self.resumed = True
        self.last_saved, self.last_saved_step = checkpoint, self.step

    def save(self) -> Path | None:
        """Checkpoint the current step (every rank calls it; rank 0 writes and gets the path)."""
        extra = {
            **self.stage.state_dict(),
            "cost": self.meter.state_dict(),
            "validation": dict(self.val_metrics),
            "elapsed": self.elapsed(),
        }
        path = save_training_state(
            self.run_dir,
            self.step,
            self.wrapped,
            self.optimizer,
            self.scheduler,
            extra,
            self.dist,
            self.tokenizer,
            keep_last=self.run_config.keep_last,
        )
        self.last_saved, self.last_saved_step = path, self.step
        return path

    # ------------------------------------------------------------------ one step
    def update(self, micro_batches: Sequence[Any], step: int) -> dict[str, Any]:
        """``stage.updates_per_step`` optimiser steps on one batch, each followed by the MoE bias update;
        returns the first one's loss, metrics, lr, grad_norm and load-balance metrics."""
        row: dict[str, Any] = {}
        for index in range(self.stage.updates_per_step):
            self.stage.before_update(index)
            self.wrapped.train()
            try:
                stats = train_step(
                    self.wrapped,
                    self.optimizer,
                    micro_batches,
                    self.stage.loss,
                    scheduler=self.scheduler,
                    grad_clip=self.train.grad_clip,
                    dist=self.dist,
                    autocast=self.autocast,
                    step=step,
                )
            except NonFiniteLossError as err:
                raise NonFiniteLossError(err.step, err.value, err.what, checkpoint=self.last_saved) from None
            moe = moe_balance_step(self.wrapped, self.train.moe_bias_gamma, self.dist)
            if index == 0:
                self.last_stats = stats
                row = {"loss": stats.loss, **stats.metrics, "lr": stats.lr, "grad_norm": stats.grad_norm}
                row.update(moe)
        return row

    def train_step(self) -> dict[str, Any]:
        """One step: the stage's batches, the updates, the cost; returns the step's metrics row."""
        step = self.step + 1
        work = self.stage.batches(step)
        row = self.update(work.micro_batches, step)
        self.step = step
        speed = self.meter.add(tokens=int(work.tokens), flops=work.flops)
        totals = self.meter.summary()
        row.update(
            tokens=self.meter.tokens,
            flops=self.meter.flops,
            tokens_per_s=speed["tokens_per_s"],
            mfu=speed["mfu"],
            device_hours=totals["device_hours"],
            dollars=totals["dollars"],
        )
        row.update(work.metrics)
        row.update(self.stage.after_step(step, row))
        return row

    # ------------------------------------------------------------------ the loop
    def _stop_reason(self) -> str | None:
        """The stop rule that ends the run now, if any (rank 0's clock decides for every rank)."""
        run = self.run_config
        reason = None
        if self.steps and self.step >= self.steps:
            reason = "max_steps"
        elif run.stop_after and self.step >= run.stop_after:
            reason = f"run.stop_after = {run.stop_after}"
        elif self.max_seconds and self.elapsed() >= self.max_seconds:
            reason = "max_seconds"
        if self.max_seconds and self.dist.distributed:
            flag = torch.tensor([reason == "max_seconds"], dtype=torch.int32, device=self.device)
            tdist.broadcast(flag, src=0)
            if bool(flag) and reason is None:
                reason = "max_seconds"
            elif not bool(flag) and reason == "max_seconds":
                reason = None
        return reason

    def _validate(self, step: int) -> dict[str, float]:
        self.meter.stop()  # validation decoding is not training compute
        self.core.eval()
        with torch.no_grad():
            self.val_metrics = dict(self.stage.validate(self.core, step))
        self.core.train()
        self.meter.start()
        return self.val_metrics

    def _start_logs(self) -> tuple[Any, Any]:
        from r1kit.config import save_config
        from r1kit.train.log import MetricsLogger, ProgressBar

        logger = None
        if self.dist.is_main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            if self.config is not None:
                header = f"r1kit {self.stage.name}: resolved config"
                save_config(self.config, self.run_dir / "config.toml", header=header)
            logger = MetricsLogger(
                self.run_dir,
                stage=self.stage.name,
                tensorboard=self.run_config.tensorboard,
                resume_step=self.step if self.resumed else -1,  # a fresh run starts a fresh file
            )
        quiet = not (self.run_config.progress and self.dist.is_main)
        bar = ProgressBar(
            self.steps or None, self.stage.name, console=self.console, quiet=quiet, start_step=self.step
        )
        return logger, bar

    def run(self, step_fn: Callable[[], dict[str, Any]] | None = None) -> LoopResult:
        """Train until a stop rule fires, then checkpoint and export ``run_dir/model``.

        ``step_fn`` runs one step and returns its row (default :meth:`train_step`).
        """
        step_fn = step_fn or self.train_step
        every, run = self.validate_every, self.run_config
        validating = self.stage.validate is not None and every > 0
        logger, bar = self._start_logs()
        self._t_start = time.perf_counter()
        self.meter.start()
        try:
            if validating and self.validate_at_start and not self.resumed:
                metrics = self._validate(0)
                if logger is not None:
                    logger.log(dict(metrics), step=0)
            reason = self._stop_reason()
            while reason is None:
                row = step_fn()
                step = self.step
                reason = self._stop_reason()
                last = step == self.steps or (reason is not None and self.validate_on_stop)
                due = validating and (step % every == 0 or last)
                if due:
                    row.update(self._validate(step))
                    reason = self.stage.should_stop(self.val_metrics) or reason
                row["elapsed_s"] = self.elapsed()
                if logger is not None and (step % run.log_every == 0 or due or reason):
                    logger.log(row, step=step)
                bar.update(**self.stage.progress_fields(row, self.val_metrics))
                if (run.save_every and step % run.save_every == 0) or reason:
                    self.save()
            if self.last_saved_step != self.step:
                self.save()
        finally:
            self.meter.stop()
            bar.close()
            if logger is not None:
                logger.close()
        return self._finish(reason)

    def _finish(self, reason: str) -> LoopResult:
        """Export the final model (+ tokenizer), draw the plot, print the cost."""
        model_dir = self.run_dir / "model"
        exported = _ExportedModel(_plain_copy(self.core), self.tokenizer)  # FSDP2: a collective
        if self.dist.is_main:
            exported.save_pretrained(model_dir)
            if self.run_config.plot:
                self.stage.plot(self.run_dir)
        cost = self.meter.summary()
        if self.dist.is_main and self.run_config.progress:
            from rich.console import Console

            from r1kit.train.cost import format_cost

            (self.console or Console()).print(f"{self.stage.name} cost: {format_cost(cost)}", highlight=False)
        return LoopResult(self.step, self.last_stats, reason, dict(self.val_metrics), cost, model_dir)


# ----------------------------------------------------------------------------------------------
# the language-model stage (pretraining, SFT, trace distillation) and fit


def _to_device(batch: dict[str, torch.Tensor], device: torch.device) -> dict[str, torch.Tensor]:
    return {k: v.to(device, non_blocking=True) for k, v in batch.items()}


def _batch_flops(
    micro_batches: Sequence[dict[str, torch.Tensor]], flops_matmul: float, flops_attn: float
) -> tuple[int, float]:
    """(real input tokens, training FLOPs) of this rank's batch: matmuls per token plus attention
    per token per position (``flops_per_token(cfg, T) = flops_matmul + flops_attn * T``)."""
    tokens, flops = 0, 0.0
    for batch in micro_batches:
        mask = batch.get("attention_mask")
        lengths = (
            mask.sum(dim=1)
            if mask is not None
            else torch.full((batch["input_ids"].shape[0],), batch["input_ids"].shape[1])
        )
        tokens += int(lengths.sum())
        flops += float(lengths.sum()) * flops_matmul + float((lengths.double() ** 2).sum()) * flops_attn
    return tokens, flops


class LMStage(Stage):
    """Next-token loss (+ MTP) on a :class:`r1kit.train.data.BatchStream`: pretraining and SFT.

    The loss of each micro-batch is normalised by the target-token count of the *global* batch (all
    micro-batches and ranks), so 2 ranks x batch b train like 1 rank x batch 2b.
    """

    def __init__(
        self,
        stream: Any,
        model: torch.nn.Module,
        train: TrainConfig,
        *,
        dist: DistInfo,
        device: torch.device,
        name: str = "train",
        validate: Callable[[torch.nn.Module, int], dict[str, float]] | None = None,
        should_stop: Callable[[dict[str, float]], str | None] | None = None,
    ):
        from r1kit.model.counting import flops_per_token

        self.stream, self.train, self.dist, self.device, self.name = stream, train, dist, device, name
        self.validate, self._should_stop = validate, should_stop
        self.use_mtp = has_mtp(model)
        self.flops_matmul = flops_per_token(model.config, 0)
        self.flops_attn = flops_per_token(model.config, 1) - self.flops_matmul
        self._norms = (1.0, 1.0, 0.0)

    def batches(self, step: int) -> StepWork:
        micro_batches = [_to_device(b, self.device) for b in self.stream.next_micro_batches()]
        counts = [0.0, 0.0]
        for b in micro_batches:
            n_tok, n_mtp = count_targets(b["targets"])
            counts[0] += n_tok
            counts[1] += n_mtp
        tokens, flops = _batch_flops(micro_batches, self.flops_matmul, self.flops_attn)
        n_tok, n_mtp, tokens, flops = all_reduce_sum([*counts, tokens, flops], self.dist, self.device)
        mtp_weight = mtp_weight_at(step - 1, self.train.steps, self.train) if self.use_mtp else 0.0
        self._norms = (max(n_tok, 1.0), max(n_mtp, 1.0), mtp_weight)
        metrics = {"mtp_weight": mtp_weight} if self.use_mtp else {}
        return StepWork(micro_batches, tokens=tokens, flops=flops, metrics=metrics)

    def loss(self, model: torch.nn.Module, micro_batch: Any) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        token_norm, mtp_norm, mtp_weight = self._norms
        return lm_loss(model, micro_batch, token_norm=token_norm, mtp_norm=mtp_norm, mtp_weight=mtp_weight)

    def should_stop(self, val_metrics: dict[str, float]) -> str | None:
        return self._should_stop(val_metrics) if self._should_stop is not None else None

    def state_dict(self) -> dict[str, Any]:
        return {"data": self.stream.state_dict()}

    def load_state_dict(self, extra: dict[str, Any]) -> None:
        self.stream.load_state_dict(extra["data"])


def run_result(result: LoopResult, run_dir: Path):
    """The :class:`r1kit.train.result.RunResult` of a supervised stage from its :class:`LoopResult`."""
    from r1kit.train.result import RunResult

    stopped = result.stop_reason if result.stop_reason != "max_steps" else None
    metrics = {
        "loss": result.stats.loss if result.stats is not None else float("nan"),
        "steps": result.step,
        "stopped_early": stopped is not None,
        "stop_reason": stopped,
        "model_dir": str(result.model_dir),
        **result.val_metrics,
    }
    return RunResult(run_dir=run_dir, metrics=metrics, cost=result.cost)


def fit(
    model: torch.nn.Module,
    stream: Any,
    train: TrainConfig,
    run: RunConfig,
    *,
    dist: DistInfo,
    device: torch.device,
    stage: str,
    resume_from: Path | None = None,
    config: Any = None,
    tokenizer: Any = None,
    validate: Callable[[torch.nn.Module, int], dict[str, float]] | None = None,
    validate_every: int = 0,
    should_stop: Callable[[dict[str, float]], str | None] | None = None,
    console: Any = None,
    make_stage: Callable[..., Stage] | None = None,
):
    """Train ``model`` with next-token loss on ``stream`` for ``train.steps`` optimiser steps
    (an :class:`LMStage` run by the :class:`Trainer`).

    Args:
        model: the plain model, already on ``device`` (random or loaded weights); trained in place.
        stream: a :class:`r1kit.train.data.BatchStream` (``next_micro_batches``, ``state_dict``) built
            for this rank.
        train, run: the [train] and [run] sections.
        dist, device: from :func:`setup_distributed` and :func:`resolve_device`.
        stage: name used in logs ("pretrain", "sft", "distill").
        resume_from: a checkpoint from :func:`prepare_run_dir`; restores model, optimizer, scheduler,
            RNG, data position, cost totals and the last validation metrics.
        config: the stage config, written to ``run_dir/config.toml``.
        tokenizer: saved next to the model in checkpoints and in ``run_dir/model``.
        validate: ``validate(model, step) -> metrics`` run (on every rank, in eval mode, without
            gradients) every ``validate_every`` steps and at the end; logged with the step's row.
        should_stop: ``should_stop(val_metrics) -> reason or None``; a reason ends training after a
            checkpoint (early stop on a validation metric).
        console: a rich Console for the progress bar and summary (tests pass a quiet one).
        make_stage: the stage to run instead of :class:`LMStage`, called with :class:`LMStage`'s
            arguments (logit distillation passes its :class:`r1kit.distill.LogitStage` this way).

    Returns:
        :class:`r1kit.train.result.RunResult` with ``metrics`` (loss, steps, stopped, stop_reason,
        last validation metrics, model_dir) and ``cost`` (the CostMeter summary). Raises
        :class:`NonFiniteLossError` naming the step and the last good checkpoint when the loss goes
        NaN/inf; nothing is saved after the bad step.
    """
    lm = (make_stage or LMStage)(
        stream, model, train, dist=dist, device=device, name=stage, validate=validate, should_stop=should_stop
    )
    trainer = Trainer(
        model,
        lm,
        train,
        run,
        dist=dist,
        device=device,
        tokenizer=tokenizer,
        config=config,
        validate_every=validate_every,
        console=console,
    )
    if resume_from is not None:
        trainer.restore(resume_from)
    return run_result(trainer.run(), trainer.run_dir)
