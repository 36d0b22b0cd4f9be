"""Run configuration: a TOML file plus ``--section.key value`` overrides → nested dataclasses.

A stage's config is a dataclass whose fields are either plain values or sections (nested
dataclasses, which may nest further)::

    @dataclass
    class OptimConfig:
        lr: float = 3e-4
        betas: tuple[float, float] = (0.9, 0.95)

    @dataclass
    class SFTConfig:
        run_dir: str = "runs/sft"
        optim: OptimConfig = field(default_factory=OptimConfig)

    cfg = load_config(SFTConfig, "configs/sft.toml", ["--optim.lr", "1e-4"])

Values are converted to the annotated type (int, float, bool, str, Path, Optional, Literal,
list/tuple/dict of those, nested dataclasses). Unknown sections or keys and wrong types raise
:class:`ConfigError` naming the key, where it came from (file or override) and the valid keys.
``save_config`` writes the resolved config as TOML so every run directory records it, and
loading that file back gives an equal config.

``None`` has no TOML spelling: an ``Optional`` field reads the strings ``"none"``/``"null"``
as ``None``, and ``save_config`` writes ``None`` as ``"none"``.
"""

from __future__ import annotations

import dataclasses
import difflib
import enum
import math
import re
import sys
import types
import typing
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal, TypeVar, Union

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on 3.10 only
    import tomli as tomllib

T = TypeVar("T")

_TRUE = {"true", "1", "yes", "on", "y"}
_FALSE = {"false", "0", "no", "off", "n"}
_NONE = {"none", "null"}


class UserError(Exception):
    """A mistake of the user's (a config, a path, a file's contents, a device, a diverged run), not a bug.

    The message is one line that says what is wrong and what to type instead; ``r1kit`` prints it
    without a traceback and exits with status 2. Every user error r1kit raises is one of these.
    """


class ConfigError(UserError, ValueError):
    """A config file, override or a file/directory it names is invalid; the message names the key,
    its source and the fix."""


# the largest int a config may hold: counts and sizes end up in int64 tensors and C loops
MAX_INT = 2**63 - 1


# ----------------------------------------------------------------------------------------------
# validation helpers for stage configs' __post_init__


def _check_finite(value: float, name: str) -> None:
    if isinstance(value, float) and not math.isfinite(value):
        raise ConfigError(f"{name} must be a finite number, got {value!r}")


def check_positive(value: float, name: str, *, allow_zero: bool = False) -> None:
    """Raise :class:`ConfigError` unless ``value > 0`` (``>= 0`` with ``allow_zero``); NaN and inf fail."""
    _check_finite(value, name)
    if value < 0 or (value == 0 and not allow_zero):
        bound = ">= 0" if allow_zero else "> 0"
        raise ConfigError(f"{name} must be {bound}, got {value!r}")


def check_range(value: float, name: str, low: float | None = None, high: float | None = None) -> None:
    """Raise :class:`ConfigError` unless ``low <= value <= high`` (a ``None`` bound is open); NaN and
    inf fail."""
    _check_finite(value, name)
    if (low is not None and value < low) or (high is not None and value > high):
        lo = "-inf" if low is None else repr(low)
        hi = "inf" if high is None else repr(high)
        raise ConfigError(f"{name} must be in [{lo}, {hi}], got {value!r}")


def check_beta(value: float, name: str) -> None:
    """Raise :class:`ConfigError` unless ``0 <= value < 1`` (an Adam moment decay)."""
    _check_finite(value, name)
    if not 0.0 <= value < 1.0:
        raise ConfigError(f"{name} must be in [0, 1), got {value!r}")


def check_one_of(value: Any, name: str, choices: Iterable[Any]) -> None:
    """Raise :class:`ConfigError` unless ``value`` is one of ``choices``."""
    choices = list(choices)
    if value not in choices:
        raise ConfigError(f"{name} must be one of {', '.join(map(repr, choices))}, got {value!r}")


# ----------------------------------------------------------------------------------------------
# schema: the dataclass fields and their resolved types


def _is_dataclass_type(tp: Any) -> bool:
    return isinstance(tp, type) and dataclasses.is_dataclass(tp)


def _fields(cls: type) -> dict[str, tuple[dataclasses.Field, Any]]:
    """Map field name -> (field, resolved type annotation) for the init fields of ``cls``."""
    try:
        hints = typing.get_type_hints(cls)
    except NameError as err:  # string annotations naming a class local to a function
        raise TypeError(
            f"cannot resolve the annotations of {cls.__name__}: {err}; define it at module level"
        ) from err
    return {f.name: (f, hints.get(f.name, Any)) for f in dataclasses.fields(cls) if f.init}


def _type_name(tp: Any) -> str:
    if tp is type(None):
        return "None"
    if isinstance(tp, type) and not typing.get_args(tp):
        return tp.__name__
    origin = typing.get_origin(tp)
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(tp))
    if origin in (Union, types.UnionType):
        return " | ".join(_type_name(a) for a in typing.get_args(tp))
    return str(tp).replace("typing.", "")


def _did_you_mean(name: str, valid: Iterable[str]) -> str:
    close = difflib.get_close_matches(name, list(valid), n=1, cutoff=0.6)
    return f"; did you mean {close[0]!r}?" if close else ""


def _where(source: str) -> str:
    return f" (from {source})" if source else ""


# ----------------------------------------------------------------------------------------------
# value conversion


def _parse_toml_value(text: str) -> Any:
    """Parse a TOML value (array, inline table, string, number) written on the command line."""
    return tomllib.loads(f"v = {text}")["v"]


def _split_items(value: Any, key: str, source: str) -> list[Any]:
    """A list from a TOML array, a TOML array literal string, or a comma-separated string."""
    if isinstance(value, (list, tuple)):
        return list(value)
    if isinstance(value, str):
        text = value.strip()
        if text.startswith("["):
            try:
                parsed = _parse_toml_value(text)
            except tomllib.TOMLDecodeError as err:
                raise ConfigError(f"{key}{_where(source)}: cannot parse {value!r} as a list: {err}") from None
            return list(parsed)
        return [] if not text else [item.strip() for item in text.split(",")]
    raise ConfigError(f"{key}{_where(source)}: expected a list, got {value!r}")


def _bounded_int(value: int, key: str, source: str) -> int:
    if abs(value) > MAX_INT:
        raise ConfigError(f"{key}{_where(source)}: {value} is out of range (|value| <= 2**63 - 1)")
    return value


def _int_of_float(value: float, key: str, source: str) -> int:
    """An int written as a float ("1e6"): only where the float is exact (|x| <= 2**53)."""
    if abs(value) > 2**53:
        raise ConfigError(
            f"{key}{_where(source)}: {value!r} is too large to be an exact integer; write the digits, "
            f"or a smaller number"
        )
    return int(value)


def _conversion_error(value: Any, tp: Any, key: str, source: str, expected: str | None = None) -> ConfigError:
    """The ConfigError for ``value`` that is not a ``tp`` (``expected`` overrides the type's name)."""
    return ConfigError(
        f"{key}{_where(source)}: expected {expected or _type_name(tp)}, got {value!r} "
        f"({type(value).__name__})"
    )


def _convert(value: Any, tp: Any, key: str, source: str) -> Any:
    """Convert ``value`` (from TOML or a CLI string) to type ``tp``; raise ConfigError otherwise."""
    if tp is Any:
        return value
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (Union, types.UnionType):
        return _convert_union(value, tp, args, key, source)
    if origin is Literal:
        return _convert_literal(value, args, key, source)
    if origin in (list, tuple, set, frozenset) or tp in (list, tuple):
        return _convert_collection(value, tp, origin, args, key, source)
    if origin is dict or tp is dict:
        return _convert_table(value, tp, args, key, source)
    if tp is bool:
        return _convert_bool(value, tp, key, source)
    if tp is int:
        return _convert_int(value, tp, key, source)
    if tp is float:
        return _convert_float(value, tp, key, source)
    return _convert_other(value, tp, key, source)


def _convert_union(value: Any, tp: Any, args: tuple, key: str, source: str) -> Any:
    """``X | None`` and other unions: None (or a "none" string) where allowed, else the first member that fits."""
    if type(None) in args and (value is None or (isinstance(value, str) and value.lower() in _NONE)):
        return None
    for arg in (a for a in args if a is not type(None)):
        try:
            return _convert(value, arg, key, source)
        except ConfigError:
            continue
    raise _conversion_error(value, tp, key, source)


def _convert_literal(value: Any, args: tuple, key: str, source: str) -> Any:
    """``Literal[...]``: the choice that ``value`` converts to, else an error listing the choices."""
    for choice in args:
        try:
            converted = _convert(value, type(choice), key, source)
        except ConfigError:
            continue
        if converted == choice:
            return choice
    raise ConfigError(
        f"{key}{_where(source)}: {value!r} is not allowed; expected one of "
        f"{', '.join(repr(a) for a in args)}{_did_you_mean(str(value), map(str, args))}"
    )


def _convert_collection(value: Any, tp: Any, origin: Any, args: tuple, key: str, source: str) -> Any:
    """list / tuple / set / frozenset, from a TOML array or a comma-separated string; items converted."""
    items = _split_items(value, key, source)
    if origin is tuple and args and not (len(args) == 2 and args[1] is Ellipsis):
        if len(items) != len(args):
            raise _conversion_error(value, tp, key, source, f"{len(args)} items ({_type_name(tp)})")
        return tuple(_convert(v, a, f"{key}[{i}]", source) for i, (v, a) in enumerate(zip(items, args)))
    item_tp = args[0] if args else Any
    converted = [_convert(v, item_tp, f"{key}[{i}]", source) for i, v in enumerate(items)]
    container = {tuple: tuple, set: set, frozenset: frozenset}.get(origin or tp, list)
    return container(converted)


def _convert_table(value: Any, tp: Any, args: tuple, key: str, source: str) -> dict:
    """dict, from a TOML table or an inline-table string; keys and values converted."""
    if isinstance(value, str):
        try:
            value = _parse_toml_value(value)
        except tomllib.TOMLDecodeError as err:
            raise ConfigError(f"{key}{_where(source)}: cannot parse {value!r} as a table: {err}") from None
    if not isinstance(value, Mapping):
        raise _conversion_error(value, tp, key, source, "a table")
    key_tp, val_tp = args if args else (Any, Any)
    return {
        _convert(k, key_tp, key, source): _convert(v, val_tp, f"{key}.{k}", source) for k, v in value.items()
    }


def _convert_bool(value: Any, tp: Any, key: str, source: str) -> bool:
    """bool, from a bool or one of the true/false words (true/false, 1/0, yes/no, ...)."""
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in _TRUE | _FALSE:
        return value.strip().lower() in _TRUE
    raise _conversion_error(value, tp, key, source, "a bool (true/false, 1/0, yes/no)")


def _convert_int(value: Any, tp: Any, key: str, source: str) -> int:
    """int, from an int, an integral float, or a string such as "1_000" or "1e6" (never from a bool)."""
    if isinstance(value, bool):
        raise _conversion_error(value, tp, key, source)
    if isinstance(value, int):
        return _bounded_int(value, key, source)
    if isinstance(value, float) and value.is_integer():
        return _int_of_float(value, key, source)
    if isinstance(value, str):
        text = value.strip().replace("_", "")
        try:
            as_int = int(text)
        except ValueError:
            as_int = None
        if as_int is not None:
            return _bounded_int(as_int, key, source)
        try:  # "1e6" is a convenient way to write a token budget
            as_float = float(text)
        except ValueError:
            raise _conversion_error(value, tp, key, source) from None
        if math.isfinite(as_float) and as_float.is_integer():
            return _int_of_float(as_float, key, source)
    raise _conversion_error(value, tp, key, source)


def _convert_float(value: Any, tp: Any, key: str, source: str) -> float:
    """A finite float, from an int, a float or a numeric string (never from a bool)."""
    if isinstance(value, bool):
        raise _conversion_error(value, tp, key, source)
    if isinstance(value, (int, float)):
        number = float(value)
    elif isinstance(value, str):
        try:
            number = float(value.strip().replace("_", ""))
        except ValueError:
            raise _conversion_error(value, tp, key, source) from None
    else:
        raise _conversion_error(value, tp, key, source)
    if not math.isfinite(number):  # nan and inf pass every `x < 0` check; no setting means them
        raise ConfigError(f"{key}{_where(source)}: expected a finite number, got {value!r}")
    return number


def _convert_other(value: Any, tp: Any, key: str, source: str) -> Any:
    """str, Path, nested dataclasses (already built) and other simple types constructible from their value."""
    if tp is str:
        if isinstance(value, str):
            return value
        if isinstance(value, Path):
            return str(value)
        raise _conversion_error(value, tp, key, source)
    if isinstance(tp, type) and issubclass(tp, Path):
        if isinstance(value, (str, Path)):
            return tp(value)
        raise _conversion_error(value, tp, key, source, "a path")
    if _is_dataclass_type(tp):
        if isinstance(value, tp):
            return value
        raise _conversion_error(value, tp, key, source, f"a [{key}] table")
    if isinstance(tp, type):
        if isinstance(value, tp):
            return value
        try:  # enums and other simple types constructible from their TOML value
            return tp(value)
        except (TypeError, ValueError):
            raise _conversion_error(value, tp, key, source) from None
    return value


def convert_value(value: Any, tp: Any, key: str, source: str = "") -> Any:
    """Convert ``value`` to type annotation ``tp`` with the config rules (finite floats, int64 ints,
    Literal choices, ...); :class:`ConfigError` naming ``key`` otherwise. For tables typed
    ``dict[str, Any]`` whose fields are another dataclass's (e.g. ``model.overrides``)."""
    return _convert(value, tp, key, source)


# ----------------------------------------------------------------------------------------------
# merging TOML tables and overrides into a nested dict of converted values


def _section_error(path: str, name: str, cls: type, source: str, what: str) -> ConfigError:
    """The error for an unknown ``name`` inside section ``path``, listing what is valid there."""
    fields = _fields(cls)
    sections = [n for n, (_, tp) in fields.items() if _is_dataclass_type(tp)]
    keys = [n for n in fields if n not in sections]
    prefix = f"{path}." if path else ""
    hint = ""
    close = difflib.get_close_matches(name, list(fields), n=1, cutoff=0.6)
    if close:
        hint = f"; did you mean {prefix + close[0]!r}?"
    where = f"[{path}]" if path else "the top level"
    listing = []
    if keys:
        listing.append("keys " + ", ".join(keys))
    if sections:
        listing.append("sections " + ", ".join(sections))
    return ConfigError(
        f"unknown {what} {prefix + name!r}{_where(source)}{hint} "
        f"Valid in {where}: {'; '.join(listing) or 'nothing'}."
    )


def _merge_table(cls: type, table: Mapping[str, Any], into: dict[str, Any], path: str, source: str) -> None:
    """Validate and convert a (TOML) table against dataclass ``cls``, writing into ``into``."""
    fields = _fields(cls)
    for name, value in table.items():
        if name not in fields:
            what = "section" if isinstance(value, Mapping) else "key"
            raise _section_error(path, name, cls, source, what)
        _, tp = fields[name]
        full = f"{path}.{name}" if path else name
        if _is_dataclass_type(tp):
            if dataclasses.is_dataclass(value) and not isinstance(value, type):
                value = config_to_dict(value)
            if not isinstance(value, Mapping):
                raise ConfigError(f"{full}{_where(source)}: expected a [{full}] table, got {value!r}")
            _merge_table(tp, value, into.setdefault(name, {}), full, source)
        else:
            into[name] = _convert(value, tp, full, source)


def _apply_override(cls: type, dotted: str, value: Any, into: dict[str, Any], source: str) -> None:
    """Set one ``section.key`` (any depth) to ``value`` (a string or an already-typed value)."""
    parts = dotted.split(".")
    path = ""
    for i, name in enumerate(parts):
        fields = _fields(cls)
        last = i == len(parts) - 1
        if name not in fields:
            raise _section_error(path, name, cls, source, "key" if last else "section")
        _, tp = fields[name]
        full = f"{path}.{name}" if path else name
        if last:
            if _is_dataclass_type(tp):
                if isinstance(value, str):
                    try:
                        value = _parse_toml_value(value)
                    except tomllib.TOMLDecodeError:
                        pass
                if not isinstance(value, Mapping):
                    valid = ", ".join(f"{full}.{k}" for k in _fields(tp))
                    raise ConfigError(f"{full}{_where(source)} is a section; set one of its keys: {valid}")
                _merge_table(tp, value, into.setdefault(name, {}), full, source)
            else:
                into[name] = _convert(value, tp, full, source)
            return
        if not _is_dataclass_type(tp):
            raise ConfigError(f"{full}{_where(source)} is a key of type {_type_name(tp)}, not a section")
        cls, into, path = tp, into.setdefault(name, {}), full


def _field_type(cls: type, dotted: str) -> Any:
    """Resolved type of ``section.key`` or None when the path does not exist."""
    tp: Any = cls
    for name in dotted.split("."):
        if not _is_dataclass_type(tp):
            return None
        entry = _fields(tp).get(name)
        if entry is None:
            return None
        tp = entry[1]
    return tp


# ----------------------------------------------------------------------------------------------
# renamed keys: every stage speaks one dialect ([train] / [run] / [val] ... mean the same everywhere)

_OPTIM_KEYS = (
    "lr",
    "weight_decay",
    "beta1",
    "beta2",
    "warmup_steps",
    "schedule",
    "grad_clip",
    "moe_bias_gamma",
)

#: Keys that moved when the stages came to share one config dialect: old dotted key -> new dotted key.
#: A TOML file, a ``--section.key`` override or a dict using an old key gets a one-line ConfigError naming
#: the new key, when the old key is unknown to the stage and the new one exists there (GRPO's old
#: top-level run settings, its [optim] section, [val] num_problems).
RENAMED_KEYS: dict[str, str] = {
    "run_dir": "run.dir",
    "resume": "run.resume",
    "save_every": "run.save_every",
    "log_every": "run.log_every",
    "keep_last": "run.keep_last",
    "progress": "run.progress",
    "tensorboard": "run.tensorboard",
    "plot": "run.plot",
    "device": "train.device",
    "precision": "train.precision",
    "strategy": "train.strategy",
    "seed": "train.seed",
    "threads": "train.threads",
    "max_steps": "train.steps",
    "max_seconds": "train.max_seconds",
    **{f"optim.{k}": f"train.{k}" for k in _OPTIM_KEYS},
    "loss.micro_batch_size": "train.micro_batch_size",
    "val.num_problems": "val.problems",
    # one [prompt] section for every stage that renders problems (r1kit.train.sections.PromptSection)
    "data.template": "prompt.template",
    "data.system": "prompt.system",
    "sample.template": "prompt.template",
    "sample.system": "prompt.system",
}
#: Sections that moved as a whole: old name -> new name.
RENAMED_SECTIONS: dict[str, str] = {"optim": "train"}


def _moved(new: str) -> str:
    section, _, key = new.rpartition(".")
    return f"use [{section}] {key} (--{new})" if section else f"use {new} (--{new})"


def _check_renamed_key(cls: type, dotted: str, source: str) -> None:
    """Raise a one-line ConfigError when ``dotted`` is an old key of :data:`RENAMED_KEYS` (or lies in a
    section of :data:`RENAMED_SECTIONS`) that ``cls`` does not have and whose new key it does."""
    if _field_type(cls, dotted) is not None:
        return
    new = RENAMED_KEYS.get(dotted)
    if new is not None and _field_type(cls, new) is not None:
        raise ConfigError(f"{dotted}{_where(source)} moved: {_moved(new)}")
    head, _, rest = dotted.partition(".")
    section = RENAMED_SECTIONS.get(head)
    if section is not None and _field_type(cls, head) is None and _field_type(cls, section) is not None:
        target = f"{section}.{rest}" if rest else section
        if rest and _field_type(cls, target) is not None:
            raise ConfigError(f"{dotted}{_where(source)} moved: {_moved(target)}")
        raise ConfigError(
            f"[{head}]{_where(source)} moved: its keys are now in [{section}] (--{section}.KEY)"
        )


def _check_renamed_table(cls: type, table: Mapping[str, Any], source: str, prefix: str = "") -> None:
    """:func:`_check_renamed_key` for every dotted key of a (TOML) table."""
    for name, value in table.items():
        dotted = f"{prefix}{name}"
        if isinstance(value, Mapping) and _is_dataclass_type(_field_type(cls, dotted) or type(None)):
            _check_renamed_table(cls, value, source, f"{dotted}.")
        elif isinstance(value, Mapping) and dotted in RENAMED_SECTIONS:
            _check_renamed_table(cls, value, source, f"{dotted}.")
            _check_renamed_key(cls, dotted, source)
        else:
            _check_renamed_key(cls, dotted, source)


def parse_overrides(cls: type, tokens: Sequence[str]) -> list[tuple[str, str]]:
    """Split CLI tokens into ``(dotted_key, value)`` pairs.

    Accepts ``--a.b value`` and ``--a.b=value``; a bool key given without a value
    (``--train.compile`` followed by another flag or nothing) means ``true``.
    """
    pairs: list[tuple[str, str]] = []
    i = 0
    tokens = list(tokens)
    while i < len(tokens):
        token = tokens[i]
        if not token.startswith("--") or len(token) == 2:
            raise ConfigError(f"expected an override like --section.key value, got {token!r}")
        body = token[2:]
        _check_renamed_key(cls, body.split("=", 1)[0].replace("-", "_"), f"--{body.split('=', 1)[0]}")
        if "=" in body:
            key, value = body.split("=", 1)
            i += 1
        else:
            key = body
            has_value = i + 1 < len(tokens) and not tokens[i + 1].startswith("--")
            if has_value:
                value = tokens[i + 1]
                i += 2
            elif _field_type(cls, key) is bool:
                value, i = "true", i + 1
            else:
                raise ConfigError(f"override --{key} is missing its value")
        pairs.append((key.replace("-", "_"), value))
    return pairs


def _build(cls: type[T], values: Mapping[str, Any], path: str) -> T:
    """Instantiate ``cls`` from converted values; nested sections are built recursively."""
    kwargs = {}
    for name, (f, tp) in _fields(cls).items():
        full = f"{path}.{name}" if path else name
        if _is_dataclass_type(tp):
            if name in values:
                kwargs[name] = _build(tp, values[name], full)
            elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                kwargs[name] = _build(tp, {}, full)
        elif name in values:
            kwargs[name] = values[name]
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise ConfigError(f"missing required key {full!r} ({_type_name(tp)})")
    try:
        return cls(**kwargs)
    except ConfigError:
        raise
    except (ValueError, TypeError) as err:
        where = f"[{path}]" if path else cls.__name__
        raise ConfigError(f"invalid {where}: {err}") from err


def config_from_dict(cls: type[T], data: Mapping[str, Any], source: str = "dict") -> T:
    """Build ``cls`` from a nested dict (as TOML would give), with the same validation as files."""
    values: dict[str, Any] = {}
    _check_renamed_table(cls, data, source)
    _merge_table(cls, data, values, "", source)
    return _build(cls, values, "")


def _read_toml(path: Path) -> dict[str, Any]:
    """The table of a TOML config file; ConfigError (with the files one could mean) when it is not one."""
    if path.is_dir():
        found = sorted(str(p) for p in path.glob("*.toml"))[:6]
        hint = f"; e.g. {', '.join(found)}" if found else ""
        raise ConfigError(f"config {path} is a directory: give a TOML file{hint}")
    if not path.is_file():
        what = "does not exist" if not path.exists() else "is not a regular file"
        near = sorted(str(p) for p in path.parent.glob("*.toml"))[:6] if path.parent.is_dir() else []
        hint = f"; TOML files in {path.parent}: {', '.join(near)}" if near else ""
        raise ConfigError(f"config file {path} {what}{hint}")
    try:
        with path.open("rb") as fh:
            return tomllib.load(fh)
    except tomllib.TOMLDecodeError as err:
        raise ConfigError(f"{path}: invalid TOML: {err}") from None
    except (OSError, UnicodeDecodeError) as err:
        raise ConfigError(f"config file {path} cannot be read: {err}") from None


def load_config(
    cls: type[T],
    path: str | Path | None = None,
    overrides: Sequence[str] | Mapping[str, Any] = (),
    base: T | Mapping[str, Any] | None = None,
) -> T:
    """Load a config dataclass: defaults < ``base`` < TOML file ``path`` < ``overrides``.

    Args:
        cls: the config dataclass (fields are values or nested dataclass sections).
        path: a TOML file, or None for defaults only.
        overrides: CLI tokens ``["--section.key", "value", "--a.b=value", ...]``, or a mapping
            ``{"section.key": value}``.
        base: an instance of ``cls`` or a nested dict used in place of the defaults (presets).

    Returns:
        An instance of ``cls``. Raises :class:`ConfigError` on unknown sections/keys, wrong
        types, non-finite floats, ints beyond int64, values rejected by a ``__post_init__``, and
        when ``path`` is missing, a directory or not TOML.
    """
    if not _is_dataclass_type(cls):
        raise TypeError(f"load_config needs a dataclass type, got {cls!r}")
    values: dict[str, Any] = {}
    if base is not None:
        base_dict = config_to_dict(base) if dataclasses.is_dataclass(base) else base
        _merge_table(cls, base_dict, values, "", "base config")
    if path is not None:
        path = Path(path)
        table = _read_toml(path)
        _check_renamed_table(cls, table, str(path))
        _merge_table(cls, table, values, "", str(path))
    if isinstance(overrides, Mapping):
        pairs = list(overrides.items())
        for key, value in pairs:
            _check_renamed_key(cls, key, f"override {key}")
            _apply_override(cls, key, value, values, f"override {key}")
    else:
        for key, value in parse_overrides(cls, overrides):
            _apply_override(cls, key, value, values, f"--{key}")
    return _build(cls, values, "")


# ----------------------------------------------------------------------------------------------
# writing: config -> dict -> TOML


def _plain(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        items = sorted(value) if isinstance(value, (set, frozenset)) else value
        return [_plain(v) for v in items]
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, enum.Enum):
        return value.value
    return value


def config_to_dict(cfg: Any) -> dict[str, Any]:
    """A config dataclass as a nested dict of plain values (tuples → lists, Paths → str)."""
    if not (dataclasses.is_dataclass(cfg) and not isinstance(cfg, type)):
        raise TypeError(f"config_to_dict needs a dataclass instance, got {type(cfg).__name__}")
    return _plain(cfg)


_BARE_KEY = re.compile(r"^[A-Za-z0-9_-]+$")


def _toml_key(key: str) -> str:
    return key if _BARE_KEY.match(key) else _toml_string(key)


def _toml_string(text: str) -> str:
    out = []
    for ch in text:
        if ch == "\\":
            out.append("\\\\")
        elif ch == '"':
            out.append('\\"')
        elif ch == "\n":
            out.append("\\n")
        elif ch == "\t":
            out.append("\\t")
        elif ch == "\r":
            out.append("\\r")
        elif ord(ch) < 0x20 or ord(ch) == 0x7F:
            out.append(f"\\u{ord(ch):04x}")
        else:
            out.append(ch)
    return '"' + "".join(out) + '"'


def _toml_value(value: Any, key: str) -> str:
    if value is None:
        return '"none"'
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        return repr(value)
    if isinstance(value, str):
        return _toml_string(value)
    if isinstance(value, Path):
        return _toml_string(str(value))
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml_value(v, key) for v in value) + "]"
    if isinstance(value, Mapping):
        return "{" + ", ".join(f"{_toml_key(str(k))} = {_toml_value(v, key)}" for k, v in value.items()) + "}"
    raise TypeError(f"cannot write {key!r} = {value!r} ({type(value).__name__}) as TOML")


def dumps_toml(data: Mapping[str, Any], header: str | None = None) -> str:
    """Serialise a nested dict of scalars, lists and tables to TOML text.

    Nested dicts become ``[a.b]`` tables (scalars of a table come before its sub-tables);
    dicts inside lists become inline tables; ``None`` is written as ``"none"``.
    ``header`` is written as ``#`` comment lines at the top.
    """
    lines: list[str] = []
    if header:
        lines += [f"# {line}".rstrip() for line in header.splitlines()]

    def emit(table: Mapping[str, Any], prefix: list[str]) -> None:
        subtables = {k: v for k, v in table.items() if isinstance(v, Mapping)}
        for k, v in table.items():
            if k not in subtables:
                lines.append(f"{_toml_key(str(k))} = {_toml_value(v, '.'.join([*prefix, str(k)]))}")
        for k, v in subtables.items():
            name = [*prefix, str(k)]
            if lines:
                lines.append("")
            lines.append("[" + ".".join(_toml_key(p) for p in name) + "]")
            emit(v, name)

    emit(data, [])
    return "\n".join(lines) + "\n"


def save_config(cfg: Any, path: str | Path, header: str | None = None) -> Path:
    """Write the resolved config ``cfg`` as TOML to ``path`` (atomically); return the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    text = dumps_toml(config_to_dict(cfg), header=header)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(path)
    return path


# ----------------------------------------------------------------------------------------------
# help text


def _field_docs(cls: type) -> dict[str, str]:
    """Per-field help: ``metadata["help"]``, else ``name (type): text`` / ``name: text`` lines of the
    class docstring (the DeepSeek-V3 ``ModelArgs`` convention)."""
    docs: dict[str, str] = {}
    pattern = re.compile(r"^\s*([A-Za-z_][A-Za-z0-9_]*)\s*(?:\([^)]*\))?\s*:\s*(.+)$")
    # a subclass's docstring first, then its bases' (a stage's defaults for a shared section keep its help)
    for klass in (k for k in cls.__mro__ if dataclasses.is_dataclass(k)):
        for line in (klass.__dict__.get("__doc__") or "").splitlines():
            m = pattern.match(line)
            if m:
                docs.setdefault(m.group(1), m.group(2).strip())
    for f in dataclasses.fields(cls):
        if "help" in f.metadata:
            docs[f.name] = str(f.metadata["help"])
    return docs


def describe_config(cls: type, defaults: Any = None) -> str:
    """Human-readable listing of every key of ``cls``: ``section.key = default  (type) help``."""
    lines: list[str] = []

    def walk(tp: type, obj: Any, prefix: str) -> None:
        docs = _field_docs(tp)
        fields = _fields(tp)
        sections = [(n, t) for n, (_, t) in fields.items() if _is_dataclass_type(t)]
        if prefix:
            lines.append(f"[{prefix}]")
        for name, (_, ftp) in fields.items():
            if _is_dataclass_type(ftp):
                continue
            current = getattr(obj, name)
            value = "none" if current is None else _toml_value(_plain(current), name)
            help_ = f"  {docs[name]}" if name in docs else ""
            lines.append(f"  --{prefix + '.' if prefix else ''}{name} = {value}  ({_type_name(ftp)}){help_}")
        for name, ftp in sections:
            walk(ftp, getattr(obj, name), f"{prefix}.{name}" if prefix else name)

    try:
        walk(cls, cls() if defaults is None else defaults, "")
    except TypeError:  # a config with required fields has no defaults to show
        lines = [f"{cls.__name__}: " + ", ".join(_fields(cls))]
    return "\n".join(lines)
