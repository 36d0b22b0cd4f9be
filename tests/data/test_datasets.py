"""Maths datasets in the layouts users have (`r1kit.tasks.datasets`): hand-written fixtures in
tests/data/fixtures (jsonl, json, csv, a folder named by split) and parquet / arrow / save_to_disk
copies written from hand-written rows; every mapped problem checked against values written by hand."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from r1kit.config import UserError
from r1kit.tasks import DatasetTask, get_task, task_kwargs
from r1kit.tasks.datasets import map_record, split_gsm8k_answer, split_of_file, strip_thousands
from r1kit.tasks.math import MATH_INSTRUCTION

FIXTURES = Path(__file__).parent / "fixtures"

# AMC-style rows (AI-MO/aimo-validation-amc: integer ids, answers stored as floats)
AMC_ROWS = [
    {"id": 0, "problem": "What is $1+2+\\cdots+10$?", "answer": 55.0, "url": "https://example.org/amc/0"},
    {"id": 1, "problem": "What is $2^{10}$?", "answer": 1024.0, "url": "https://example.org/amc/1"},
]


def _bare(problem) -> str:
    """The prompt without R1's instruction line."""
    assert problem.prompt.endswith("\n" + MATH_INSTRUCTION)
    return problem.prompt[: -len(MATH_INSTRUCTION) - 1]


def test_gsm8k_answers_and_solutions():
    task = get_task("gsm8k", path=str(FIXTURES / "gsm8k.jsonl"))
    problems = task.problems("test")
    assert [p.answer for p in problems] == ["12", "2400", "-2"]
    assert _bare(problems[0]) == "Tom has 3 boxes of 4 apples. How many apples does he have?"
    assert problems[0].solution == "Each box has 4 apples, so 3 boxes have 3*4=12 apples."
    assert problems[1].solution == "It makes 1,200*2=2,400 dollars."
    assert [p.id for p in problems] == ["gsm8k/all/0", "gsm8k/all/1", "gsm8k/all/2"]
    # a single file is one split: every split reads it; scored by value, thousands separators or not
    assert task.problems("train") == problems
    assert task.score("2,400 dollars\n</think>\n\\boxed{2,400}", problems[1]) == 1.0
    assert task.score("\n</think>\n\\boxed{2400}", problems[1]) == 1.0
    assert task.score("\n</think>\n\\boxed{2401}", problems[1]) == 0.0
    assert split_gsm8k_answer("a <<1+1=2>>2\n#### 1,000,000") == ("a 2", "1000000")
    assert strip_thousands("1,234 and 1, 2 and 12,34") == "1234 and 1, 2 and 12,34"


def test_math_json_boxed_solutions():
    task = get_task(f"math:{FIXTURES / 'math.json'}", hash_split=False)
    first, second = task.problems("test")
    assert (
        first.answer == "\\frac{1}{2}"
        and first.solution == "Divide by 2: $\\frac{2}{4} = \\boxed{\\frac{1}{2}}$."
    )
    assert first.meta == {"level": "Level 1", "type": "Prealgebra"} and first.id == f"{task.name}/all/0"
    assert second.answer == "x^2+2x+1" and second.id == "test/algebra/7.json"
    assert _bare(second) == "Expand $(x+1)^2$."
    assert task.score("\n</think>\nso \\boxed{0.5}", first) == 1.0
    assert task.score("\n</think>\n\\boxed{(x+1)^2}", second) == 1.0  # math-verify, in the worker
    assert task.score("\n</think>\n\\boxed{x^2+1}", second) == 0.0


def test_aime_csv_with_capitalised_columns():
    task = get_task(f"math:{FIXTURES / 'aime.csv'}", hash_split=False, instruction="")
    problems = task.problems("test")
    assert [(p.id, p.prompt, p.answer) for p in problems] == [
        ("2024-I-1", "Find the remainder when 2024 is divided by 1000.", "24"),
        ("2024-II-3", "How many positive divisors does 12 have?", "6"),
    ]
    assert problems[1].solution == "1, 2, 3, 4, 6, 12: six of them."
    # a file read by math: is hash-split unless told otherwise (as math: JSONL)
    hashed = get_task(f"math:{FIXTURES / 'aime.csv'}")
    assert sum(len(hashed.problems(s)) for s in ("train", "val", "test")) == 2


def test_a_folder_named_by_split_with_a_config_subfolder():
    task = get_task("gsm8k", path=str(FIXTURES / "gsm8k_folder"), instruction="")
    assert [(p.prompt, p.answer) for p in task.problems("train")] == [
        ("What is 2 plus 2?", "4"),
        ("What is 5 times 6?", "30"),
    ]
    assert [(p.id, p.answer, p.solution) for p in task.problems("test")] == [("gsm8k/test/0", "4", "7-3=4")]
    with pytest.raises(ValueError, match="no 'val' split"):
        task.problems("val")
    pinned = get_task("gsm8k", path=str(FIXTURES / "gsm8k_folder"), split="test", instruction="")
    assert pinned.problems("train") == task.problems("test")  # one dataset split for every stage split
    limited = get_task("gsm8k", path=str(FIXTURES / "gsm8k_folder"), limit=1)
    assert len(limited.problems("train")) == 1 and len(limited.problems("train", n=5, seed=3)) == 1


def test_parquet_arrow_and_saved_datasets(tmp_path):
    datasets = pytest.importorskip("datasets")
    ds = datasets.Dataset.from_list(AMC_ROWS)
    ds.to_parquet(str(tmp_path / "amc.parquet"))
    ds.save_to_disk(str(tmp_path / "saved"))
    datasets.DatasetDict({"train": datasets.Dataset.from_list(AMC_ROWS[:1]), "test": ds}).save_to_disk(
        str(tmp_path / "saved_dict")
    )
    expected = [("0", "What is $1+2+\\cdots+10$?", "55"), ("1", "What is $2^{10}$?", "1024")]
    arrow = next((tmp_path / "saved").glob("*.arrow"))
    for source in (tmp_path / "amc.parquet", arrow, tmp_path / "saved"):
        task = get_task("amc", path=str(source), instruction="")
        got = [(p.id, p.prompt, p.answer) for p in task.problems("test")]
        assert got == expected, source
        assert task.problems("test")[0].meta == {"url": "https://example.org/amc/0"}
    task = DatasetTask(path=tmp_path / "saved_dict", instruction="")
    assert [p.answer for p in task.problems("test")] == ["55", "1024"]
    assert [p.answer for p in task.problems("train")] == ["55"]
    # a hub-style folder: <config>/<split>-00000-of-00001.parquet
    hub = tmp_path / "gsm8k" / "main"
    hub.mkdir(parents=True)
    rows = [json.loads(line) for line in (FIXTURES / "gsm8k.jsonl").read_text().splitlines()]
    datasets.Dataset.from_list(rows).to_parquet(str(hub / "test-00000-of-00001.parquet"))
    datasets.Dataset.from_list(rows[:1]).to_parquet(str(hub / "train-00000-of-00001.parquet"))
    task = get_task("gsm8k", path=str(tmp_path / "gsm8k"))
    assert [p.answer for p in task.problems("test")] == ["12", "2400", "-2"]
    assert [p.answer for p in task.problems("train")] == ["12"]


def test_hub_presets_and_the_offline_error(monkeypatch):
    datasets = pytest.importorskip("datasets")
    calls = []

    def fake_load(name, config=None, split=None, revision=None):
        calls.append((name, config, split))
        return datasets.Dataset.from_list(AMC_ROWS)

    monkeypatch.setattr(datasets, "load_dataset", fake_load)
    task = get_task("gsm8k")
    assert calls == []  # the hub is read on first use
    assert [p.answer for p in task.problems("test")] == ["55", "1024"]
    task.problems("test")
    get_task("aime24").problems("test")
    get_task("hf:org/set", config="x", split="validation").problems("train")
    assert calls == [
        ("openai/gsm8k", "main", "test"),
        ("HuggingFaceH4/aime_2024", None, "train"),
        ("org/set", "x", "validation"),
    ]
    with pytest.raises(ValueError, match="math500 has no 'train' split"):
        get_task("math500").problems("train")

    def offline(*args, **kwargs):
        raise ConnectionError("Couldn't reach 'openai/gsm8k' on the Hub (LocalEntryNotFoundError)")

    monkeypatch.setattr(datasets, "load_dataset", offline)
    with pytest.raises(UserError, match=r"from the Hugging Face hub .*pass its path: task_args.gsm8k.path"):
        get_task("gsm8k").problems("test")


def test_missing_datasets_package_says_what_to_install(monkeypatch, tmp_path):
    (tmp_path / "x.parquet").write_bytes(b"PAR1")
    monkeypatch.setitem(sys.modules, "datasets", None)
    with pytest.raises(UserError, match=r"pip install 'r1kit\[data\]'"):
        get_task(f"math:{tmp_path / 'x.parquet'}")
    with pytest.raises(UserError, match=r"pip install 'r1kit\[data\]'"):
        get_task("math500").problems("test")
    # the text layouts need nothing beyond the standard library
    assert len(get_task(f"math:{FIXTURES / 'aime.csv'}", hash_split=False).problems("test")) == 2


def test_field_mapping_and_errors(tmp_path):
    p = map_record({"Question": "q?", "final": "7"}, "f:1", fields_of(answer="final"))
    assert (p.id, p.prompt, p.answer) == ("q?", "q?", "7")
    with pytest.raises(ValueError, match="f:2: no answer"):
        map_record({"problem": "q?", "solution": "no box here"}, "f:2")
    with pytest.raises(ValueError, match="f:3: no prompt column"):
        map_record({"text": "q?", "answer": "1"}, "f:3")
    with pytest.raises(ValueError, match="fields maps prompt/answer/solution/id"):
        DatasetTask(path=FIXTURES / "aime.csv", fields={"question": "Problem"})
    with pytest.raises(ValueError, match="unknown dataset preset"):
        DatasetTask("gsm9k")
    # a MATH-style JSONL (no answer, a boxed solution) through math: as well
    path = tmp_path / "m.jsonl"
    path.write_text(json.dumps({"problem": "1+4?", "solution": "1+4=\\boxed{5}"}) + "\n", encoding="utf-8")
    (p,) = get_task(f"math:{path}", hash_split=False).problems("test")
    assert (p.answer, p.solution) == ("5", "1+4=\\boxed{5}")
    assert split_of_file("main/test-00000-of-00001.parquet") == "test"
    assert split_of_file("gsm8k_train.jsonl") == "train" and split_of_file("data/dev.csv") == "validation"
    assert split_of_file("aime.jsonl") == "train"
    # the config dialect: task_args keyed by the task's name
    assert task_kwargs({"gsm8k": {"path": "x", "limit": 5}}, "gsm8k") == {"path": "x", "limit": 5}


def fields_of(**kwargs):
    from r1kit.tasks.datasets import FieldMap

    return FieldMap(**kwargs)


def test_math_jsonl_takes_limit_and_fields(tmp_path):
    path = tmp_path / "q.jsonl"
    rows = [{"Q": f"{i}+1?", "A": str(i + 1)} for i in range(3)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    task = get_task(f"math:{path}", hash_split=False, fields={"prompt": "Q", "answer": "A"}, limit=2)
    assert [(p.prompt, p.answer) for p in task.problems("test")] == [
        ("0+1?\n" + MATH_INSTRUCTION, "1"),
        ("1+1?\n" + MATH_INSTRUCTION, "2"),
    ]
