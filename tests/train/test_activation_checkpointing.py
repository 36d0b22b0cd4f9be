"""`train.activation_checkpointing`: recomputed blocks give the plain gradients, names and counters intact."""

import copy

import pytest
import torch

from r1kit.model import Transformer
from r1kit.model.config import ModelConfig
from r1kit.train import loop


def _loss(model, ids):
    if model.config.num_mtp_layers:
        logits, mtp = model(ids, return_mtp=True)
        return logits.float().logsumexp(-1).mean() + 0.3 * mtp.float().logsumexp(-1).mean()
    return model(ids).float().logsumexp(-1).mean()


@pytest.mark.parametrize("preset", ["tiny-llama", "tiny-v3"])
def test_checkpointed_blocks_give_the_plain_gradients(preset):
    model = Transformer(ModelConfig.preset(preset, num_hidden_layers=2)).train()
    ckpt = copy.deepcopy(model)
    assert loop.enable_activation_checkpointing(ckpt) == len(ckpt.model.layers) + len(ckpt.mtp)
    assert loop.enable_activation_checkpointing(ckpt) == 0  # idempotent
    assert list(ckpt.state_dict()) == list(model.state_dict())
    ids = torch.randint(0, model.config.vocab_size, (2, 12))
    _loss(model, ids).backward()
    _loss(ckpt, ids).backward()
    for (name, p), q in zip(model.named_parameters(), ckpt.parameters()):
        if p.grad is None:
            assert q.grad is None, name
            continue
        torch.testing.assert_close(q.grad, p.grad, rtol=1e-5, atol=1e-6, msg=name)
    # the recomputation in backward does not count routed tokens a second time
    for a, b in zip(model.moe_layers(), ckpt.moe_layers()):
        assert torch.equal(a.tokens_per_expert, b.tokens_per_expert)
    # a copy stays checkpointed and calls its own weights; no-grad calls run the plain forward
    twin = copy.deepcopy(ckpt)
    with torch.no_grad():
        torch.testing.assert_close(twin(ids), model(ids), rtol=1e-5, atol=1e-6)


def test_train_config_key_enables_it(tmp_path):
    model = Transformer(ModelConfig.preset("tiny-llama", num_hidden_layers=1))

    class Stage(loop.Stage):
        name = "t"

    train = loop.TrainConfig(steps=1, batch_size=1, activation_checkpointing=True, device="cpu")
    loop.Trainer(
        model,
        Stage(),
        train,
        loop.RunConfig(dir=str(tmp_path)),
        dist=loop.DistInfo(),
        device=torch.device("cpu"),
    )
    assert all(getattr(type(b), "_r1kit_checkpointed", False) for b in model.model.layers)
