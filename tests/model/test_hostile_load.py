"""Loading a hostile model directory fails fast with one clear error: absurd config.json sizes are
checked against the weights before anything is built, and a FIFO or device where a file should be
is refused instead of read (reading a FIFO blocks forever, /dev/zero never ends)."""

from __future__ import annotations

import json
import os
import threading

import pytest
from hf_factory import small_model

from r1kit.model import Transformer


def _load_in_thread(path, timeout: float = 60.0):
    """from_pretrained(path) in a daemon thread, so a regression that hangs fails instead of blocking."""
    out: dict = {}

    def target():
        try:
            out["model"] = Transformer.from_pretrained(path)
        except Exception as err:  # the error is what the test checks
            out["error"] = err

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(timeout)
    assert not thread.is_alive(), "loading hung"
    return out


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    path = tmp_path_factory.mktemp("model")
    small_model("llama").save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def saved_sharded(tmp_path_factory):
    path = tmp_path_factory.mktemp("sharded")
    small_model("llama").save_pretrained(path, max_shard_bytes=20_000)
    return path


def _copy(src, dst, **config_changes):
    for f in src.iterdir():
        (dst / f.name).write_bytes(f.read_bytes())
    if config_changes:
        config = json.loads((dst / "config.json").read_text())
        config.update(config_changes)
        (dst / "config.json").write_text(json.dumps(config))
    return dst


ABSURD_CONFIGS = [
    ({"num_hidden_layers": 10**6}, "num_hidden_layers"),
    ({"num_hidden_layers": 1}, "model.layers.1"),
    ({"num_hidden_layers": 2**31 - 1}, "num_hidden_layers"),
    ({"num_hidden_layers": 2**63}, "num_hidden_layers"),
    ({"hidden_size": 10**9}, "hidden_size"),
    ({"vocab_size": 2**40}, "vocab_size"),
    ({"vocab_size": 0}, "vocab_size"),
    ({"intermediate_size": 10**9}, "does not match"),
    ({"num_attention_heads": 0}, "config.json"),
    ({"num_hidden_layers": "many"}, "num_hidden_layers must be an integer"),
    ({"hidden_size": 64.5}, "hidden_size"),
    ({"max_position_embeddings": -1}, "max_position_embeddings"),
]


@pytest.mark.parametrize("changes,needle", ABSURD_CONFIGS, ids=[str(c[0]) for c in ABSURD_CONFIGS])
def test_absurd_config_sizes_fail_fast(saved, tmp_path, changes, needle):
    out = _load_in_thread(_copy(saved, tmp_path, **changes))
    assert isinstance(out.get("error"), ValueError), out
    assert needle in str(out["error"])


def test_the_untouched_copy_loads(saved, tmp_path):
    assert "model" in _load_in_thread(_copy(saved, tmp_path))


def _replace_with_fifo(path):
    path.unlink()
    os.mkfifo(path)


def _replace_with_device(path):
    path.unlink()
    path.symlink_to("/dev/zero")


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs FIFOs")
@pytest.mark.parametrize("replace", [_replace_with_fifo, _replace_with_device], ids=["fifo", "device"])
@pytest.mark.parametrize("name", ["config.json", "model.safetensors"])
def test_special_file_instead_of_a_file_is_refused(saved, tmp_path, replace, name):
    replace(_copy(saved, tmp_path) / name)
    out = _load_in_thread(tmp_path)
    assert isinstance(out.get("error"), ValueError) and "not a regular file" in str(out["error"]), out


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs FIFOs")
@pytest.mark.parametrize("replace", [_replace_with_fifo, _replace_with_device], ids=["fifo", "device"])
@pytest.mark.parametrize("what", ["index", "shard"])
def test_sharded_index_or_shard_that_is_special_is_refused(saved_sharded, tmp_path, replace, what):
    _copy(saved_sharded, tmp_path)
    shard = sorted(tmp_path.glob("model-*.safetensors"))[0]
    replace(tmp_path / "model.safetensors.index.json" if what == "index" else shard)
    out = _load_in_thread(tmp_path)
    assert isinstance(out.get("error"), ValueError) and "not a regular file" in str(out["error"]), out


@pytest.mark.parametrize("target", ["/dev/zero", "../outside.safetensors"])
def test_index_pointing_outside_the_directory_is_refused(saved_sharded, tmp_path, target):
    _copy(saved_sharded, tmp_path)
    index_path = tmp_path / "model.safetensors.index.json"
    index = json.loads(index_path.read_text())
    first = next(iter(index["weight_map"]))
    index["weight_map"][first] = target
    index_path.write_text(json.dumps(index))
    out = _load_in_thread(tmp_path)
    assert isinstance(out.get("error"), ValueError) and "outside the model directory" in str(out["error"])


def test_garbage_weights_file_is_a_clear_error(saved, tmp_path):
    _copy(saved, tmp_path)
    (tmp_path / "model.safetensors").write_bytes(b"\xff" * 64)
    out = _load_in_thread(tmp_path)
    assert isinstance(out.get("error"), ValueError) and "safetensors" in str(out["error"])
