"""Maths datasets the way users have them: local files and folders, the Hugging Face hub, named presets.

Layouts read (one record = one problem):
- `.jsonl` (one JSON object per line) and `.json` (a list of objects, or an object holding one such
  list) and `.csv` (a header row): read with the standard library;
- `.parquet` and `.arrow` files, and folders written by `datasets.save_to_disk`: read through
  `datasets` / `pyarrow` (the optional extra `pip install 'r1kit[data]'`, imported only then);
- a folder of such files with the split in the file name, as the hub stores them
  (`main/test-00000-of-00001.parquet`, `data/train.jsonl`, `gsm8k_test.jsonl`, ...);
- a hub dataset by name (`datasets.load_dataset(name, config, split=...)`).

Field mapping (`map_record`), keys matched case-insensitively: the prompt is the first of
`problem`/`question`/`prompt`; the answer is `answer`; a GSM8K answer "reasoning ... #### 1,234" gives
the answer "1234" (thousands separators dropped) and the text before as the worked solution (its
`<<48/2=24>>` calculator notes dropped: r1kit has no calculator tool); a MATH record without an answer
takes the last `\\boxed{}` of its `solution`, and the solution is kept; `id` (or `unique_id`) is the
problem id, else "<name>/<split>/<row>". `fields` renames any of them (`{prompt = "Question"}`).

Presets (`PRESETS`): gsm8k, math500, aime24, amc load from the hub by default, or from `path` (a file
or a folder in any layout above) when given. Their splits are the dataset's own (`Preset.splits` maps
r1kit's split names to the dataset's), so no hash split is applied: GSM8K "test" is the 1,319
problems of its test split, as published.
"""

from __future__ import annotations

import csv
import json
import os
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from r1kit.safe_math import extract_boxed
from r1kit.tasks.base import Problem, check_split, rng_for, split_of
from r1kit.tasks.jsonl import PROMPT_KEYS, read_jsonl
from r1kit.tasks.math import MATH_INSTRUCTION, MathTask, with_instruction

INSTALL_HINT = "pip install 'r1kit[data]'"
ID_KEYS = ("id", "unique_id")
LOCAL_SUFFIXES = (".jsonl", ".json", ".csv", ".parquet", ".arrow")
# r1kit split -> the names datasets give it in file names
SPLIT_ALIASES = {"train": "train", "test": "test", "validation": "validation", "valid": "validation",
                 "val": "validation", "dev": "validation"}  # fmt: skip
_SPLIT_IN_NAME = re.compile(r"(?:^|[-_./])(train|test|validation|valid|val|dev)(?=[-_.]|$)")
_THOUSANDS = re.compile(r"(?<=\d),(?=\d{3}(?!\d))")
_CALCULATOR_NOTE = re.compile(r"<<[^<>]*>>")


@dataclass(frozen=True)
class Preset:
    """A named dataset: where it lives on the hub and which of its splits r1kit's splits read.

    hub: the hub repository; config: its configuration (None = the default);
    splits: r1kit split ("train", "val", "test") -> the dataset's split name.
    """

    hub: str
    config: str | None
    splits: dict[str, str]
    about: str = ""


PRESETS: dict[str, Preset] = {
    "gsm8k": Preset("openai/gsm8k", "main", {"train": "train", "test": "test"},
                    "GSM8K grade-school maths (Cobbe et al. 2021, arXiv 2110.14168): 7,473 train / 1,319 test"),
    "math500": Preset("HuggingFaceH4/MATH-500", None, {"test": "test"},
                      "MATH-500, the 500-problem MATH test subset of Lightman et al. 2023 (arXiv 2305.20050)"),
    "aime24": Preset("HuggingFaceH4/aime_2024", None, {"test": "train"},
                     "AIME 2024 I and II, 30 problems (the hub's only split is 'train'; also Maxwell-Jia/AIME_2024)"),
    "amc": Preset("AI-MO/aimo-validation-amc", None, {"test": "train"},
                  "AMC 2022-23, 83 problems (the hub's only split is 'train')"),
}  # fmt: skip


def _user_error(message: str) -> Exception:
    from r1kit.config import UserError

    return UserError(message)


def require_datasets(what: str) -> Any:
    """The `datasets` module; a UserError saying how to install it when it is missing."""
    try:
        import datasets
    except ImportError:
        raise _user_error(f"{what} needs the Hugging Face `datasets` package: {INSTALL_HINT}") from None
    return datasets


# ----------------------------------------------------------------------------------------------
# field mapping


def _text(value: Any) -> str | None:
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, (int, float)):
        return str(int(value)) if isinstance(value, float) and value.is_integer() else str(value)
    return value if isinstance(value, str) else None


def strip_thousands(text: str) -> str:
    """ "1,234,567" -> "1234567"; commas that are not thousands separators ("1, 2") stay."""
    return _THOUSANDS.sub("", text)


def split_gsm8k_answer(answer: str) -> tuple[str, str]:
    """(worked solution, final answer) of a GSM8K answer "... #### 42": the text after the last "####"
    without thousands separators, and the text before without calculator notes `<<6*7=42>>`."""
    solution, _, final = answer.rpartition("####")
    return _CALCULATOR_NOTE.sub("", solution).strip(), strip_thousands(final.strip())


@dataclass(frozen=True)
class FieldMap:
    """Which record keys hold the prompt, answer, solution and id; None = the usual names
    (prompt: problem/question/prompt; answer; solution; id/unique_id), matched case-insensitively."""

    prompt: str | None = None
    answer: str | None = None
    solution: str | None = None
    id: str | None = None

    @classmethod
    def from_dict(cls, fields: dict[str, str] | None) -> FieldMap:
        """From a `fields` table; ValueError on unknown targets."""
        fields = dict(fields or {})
        unknown = sorted(set(fields) - {"prompt", "answer", "solution", "id"})
        if unknown or not all(isinstance(v, str) and v for v in fields.values()):
            raise ValueError(
                f"fields maps prompt/answer/solution/id to column names, e.g. {{prompt = 'Question'}}; got {fields}"
            )
        return cls(**fields)


def _find(record: dict, wanted: str | None, defaults: Iterable[str]) -> str | None:
    """The key of `record` named `wanted` (or the first of `defaults`), compared case-insensitively."""
    lower = {str(k).lower(): k for k in record}
    for name in [wanted] if wanted else defaults:
        if name in record:
            return name
        if name.lower() in lower:
            return lower[name.lower()]
    return None


def map_record(
    record: dict, where: str, fields: FieldMap = FieldMap(), default_id: str | None = None
) -> Problem:
    """A Problem from one dataset row: prompt, answer (GSM8K "####" and MATH `\\boxed{}` handled),
    worked solution, id, and the other columns as meta. `where` ("file:line", "gsm8k/test/3") prefixes
    any ValueError; `default_id` is the id of a row without one (default: the prompt)."""
    prompt_key = _find(record, fields.prompt, PROMPT_KEYS)
    if prompt_key is None:
        raise ValueError(f"{where}: no prompt column: expected one of {PROMPT_KEYS} (or set fields.prompt); "
                         f"columns: {sorted(map(str, record))}")  # fmt: skip
    prompt = _text(record[prompt_key])
    if not prompt:
        raise ValueError(f"{where}: column {prompt_key!r} must be a non-empty string")
    answer_key = _find(record, fields.answer, ("answer",))
    solution_key = _find(record, fields.solution, ("solution",))
    id_key = _find(record, fields.id, ID_KEYS)
    answer = _text(record[answer_key]) if answer_key else None
    solution = _text(record[solution_key]) if solution_key else None
    if answer is not None and "####" in answer:
        worked, answer = split_gsm8k_answer(answer)
        solution = solution or worked or None
    if not answer and solution:
        answer = extract_boxed(solution)
    if not answer:
        raise ValueError(f"{where}: no answer: expected an 'answer' column (GSM8K '... #### 42' works) or a "
                         "'solution' with \\boxed{} (or set fields.answer)")  # fmt: skip
    used = {prompt_key, answer_key, solution_key, id_key}
    meta = {k: v for k, v in record.items() if k not in used}
    rid = _text(record[id_key]) if id_key else None
    return Problem(rid or default_id or prompt, prompt, answer.strip(), solution, meta)


# ----------------------------------------------------------------------------------------------
# local files and folders


def _read_json_file(path: Path) -> list[dict]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError:
        return [r for _, r in read_jsonl(path)]  # JSON Lines under a .json name, as datasets reads it
    if isinstance(data, dict):
        lists = [v for v in data.values() if isinstance(v, list)]
        if len(lists) == 1:
            data = lists[0]
    if not isinstance(data, list) or not all(isinstance(r, dict) for r in data):
        raise ValueError(f"{path}: expected a JSON list of objects (or an object holding one such list)")
    return data


def _read_arrow_file(path: Path) -> list[dict]:
    datasets = require_datasets(f"reading {path.name}")
    return datasets.Dataset.from_file(str(path)).to_list()


def _read_parquet_file(path: Path) -> list[dict]:
    require_datasets(f"reading {path.name}")
    import pyarrow.parquet as pq  # installed with datasets; reads without writing a cache

    return pq.read_table(str(path)).to_pylist()


def read_rows(path: str | os.PathLike) -> list[dict]:
    """The rows of one local file (.jsonl, .json, .csv, .parquet, .arrow) as dicts, in file order."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    suffix = path.suffix.lower()
    if suffix == ".jsonl":
        return [r for _, r in read_jsonl(path)]
    if suffix == ".json":
        return _read_json_file(path)
    if suffix == ".csv":
        with open(path, encoding="utf-8", newline="") as fh:
            return list(csv.DictReader(fh))
    if suffix == ".parquet":
        return _read_parquet_file(path)
    if suffix == ".arrow":
        return _read_arrow_file(path)
    raise ValueError(
        f"{path}: unknown layout {suffix!r}; r1kit reads {', '.join(LOCAL_SUFFIXES)} files or folders"
    )


def split_of_file(relative: str) -> str:
    """The dataset split a data file holds, from its path inside the folder ("main/test-00000-of-00001.parquet"
    -> "test", "gsm8k_train.jsonl" -> "train"); "train" when the name has none (as `datasets` does)."""
    found = _SPLIT_IN_NAME.findall(relative.lower())
    return SPLIT_ALIASES[found[-1]] if found else "train"


def read_folder(path: str | os.PathLike, config: str | None = None) -> dict[str, list[dict]]:
    """{dataset split: rows} of a folder: a `save_to_disk` folder (Dataset or DatasetDict), or data files
    named by split (a `config` subfolder first, when there is one: gsm8k's `main/`)."""
    path = Path(path)
    if (path / "dataset_dict.json").is_file() or (path / "state.json").is_file():
        datasets = require_datasets(f"reading the saved dataset {path}")
        loaded = datasets.load_from_disk(str(path))
        if isinstance(loaded, datasets.DatasetDict):
            return {SPLIT_ALIASES.get(name, name): ds.to_list() for name, ds in loaded.items()}
        return {"train": loaded.to_list()}
    if config and (path / config).is_dir():
        path = path / config
    files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in LOCAL_SUFFIXES)
    files = [p for p in files if not any(part.startswith(".") for part in p.relative_to(path).parts)]
    if not files:
        raise FileNotFoundError(f"{path}: no data files ({', '.join(LOCAL_SUFFIXES)}) in this folder")
    splits: dict[str, list[dict]] = {}
    for p in files:
        splits.setdefault(split_of_file(str(p.relative_to(path))), []).extend(read_rows(p))
    return splits


def load_hub_split(
    name: str, config: str | None, split: str, revision: str | None = None, task: str = "<task>"
) -> list[dict]:
    """Rows of one split of a hub dataset (`datasets.load_dataset`, from its cache when offline).

    Raises UserError when `datasets` is missing or the hub cannot be reached, saying how to load a local copy
    (`task_args.<task>.path`, with `task` the task's name in the config).
    """
    datasets = require_datasets(f"loading {name} from the Hugging Face hub")
    try:
        return datasets.load_dataset(name, config, split=split, revision=revision).to_list()
    except (ConnectionError, OSError) as err:  # no network (LocalEntryNotFoundError is an OSError)
        raise _user_error(
            f"could not load {name!r} (split {split!r}) from the Hugging Face hub ({type(err).__name__}: "
            f"{str(err)[:160]}); on a machine without the hub, download it elsewhere (`datasets` "
            f"save_to_disk, or the parquet/jsonl files) and pass its path: task_args.{task}.path = 'DIR or FILE'"
        ) from None
    except ValueError as err:  # an unknown split or config
        raise _user_error(f"{name}: {str(err)[:300]}") from None


# ----------------------------------------------------------------------------------------------
# the task


class DatasetTask(MathTask):
    """Maths problems from a preset, a hub dataset or a local file/folder, scored with math-verify.

    Args:
        preset: "gsm8k", "math500", "aime24", "amc" (`PRESETS`): hub name, config and split mapping.
        path: a local file or folder in any layout of the module docstring (replaces the hub).
        hub: a hub dataset name ("openai/gsm8k"); config: its configuration; revision: a hub revision.
        split: read this split of the dataset for every split a stage asks (e.g. "test" for a folder or
            hub dataset that has one); "" = the preset's mapping (`splits`).
        splits: r1kit split -> dataset split ({train = "train", test = "test"}); default the preset's,
            else {train = "train", val = "validation", test = "test"}. A single local file is one split:
            every split a stage asks reads the whole file.
        hash_split: cut the rows read into disjoint train/val/test by a hash of the prompt (as `math:`
            JSONL does); False (default) uses the dataset's own splits as given.
        limit: keep the first `limit` rows of each dataset split (0 = all), before any shuffle.
        fields: column names of prompt/answer/solution/id when they are not the usual ones.
        instruction: appended to each prompt (default R1's "Please reason step by step, ...");
            "" leaves prompts as they are.
    """

    def __init__(
        self,
        preset: str = "",
        *,
        path: str | os.PathLike = "",
        hub: str = "",
        config: str | None = None,
        revision: str | None = None,
        split: str = "",
        splits: dict[str, str] | None = None,
        hash_split: bool = False,
        limit: int = 0,
        fields: dict[str, str] | None = None,
        instruction: str = MATH_INSTRUCTION,
    ):
        """See the class docstring; local files are read (and checked) now, hub splits on first use."""
        if preset and preset not in PRESETS:
            raise ValueError(f"unknown dataset preset {preset!r}; valid presets: {', '.join(PRESETS)}")
        if not (preset or path or hub):
            raise ValueError("DatasetTask needs a preset, a path or a hub dataset name")
        if isinstance(limit, bool) or not isinstance(limit, int) or limit < 0:
            raise ValueError(f"limit must be an integer >= 0 (0 = all rows), got {limit!r}")
        spec = PRESETS.get(preset)
        self.preset = preset
        self.hub = hub or (spec.hub if spec else "")
        self.config = config if config is not None else (spec.config if spec else None)
        self.revision = revision
        self.path = Path(path) if path else None
        self.split = split
        self.splits = dict(
            splits or (spec.splits if spec else {"train": "train", "val": "validation", "test": "test"})
        )
        self.hash_split = hash_split
        self.limit = limit
        self.fields = FieldMap.from_dict(fields)
        self.instruction = instruction
        self.name = preset or (f"math:{self.path}" if self.path else f"hf:{self.hub}")
        self._rows: dict[str | None, list[Problem]] = {}
        if self.path is not None:
            self._read_local()

    # -------------------------------------------------------------------------------- loading
    def _read_local(self) -> None:
        """Read the local file (one split, key None) or folder (its splits) into `_rows`."""
        path = self.path
        if path.is_file():
            self._rows[None] = self._problems_of(self._local_file_rows(path), None)
            return
        if not path.exists():
            raise FileNotFoundError(f"{path}: no such file or folder")
        for name, rows in read_folder(path, self.config).items():
            self._rows[name] = self._problems_of(rows, name)

    def _local_file_rows(self, path: Path) -> list[tuple[str, dict]]:
        if path.suffix.lower() == ".jsonl":  # keep the line numbers for error messages
            return [(f"{path}:{n}", r) for n, r in read_jsonl(path)]
        return [(f"{path}:row {i}", r) for i, r in enumerate(read_rows(path))]

    def _problems_of(self, rows: list, split: str | None) -> list[Problem]:
        """Problems of one dataset split's rows ((where, row) pairs or rows), limited and instructed."""
        if self.limit:
            rows = rows[: self.limit]
        out = []
        for i, row in enumerate(rows):
            where, record = row if isinstance(row, tuple) else (f"{self.name}/{split}/{i}", row)
            out.append(map_record(record, where, self.fields, default_id=f"{self.name}/{split or 'all'}/{i}"))
        return with_instruction(out, self.instruction)

    def available_splits(self) -> list[str]:
        """The dataset splits this task can read (local sources: those found; the hub: the mapping's)."""
        if self.path is not None:
            return [s for s in self._rows if s is not None]
        return sorted(set(self.splits.values()) | ({self.split} if self.split else set()))

    def rows(self, dataset_split: str | None) -> list[Problem]:
        """The problems of one dataset split (None = the single local file), loaded once."""
        if dataset_split not in self._rows:
            if self.path is not None:
                from r1kit.config import ConfigError

                raise ConfigError(
                    f"{self.name}: no split {dataset_split!r} in {self.path}; found: "
                    f"{', '.join(self.available_splits()) or 'none'} (name files by split, or set split)"
                )
            key = self.name if self.preset else f'"{self.name}"'  # a TOML key: hf:owner/name needs quotes
            rows = load_hub_split(self.hub, self.config, dataset_split, self.revision, task=key)
            self._rows[dataset_split] = self._problems_of(rows, dataset_split)
        return self._rows[dataset_split]

    def dataset_split(self, split: str) -> str | None:
        """The dataset split that r1kit split `split` reads (None = the whole single local file)."""
        if self.path is not None and None in self._rows:
            return None
        if self.split:
            return self.split
        if split not in self.splits:
            from r1kit.config import ConfigError  # a ValueError too

            raise ConfigError(
                f"{self.name} has no {split!r} split; it has {', '.join(self.splits)}: ask for one of those "
                f"(e.g. --eval.split test for GRPO's held-out evaluation), or set task_args.{self.name}.split "
                "(one dataset split for every stage split) or splits = {...}"
            )
        return self.splits[split]

    # -------------------------------------------------------------------------------- Task API
    def problems(self, split: str = "train", n: int | None = None, seed: int = 0) -> list[Problem]:
        """Up to `n` problems of `split` (all when None): the mapped dataset split as given (or its hash
        split with `hash_split`), shuffled per seed; seed 0 keeps the dataset's order."""
        check_split(split)
        if self.hash_split:
            source = self.rows(
                None if self.path is not None and None in self._rows else self.split or "train"
            )
            pool = [p for p in source if split_of(p.prompt) == split]
        else:
            pool = list(self.rows(self.dataset_split(split)))
        if seed:
            rng_for(self.name, split, seed).shuffle(pool)
        return pool if n is None else pool[:n]


def preset_task(name: str) -> Any:
    """A constructor of preset `name`'s task: `preset_task("gsm8k")(path=..., limit=...)`."""

    def build(**kwargs: Any) -> DatasetTask:
        return DatasetTask(name, **kwargs)

    build.__name__ = f"{name}_task"
    return build


def hub_task(name: str, **kwargs: Any) -> DatasetTask:
    """The task of hub dataset `name` ("hf:openai/gsm8k" in configs)."""
    return DatasetTask(hub=name, **kwargs)


def local_math_task(path: str, **kwargs: Any) -> MathTask:
    """`math:<path>`: a folder or a non-JSONL file through `DatasetTask`; a `.jsonl` file through `MathTask`
    (hash split by default, as before)."""
    p = Path(path)
    if p.suffix.lower() == ".jsonl" or not p.exists():
        return MathTask(path, **kwargs)
    kwargs.setdefault("hash_split", p.is_file())
    return DatasetTask(path=path, **kwargs)


__all__ = [
    "INSTALL_HINT",
    "PRESETS",
    "DatasetTask",
    "FieldMap",
    "Preset",
    "hub_task",
    "local_math_task",
    "load_hub_split",
    "map_record",
    "preset_task",
    "read_folder",
    "read_rows",
    "split_gsm8k_answer",
    "split_of_file",
    "strip_thousands",
]
