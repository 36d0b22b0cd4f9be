"""The package itself: light to import, a working command line."""

import subprocess
import sys

from r1kit import cli


def test_import_is_light():
    """`import r1kit` must not pull torch's heavy friends, transformers or the server stack."""
    code = (
        "import sys, r1kit, r1kit.cli; "
        "heavy = [m for m in ('transformers', 'fastapi', 'uvicorn', 'matplotlib', 'reasoning_gym', "
        "'math_verify') if m in sys.modules]; print(','.join(heavy))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""


def test_cli_help_lists_every_stage(capsys):
    assert cli.main(["--help"]) == 0
    text = capsys.readouterr().out
    for stage in cli.STAGES:
        assert stage in text


def test_cli_unknown_stage_names_valid_ones(capsys):
    assert cli.main(["pretrian"]) == 2
    err = capsys.readouterr().err
    assert "pretrian" in err and "pretrain" in err


def test_info_stage_counts_a_preset(capsys):
    assert cli.main(["info", "--model", "tiny-llama", "--seq_len", "64"]) == 0
    assert "parameters" in capsys.readouterr().out


def test_python_dash_m_is_the_command():
    """`python -m r1kit` (what benchmarks/bench_study.py runs) is `r1kit`: same help, same exit 2 on a typo."""
    ok = subprocess.run([sys.executable, "-m", "r1kit", "--help"], capture_output=True, text=True)
    assert ok.returncode == 0 and all(stage in ok.stdout for stage in cli.STAGES)
    bad = subprocess.run([sys.executable, "-m", "r1kit", "pretrian"], capture_output=True, text=True)
    assert bad.returncode == 2 and "pretrain" in bad.stderr
