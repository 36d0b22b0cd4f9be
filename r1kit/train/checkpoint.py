"""Atomic, resumable training checkpoints.

Layout of a run directory::

    run_dir/checkpoints/
        step_00000200/
            model.safetensors        # or whatever model.save_pretrained writes (HF layout + config.json)
            trainer_state.pt         # optimizer, scheduler, RNG states, step, the caller's `extra`
        step_00000300/
        latest                       # text file: "step_00000300"

A checkpoint is written into ``checkpoints/.tmp-step_XXXXXXXX-PID/``, every file is fsynced, a
``manifest.json`` (every file and its size) is written last, and the directory is renamed into place;
only then is ``latest`` replaced (write-temp + ``os.replace``) and old checkpoints pruned (each is
renamed to ``.old-...`` before it is deleted). A crash at any point leaves the previous checkpoint and
pointer intact; stale temp directories are ignored by :func:`latest_checkpoint` and removed by the
next save.

A checkpoint is *complete* (:func:`checkpoint_problem` returns None) only when every file it needs is
present and loadable: the files of its manifest at their recorded sizes, ``trainer_state.pt`` a whole
zip archive, the weights (``model.safetensors`` or every shard of its index) with a valid safetensors
header that the file size covers, and the JSON files parseable. :func:`list_checkpoints` and
:func:`latest_checkpoint` only return complete checkpoints, so a resume picks the newest complete one
(a kill in the middle of a prune or a truncated copy is skipped).

Only one process (rank 0) should save into a run directory.
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
import struct
import time
import warnings
import zipfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

CHECKPOINTS = "checkpoints"
LATEST = "latest"
STATE_FILE = "trainer_state.pt"
MODEL_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"
MANIFEST = "manifest.json"
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


def _safetensors_problem(path: Path) -> str | None:
    """Why ``path`` is not a whole safetensors file (header length, JSON header, data end vs file size)."""
    try:
        size = path.stat().st_size
        with open(path, "rb") as fh:
            head = fh.read(8)
            if len(head) < 8:
                return f"{path.name} is truncated ({size} bytes)"
            (n,) = struct.unpack("<Q", head)
            if n > min(size - 8, 100 * 2**20):
                return f"{path.name} is truncated or not safetensors (header of {n} bytes, file of {size})"
            header = json.loads(fh.read(n))
    except (OSError, ValueError) as err:
        return f"{path.name} is not a safetensors file ({type(err).__name__})"
    if not isinstance(header, dict):
        return f"{path.name} is not a safetensors file"
    ends = [
        t["data_offsets"][1]
        for name, t in header.items()
        if name != "__metadata__" and isinstance(t, dict) and len(t.get("data_offsets") or ()) == 2
    ]
    if 8 + n + max(ends, default=0) > size:
        return f"{path.name} is truncated ({size} bytes, its header needs {8 + n + max(ends)})"
    return None


def _json_problem(path: Path) -> str | None:
    try:
        json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        return f"{path.name} is not valid JSON ({type(err).__name__})"
    return None


def model_files_problem(directory: str | Path) -> str | None:
    """Why the model files of ``directory`` cannot be loaded, or None: ``model.safetensors`` (or the
    index and every shard it names) with a whole safetensors layout, and a parseable ``config.json``
    (and ``tokenizer.json``) when present. Cheap: reads headers, never the tensors."""
    directory = Path(directory)
    if not directory.is_dir():
        return f"{directory} is not a directory"
    weights = directory / MODEL_FILE
    index = directory / INDEX_FILE
    if weights.is_file():
        shards = [weights]
    elif index.is_file():
        try:
            names = sorted(set(json.loads(index.read_text(encoding="utf-8"))["weight_map"].values()))
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as err:
            return f"{INDEX_FILE} is not a valid shard index ({type(err).__name__})"
        shards = [directory / name for name in names]
        missing = [p.name for p in shards if not p.is_file()]
        if missing:
            return f"weight shard {missing[0]} is missing"
    else:
        return f"no {MODEL_FILE} (or {INDEX_FILE})"
    for shard in shards:
        problem = _safetensors_problem(shard)
        if problem:
            return problem
    for name in ("config.json", "tokenizer.json", "tokenizer_config.json"):
        if (directory / name).exists():
            problem = _json_problem(directory / name)
            if problem:
                return problem
    return None


def checkpoint_problem(path: str | Path) -> str | None:
    """Why checkpoint directory ``path`` is not complete, or None when every file it needs is present
    and loadable (see the module docstring). Reads file sizes and headers only."""
    path = Path(path)
    if not path.is_dir():
        return f"{path.name} is not a directory"
    manifest = path / MANIFEST
    if manifest.is_file():
        try:
            sizes = json.loads(manifest.read_text(encoding="utf-8"))["files"]
            listed = {str(name): int(size) for name, size in sizes.items()}
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as err:
            return f"{MANIFEST} is not valid ({type(err).__name__})"
        for name, size in listed.items():
            file = path / name
            if not file.is_file():
                return f"{name} is missing"
            if file.stat().st_size != size:
                return f"{name} is truncated or changed ({file.stat().st_size} bytes, {size} were written)"
    state = path / STATE_FILE
    if not state.is_file():
        return f"{STATE_FILE} is missing"
    try:
        with zipfile.ZipFile(state) as archive:  # torch.save's format; the directory sits at the end
            archive.infolist()
    except (OSError, zipfile.BadZipFile) as err:
        return f"{STATE_FILE} is truncated or not a torch checkpoint ({type(err).__name__})"
    return model_files_problem(path)


def _step_dirs(run_dir: str | Path) -> list[tuple[int, Path]]:
    root = Path(run_dir) / CHECKPOINTS
    if not root.is_dir():
        return []
    found = []
    for child in root.iterdir():
        m = _STEP_DIR.match(child.name)
        if m and child.is_dir():
            found.append((int(m.group(1)), child))
    return sorted(found)


def all_checkpoints(run_dir: str | Path) -> list[Path]:
    """Every ``step_*`` directory of ``run_dir``, complete or not, oldest step first."""
    return [path for _, path in _step_dirs(run_dir)]


_RESUME_HINT = "delete that step directory to resume from the one before, or start a new run directory"


def _first_line(err: BaseException) -> str:
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    text = lines[0] if lines else type(err).__name__
    return text if len(text) <= 300 else text[:297] + "..."


def list_checkpoints(run_dir: str | Path) -> list[Path]:
    """Complete checkpoints of ``run_dir`` (:func:`checkpoint_problem` is None), oldest step first."""
    return [path for _, path in _step_dirs(run_dir) if checkpoint_problem(path) is None]


def latest_checkpoint(run_dir: str | Path) -> Path | None:
    """The checkpoint ``latest`` points to when it is complete, else the highest complete step, else None.

    Temp directories of interrupted saves and incomplete checkpoints are never returned; skipping an
    incomplete checkpoint newer than the one returned raises a warning naming what is wrong with it.
    """
    root = Path(run_dir) / CHECKPOINTS
    pointer = root / LATEST
    if pointer.is_file():
        name = pointer.read_text(encoding="utf-8").strip()
        candidate = root / name
        if _STEP_DIR.match(name) and candidate.is_dir() and checkpoint_problem(candidate) is None:
            newest = all_checkpoints(run_dir)
            if newest and newest[-1] == candidate:
                return candidate
    complete = list_checkpoints(run_dir)
    newest = all_checkpoints(run_dir)
    if newest and (not complete or newest[-1] != complete[-1]):
        broken = newest[-1]
        using = f"using {complete[-1].name}" if complete else "no complete checkpoint is left"
        warnings.warn(
            f"checkpoint {broken} is incomplete ({checkpoint_problem(broken)}); {using}", stacklevel=2
        )
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
        _write_manifest(tmp)
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
            _remove_checkpoint(root, stale)
    return final


def _write_manifest(directory: Path) -> None:
    """Record every file of a checkpoint being written and its size (the completeness check reads it)."""
    files = {
        str(p.relative_to(directory)): p.stat().st_size for p in sorted(directory.rglob("*")) if p.is_file()
    }
    text = json.dumps({"format_version": FORMAT_VERSION, "files": files}, indent=1)
    (directory / MANIFEST).write_text(text + "\n", encoding="utf-8")


def _remove_checkpoint(root: Path, path: Path) -> None:
    """Delete a checkpoint so that a kill midway never leaves a ``step_*`` directory missing files:
    rename it to ``.old-...`` (atomic) first; the next save clears what is left."""
    old = root / f".old-{path.name}-{os.getpid()}"
    try:
        os.rename(path, old)
    except OSError:
        return
    _fsync_dir(root)
    shutil.rmtree(old, ignore_errors=True)


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
        holds no checkpoint, and :class:`r1kit.config.ConfigError` (one line) when the checkpoint is
        incomplete, unreadable or of a different model.
    """
    import torch

    from r1kit.config import ConfigError

    path = Path(path)
    is_checkpoint = (path / STATE_FILE).is_file() or (path / MANIFEST).is_file() or _STEP_DIR.match(path.name)
    if not is_checkpoint:
        found = latest_checkpoint(path)
        if found is None:
            raise FileNotFoundError(f"no checkpoint in {path} (looked for {STATE_FILE} and {CHECKPOINTS}/)")
        path = found
    problem = checkpoint_problem(path)
    if problem is not None:
        raise ConfigError(f"checkpoint {path} is incomplete: {problem}; {_RESUME_HINT}")
    try:
        state = torch.load(path / STATE_FILE, map_location=map_location, weights_only=True)
    except (OSError, RuntimeError, ValueError, EOFError, zipfile.BadZipFile) as err:
        raise ConfigError(
            f"checkpoint {path}: {STATE_FILE} cannot be read ({_first_line(err)}); {_RESUME_HINT}"
        ) from None
    if not isinstance(state, dict) or "step" not in state or "rng" not in state:
        raise ConfigError(f"checkpoint {path}: {STATE_FILE} is not an r1kit trainer state; {_RESUME_HINT}")
    try:
        if model is not None:
            if load_model_fn is not None:
                load_model_fn(model, path)
            else:
                _load_model(model, path, strict)
        for obj, key in ((optimizer, "optimizer"), (scheduler, "scheduler")):
            if obj is None:
                continue
            if state.get(key) is None:
                raise ConfigError(f"checkpoint {path} has no {key} state to restore")
            obj.load_state_dict(state[key])
    except (ValueError, KeyError, RuntimeError) as err:
        if isinstance(err, ConfigError):
            raise
        # a checkpoint of another model (the config changed since it was written) or damaged tensors
        raise ConfigError(
            f"checkpoint {path} does not fit this run ({_first_line(err)}); resume with the run's own "
            f"settings (its config.toml), or start a new run directory"
        ) from None
    if restore_rng:
        set_rng_state(state["rng"])
    extra = dict(state.get("extra") or {})
    extra.setdefault("step", state["step"])
    return extra
