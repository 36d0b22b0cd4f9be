"""`lm_loss` (pretrain / SFT) runs the chunked head over labelled positions: the plain cross-entropy's
value and gradients, without (B, T, V) logits."""

import pytest
import torch
import torch.nn.functional as F

from r1kit.model import Transformer
from r1kit.model.config import ModelConfig
from r1kit.rl import losses
from r1kit.train import loop


def _model():
    return Transformer(ModelConfig.preset("tiny-llama", num_hidden_layers=2, vocab_size=61)).train()


def test_lm_loss_is_the_plain_cross_entropy_through_the_chunked_head(monkeypatch):
    model = _model()
    ids = torch.randint(0, 61, (3, 10))
    targets = torch.roll(ids, -1, 1)
    targets[:, -1] = loop.IGNORE_INDEX
    targets[0, :5] = loop.IGNORE_INDEX  # a prompt without loss
    mask = torch.ones_like(ids)
    batch = {"input_ids": ids, "targets": targets, "attention_mask": mask}
    n = int((targets != loop.IGNORE_INDEX).sum())

    logits = model(ids, attention_mask=mask)
    want = (
        F.cross_entropy(
            logits.flatten(0, 1), targets.flatten(), ignore_index=loop.IGNORE_INDEX, reduction="sum"
        )
        / n
    )
    want.backward()
    want_grads = [p.grad.clone() for p in model.parameters()]
    model.zero_grad(set_to_none=True)

    calls = []
    real = losses.head_cross_entropy
    monkeypatch.setattr(losses, "head_cross_entropy", lambda *a, **k: calls.append(1) or real(*a, **k))
    got, metrics = loop.lm_loss(model, batch, token_norm=n)
    got.backward()
    assert calls == [1]
    torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(metrics["lm_loss"], want.detach(), rtol=1e-6, atol=1e-6)
    for g, w in zip((p.grad for p in model.parameters()), want_grads):
        torch.testing.assert_close(g, w, rtol=1e-5, atol=1e-6)


def test_chunked_head_under_bf16_autocast_matches_the_autocast_head():
    model = _model()
    ids = torch.randint(0, 61, (2, 9))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        plain = losses.token_logprobs(model(ids), ids)
        chunked = losses.head_logprobs(model.hidden_states(ids), model.lm_head.weight, ids, chunk_size=4)
    assert chunked.dtype == torch.float32
    torch.testing.assert_close(chunked, plain, rtol=0, atol=1e-2)
    chunked.sum().backward()
    assert (
        model.lm_head.weight.grad.dtype == torch.float32 and torch.isfinite(model.lm_head.weight.grad).all()
    )


@pytest.mark.parametrize("wrapped", [False, True])
def test_final_hidden_is_the_forward_hidden(wrapped):
    model = _model().eval()
    ids = torch.randint(0, 61, (2, 7))
    runner = model
    if wrapped:

        class Wrapper(torch.nn.Module):  # stands for DDP / torch.compile: has _orig_mod, calls forward
            def __init__(self, m):
                super().__init__()
                self._orig_mod = m

            def forward(self, *a, **k):
                return self._orig_mod(*a, **k)

        runner = Wrapper(model)
    _, want = model(ids, return_hidden=True)
    torch.testing.assert_close(loop.final_hidden(runner, ids), want)
    assert loop.head_weight(runner) is model.lm_head.weight
