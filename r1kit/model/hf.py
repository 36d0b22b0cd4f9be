"""Hugging Face checkpoints: config.json + safetensors (single file or sharded index), both directions.

Our state dict uses HF names except for two things translated here:
- routed experts: ours ``...mlp.experts.gate_up_proj`` (E, 2F, D) / ``...mlp.experts.down_proj`` (E, D, F);
  on disk per expert ``...mlp.experts.{e}.gate_proj.weight`` (F, D), ``up_proj.weight``, ``down_proj.weight``
  (what transformers writes and the DeepSeek-V3 release ships);
- LoRA adapters (``...q_proj.lora_A`` / ``lora_B``, :mod:`r1kit.lora`): left out of the weights and written
  beside them as ``adapter_model.safetensors`` + ``adapter_config.json``; loading re-attaches them;
- MTP: ours ``mtp.0.*``; on disk ``model.layers.{num_hidden_layers}.*`` (the DeepSeek-V3 release layout:
  ``enorm``, ``hnorm``, ``eh_proj``, ``shared_head.norm`` and the block's weights). The release's copies of the
  shared embedding/head inside that layer are ignored on load.
transformers is never imported here; only safetensors.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import stat
import tempfile
import warnings
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from r1kit.model.config import ModelConfig

_EXPERTS = re.compile(r"^(.*\.mlp\.experts)\.(\d+)\.(gate_proj|up_proj|down_proj)\.weight$")
_DTYPE_NAMES = {torch.float32: "float32", torch.bfloat16: "bfloat16", torch.float16: "float16"}
_ADAPTER_CONFIG = "adapter_config.json"  # r1kit.lora.ADAPTER_CONFIG (PEFT's name)
_FP32_KEYS = re.compile(r"\.e_score_correction_bias$")  # kept fp32 as transformers does


def _list_keys(keys, limit: int = 12) -> str:
    keys = sorted(keys)
    more = f" ... and {len(keys) - limit} more" if len(keys) > limit else ""
    return ", ".join(keys[:limit]) + more


# --- loading ---
_MAX_JSON_BYTES = 64 * 2**20  # config.json and the shard index are small; anything bigger is not one
_MAX_SIZE = 2**31 - 1  # largest integer a size in config.json may hold (int32 indexing everywhere)
_POSITIVE = (
    "vocab_size",
    "hidden_size",
    "num_hidden_layers",
    "num_attention_heads",
    "max_position_embeddings",
)


def regular_file(path: Path, what: str) -> Path:
    """`path` if it is a regular file (symlinks followed); a FIFO or a device would block or never end."""
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: {what} not found") from None
    if not stat.S_ISREG(mode):
        raise ValueError(f"{path}: {what} is not a regular file (a directory, FIFO or device)")
    return path


def _read_json(path: Path, what: str):
    regular_file(path, what)
    if os.path.getsize(path) > _MAX_JSON_BYTES:
        raise ValueError(f"{path}: {what} is larger than {_MAX_JSON_BYTES} bytes")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ValueError(f"{path}: {what} is not valid JSON ({err})") from None


def _checkpoint_files(path: Path) -> list[Path]:
    single, index = path / "model.safetensors", path / "model.safetensors.index.json"
    if single.exists():
        return [regular_file(single, "the weights file")]
    if index.exists():
        weight_map = _read_json(index, "the shard index").get("weight_map")
        if not isinstance(weight_map, dict) or not all(isinstance(v, str) for v in weight_map.values()):
            raise ValueError(f"{index}: weight_map must map tensor names to file names")
        files = []
        for name in sorted(set(weight_map.values())):
            if Path(name).is_absolute() or ".." in Path(name).parts:
                raise ValueError(f"{index}: shard {name!r} is outside the model directory")
            files.append(regular_file(path / name, "a weights shard"))
        return files
    raise FileNotFoundError(f"no model.safetensors or model.safetensors.index.json in {path}")


def read_config(path: Path) -> ModelConfig:
    """`ModelConfig` of `path/config.json`; ValueError (one line) for a malformed or absurd file."""
    d = _read_json(path / "config.json", "config.json")
    if not isinstance(d, dict):
        raise ValueError(f"{path}/config.json: must hold a JSON object")
    try:
        cfg = ModelConfig.from_hf_dict(d)
    except (TypeError, KeyError, ZeroDivisionError, OverflowError) as err:
        raise ValueError(f"{path}/config.json: invalid value ({type(err).__name__}: {err})") from None
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        integer = isinstance(value, int) and not isinstance(value, bool)
        if f.type in ("int", "int | None") and not (integer or (value is None and f.type != "int")):
            raise ValueError(f"{path}/config.json: {f.name} must be an integer, got {value!r}")
        if isinstance(value, int) and not isinstance(value, bool) and not 0 <= value <= _MAX_SIZE:
            raise ValueError(f"{path}/config.json: {f.name}={value} is out of range [0, {_MAX_SIZE}]")
    for name in _POSITIVE:
        if not getattr(cfg, name) >= 1:
            raise ValueError(f"{path}/config.json: {name} must be >= 1, got {getattr(cfg, name)}")
    return cfg


def token_ids(value, vocab_size: int | None, where: str) -> tuple[int, ...]:
    """`value` (an int or a list of ints, as HF writes `eos_token_id`) as a tuple of distinct token ids.

    ValueError (one line naming `where`) unless every id is an int in [0, vocab_size).
    """
    values = value if isinstance(value, (list, tuple)) else [value]
    for v in values:
        if not isinstance(v, int) or isinstance(v, bool):
            raise ValueError(f"{where}: eos_token_id must be an integer or a list of integers, got {value!r}")
        if v < 0 or (vocab_size is not None and v >= vocab_size):
            raise ValueError(f"{where}: eos_token_id {v} is out of range [0, {vocab_size})")
    return tuple(dict.fromkeys(values))


def read_eos_ids(path: Path, cfg: ModelConfig) -> tuple[int, ...]:
    """The model's end-of-turn token ids: `eos_token_id` of `path/generation_config.json` (what HF's
    `generate` stops on), else of config.json; () when neither names one."""
    gen = path / "generation_config.json"
    if os.path.lexists(gen):
        d = _read_json(gen, "generation_config.json")
        if not isinstance(d, dict):
            raise ValueError(f"{gen}: must hold a JSON object")
        if d.get("eos_token_id") is not None:
            return token_ids(d["eos_token_id"], cfg.vocab_size, str(gen))
    if cfg.eos_token_id is None:
        return ()
    return token_ids(cfg.eos_token_id, cfg.vocab_size, f"{path}/config.json")


def _check_sizes(path: Path, cfg: ModelConfig, shapes: dict[str, tuple[int, ...]]) -> None:
    """Check config.json's layer count and width against the weights present, before building anything.

    Building a model of 10**6 layers (even on the meta device) takes minutes; the checkpoint says
    how many there are.
    """
    layers = {int(m.group(1)) for name in shapes if (m := re.match(r"model\.layers\.(\d+)\.", name))}
    n = cfg.num_hidden_layers
    # more layers than the weights hold (fewer is cheap to build: the missing/unexpected keys name them)
    if n > len(layers) or not all(i in layers for i in range(n)):
        raise ValueError(
            f"{path}: config.json has num_hidden_layers={cfg.num_hidden_layers} but the weights hold "
            f"layers {_ranges(layers)}"
        )
    embed = shapes.get("model.embed_tokens.weight")
    if embed is not None and tuple(embed) != (cfg.vocab_size, cfg.hidden_size):
        raise ValueError(
            f"{path}: config.json has vocab_size={cfg.vocab_size}, hidden_size={cfg.hidden_size} but "
            f"model.embed_tokens.weight is {tuple(embed)}"
        )


def _ranges(values: set[int]) -> str:
    """'0..3' style summary of a set of integers ('none' if empty)."""
    if not values:
        return "none"
    lo, hi = min(values), max(values)
    return f"{lo}..{hi}" + ("" if len(values) == hi - lo + 1 else f" ({len(values)} of them)")


def _has_mtp_weights(files: list[Path], cfg: ModelConfig) -> bool:
    prefix = f"model.layers.{cfg.num_hidden_layers}."
    for file in files:
        with safe_open(str(file), framework="pt", device="cpu") as f:
            if any(name.startswith(prefix) for name in f.keys()):
                return True
    return False


def _to_ours(name: str, cfg: ModelConfig) -> str | None:
    """On-disk key -> our key (None: a key to drop, e.g. the MTP layer's copy of the shared embedding)."""
    mtp_prefix = f"model.layers.{cfg.num_hidden_layers}."
    if cfg.num_mtp_layers and name.startswith(mtp_prefix):
        rest = name[len(mtp_prefix) :]
        if rest in ("embed_tokens.weight", "shared_head.head.weight"):
            return None
        return "mtp.0." + rest
    return name


def load_pretrained(cls, path, device=None, dtype=None):
    """Build ``cls(cfg)`` from an HF checkpoint directory; see ``Transformer.from_pretrained``."""
    path = Path(path)
    cfg = read_config(path)
    eos_ids = read_eos_ids(path, cfg)
    device = torch.device(device or "cpu")
    files = _checkpoint_files(path)
    shapes: dict[str, tuple[int, ...]] = {}
    for file in files:
        try:
            with safe_open(str(file), framework="pt", device="cpu") as f:
                shapes.update({name: tuple(f.get_slice(name).get_shape()) for name in f.keys()})
        except Exception as err:  # safetensors raises its own error types for a bad header
            raise ValueError(f"{file}: not a readable safetensors file ({err})") from None
    _check_sizes(path, cfg, shapes)
    if cfg.num_mtp_layers and not _has_mtp_weights(files, cfg):
        # transformers writes num_nextn_predict_layers=1 by default without MTP weights: load the main model only
        warnings.warn(
            f"{path}: config.json asks for an MTP block but the checkpoint has none; loading without it",
            stacklevel=3,
        )
        cfg = dataclasses.replace(cfg, num_mtp_layers=0)
    expert_parts: dict[str, dict[int, dict[str, torch.Tensor]]] = {}
    state: dict[str, torch.Tensor] = {}
    for file in files:
        with safe_open(str(file), framework="pt", device="cpu") as f:
            for name in f.keys():
                ours = _to_ours(name, cfg)
                if ours is None:
                    continue
                m = _EXPERTS.match(ours)
                if m:
                    expert_parts.setdefault(m.group(1), {}).setdefault(int(m.group(2)), {})[m.group(3)] = (
                        f.get_tensor(name)
                    )
                else:
                    state[ours] = f.get_tensor(name)
    for prefix, experts in expert_parts.items():
        state.update(_stack_experts(prefix, experts, cfg.n_routed_experts))

    if dtype is None:
        embed = state.get("model.embed_tokens.weight")
        dtype = embed.dtype if embed is not None else torch.float32
    model = cls(cfg, device="meta", dtype=dtype)
    expected = set(model.state_dict())
    if cfg.tie_word_embeddings:
        expected.discard("lm_head.weight")
        state.pop("lm_head.weight", None)  # tied: the embedding is the head, a stored copy is redundant
    elif "lm_head.weight" not in state and "model.embed_tokens.weight" in state:
        raise ValueError("checkpoint has no lm_head.weight but config.json says tie_word_embeddings=false")
    missing, unexpected = expected - set(state), set(state) - expected
    if missing or unexpected:
        raise ValueError(
            f"checkpoint {path} does not match the {cfg.family} config: "
            f"missing keys: [{_list_keys(missing)}]; unexpected keys: [{_list_keys(unexpected)}]"
        )
    for name, tensor in state.items():
        want = torch.float32 if _FP32_KEYS.search(name) else dtype
        state[name] = tensor.to(device=device, dtype=want)
    try:
        model.load_state_dict(state, strict=False, assign=True)
    except RuntimeError as err:  # a shape that config.json does not predict
        detail = str(err).strip().splitlines()[-1].strip()
        raise ValueError(f"checkpoint {path} does not match its config.json: {detail}") from None
    if cfg.tie_word_embeddings:
        model.lm_head.weight = model.model.embed_tokens.weight
    for module in model.moe_layers():  # non-persistent counters are still on meta
        module.tokens_per_expert = torch.zeros(cfg.n_routed_experts, dtype=torch.long, device=device)
    left = [name for name, t in [*model.named_parameters(), *model.named_buffers()] if t.is_meta]
    if left:
        raise RuntimeError(f"internal error: tensors left unloaded: {_list_keys(left)}")
    model.generation_eos_ids = eos_ids  # the engine stops on these (Engine's eos_token_ids)
    if os.path.lexists(path / _ADAPTER_CONFIG):  # base weights + a LoRA adapter (an r1kit LoRA checkpoint)
        from r1kit.lora import load_adapter

        load_adapter(model, path, freeze=False)  # trainable like any loaded model; stages decide
    return model


def _stack_experts(prefix: str, experts: dict[int, dict[str, torch.Tensor]], n_experts: int):
    """Per-expert (gate, up, down) matrices -> our stacked gate_up_proj (E, 2F, D) and down_proj (E, D, F)."""
    wanted = [(e, p) for e in range(n_experts) for p in ("gate_proj", "up_proj", "down_proj")]
    missing = [f"{prefix}.{e}.{p}.weight" for e, p in wanted if p not in experts.get(e, {})]
    extra = [f"{prefix}.{e}.*" for e in experts if e >= n_experts]
    if missing or extra:
        raise ValueError(f"expert weights do not match n_routed_experts={n_experts}: missing [{_list_keys(missing)}]"
                         f"; unexpected [{_list_keys(extra)}]")  # fmt: skip
    gate_up = torch.stack(
        [torch.cat([experts[e]["gate_proj"], experts[e]["up_proj"]]) for e in range(n_experts)]
    )
    down = torch.stack([experts[e]["down_proj"] for e in range(n_experts)])
    return {f"{prefix}.gate_up_proj": gate_up, f"{prefix}.down_proj": down}


# --- saving ---
def hf_state_dict(model) -> dict[str, torch.Tensor]:
    """The on-disk (HF) state dict of ``model``: experts split, MTP renamed, tied head dropped; contiguous."""
    cfg: ModelConfig = model.config
    out: dict[str, torch.Tensor] = {}
    mtp_prefix = f"model.layers.{cfg.num_hidden_layers}."
    for name, tensor in model.state_dict().items():
        if name.endswith((".lora_A", ".lora_B")):
            continue  # LoRA adapters are saved apart, in PEFT's layout (r1kit.lora.save_adapter)
        if name == "lm_head.weight" and cfg.tie_word_embeddings:
            continue  # transformers re-ties it from model.embed_tokens.weight
        if name.startswith("mtp.0."):
            name = mtp_prefix + name[len("mtp.0.") :]
        tensor = tensor.detach()
        if name.endswith(".mlp.experts.gate_up_proj"):
            prefix, f = name[: -len(".gate_up_proj")], tensor.shape[1] // 2
            for e in range(tensor.shape[0]):
                out[f"{prefix}.{e}.gate_proj.weight"] = tensor[e, :f].contiguous()
                out[f"{prefix}.{e}.up_proj.weight"] = tensor[e, f:].contiguous()
        elif name.endswith(".mlp.experts.down_proj"):
            prefix = name[: -len(".down_proj")]
            for e in range(tensor.shape[0]):
                out[f"{prefix}.{e}.down_proj.weight"] = tensor[e].contiguous()
        else:
            out[name] = tensor.contiguous()
    return {k: v.cpu() for k, v in out.items()}


def _atomic_write(target: Path, write) -> None:
    """Call ``write(tmp_path)`` then rename onto ``target`` so readers never see a half-written file."""
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(Path(tmp))
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def save_pretrained(model, path, max_shard_bytes: int = 5 * 2**30) -> None:
    """Write ``path/config.json`` and ``model.safetensors`` (or shards + index) atomically, file by file,
    and ``generation_config.json`` when the model's end-of-turn ids (``generation_eos_ids``) are not config.json's.

    Stale weight files from an earlier save with a different layout are removed, so loaders never mix them.
    """
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    cfg: ModelConfig = model.config
    state = hf_state_dict(model)
    shards: list[dict[str, torch.Tensor]] = [{}]
    size = 0
    for name, tensor in state.items():
        nbytes = tensor.numel() * tensor.element_size()
        if shards[-1] and size + nbytes > max_shard_bytes:
            shards.append({})
            size = 0
        shards[-1][name] = tensor
        size += nbytes
    metadata = {"format": "pt"}
    if len(shards) == 1:
        names = ["model.safetensors"]
    else:
        names = [f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors" for i in range(len(shards))]
    for name, shard in zip(names, shards):
        _atomic_write(path / name, lambda tmp, shard=shard: save_file(shard, str(tmp), metadata=metadata))
    index_path = path / "model.safetensors.index.json"
    if len(shards) > 1:
        index = {
            "metadata": {"total_size": sum(t.numel() * t.element_size() for t in state.values())},
            "weight_map": {k: names[i] for i, shard in enumerate(shards) for k in shard},
        }
        _atomic_write(index_path, lambda tmp: tmp.write_text(json.dumps(index, indent=2, sort_keys=True)))
    for stale in path.glob("model*.safetensors*"):
        if stale.name not in names and not (len(shards) > 1 and stale == index_path):
            stale.unlink()
    from r1kit.lora import has_lora, save_adapter

    if has_lora(model):  # the base weights above, the adapter beside them: load_pretrained re-attaches it
        save_adapter(model, path)
    else:  # an adapter left from an earlier save would be attached to these weights on load
        for stale in (path / _ADAPTER_CONFIG, path / "adapter_model.safetensors"):
            stale.unlink(missing_ok=True)
    hf = cfg.to_hf_dict()
    hf["dtype"] = _DTYPE_NAMES.get(model.model.embed_tokens.weight.dtype, "float32")
    _atomic_write(path / "config.json", lambda tmp: tmp.write_text(json.dumps(hf, indent=2) + "\n"))
    # end-of-turn ids read from a generation_config.json that config.json does not hold: keep them
    eos = tuple(getattr(model, "generation_eos_ids", ()))
    in_config = cfg.eos_token_id if isinstance(cfg.eos_token_id, list) else [cfg.eos_token_id]
    if eos and eos != tuple(x for x in in_config if x is not None):
        gen_path = path / "generation_config.json"
        try:  # saving over a directory that has one: keep its other fields (temperature, top_p, ...)
            gen = _read_json(gen_path, "generation_config.json") if os.path.lexists(gen_path) else {}
        except (OSError, ValueError):
            gen = {}
        gen = {
            **(gen if isinstance(gen, dict) else {}),
            "eos_token_id": list(eos) if len(eos) > 1 else eos[0],
        }
        _atomic_write(gen_path, lambda tmp: tmp.write_text(json.dumps(gen, indent=2) + "\n"))
