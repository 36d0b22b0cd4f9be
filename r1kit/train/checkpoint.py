"""Atomic, resumable training checkpoints.

Layout of a run directory::

    run_dir/checkpoints/
        step_00000200/
            model.safetensors        # or whatever model.save_pretrained writes (HF layout + config.json)
            trainer_state.pt         # optimizer, scheduler, RNG states, step, the caller's `extra`
        step_00000300/
        latest                       # text file: "step_00000300"

A checkpoint is written into ``checkpoints/.tmp-step_XXXXXXXX-PID/``, every file is fsynced, and the
directory is renamed into place; only then is ``latest`` replaced (write-temp + ``os.replace``) and
old checkpoints pruned. A crash at any point leaves the previous checkpoint and pointer intact;
stale temp directories are ignored by :func:`latest_checkpoint` and removed by the next save.

Only one process (rank 0) should save into a run directory.
"""

from __future__ import annotations

import os
import random
import re
import shutil
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

CHECKPOINTS = "checkpoints"
LATEST = "latest"
STATE_FILE = "trainer_state.pt"
MODEL_FILE = "model.safetensors"
FORMAT_VERSION = 1

_STEP_DIR = re.compile(r"^step_(\d+)$")


def checkpoint_name(step: int) -> str:
    """Directory name of the checkpoint at ``step``: ``step_00000042``."""
    return f"step_{int(step):08d}"


# ----------------------------------------------------------------------------------------------
# durability helpers


def _fsync_file(path: Path) -> None:
    """Flush one file's data to disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_dir(path: Path) -> None:
    """Flush a directory entry table (makes renames durable); a no-op where unsupported."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _fsync_tree(root: Path) -> None:
    """fsync every file under ``root``, then every directory bottom-up."""
    dirs = []
    for dirpath, _, filenames in os.walk(root):
        for name in filenames:
            _fsync_file(Path(dirpath) / name)
        dirs.append(Path(dirpath))
    for d in reversed(dirs):
        _fsync_dir(d)


# ----------------------------------------------------------------------------------------------
# RNG state


def rng_state() -> dict[str, Any]:
    """Snapshot of the Python, NumPy, torch CPU and torch CUDA generators (``torch.load``-safe types)."""
    import torch

    state: dict[str, Any] = {"python": random.getstate(), "torch": torch.get_rng_state()}
    try:
        import numpy as np
    except ImportError:  # numpy is optional for the checkpoint itself
        np = None
    if np is not None:
        name, keys, pos, has_gauss, cached = np.random.get_state()
        state["numpy"] = {
            "name": name,
            "keys": keys.tolist(),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached": float(cached),
        }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: Mapping[str, Any]) -> None:
    """Restore generators from :func:`rng_state`; CUDA states apply to as many devices as both have."""
    import torch

    if "python" in state:
        version, internal, gauss = state["python"]
        random.setstate((version, tuple(internal), gauss))
    if "torch" in state:
        torch.set_rng_state(state["torch"].cpu())
    if "numpy" in state:
        import numpy as np

        s = state["numpy"]
        np.random.set_state(
            (s["name"], np.asarray(s["keys"], dtype=np.uint32), s["pos"], s["has_gauss"], s["cached"])
        )
    if "cuda" in state and torch.cuda.is_available():
        for index, cuda_state in enumerate(state["cuda"][: torch.cuda.device_count()]):
            torch.cuda.set_rng_state(cuda_state.cpu(), index)


# ----------------------------------------------------------------------------------------------
# model save/load


def unwrap_model(model: Any) -> Any:
    """The bare module inside DistributedDataParallel/DataParallel and ``torch.compile`` wrappers."""
    import torch

    while True:
        if isinstance(model, (torch.nn.parallel.DistributedDataParallel, torch.nn.DataParallel)):
            model = model.module
        elif hasattr(model, "_orig_mod"):
            model = model._orig_mod
        else:
            return model


def _save_model(model: Any, directory: Path) -> None:
    model = unwrap_model(model)
    if hasattr(model, "save_pretrained"):
        model.save_pretrained(directory)
    else:
        from safetensors.torch import save_model

        save_model(model, str(directory / MODEL_FILE))  # drops tied duplicates that safetensors rejects


def _load_model(model: Any, directory: Path, strict: bool) -> None:
    """Load weights into ``model``: our own state-dict keys first, else ``type(model).from_pretrained``."""
    model = unwrap_model(model)
    weights = directory / MODEL_FILE
    mismatch: Exception | None = None
    if weights.exists() and hasattr(model, "load_state_dict"):
        from safetensors.torch import load_model

        try:
            load_model(model, str(weights), strict=strict)
            return
        except RuntimeError as err:  # keys differ: e.g. Hugging Face names written by save_pretrained
            mismatch = err
    from_pretrained = getattr(type(model), "from_pretrained", None)
    if from_pretrained is not None:
        loaded = from_pretrained(directory)
        model.load_state_dict(loaded.state_dict(), strict=strict)
        return
    if mismatch is not None:
        raise mismatch
    raise FileNotFoundError(f"{directory}: no {MODEL_FILE} and {type(model).__name__} has no from_pretrained")


# ----------------------------------------------------------------------------------------------
# public API


def _plain(value: Any) -> Any:
    """Make ``extra`` loadable with ``torch.load(weights_only=True)``: numpy scalars/arrays, Paths, tuples."""
    if isinstance(value, Mapping):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_plain(v) for v in value)
    if isinstance(value, Path):
        return str(value)
    module = type(value).__module__
    if module == "numpy":
        return value.tolist() if hasattr(value, "tolist") else value.item()
    return value


def list_checkpoints(run_dir: str | Path) -> list[Path]:
    """Complete checkpoints of ``run_dir`` (those with a trainer state), oldest step first."""
    root = Path(run_dir) / CHECKPOINTS
    if not root.is_dir():
        return []
    found = []
    for child in root.iterdir():
        m = _STEP_DIR.match(child.name)
        if m and child.is_dir() and (child / STATE_FILE).is_file():
            found.append((int(m.group(1)), child))
    return [path for _, path in sorted(found)]


def latest_checkpoint(run_dir: str | Path) -> Path | None:
    """The checkpoint ``latest`` points to, else the highest complete step, else None.

    Temp directories of interrupted saves are never returned.
    """
    root = Path(run_dir) / CHECKPOINTS
    pointer = root / LATEST
    if pointer.is_file():
        name = pointer.read_text(encoding="utf-8").strip()
        candidate = root / name
        if _STEP_DIR.match(name) and (candidate / STATE_FILE).is_file():
            return candidate
    complete = list_checkpoints(run_dir)
    return complete[-1] if complete else None


def _remove_leftovers(root: Path) -> None:
    """Delete temp/old directories and pointer temp files left by interrupted saves."""
    for child in root.iterdir():
        if not child.name.startswith((".tmp-", ".old-")):
            continue
        if child.is_dir():
            shutil.rmtree(child, ignore_errors=True)
        else:
            child.unlink(missing_ok=True)


def _write_latest(root: Path, name: str) -> None:
    tmp = root / f".tmp-latest-{os.getpid()}"
    with open(tmp, "w", encoding="utf-8") as fh:
        fh.write(name + "\n")
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, root / LATEST)
    _fsync_dir(root)


def save_checkpoint(
    run_dir: str | Path,
    step: int,
    *,
    model: Any,
    optimizer: Any = None,
    scheduler: Any = None,
    extra: Mapping[str, Any] | None = None,
    keep_last: int | None = 3,
) -> Path:
    """Atomically write the checkpoint of ``step`` under ``run_dir/checkpoints/`` and point ``latest`` at it.

    Args:
        run_dir: the run directory (created if needed).
        step: the optimizer step this state follows (names the directory).
        model: saved with ``model.save_pretrained(dir)`` when it has one, else as ``model.safetensors``
            of its state dict (DDP / torch.compile wrappers are unwrapped).
        optimizer, scheduler: anything with ``state_dict()``; stored in ``trainer_state.pt``.
        extra: plain data to restore with the run (data position, metrics, cost totals...): dicts,
            lists, numbers, strings, tensors. Returned by :func:`load_checkpoint`.
        keep_last: how many checkpoints to keep (the newest by step, always including this one);
            None or 0 keeps all. Older ones are deleted only after this one is complete.

    Returns:
        The final checkpoint directory.
    """
    import torch

    root = Path(run_dir) / CHECKPOINTS
    root.mkdir(parents=True, exist_ok=True)
    _remove_leftovers(root)
    name = checkpoint_name(step)
    final = root / name
    tmp = root / f".tmp-{name}-{os.getpid()}"
    tmp.mkdir()
    try:
        _save_model(model, tmp)
        state = {
            "format_version": FORMAT_VERSION,
            "step": int(step),
            "time": time.time(),
            "optimizer": optimizer.state_dict() if optimizer is not None else None,
            "scheduler": scheduler.state_dict() if scheduler is not None else None,
            "rng": rng_state(),
            "extra": _plain(dict(extra or {})),
        }
        torch.save(state, tmp / STATE_FILE)
        _fsync_tree(tmp)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if final.exists():  # re-saving a step (e.g. after a resume): swap, never leave no copy behind
        old = root / f".old-{name}-{os.getpid()}"
        os.rename(final, old)
        os.rename(tmp, final)
        _fsync_dir(root)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.rename(tmp, final)
        _fsync_dir(root)
    _write_latest(root, name)
    if keep_last:
        complete = [p for p in list_checkpoints(run_dir) if p != final]
        for stale in complete[: max(0, len(complete) - (keep_last - 1))]:
            shutil.rmtree(stale, ignore_errors=True)
    return final


def load_checkpoint(
    path: str | Path,
    *,
    model: Any = None,
    optimizer: Any = None,
    scheduler: Any = None,
    restore_rng: bool = True,
    load_model_fn: Callable[[Any, Path], None] | None = None,
    map_location: Any = "cpu",
    strict: bool = True,
) -> dict[str, Any]:
    """Restore a checkpoint into the given objects and return its ``extra`` dict (with ``step`` added).

    Args:
        path: a checkpoint directory, or a run directory (its latest checkpoint is used).
        model: loaded in place: from ``model.safetensors`` when its keys are the model's own state-dict
            keys, else via ``type(model).from_pretrained(dir)`` (e.g. Hugging Face names written by
            ``save_pretrained``). ``load_model_fn(model, dir)`` overrides both.
        optimizer, scheduler: ``load_state_dict`` with the saved state (error if none was saved).
        restore_rng: put the Python, NumPy, torch CPU and CUDA generators back where they were.
        map_location: where tensors of ``trainer_state.pt`` are loaded (optimizer state is moved to
            the parameters' device by ``load_state_dict``).
        strict: require exact model keys.

    Returns:
        ``extra`` as saved, plus ``"step"`` if it was not there. Raises FileNotFoundError when ``path``
        holds no checkpoint.
    """
    import torch

    path = Path(path)
    if not (path / STATE_FILE).is_file():
        found = latest_checkpoint(path)
        if found is None:
            raise FileNotFoundError(f"no checkpoint in {path} (looked for {STATE_FILE} and {CHECKPOINTS}/)")
        path = found
    state = torch.load(path / STATE_FILE, map_location=map_location, weights_only=True)
    if model is not None:
        if load_model_fn is not None:
            load_model_fn(model, path)
        else:
            _load_model(model, path, strict)
    for obj, key in ((optimizer, "optimizer"), (scheduler, "scheduler")):
        if obj is None:
            continue
        if state.get(key) is None:
            raise ValueError(f"{path} has no {key} state to restore")
        obj.load_state_dict(state[key])
    if restore_rng:
        set_rng_state(state["rng"])
    extra = dict(state.get("extra") or {})
    extra.setdefault("step", state["step"])
    return extra
