"""r1kit.train.checkpoint: exact resume, retention, and atomicity under crashes."""

from __future__ import annotations

import os
import random
import re
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from r1kit.train import checkpoint as ck
from r1kit.train.checkpoint import latest_checkpoint, list_checkpoints, load_checkpoint, save_checkpoint

REPO = Path(__file__).resolve().parents[2]


class TinyNet(nn.Module):
    """Two layers with dropout (so resuming must restore the torch RNG) and tied weights."""

    def __init__(self) -> None:
        super().__init__()
        self.inp = nn.Linear(8, 16)
        self.out = nn.Linear(16, 16, bias=False)
        self.tied = nn.Linear(16, 16, bias=False)
        self.tied.weight = self.out.weight
        self.drop = nn.Dropout(0.2)

    def forward(self, x):
        return self.tied(self.drop(torch.relu(self.out(torch.relu(self.inp(x))))))


def make(seed: int = 0):
    torch.manual_seed(seed)
    model = TinyNet()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0 / (1 + s))
    return model, opt, sched


def train(model, opt, sched, steps: int) -> None:
    """Steps that consume every RNG: torch (data, dropout), numpy and Python (data order)."""
    for _ in range(steps):
        x = torch.randn(4, 8) * float(np.random.rand()) + random.random()
        loss = model(x).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()


def params(model) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def test_resume_is_exact(tmp_path):
    model, opt, sched = make()
    train(model, opt, sched, 3)
    path = save_checkpoint(tmp_path, 3, model=model, optimizer=opt, scheduler=sched, extra={"data_pos": 17})
    assert path == tmp_path / "checkpoints" / "step_00000003"
    assert (path / "model.safetensors").is_file() and (path / "trainer_state.pt").is_file()
    nexts = (random.random(), float(np.random.rand()), torch.rand(1).item())
    random.seed(1), np.random.seed(1), torch.manual_seed(1)  # move every generator elsewhere
    load_checkpoint(path, restore_rng=True)
    assert (random.random(), float(np.random.rand()), torch.rand(1).item()) == nexts

    load_checkpoint(path)  # back to the saved RNG state, then continue uninterrupted
    train(model, opt, sched, 3)
    expected = params(model)

    model2, opt2, sched2 = make(seed=123)
    extra = load_checkpoint(tmp_path, model=model2, optimizer=opt2, scheduler=sched2)  # run dir → latest
    assert extra == {"data_pos": 17, "step": 3}
    assert sched2.last_epoch == 3 and opt2.state_dict()["state"][0]["step"].item() == 3
    assert model2.tied.weight is model2.out.weight  # tying survives the safetensors round trip
    train(model2, opt2, sched2, 3)
    for key, value in params(model2).items():
        assert torch.equal(value, expected[key]), key


def test_extra_accepts_numpy_and_paths(tmp_path):
    model, opt, _ = make()
    extra = {"loss": np.float32(1.5), "seen": np.arange(3), "dir": tmp_path, "pair": (1, 2)}
    save_checkpoint(tmp_path, 1, model=model, extra=extra)
    got = load_checkpoint(tmp_path, restore_rng=False)
    assert got == {"loss": 1.5, "seen": [0, 1, 2], "dir": str(tmp_path), "pair": (1, 2), "step": 1}
    with pytest.raises(ValueError, match="no optimizer state"):
        load_checkpoint(tmp_path, optimizer=opt)


def test_keep_last_and_latest(tmp_path):
    model, opt, _ = make()
    for step in range(1, 6):
        save_checkpoint(tmp_path, step * 10, model=model, optimizer=opt, keep_last=2)
    assert [p.name for p in list_checkpoints(tmp_path)] == ["step_00000040", "step_00000050"]
    assert latest_checkpoint(tmp_path).name == "step_00000050"
    assert (tmp_path / "checkpoints" / "latest").read_text().strip() == "step_00000050"
    for step in (60, 70):
        save_checkpoint(tmp_path, step, model=model, keep_last=None)
    assert len(list_checkpoints(tmp_path)) == 4
    # re-saving an existing step replaces it in place
    save_checkpoint(tmp_path, 70, model=model, extra={"again": True}, keep_last=None)
    assert load_checkpoint(tmp_path, restore_rng=False)["again"] is True


def test_latest_falls_back_when_pointer_is_bad(tmp_path):
    assert latest_checkpoint(tmp_path) is None
    with pytest.raises(FileNotFoundError):
        load_checkpoint(tmp_path)
    model, _, _ = make()
    save_checkpoint(tmp_path, 1, model=model)
    save_checkpoint(tmp_path, 2, model=model)
    root = tmp_path / "checkpoints"
    (root / "latest").write_text("step_00000099\n")
    (root / ".tmp-step_00000003-999").mkdir()  # an interrupted save is never chosen
    assert latest_checkpoint(tmp_path).name == "step_00000002"
    (root / "latest").unlink()
    assert latest_checkpoint(tmp_path).name == "step_00000002"
    save_checkpoint(tmp_path, 3, model=model)
    assert not (root / ".tmp-step_00000003-999").exists()  # leftovers cleaned by the next save


def test_exception_mid_save_keeps_previous(tmp_path, monkeypatch):
    model, opt, _ = make()
    save_checkpoint(tmp_path, 1, model=model, optimizer=opt, extra={"v": 1})

    def broken_save(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(tmp_path, 2, model=model, optimizer=opt, extra={"v": 2}, keep_last=1)
    monkeypatch.undo()
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["latest", "step_00000001"]
    assert load_checkpoint(tmp_path, optimizer=opt)["v"] == 1


def test_sigkill_mid_save_keeps_previous(tmp_path):
    """A process killed while fsyncing step 2 leaves step 1 loadable and `latest` pointing at it."""
    script = textwrap.dedent(
        """
        import os, signal, sys
        import torch
        from r1kit.train import checkpoint as ck

        model = torch.nn.Linear(4, 4)
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        ck.save_checkpoint(sys.argv[1], 1, model=model, optimizer=opt, extra={"v": 1})
        real = ck._fsync_file
        calls = []

        def dying_fsync(path):
            calls.append(path)
            if len(calls) == 2:  # the model file is flushed, the trainer state is not
                os.kill(os.getpid(), signal.SIGKILL)
            real(path)

        ck._fsync_file = dying_fsync
        ck.save_checkpoint(sys.argv[1], 2, model=model, optimizer=opt, extra={"v": 2}, keep_last=1)
        """
    )
    env = dict(os.environ, PYTHONPATH=str(REPO))
    proc = subprocess.run(
        [sys.executable, "-c", script, str(tmp_path)], env=env, capture_output=True, timeout=120
    )
    assert proc.returncode == -signal.SIGKILL, proc.stderr.decode()
    root = tmp_path / "checkpoints"
    assert any(p.name.startswith(".tmp-step_00000002") for p in root.iterdir())
    assert latest_checkpoint(tmp_path) == root / "step_00000001"
    model = nn.Linear(4, 4)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    assert load_checkpoint(tmp_path, model=model, optimizer=opt)["v"] == 1
    save_checkpoint(tmp_path, 2, model=model, optimizer=opt, keep_last=1)
    assert sorted(p.name for p in root.iterdir()) == ["latest", "step_00000002"]


class PretrainedStyle(nn.Module):
    """A model whose save_pretrained writes Hugging Face-style names, like r1kit's Transformer."""

    def __init__(self) -> None:
        super().__init__()
        self.proj = nn.Linear(3, 3)

    def save_pretrained(self, directory) -> None:
        from safetensors.torch import save_file

        tensors = {f"model.{k}": v.contiguous() for k, v in self.state_dict().items()}
        save_file(tensors, str(Path(directory) / "model.safetensors"))

    @classmethod
    def from_pretrained(cls, directory):
        from safetensors.torch import load_file

        model = cls()
        state = load_file(str(Path(directory) / "model.safetensors"))
        model.load_state_dict({k.removeprefix("model."): v for k, v in state.items()})
        return model


def test_save_pretrained_models_round_trip(tmp_path):
    model = PretrainedStyle()
    save_checkpoint(tmp_path, 5, model=model)
    fresh = PretrainedStyle()
    load_checkpoint(tmp_path, model=fresh, restore_rng=False)
    assert torch.equal(fresh.proj.weight, model.proj.weight)

    seen = []
    load_checkpoint(tmp_path, model=fresh, load_model_fn=lambda m, d: seen.append(d), restore_rng=False)
    assert seen == [tmp_path / "checkpoints" / "step_00000005"]


def test_compiled_or_wrapped_model_is_unwrapped(tmp_path):
    model = nn.Linear(2, 2)

    class Wrapper(nn.Module):
        def __init__(self, inner):
            super().__init__()
            self._orig_mod = inner

    save_checkpoint(tmp_path, 1, model=Wrapper(model))
    fresh = nn.Linear(2, 2)
    load_checkpoint(tmp_path, model=Wrapper(fresh), restore_rng=False)
    assert torch.equal(fresh.weight, model.weight)
    assert ck.unwrap_model(Wrapper(model)) is model


# ----------------------------------------------------------------------------------------------
# completeness: a listed checkpoint has every file it needs, whole


def three_checkpoints(tmp_path):
    model, opt, sched = make()
    for step in (1, 2, 3):
        train(model, opt, sched, 1)
        save_checkpoint(tmp_path, step, model=model, optimizer=opt, scheduler=sched, extra={"at": step})
    return tmp_path / "checkpoints"


def test_manifest_lists_every_file_with_its_size(tmp_path):
    root = three_checkpoints(tmp_path)
    import json

    manifest = json.loads((root / "step_00000003" / ck.MANIFEST).read_text())["files"]
    assert set(manifest) == {ck.MODEL_FILE, ck.STATE_FILE}
    assert manifest[ck.STATE_FILE] == (root / "step_00000003" / ck.STATE_FILE).stat().st_size
    assert ck.checkpoint_problem(root / "step_00000003") is None


def test_partial_checkpoint_is_skipped_and_resume_takes_the_newest_complete(tmp_path):
    """A kill in the middle of deleting a checkpoint left its trainer state but not its weights."""
    root = three_checkpoints(tmp_path)
    (root / "step_00000003" / ck.MODEL_FILE).unlink()
    assert ck.checkpoint_problem(root / "step_00000003") == "model.safetensors is missing"
    assert [p.name for p in list_checkpoints(tmp_path)] == ["step_00000001", "step_00000002"]
    assert [p.name for p in ck.all_checkpoints(tmp_path)][-1] == "step_00000003"
    with pytest.warns(UserWarning, match="step_00000003 is incomplete .*; using step_00000002"):
        assert latest_checkpoint(tmp_path).name == "step_00000002"  # although `latest` names step 3
    model, opt, sched = make(seed=1)
    with pytest.warns(UserWarning):
        assert load_checkpoint(tmp_path, model=model, optimizer=opt, scheduler=sched)["at"] == 2


@pytest.mark.parametrize(
    ("damage", "problem"),
    [
        (lambda d: (d / ck.STATE_FILE).write_bytes(b"garbage"), r"trainer_state.pt is truncated or changed"),
        (lambda d: (d / ck.STATE_FILE).unlink(), r"trainer_state.pt is missing"),
        (
            lambda d: os.truncate(d / ck.MODEL_FILE, 100),
            r"model.safetensors is truncated or changed \(100 bytes",
        ),
        (lambda d: (d / ck.MANIFEST).write_text("{"), r"manifest.json is not valid"),
    ],
)
def test_damaged_checkpoint_is_incomplete_and_loading_it_is_one_line(tmp_path, damage, problem):
    from r1kit.config import ConfigError

    root = three_checkpoints(tmp_path)
    damage(root / "step_00000003")
    assert re.search(problem, ck.checkpoint_problem(root / "step_00000003"))
    with pytest.raises(ConfigError, match=problem) as err:
        load_checkpoint(root / "step_00000003", model=make()[0])
    assert "\n" not in str(err.value)
    with pytest.warns(UserWarning):
        assert load_checkpoint(tmp_path, restore_rng=False)["at"] == 2


def test_damage_the_manifest_does_not_see_is_found_by_the_format_checks(tmp_path):
    """Checkpoints without a manifest (older ones) or damage of the same size are still caught."""
    root = three_checkpoints(tmp_path)
    ckpt = root / "step_00000003"
    (ckpt / ck.MANIFEST).unlink()
    assert ck.checkpoint_problem(ckpt) is None
    size = (ckpt / ck.STATE_FILE).stat().st_size
    (ckpt / ck.STATE_FILE).write_bytes(b"\0" * size)
    assert "trainer_state.pt is truncated or not a torch checkpoint" in ck.checkpoint_problem(ckpt)
    (ckpt / ck.STATE_FILE).unlink()
    (ckpt / ck.STATE_FILE).write_bytes((root / "step_00000002" / ck.STATE_FILE).read_bytes())
    weights = ckpt / ck.MODEL_FILE
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    assert "model.safetensors is truncated" in ck.checkpoint_problem(ckpt)


def test_checkpoint_of_another_model_is_one_line(tmp_path):
    from r1kit.config import ConfigError

    model, _, _ = make()
    save_checkpoint(tmp_path, 1, model=model)
    with pytest.raises(ConfigError, match=r"does not fit this run .*its config.toml"):
        load_checkpoint(tmp_path, model=nn.Linear(3, 3), restore_rng=False)


def test_a_kill_while_pruning_never_leaves_a_listed_checkpoint_without_files(tmp_path, monkeypatch):
    """Pruning renames a checkpoint away before deleting it: killed midway, no step_* dir is torn."""
    root = three_checkpoints(tmp_path)
    real_rmtree = ck.shutil.rmtree

    def killed_rmtree(path, *args, **kwargs):
        path = Path(path)
        if path.name.startswith(".old-step_"):
            (path / ck.MODEL_FILE).unlink()  # the first file went, then the process died
            raise KeyboardInterrupt
        real_rmtree(path, *args, **kwargs)

    monkeypatch.setattr(ck.shutil, "rmtree", killed_rmtree)
    model, _, _ = make()
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(tmp_path, 4, model=model, keep_last=2)
    monkeypatch.setattr(ck.shutil, "rmtree", real_rmtree)
    for path in ck.all_checkpoints(tmp_path):
        assert ck.checkpoint_problem(path) is None, path
    assert latest_checkpoint(tmp_path).name == "step_00000004"
    save_checkpoint(tmp_path, 5, model=model, keep_last=2)  # the next save clears the leftovers
    assert sorted(p.name for p in root.iterdir()) == ["latest", "step_00000004", "step_00000005"]
