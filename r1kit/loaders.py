"""Where a stage's model, tokenizer, device, dtype and CPU threads come from; every stage, `serve` and
`chat` resolve them here.

- :func:`resolve_model_dir`: a model directory (HF layout: config.json + safetensors), an r1kit run
  directory (its ``model/``, else its latest checkpoint) or a checkpoint directory → the directory to load.
- :func:`find_tokenizer_dir`: the tokenizer next to a model (the directory or its nearest parent with a
  tokenizer.json), unless one is named.
- :func:`resolve_device`: ``"auto"`` → the local CUDA device when torch sees one, else the CPU; an
  explicit ``"cuda"`` on a machine without a GPU is a :class:`~r1kit.config.ConfigError`.
- :func:`resolve_dtype`: the one dtype vocabulary of every stage (``"auto"``, ``"float32"``,
  ``"bfloat16"``, ``"float16"``, with the short aliases ``"fp32"``, ``"bf16"``, ``"fp16"`` accepted:
  :func:`r1kit.train.sections.normalize_dtype`) → a torch dtype.
- :func:`set_threads`: ``torch.set_num_threads`` when a thread count is given (0 = torch's default).
- :func:`load_model`: (model in eval mode, tokenizer, model directory) from any of the paths above.

These loaders build a new model from a directory. Restoring weights *into* a live (DDP- or
FSDP2-wrapped) model on resume is the checkpoint code's job (``r1kit.train.checkpoint``).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from r1kit.config import ConfigError
from r1kit.train.sections import DTYPE_NAMES, normalize_dtype

__all__ = [
    "DTYPES",
    "find_tokenizer_dir",
    "load_model",
    "load_tokenizer",
    "resolve_device",
    "resolve_dtype",
    "resolve_model_dir",
    "set_threads",
]

# The torch dtype of each long name of the dtype vocabulary (r1kit.train.sections.DTYPE_NAMES).
DTYPES: dict[str, torch.dtype] = {name: getattr(torch, name) for name in DTYPE_NAMES}


# ----------------------------------------------------------------------------------------------
# directories


def resolve_model_dir(path: str | os.PathLike) -> Path:
    """The HF-layout directory to load: `path` itself, its `model/`, or its latest checkpoint.

    Raises ConfigError for an empty path and FileNotFoundError when none of the three has a config.json.
    """
    from r1kit.train.checkpoint import latest_checkpoint

    path = Path(path)
    if not str(path) or str(path) == ".":
        raise ConfigError("model.path is empty: give an HF model directory or an r1kit run directory")
    if (path / "config.json").is_file():
        return path
    if (path / "model" / "config.json").is_file():
        return path / "model"
    ckpt = latest_checkpoint(path)
    if ckpt is not None and (ckpt / "config.json").is_file():
        return ckpt
    raise FileNotFoundError(f"{path}: no config.json, model/ or checkpoint with a model found")


def find_tokenizer_dir(model_dir: str | os.PathLike, explicit: str = "") -> Path:
    """The tokenizer directory: `explicit`, else `model_dir` or the nearest of its 3 parents with a
    tokenizer.json (a checkpoint sits two levels below the run directory that holds the tokenizer)."""
    if explicit:
        return Path(explicit)
    model_dir = Path(model_dir)
    for candidate in (model_dir, *model_dir.parents[:3]):
        if (candidate / "tokenizer.json").is_file():
            return candidate
    raise FileNotFoundError(f"no tokenizer.json in {model_dir} or its parents; set model.tokenizer")


def load_tokenizer(model_dir: str | os.PathLike, explicit: str = "", *, require_chat_template: bool = False):
    """The `r1kit.tokenizer.Tokenizer` of :func:`find_tokenizer_dir` (`model_dir`, `explicit`).

    With `require_chat_template`, a tokenizer without a chat template is a ConfigError (serve and chat
    render every request with it).
    """
    from r1kit.tokenizer import Tokenizer

    directory = find_tokenizer_dir(model_dir, explicit)
    tokenizer = Tokenizer.from_pretrained(directory)
    if require_chat_template and tokenizer.chat_template is None:
        raise ConfigError(f"{directory}/tokenizer_config.json has no chat_template")
    return tokenizer


# ----------------------------------------------------------------------------------------------
# device, dtype, threads


def resolve_device(name: str = "auto", dist: Any = None) -> torch.device:
    """A device name ("auto", "cpu", "cuda", "cuda:1", "mps", ...) → a `torch.device`.

    "auto" is the local CUDA device when torch sees one, else the CPU. Under torchrun (`dist` with a
    `local_rank`) a bare "cuda" means ``cuda:LOCAL_RANK``; a single process gets ``cuda:0``. Asking for
    CUDA on a machine where torch sees no GPU raises ConfigError rather than failing at the first tensor.
    """
    local_rank = getattr(dist, "local_rank", 0) if dist is not None else 0
    name = str(name).strip() or "auto"
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    elif name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(
            f"device {name!r}: torch sees no CUDA GPU on this machine; use device 'cpu' or 'auto'"
        )
    if name == "cuda":
        return torch.device("cuda", local_rank)
    try:
        return torch.device(name)
    except RuntimeError as err:
        raise ConfigError(
            f"device {name!r} is not a torch device: use 'auto', 'cpu', 'cuda' or 'cuda:N'"
        ) from err


def resolve_dtype(name: str, device: torch.device) -> torch.dtype:
    """The torch dtype of a dtype name (any spelling `r1kit.train.sections.normalize_dtype` accepts;
    anything else is a ConfigError); "auto" is bfloat16 on CUDA and float32 elsewhere."""
    key = normalize_dtype(name)
    if key == "auto":
        return torch.bfloat16 if torch.device(device).type == "cuda" else torch.float32
    return DTYPES[key]


def set_threads(threads: int) -> None:
    """Set torch's intra-op CPU threads; 0 (or None) keeps torch's default."""
    if threads:
        torch.set_num_threads(int(threads))


# ----------------------------------------------------------------------------------------------
# the model


def load_model(
    path: str | os.PathLike,
    tokenizer_dir: str = "",
    device: str | torch.device = "auto",
    dtype: str = "auto",
    *,
    require_chat_template: bool = False,
):
    """(model in eval mode, tokenizer, model directory) from a model, run or checkpoint directory.

    Args:
        path: resolved with :func:`resolve_model_dir`.
        tokenizer_dir: the tokenizer's directory; "" = found next to the model (:func:`find_tokenizer_dir`).
        device: a name for :func:`resolve_device` or a `torch.device`.
        dtype: the weights' dtype, a name for :func:`resolve_dtype` ("auto": bfloat16 on CUDA, else float32).
        require_chat_template: refuse a tokenizer without a chat template (ConfigError).
    """
    from r1kit.model import Transformer

    model_dir = resolve_model_dir(path)
    tokenizer = load_tokenizer(model_dir, tokenizer_dir, require_chat_template=require_chat_template)
    dev = device if isinstance(device, torch.device) else resolve_device(device)
    model = Transformer.from_pretrained(model_dir, device=dev, dtype=resolve_dtype(dtype, dev)).eval()
    return model, tokenizer, model_dir
