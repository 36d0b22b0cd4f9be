"""LoRA: low-rank adapters on the Transformer's linear layers (Hu et al., arXiv 2106.09685).

A targeted ``nn.Linear`` (weight W (out, in), bias b) becomes a :class:`LoRALinear` with the same frozen
``weight`` / ``bias`` plus ``lora_A`` (r, in) and ``lora_B`` (out, r):

    y = x W^T + b + (alpha / r) * (dropout(x) A^T) B^T

A is Kaiming-uniform, B zero, so a fresh adapter computes the base model exactly. Only A and B train.
The wrapped layer keeps the base layer's parameter names (``q_proj.weight``), so the base weights load
and save under their Hugging Face names; the adapter adds ``q_proj.lora_A`` / ``q_proj.lora_B``.

Why native and not ``peft``: our Transformer is not a transformers model; ``peft.get_peft_model`` would
wrap it in a ``PeftModel`` and rename every targeted parameter (``...q_proj.base_layer.weight``), which
breaks the HF-name state dict that checkpoints, FSDP2 and the engine rely on. The adapter is ~40 lines of
module here; the files it writes use PEFT's layout (``adapter_model.safetensors`` +
``adapter_config.json``, keys ``base_model.model.<HF name>.lora_A.weight``) so ``peft`` loads them onto
the transformers model of the same checkpoint, and :func:`load_adapter` reads adapters PEFT wrote.

Targets are leaf module names inside the main blocks (``model.layers.*``). Our module names are the
Hugging Face names, so the mapping is the identity: attention ``q_proj``, ``k_proj``, ``v_proj``,
``o_proj``; MLA ``q_proj`` / ``q_a_proj`` / ``q_b_proj``, ``kv_a_proj_with_mqa``, ``o_proj``; MLP and MoE
shared experts ``gate_proj``, ``up_proj``, ``down_proj``. Not targetable: ``kv_b_proj`` (MLA's absorbed
decode reads its weight directly), the routed experts (stacked tensors, not linear layers), the router,
the embedding and the head, and the MTP block (it stays frozen).

Lifecycle: :func:`prepare` / :func:`apply_lora` (freeze the base, wrap the targets; A drawn from a
seeded generator in module order) → train → :func:`export_run`: :func:`save_adapter` (the adapter alone)
and :func:`merged_copy` + ``save_pretrained`` (a plain HF directory with W + (alpha/r) B A, which
transformers loads). ``save_pretrained`` of an adapted model (a checkpoint) writes the base weights with
the adapter beside them, and ``Transformer.from_pretrained`` re-attaches it. :func:`adapters_disabled`
runs the base model (GRPO's KL reference) without a second copy of the weights.
"""

from __future__ import annotations

import contextlib
import copy
import json
import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from r1kit.config import UserError
from r1kit.train.sections import LORA_TARGETS, LoRASection

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
_PEFT_PREFIX = "base_model.model."  # PEFT's key prefix: PeftModel -> LoraModel -> the transformers model
_DEFAULT_TARGETS = tuple(LoRASection().targets)


class LoRALinear(nn.Module):
    """A frozen linear layer plus a trainable low-rank update: (..., in) -> (..., out).

    ``weight`` (out, in) and ``bias`` (out,) or None are the base layer's own tensors (not copies);
    ``lora_A`` (rank, in), ``lora_B`` (out, rank); ``scale`` = alpha / rank. Not an ``nn.Linear``, so code
    that fuses or reads plain linear layers (fused decode weights) leaves it alone and calls ``forward``.
    """

    def __init__(
        self,
        base: nn.Linear,
        rank: int,
        alpha: float,
        dropout: float = 0.0,
        generator: torch.Generator | None = None,
    ):
        """``generator`` (a CPU generator) draws A; None = torch's global RNG."""
        super().__init__()
        if rank < 1:
            raise ValueError(f"rank must be >= 1, got {rank}")
        self.in_features, self.out_features = base.in_features, base.out_features
        self.rank, self.alpha, self.scale = rank, float(alpha), float(alpha) / rank
        self.weight = base.weight
        self.bias = base.bias
        kw = dict(device=base.weight.device, dtype=base.weight.dtype)
        self.lora_A = nn.Parameter(torch.empty(rank, self.in_features, **kw))
        self.lora_B = nn.Parameter(torch.zeros(self.out_features, rank, **kw))
        with torch.no_grad():  # nn.Linear's init (PEFT's default), drawn on the CPU: the same on any device
            a_cpu = torch.empty(rank, self.in_features)
            nn.init.kaiming_uniform_(a_cpu, a=math.sqrt(5), generator=generator)
            self.lora_A.copy_(a_cpu)
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self._enabled = True

    @property
    def enabled(self) -> bool:
        """Whether the low-rank update is added (False: the base layer alone)."""
        return self._enabled

    def set_enabled(self, enabled: bool) -> bool:
        """Turn the update on or off; returns the previous setting."""
        previous, self._enabled = self._enabled, bool(enabled)
        return previous

    def delta_weight(self) -> torch.Tensor:
        """(out, in) ``scale * B @ A`` in fp32: what merging adds to ``weight``."""
        return (self.lora_B.float() @ self.lora_A.float()) * self.scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x (..., in) -> (..., out)."""
        out = F.linear(x, self.weight, self.bias)
        if not self._enabled:
            return out
        return out + F.linear(F.linear(self.dropout(x), self.lora_A), self.lora_B) * self.scale

    def merged_linear(self) -> nn.Linear:
        """A plain ``nn.Linear`` computing the adapted layer: weight W + scale B A (in W's dtype)."""
        w = self.weight
        linear = nn.Linear(self.in_features, self.out_features, bias=self.bias is not None, device="meta")
        linear.weight = nn.Parameter((w.detach().float() + self.delta_weight().detach()).to(w.dtype))
        if self.bias is not None:
            linear.bias = nn.Parameter(self.bias.detach().clone())
        return linear

    def extra_repr(self) -> str:
        return f"in={self.in_features}, out={self.out_features}, rank={self.rank}, alpha={self.alpha:g}"


# ----------------------------------------------------------------------------------------------
# attaching, finding, switching


def lora_layers(model: nn.Module) -> dict[str, LoRALinear]:
    """The adapted layers of ``model`` by module name (``model.layers.0.self_attn.q_proj``), in order."""
    return {name: m for name, m in model.named_modules() if isinstance(m, LoRALinear)}


def has_lora(model: nn.Module) -> bool:
    """Whether ``model`` carries any adapter."""
    return any(isinstance(m, LoRALinear) for m in model.modules())


def _blocks(model: nn.Module) -> list[tuple[str, nn.Module]]:
    inner = getattr(model, "model", None)
    layers = getattr(inner, "layers", None)
    if layers is None:
        raise TypeError("LoRA needs an r1kit Transformer (model.model.layers)")
    return [(f"model.layers.{i}", block) for i, block in enumerate(layers)]


def apply_lora(model: nn.Module, section: LoRASection, seed: int = 0, freeze: bool = True) -> list[str]:
    """Freeze every parameter of ``model`` and wrap its targeted linear layers in place.

    Args:
        model: an r1kit Transformer (plain, before DDP / compile wrapping).
        section: the [lora] section; rank 0 does nothing (full fine-tuning: nothing frozen).
        seed: seeds the draw of the A matrices (own generator: torch's global RNG is left alone).
        freeze: set ``requires_grad`` False on every base parameter (False: only attach, as loading does).

    Returns:
        The wrapped module names (empty when rank is 0). Raises :class:`r1kit.config.UserError` when a
        target matches no layer of this model (the message lists the ones it has), or when the model
        already carries adapters.
    """
    if section.rank == 0:
        return []
    if has_lora(model):
        raise UserError("this model already carries LoRA adapters; load a merged model directory instead")
    targets = set(section.targets)
    # in module order, never set order: A is drawn from the generator layer by layer, and a set's order
    # changes with the process's hash seed (2 DDP ranks or a rerun would draw different adapters)
    found: list[tuple[nn.Module, str, nn.Linear, str]] = []
    present: set[str] = set()
    for prefix, block in _blocks(model):
        for name, module in block.named_modules():
            leaf = name.rsplit(".", 1)[-1]
            if type(module) is nn.Linear and leaf in LORA_TARGETS:
                present.add(leaf)
                if leaf in targets:
                    parent = block.get_submodule(name.rsplit(".", 1)[0]) if "." in name else block
                    found.append((parent, leaf, module, f"{prefix}.{name}"))
    missing = sorted(targets - {leaf for _, leaf, _, _ in found})
    if missing:
        family = getattr(getattr(model, "config", None), "family", "this")
        raise UserError(
            f"lora.targets {missing} match no layer of this {family} model; its linear layers are "
            f"{sorted(present)} (e.g. --lora.targets '{json.dumps(sorted(present & set(_DEFAULT_TARGETS)) or sorted(present))}')"
        )
    if freeze:
        model.requires_grad_(False)
    generator = torch.Generator().manual_seed(seed)
    names = []
    for parent, leaf, linear, full_name in found:
        layer = LoRALinear(linear, section.rank, section.alpha, section.dropout, generator)
        setattr(parent, leaf, layer.train(linear.training))  # an eval-mode model stays in eval mode
        names.append(full_name)
    return names


@contextlib.contextmanager
def adapters_disabled(model: nn.Module) -> Iterator[nn.Module]:
    """Run ``model`` as its base weights: every adapter off inside the block, restored after.

    GRPO's KL reference with LoRA is this (no second copy of the model). A model without adapters is
    unchanged.
    """
    layers = list(lora_layers(model).values())
    previous = [layer.set_enabled(False) for layer in layers]
    try:
        yield model
    finally:
        for layer, was in zip(layers, previous):
            layer.set_enabled(was)


# ----------------------------------------------------------------------------------------------
# merging


def merge_lora(model: nn.Module) -> nn.Module:
    """Replace every :class:`LoRALinear` of ``model`` in place by the plain ``nn.Linear`` it computes
    (weight W + (alpha / r) B A); returns ``model``, which then saves as an ordinary HF checkpoint."""
    for name in list(lora_layers(model)):
        parent_name, _, leaf = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        layer = getattr(parent, leaf)
        setattr(parent, leaf, layer.merged_linear())
    return model


def merged_copy(model: nn.Module) -> nn.Module:
    """A copy of ``model`` with the adapters merged into the weights (``model`` itself is unchanged)."""
    return merge_lora(copy.deepcopy(model))


def prepare(model: nn.Module, section: LoRASection, seed: int = 0) -> list[str]:
    """What a training stage does with its freshly loaded model: merge an adapter it already carries (a
    LoRA checkpoint loads as base + adapter; training continues from what it computes), then
    :func:`apply_lora` with ``section`` and ``seed``. Returns the wrapped names (empty: full training)."""
    if has_lora(model):
        merge_lora(model)
    return apply_lora(model, section, seed=seed)


# ----------------------------------------------------------------------------------------------
# files: PEFT's layout


def _section_of(model: nn.Module) -> LoRASection:
    layers = list(lora_layers(model).values())
    if not layers:
        raise ValueError("the model carries no LoRA adapter")
    first = layers[0]
    if any(m.rank != first.rank or m.alpha != first.alpha for m in layers):
        raise ValueError("adapters of different ranks or alphas in one model cannot be saved as one config")
    dropout = first.dropout.p if isinstance(first.dropout, nn.Dropout) else 0.0
    targets = sorted({name.rsplit(".", 1)[-1] for name in lora_layers(model)})
    return LoRASection(rank=first.rank, alpha=first.alpha, dropout=dropout, targets=targets)


def adapter_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The adapter tensors under PEFT's names: ``base_model.model.<module>.lora_A.weight`` (r, in) and
    ``...lora_B.weight`` (out, r), contiguous on the CPU."""
    out = {}
    for name, layer in lora_layers(model).items():
        out[f"{_PEFT_PREFIX}{name}.lora_A.weight"] = layer.lora_A.detach().cpu().contiguous()
        out[f"{_PEFT_PREFIX}{name}.lora_B.weight"] = layer.lora_B.detach().cpu().contiguous()
    return out


def adapter_config(section: LoRASection, base_model: str = "") -> dict[str, Any]:
    """``adapter_config.json`` as PEFT writes it for a causal LM with one LoRA adapter."""
    return {
        "peft_type": "LORA",
        "task_type": "CAUSAL_LM",
        "base_model_name_or_path": base_model or None,
        "r": section.rank,
        "lora_alpha": section.alpha,
        "lora_dropout": section.dropout,
        "target_modules": sorted(section.targets),
        "bias": "none",
        "fan_in_fan_out": False,
        "use_rslora": False,
        "use_dora": False,
        "init_lora_weights": True,
        "inference_mode": True,
        "modules_to_save": None,
        "layers_to_transform": None,
        "rank_pattern": {},
        "alpha_pattern": {},
    }


def save_adapter(model: nn.Module, directory: str | Path, base_model: str = "") -> Path:
    """Write ``adapter_model.safetensors`` + ``adapter_config.json`` (PEFT's layout) into ``directory``.

    ``base_model`` (a path or hub id) is recorded as ``base_model_name_or_path``. Returns the directory.
    """
    from safetensors.torch import save_file

    from r1kit.model.hf import _atomic_write

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    state = adapter_state_dict(model)
    config = adapter_config(_section_of(model), base_model)
    _atomic_write(
        directory / ADAPTER_WEIGHTS, lambda tmp: save_file(state, str(tmp), metadata={"format": "pt"})
    )
    text = json.dumps(config, indent=2) + "\n"
    _atomic_write(directory / ADAPTER_CONFIG, lambda tmp: tmp.write_text(text))
    return directory


def read_adapter_config(directory: str | Path) -> LoRASection:
    """The [lora] section an adapter directory describes; ValueError (one line) for what r1kit cannot run
    (not LoRA, DoRA, rsLoRA, per-layer ranks, biases, targets outside the blocks)."""
    from r1kit.model.hf import _read_json

    path = Path(directory) / ADAPTER_CONFIG
    d = _read_json(path, ADAPTER_CONFIG)
    if not isinstance(d, dict) or d.get("peft_type", "LORA") != "LORA":
        raise ValueError(f"{path}: not a LoRA adapter config (peft_type {d.get('peft_type')!r})")
    unsupported = [
        key
        for key, default in (
            ("use_dora", False),
            ("use_rslora", False),
            ("rank_pattern", {}),
            ("alpha_pattern", {}),
        )
        if d.get(key) not in (default, None)
    ]
    if d.get("bias", "none") != "none":
        unsupported.append("bias")
    if unsupported:
        raise ValueError(f"{path}: r1kit's LoRA does not support {', '.join(unsupported)}")
    targets = d.get("target_modules") or []
    if isinstance(targets, str):
        raise ValueError(
            f"{path}: target_modules as a regular expression is not supported; list module names"
        )
    try:
        return LoRASection(
            rank=int(d["r"]),
            alpha=float(d.get("lora_alpha", 8)),
            dropout=float(d.get("lora_dropout", 0.0)),
            targets=list(targets),
        )
    except (KeyError, TypeError, UserError) as err:
        raise ValueError(f"{path}: {err}") from None


def load_adapter(model: nn.Module, directory: str | Path, freeze: bool = True) -> list[str]:
    """Attach the adapter saved in ``directory`` (by :func:`save_adapter`, or by PEFT for the same
    architecture) to ``model``: :func:`apply_lora` with its config (``freeze`` as there), then its
    tensors (cast to the base weights' dtype and device). Returns the wrapped module names; ValueError
    when tensors are missing, extra or of the wrong shape."""
    from safetensors.torch import load_file

    directory = Path(directory)
    section = read_adapter_config(directory)
    from r1kit.model.hf import regular_file

    state = load_file(str(regular_file(directory / ADAPTER_WEIGHTS, "the adapter weights")))
    names = apply_lora(model, section, freeze=freeze)
    layers = lora_layers(model)
    expected = {f"{_PEFT_PREFIX}{n}.lora_{p}.weight": (layers[n], p) for n in names for p in "AB"}
    missing, extra = sorted(set(expected) - set(state)), sorted(set(state) - set(expected))
    if missing or extra:
        raise ValueError(
            f"{directory}: adapter tensors do not match its config: missing {missing[:4]}, unexpected {extra[:4]}"
        )
    with torch.no_grad():
        for key, (layer, part) in expected.items():
            target = layer.lora_A if part == "A" else layer.lora_B
            if tuple(state[key].shape) != tuple(target.shape):
                raise ValueError(
                    f"{directory}: {key} is {tuple(state[key].shape)}, expected {tuple(target.shape)}"
                )
            target.copy_(state[key].to(device=target.device, dtype=target.dtype))
    return names


def export_run(model: nn.Module, run_dir: str | Path, tokenizer: Any = None, base_model: str = "") -> Path:
    """The end of a LoRA run: ``run_dir/adapter`` (the adapter alone, PEFT layout) and ``run_dir/model``
    replaced by the merged weights (a plain HF directory every stage, ``serve`` and transformers load,
    tokenizer included). Returns ``run_dir/model``."""
    run_dir = Path(run_dir)
    save_adapter(model, run_dir / "adapter", base_model)
    merged = merged_copy(model)
    model_dir = run_dir / "model"
    merged.save_pretrained(model_dir)
    if tokenizer is not None:
        tokenizer.save_pretrained(model_dir)
    return model_dir
