"""`r1kit.loaders`: model/run/checkpoint directory resolution, tokenizer lookup, device and dtype
resolution, and the one model loader used by eval, distillation, serve and chat."""

from __future__ import annotations

import pytest
import torch

from r1kit.config import ConfigError, load_config
from r1kit.loaders import (
    find_tokenizer_dir,
    load_model,
    load_tokenizer,
    resolve_device,
    resolve_dtype,
    resolve_model_dir,
    set_threads,
)
from r1kit.model import ModelConfig, Transformer
from r1kit.tokenizer import Tokenizer
from r1kit.train.checkpoint import save_checkpoint
from r1kit.train.loop import DistInfo
from r1kit.train.sections import normalize_dtype

TINY = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1, "num_attention_heads": 2}


@pytest.fixture(scope="module")
def tokenizer() -> Tokenizer:
    return Tokenizer.train(["1+2=3", "12+30=42", "Wait, 7+8=15"] * 20, vocab_size=300)


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, tokenizer):
    """A run directory: tokenizer at the top, the final model in model/, one checkpoint."""
    root = tmp_path_factory.mktemp("run")
    torch.manual_seed(0)
    model = Transformer(ModelConfig.preset("tiny-llama", vocab_size=tokenizer.vocab_size, **TINY))
    tokenizer.save_pretrained(root)
    model.save_pretrained(root / "model")
    save_checkpoint(root / "ckpt_run", 3, model=model)
    return root, model


def test_resolve_model_dir_accepts_model_run_and_checkpoint_dirs(run_dir):
    root, _ = run_dir
    assert resolve_model_dir(root / "model") == root / "model"
    assert resolve_model_dir(root) == root / "model"
    ckpt = resolve_model_dir(root / "ckpt_run")
    assert ckpt.parent.name == "checkpoints" and (ckpt / "config.json").is_file()
    with pytest.raises(ConfigError, match="model.path is empty"):
        resolve_model_dir("")
    with pytest.raises(FileNotFoundError, match="no config.json"):
        resolve_model_dir(root / "nowhere")


def test_find_tokenizer_dir_walks_up_to_the_run_dir(run_dir, tmp_path):
    root, _ = run_dir
    assert find_tokenizer_dir(root / "model") == root
    ckpt = resolve_model_dir(root / "ckpt_run")  # run/ckpt_run/checkpoints/step-3: tokenizer 3 levels up
    assert find_tokenizer_dir(ckpt) == root
    assert find_tokenizer_dir(root / "model", explicit=str(tmp_path)) == tmp_path
    with pytest.raises(FileNotFoundError, match="set model.tokenizer"):
        find_tokenizer_dir(tmp_path)


def test_load_model_matches_the_saved_weights(run_dir, tokenizer):
    root, model = run_dir
    loaded, tok, model_dir = load_model(root, device="cpu")
    assert model_dir == root / "model" and not loaded.training
    assert tok.vocab_size == tokenizer.vocab_size
    assert next(loaded.parameters()).dtype == torch.float32
    for (name, a), (_, b) in zip(model.state_dict().items(), loaded.state_dict().items()):
        assert torch.equal(a, b), name
    half, _, _ = load_model(root / "model", device="cpu", dtype="bf16")
    assert next(half.parameters()).dtype == torch.bfloat16
    halves = half.state_dict()
    assert all(torch.equal(halves[name], value.bfloat16()) for name, value in model.state_dict().items())


def test_load_tokenizer_can_require_a_chat_template(run_dir, tmp_path, tokenizer):
    root, _ = run_dir
    assert load_tokenizer(root / "model", require_chat_template=True).chat_template is not None
    bare = Tokenizer(tokenizer.backend, None, tokenizer.special_tokens)
    bare.save_pretrained(tmp_path)
    with pytest.raises(ConfigError, match="no chat_template"):
        load_tokenizer(tmp_path, require_chat_template=True)


def test_dtype_vocabulary():
    for name, long in [("fp32", "float32"), ("BF16", "bfloat16"), (" fp16 ", "float16"), ("auto", "auto")]:
        assert normalize_dtype(name) == long
        assert normalize_dtype(long) == long
    with pytest.raises(ConfigError, match="dtype must be one of auto, float32, bfloat16, float16, fp32"):
        normalize_dtype("int8")
    cpu, cuda = torch.device("cpu"), torch.device("cuda", 0)
    assert resolve_dtype("auto", cpu) == torch.float32 and resolve_dtype("auto", cuda) == torch.bfloat16
    assert resolve_dtype("bf16", cpu) == torch.bfloat16 and resolve_dtype("float16", cpu) == torch.float16


def test_eval_config_normalises_its_dtype():
    from r1kit import evaluate

    cfg = load_config(evaluate.Config, None, ["--run.dtype", "bf16"])
    assert cfg.run.dtype == "bfloat16"
    with pytest.raises(ConfigError, match="run.dtype"):
        load_config(evaluate.Config, None, ["--run.dtype", "int8"])


def test_resolve_device():
    assert resolve_device("cpu") == torch.device("cpu")
    want = torch.device("cuda", 0) if torch.cuda.is_available() else torch.device("cpu")
    assert resolve_device("auto") == want and resolve_device("") == want
    with pytest.raises(ConfigError, match="not a torch device"):
        resolve_device("gpu0")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error on a machine without a GPU")
def test_explicit_cuda_without_a_gpu_is_a_clear_error():
    for name in ("cuda", "cuda:1"):
        with pytest.raises(ConfigError, match="no CUDA GPU.*use device 'cpu' or 'auto'"):
            resolve_device(name)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_bare_cuda_is_the_local_rank():
    assert resolve_device("cuda") == torch.device("cuda", 0)
    assert resolve_device("cuda", DistInfo(0, 1, 0, "nccl")) == torch.device("cuda", 0)


def test_set_threads_zero_keeps_the_default():
    before = torch.get_num_threads()
    try:
        set_threads(0)
        assert torch.get_num_threads() == before
        set_threads(1)
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)
