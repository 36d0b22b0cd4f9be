"""r1kit.config: TOML + overrides → nested dataclasses, validated, and written back as TOML."""

from __future__ import annotations

import enum
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Optional

import pytest

from r1kit.config import (
    ConfigError,
    check_positive,
    check_range,
    config_from_dict,
    config_to_dict,
    describe_config,
    dumps_toml,
    load_config,
    parse_overrides,
    save_config,
)


@dataclass
class Schedule:
    """Learning-rate schedule.

    Attributes:
        warmup_steps (int): linear warm-up length.
        decay: shape of the decay after warm-up.
    """

    warmup_steps: int = 10
    decay: Literal["cosine", "linear", "constant"] = "cosine"


@dataclass
class Optim:
    """Optimiser settings."""

    lr: float = 3e-4
    weight_decay: float = 0.1
    betas: tuple[float, float] = (0.9, 0.95)
    schedule: Schedule = field(default_factory=Schedule)

    def __post_init__(self):
        check_positive(self.lr, "optim.lr")
        check_range(self.weight_decay, "optim.weight_decay", 0.0, 1.0)


@dataclass
class Data:
    """Data settings."""

    task: str = "addition"
    digits: list[int] = field(default_factory=lambda: [1, 2, 3, 4])
    splits: list[str] = field(default_factory=lambda: ["train", "test"])
    max_examples: Optional[int] = None  # noqa: UP045 - typing.Optional must keep working
    shuffle: bool = True
    path: Path = Path("data")


@dataclass
class RunConfig:
    """A stage config for the tests."""

    run_dir: str = "runs/test"
    seed: int = 0
    steps: int = 100
    tag: str | None = None
    optim: Optim = field(default_factory=Optim)
    data: Data = field(default_factory=Data)


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "run.toml"
    path.write_text(text)
    return path


def test_defaults_without_file():
    assert load_config(RunConfig) == RunConfig()


def test_toml_file_and_overrides(tmp_path):
    path = write(
        tmp_path,
        """
seed = 3
[optim]
lr = 1e-4
betas = [0.8, 0.9]
[optim.schedule]
decay = "linear"
[data]
digits = [4, 5]
shuffle = false
""",
    )
    cfg = load_config(
        RunConfig,
        path,
        [
            "--optim.lr",
            "2e-5",
            "--data.splits=train,valid",
            "--steps",
            "1e3",
            "--optim.schedule.warmup_steps",
            "7",
        ],
    )
    assert cfg.seed == 3
    assert cfg.optim.lr == 2e-5  # the override wins over the file
    assert cfg.optim.betas == (0.8, 0.9)
    assert cfg.optim.schedule == Schedule(warmup_steps=7, decay="linear")
    assert cfg.data.digits == [4, 5]
    assert cfg.data.splits == ["train", "valid"]
    assert cfg.data.shuffle is False
    assert cfg.steps == 1000
    assert cfg.optim.weight_decay == 0.1  # untouched keys keep their defaults


@pytest.mark.parametrize(
    ("tokens", "attr", "expected"),
    [
        (["--data.shuffle", "no"], "shuffle", False),
        (["--data.shuffle", "YES"], "shuffle", True),
        (["--data.shuffle", "0"], "shuffle", False),
        (["--data.shuffle"], "shuffle", True),  # a bare bool flag means true
        (["--data.max_examples", "50"], "max_examples", 50),
        (["--data.max_examples", "none"], "max_examples", None),
        (["--data.digits", "[1, 2]"], "digits", [1, 2]),
        (["--data.digits", ""], "digits", []),
        (["--data.path", "/tmp/x"], "path", Path("/tmp/x")),
    ],
)
def test_override_conversions(tokens, attr, expected):
    assert getattr(load_config(RunConfig, overrides=tokens).data, attr) == expected


def test_optional_and_union_top_level():
    assert load_config(RunConfig, overrides=["--tag", "exp1"]).tag == "exp1"
    assert load_config(RunConfig, overrides={"tag": None, "optim.lr": 0.5}).optim.lr == 0.5


def test_unknown_key_names_source_valid_keys_and_suggestion(tmp_path):
    with pytest.raises(ConfigError) as err:
        load_config(RunConfig, overrides=["--optim.lrr", "1e-4"])
    msg = str(err.value)
    assert "'optim.lrr'" in msg and "--optim.lrr" in msg
    assert "did you mean 'optim.lr'" in msg
    assert "lr, weight_decay, betas" in msg and "schedule" in msg

    path = write(tmp_path, "[optim]\nweight_decy = 0.0\n")
    with pytest.raises(ConfigError) as err:
        load_config(RunConfig, path)
    assert str(path) in str(err.value) and "weight_decay" in str(err.value)


def test_unknown_section(tmp_path):
    path = write(tmp_path, "[optm]\nlr = 1.0\n")
    with pytest.raises(ConfigError, match=r"unknown section 'optm'.*did you mean 'optim'"):
        load_config(RunConfig, path)
    with pytest.raises(ConfigError, match="unknown section 'modle'"):
        load_config(RunConfig, overrides=["--modle.layers", "2"])


@pytest.mark.parametrize(
    ("tokens", "pattern"),
    [
        (["--steps", "ten"], r"steps \(from --steps\): expected int, got 'ten'"),
        (["--optim.lr", "fast"], r"optim.lr.*expected float"),
        (["--data.shuffle", "maybe"], r"expected a bool"),
        (
            ["--optim.schedule.decay", "cosin"],
            r"one of 'cosine', 'linear', 'constant'.*did you mean 'cosine'",
        ),
        (["--optim.betas", "0.9"], r"expected 2 items"),
        (["--optim", "3"], r"optim .* is a section"),
        (["--steps"], r"missing its value"),
        (["steps", "3"], r"expected an override like --section.key value"),
        (["--optim.lr", "-1"], r"optim.lr must be > 0, got -1.0"),
    ],
)
def test_bad_values_are_explained(tokens, pattern):
    with pytest.raises(ConfigError, match=pattern):
        load_config(RunConfig, overrides=tokens)


def test_wrong_type_in_file(tmp_path):
    path = write(tmp_path, 'steps = "many"\n[data]\ntask = 5\n')
    with pytest.raises(ConfigError, match=r"steps \(from .*run.toml\): expected int, got 'many'"):
        load_config(RunConfig, path)
    path = write(tmp_path, "optim = 1\n")
    with pytest.raises(ConfigError, match=r"expected a \[optim\] table"):
        load_config(RunConfig, path)


def test_invalid_toml_and_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="invalid TOML"):
        load_config(RunConfig, write(tmp_path, "[optim\n"))
    with pytest.raises(ConfigError, match=r"nope.toml does not exist; TOML files in .*run.toml"):
        load_config(RunConfig, tmp_path / "nope.toml")
    with pytest.raises(ConfigError, match=r"is a directory: give a TOML file; e.g. .*run.toml"):
        load_config(RunConfig, tmp_path)


def test_base_preset_then_file_then_overrides(tmp_path):
    base = RunConfig(steps=5, optim=Optim(lr=1e-3))
    path = write(tmp_path, "steps = 6\n")
    cfg = load_config(RunConfig, path, ["--seed", "9"], base=base)
    assert (cfg.steps, cfg.seed, cfg.optim.lr) == (6, 9, 1e-3)
    assert load_config(RunConfig, base={"optim": {"lr": 0.25}}).optim.lr == 0.25


def test_save_and_load_round_trip(tmp_path):
    cfg = load_config(
        RunConfig,
        overrides=[
            "--tag",
            'quote " and \\ and \n newline',
            "--data.max_examples",
            "7",
            "--optim.lr",
            "1e-5",
        ],
    )
    path = save_config(cfg, tmp_path / "run" / "config.toml", header="resolved config\nr1kit test")
    text = path.read_text()
    assert text.startswith("# resolved config\n# r1kit test\n")
    assert "[optim.schedule]" in text
    assert load_config(RunConfig, path) == cfg
    # None survives the round trip even where the default is not None
    cfg2 = RunConfig(data=Data(max_examples=None), tag=None)
    assert load_config(RunConfig, save_config(cfg2, tmp_path / "c2.toml")) == cfg2


def test_config_to_dict_is_plain():
    d = config_to_dict(RunConfig())
    assert d["optim"]["betas"] == [0.9, 0.95]
    assert d["data"]["path"] == "data"
    assert config_from_dict(RunConfig, d) == RunConfig()


def test_dumps_toml_general_values():
    tomllib = pytest.importorskip("tomllib")
    data = {
        "a": 1,
        "b": [1.5, float("inf")],
        "c": {"d e": "x", "nested": {"k": True}, "rows": [{"x": 1}, {"x": 2}]},
        "empty": {},
    }
    assert tomllib.loads(dumps_toml(data)) == data


def test_parse_overrides_pairs():
    pairs = parse_overrides(RunConfig, ["--a.b", "1", "--c=2", "--data.shuffle", "--d-e", "x"])
    assert pairs == [("a.b", "1"), ("c", "2"), ("data.shuffle", "true"), ("d_e", "x")]


def test_describe_config_lists_keys_with_help():
    text = describe_config(RunConfig)
    assert "--optim.lr = 0.0003" in text
    assert "--optim.schedule.warmup_steps = 10  (int)  linear warm-up length." in text
    assert "[data]" in text


def test_required_field_is_reported():
    @dataclass
    class Needs:
        name: str

    with pytest.raises(ConfigError, match="missing required key 'name'"):
        load_config(Needs)
    assert load_config(Needs, overrides=["--name", "x"]).name == "x"


def test_import_is_light():
    code = "import sys, r1kit.config; print(any(m in sys.modules for m in ('torch', 'matplotlib', 'numpy')))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


class Device(enum.Enum):
    """An enum-typed field for the round-trip test."""

    CPU = "cpu"
    CUDA = "cuda"


@dataclass
class WithEnum:
    """A config with an enum field."""

    device: Device = Device.CPU


def test_enum_fields_round_trip(tmp_path):
    cfg = load_config(WithEnum, overrides=["--device", "cuda"])
    assert cfg.device is Device.CUDA
    assert load_config(WithEnum, save_config(cfg, tmp_path / "e.toml")) == cfg
    with pytest.raises(ConfigError, match="device"):
        load_config(WithEnum, overrides=["--device", "tpu"])
